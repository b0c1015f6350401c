"""Where 3D training data comes from: Decathlon datalists, folders of volumes, generated phantoms.

A data source is one of

* ``""``: phantom CT volumes (with organ labels) generated once under the run's folder (:func:`phantom_dataset`);
* a Decathlon-style ``dataset.json`` (``training`` / ``validation`` / ``test`` lists of ``{"image", "label"}``
  paths relative to the json's folder or to ``data_dir``), or a folder holding one, read by
  :func:`~medgmae.data.datalist.read_datalist`;
* a folder of volumes: files with an ending of :data:`~medgmae.data.reader.VOLUME_SUFFIXES` and folders of DICOM
  slices (one series each), searched in its sub-folders too, label maps left out by name
  (:func:`~medgmae.data.volume_folders.folder_datalist`), read by :func:`~medgmae.data.reader.read_volume`.

:func:`resolve_datalist` gives the items of a source, pre-training's and fine-tuning's alike. Contents are checked
by :func:`medgmae.data.precheck.check_datalist`; here only the lists are resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medgmae.data.datalist import DatasetError, read_datalist
from medgmae.data.reader import VOLUME_SUFFIXES
from medgmae.data.volume_folders import folder_datalist
from medgmae.distributed import main_process_only
from medgmae.whole_numbers import nonnegative_count, positive_count

__all__ = ["phantom_dataset", "datalist_base", "resolve_datalist"]



def phantom_dataset(
    out_dir: str | Path,
    num_cases: int,
    num_validation: int = 0,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
) -> Path:
    """Generate (once) a labelled phantom dataset under ``out_dir`` and return the path of its ``dataset.json``.

    Under torch.distributed only rank 0 writes (the generator writes every file atomically and reuses a complete
    dataset with the same parameters); the other ranks wait for it and stop with its error when it fails
    (:func:`medgmae.distributed.main_process_only`), so ``out_dir`` must be on a filesystem every node sees.

    Args:
        out_dir: dataset folder.
        num_cases: cases in all (>= 1).
        num_validation: cases of them in the ``validation`` list.
        seed: generator seed.
        shape: volume shape ``(X, Y, Z)`` (the generator's default when ``None``).
        spacing: voxel size in mm (the generator's default when ``None``).

    Returns:
        Path of ``dataset.json``.
    """
    num_cases, seed = positive_count(num_cases, "num_cases (phantom cases)"), nonnegative_count(seed, "seed")
    from medgmae.data.phantom.writer import validation_count, write_phantom_dataset

    held_out = validation_count(num_validation, num_cases)  # here too: every process of a run sees the error

    out = Path(out_dir)
    # as given, checked by the generator (a shape of 8.7 or a spacing of "4" is refused, not taken as 8 or 4.0)
    kwargs = {name: value for name, value in (("shape", shape), ("spacing", spacing)) if value}
    main_process_only(lambda: write_phantom_dataset(out, num_cases, seed=seed, num_validation=held_out, **kwargs),
                      DatasetError)
    return out / "dataset.json"


def datalist_base(dataset_dir: str | Path, datalist: str | Path = "") -> Path | None:
    """The folder a datalist's relative paths resolve against, as :func:`resolve_datalist` reads it.

    With a ``datalist`` named, a non-empty ``dataset_dir`` is that folder; in every other case (no ``dataset_dir``,
    or ``dataset_dir`` itself the datalist or the folder holding it) the paths resolve against the datalist's own
    folder (``None``, :func:`read_datalist`'s default).

    Args:
        dataset_dir: the run's ``dataset_dir`` (``""``: none).
        datalist: the run's ``datalist`` (``""``: none).

    Returns:
        The base folder, or ``None`` for the datalist's own folder.

    Raises:
        DatasetError: a datalist is named and ``dataset_dir`` is a file or does not exist.
    """
    if not str(datalist).strip() or not str(dataset_dir).strip():
        return None
    base = Path(dataset_dir).expanduser()
    if not base.is_dir():
        what = "is a file" if base.is_file() else "does not exist"
        raise DatasetError(
            f"dataset_dir {base} {what}: with a datalist ({Path(datalist).expanduser()}) it must be the folder the "
            "datalist's relative paths resolve against (or empty: the datalist's own folder)"
        )
    return base


def resolve_datalist(
    dataset_dir: str | Path,
    work_dir: str | Path,
    keys: Sequence[str] = ("training", "validation"),
    phantom_cases: int = 4,
    phantom_validation: int = 0,
    phantom_seed: int = 0,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | float | None = None,
    datalist: str | Path = "",
) -> tuple[list[dict], Path]:
    """The items of a data source (see the module docstring) and the datalist or folder they came from.

    Args:
        dataset_dir: ``""``, a datalist, a folder holding ``dataset.json`` or a folder of volumes; with
            ``datalist``, the folder its relative paths resolve against (``""``: the datalist's own folder), as
            fine-tuning's ``dataset_dir`` + ``datalist``.
        work_dir: phantoms go to ``work_dir/phantom``.
        keys: datalist lists joined (a folder of volumes has no lists: all its volumes).
        phantom_cases, phantom_validation, phantom_seed, phantom_shape, phantom_spacing: see
            :func:`phantom_dataset`.
        datalist: a Decathlon datalist JSON (``""``: none; the data come from ``dataset_dir`` alone).

    Returns:
        ``(items, source)``; ``source`` is ``datalist`` when one is named.

    Raises:
        DatasetError: ``dataset_dir`` does not exist, no volumes found, an invalid or missing datalist, or a
            ``dataset_dir`` that is a file while ``datalist`` names the datalist.
    """
    if str(datalist).strip():
        src, base = Path(datalist).expanduser(), datalist_base(dataset_dir, datalist)
        items = [it for k in keys for it in read_datalist(src, k, data_dir=base, required=(k == keys[0]))]
        return items, src
    if str(dataset_dir).strip() == "":
        src = phantom_dataset(Path(work_dir) / "phantom", phantom_cases, phantom_validation, phantom_seed,
                              phantom_shape, phantom_spacing)  # fmt: skip
    else:
        src = Path(dataset_dir).expanduser()
        if not src.exists():
            raise DatasetError(f"dataset_dir does not exist: {src}")
        if src.is_dir() and (src / "dataset.json").is_file():
            src = src / "dataset.json"
    if src.is_file():
        items = [it for k in keys for it in read_datalist(src, k, required=(k == keys[0]))]
    else:
        items = folder_datalist(src)
    if not items:
        raise DatasetError(f"no volumes found in {src} (readable: {', '.join(VOLUME_SUFFIXES)} files or DICOM folders)")
    return items, src
