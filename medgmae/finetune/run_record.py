"""What a fine-tuning run trained on, recorded in its folder (``training_cases.json``) and read back.

The record holds the label fraction, the subset seed (``seed``), the chosen cases and the data source
(``dataset_dir`` and ``datalist``, absolute; both ``""`` for the synthetic phantoms under ``output_dir/phantom``),
and how the run started (:func:`start_record`): its training seed (``training_seed``), its data loader workers
(``num_workers``: recorded, though the weights do not depend on it), the pre-trained encoder it
loaded (``pretrained``: path, kind, source and the file's SHA-256, which tells the encoder apart from a later one
written at that path; an empty path for a run from scratch), its pre-processing (``preprocessing``, as
:meth:`~medgmae.preprocessing.PreprocessingSpec.to_dict`) and its software (``software``,
:func:`medgmae.software.software_versions`); runs recorded before a key was added have none. Evaluation and inference of
the run default to its data source, and a resumed run must choose the same cases (records written before
``training_seed`` and ``pretrained`` were added resume as before: those keys are not compared). A record that is
there but does not read as one is refused (:func:`read_run_record`), never taken for a missing one.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Mapping, Sequence

from medgmae.data.datalist import DatasetError
from medgmae.data.sources import phantom_dataset
from medgmae.engine.resume import epoch_checkpoints, latest_checkpoint, phantom_resume_differences
from medgmae.engine.start_record import resume_entry
from medgmae.files import read_json, save_json_atomic
from medgmae.data.fingerprint import file_sha256
from medgmae.distributed import is_main_process
from medgmae.settings_diff import settings_differences

__all__ = ["RECORD_FILE", "EXPLICIT_DATA", "RESUME_AFRESH", "case_record", "start_record", "pretrained_record", "read_run_record", "write_run_record", "data_source", "run_data_source", "run_datalist", "folder_datalist_file",
           "training_datalist", "check_resume_matches"]

logger = logging.getLogger(__name__)

#: Name of the record in the run folder.
RECORD_FILE = "training_cases.json"
#: What the refusal of a damaged record tells an evaluation or segmentation to do.
EXPLICIT_DATA = "pass --datalist / --dataset_dir explicitly, or restore the file"
#: What the refusal of a damaged record tells a resume to do.
RESUME_AFRESH = ("restore the file to resume, or start afresh: a new --output_dir, or --resume false (which "
                 "overwrites this run)")

#: The fine-tuning settings behind each recorded phantom generator parameter, as a refused resume names them.
_PHANTOM_FLAGS = {"num_cases": "phantom_cases", "num_validation": "phantom_cases (a third validation)",
                  "shape": "phantom_shape", "spacing": "phantom_spacing", "seed": "subset_seed (default: seed)"}  # fmt: skip


def case_record(fraction: float, seed: int, num_total: int, cases: list, source: Mapping | None = None) -> dict:
    """The record of a run's label subset: ``label_fraction``, ``seed``, ``num_total``, the chosen ``cases``, the
    share of the training cases they are (``effective_fraction``: 1 % of 4 cases is one case, 0.25) and the data
    source (:func:`data_source`) where given."""
    share = len(cases) / int(num_total) if int(num_total) else 0.0
    return {"label_fraction": float(fraction), "effective_fraction": share, "seed": int(seed), "num_total": int(num_total),
            "cases": list(cases), **dict(source or {})}  # fmt: skip


def pretrained_record(pretrained: str | Path) -> dict[str, str]:
    """The pre-trained file a run loaded, as recorded: ``{"path", "kind", "source", "sha256"}``.

    The file is opened memory-mapped (its weights are not read). ``kind`` is the file's checkpoint kind
    (``medgmae-encoder`` for an ``encoder.pt``, ``medgmae`` / ``voxel-mae`` / ... for a pre-training ``model.pt``);
    ``source`` the pre-training run an ``encoder.pt`` records it came from (its ``extra.source`` as a kind, by
    :func:`medgmae.checkpoint.encoder_source`: an old file's class name mapped; ``""`` where it records none), for a
    model file its kind. ``sha256`` is the file's content fingerprint (:func:`medgmae.data.fingerprint.file_sha256`):
    the next pre-training run in the same folder replaces its ``encoder.pt``, and the path then names another encoder.

    Args:
        pretrained: the ``--pretrained`` file; ``""`` for a run from scratch.

    Returns:
        The absolute path, kind, source and SHA-256; all ``""`` from scratch, ``kind`` / ``source`` ``""`` for a
        file that cannot be read as a toolkit checkpoint (the settings check refuses those before training) and
        ``sha256`` ``""`` for one that cannot be read at all.
    """
    from medgmae.checkpoint import ENCODER_KIND, encoder_source, load_checkpoint

    if not str(pretrained or "").strip():
        return {"path": "", "kind": "", "source": "", "sha256": ""}
    path = Path(str(pretrained)).expanduser().resolve()
    try:
        digest = file_sha256(path)
    except OSError:
        digest = ""
    try:
        ckpt = load_checkpoint(path, mmap=True)
    except (OSError, ValueError):
        return {"path": str(path), "kind": "", "source": "", "sha256": digest}
    source = encoder_source((ckpt.extra or {}).get("source"), ckpt.config) if ckpt.kind == ENCODER_KIND else ckpt.kind
    return {"path": str(path), "kind": str(ckpt.kind), "source": str(source), "sha256": digest}


def start_record(record: Mapping, pretrained: str | Path, training_seed: int, resumed: str | Path | None = None,
                 preprocessing=None, num_workers: int | None = None, device=None) -> dict:
    """``record`` (:func:`case_record`) with how the run started.

    A fresh start adds ``training_seed`` (the bundle's ``seed``, of MONAI's determinism; the record's own ``seed``
    stays the subset seed), ``num_workers`` (the training data loader's workers, where given; each item's crops are
    drawn from the epoch's seed and the item, whatever the count), ``pretrained``
    (:func:`pretrained_record`), ``preprocessing`` where given (``medgmae-runs-table`` reads it, also for a run not
    validated yet) and ``software`` (:func:`medgmae.software.software_versions` of ``device``). A resume keeps those
    its run recorded, or none where it recorded none: it continues from the checkpoint's weights and random state,
    whatever its own ``--seed`` and ``--pretrained`` say (a ``--pretrained`` file whose SHA-256 is not the one
    the run started from is warned about: the resume does not use it), and appends to ``resumes`` the entry every training bundle
    records of a resume (:func:`medgmae.engine.start_record.resume_entry`: the epoch of the checkpoint it resumed
    from, its own ``num_workers`` and ``software``; a run resumed with other software is then no longer the fresh
    start's alone; each validation's ``metrics.json`` names the software that wrote it); a record that is there but
    does not read is refused (``DatasetError``), not taken for one that recorded none. The start is kept in this
    file, not in the checkpoints' :class:`~medgmae.engine.start_record.StartRecord` as the other bundles keep it:
    the file is written before training, and evaluation and ``medgmae-runs-table`` read it. So that ``resumes``
    lists what the other bundles' checkpoints would, the entries of resumes from this checkpoint's epoch or a later
    one are dropped first: such a session wrote no checkpoint that this one continues from (it was stopped before
    its first epoch ended, or its checkpoints were removed), and a session resumed and stopped again at once is
    listed once, not once per try.

    Args:
        record: the run's cases (:func:`case_record`).
        pretrained: the ``--pretrained`` file, ``""`` from scratch.
        training_seed: the bundle's ``seed``.
        resumed: the run's folder when it resumes, else ``None``.
        preprocessing: a :class:`~medgmae.preprocessing.PreprocessingSpec` (recorded as its ``to_dict()``) or
            ``None``.
        num_workers: the training data loader's ``num_workers``; ``None``: not recorded.
        device: the training device, for the GPU entry of ``software``.

    Returns:
        The record to write (:func:`write_run_record`).
    """
    if preprocessing is not None and not hasattr(preprocessing, "to_dict"):
        raise TypeError(f"preprocessing must be a PreprocessingSpec or None, got {type(preprocessing).__name__}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0):
        raise ValueError(f"num_workers must be a whole number >= 0 or None, got {num_workers!r}")
    from medgmae.software import software_versions

    ran_with = software_versions(device)
    checkpoints = epoch_checkpoints(resumed) if resumed is not None else []
    if not checkpoints:  # a fresh start: the encoder is read only here
        spec = {} if preprocessing is None else {"preprocessing": preprocessing.to_dict()}
        return {**dict(record), "training_seed": int(training_seed), "pretrained": pretrained_record(pretrained), **spec,
                **({} if num_workers is None else {"num_workers": num_workers}), "software": ran_with}  # fmt: skip
    earlier = read_run_record(resumed, RESUME_AFRESH) or {}  # a run recorded before these keys existed keeps none
    _warn_if_other_encoder(pretrained, earlier.get("pretrained"), checkpoints[0][1])
    kept = ("training_seed", "num_workers", "pretrained", "preprocessing", "software")
    epoch = checkpoints[0][0]  # the newest epoch checkpoint's, resumed from
    resumes = earlier.get("resumes") if isinstance(earlier.get("resumes"), list) else []
    resumes = [r for r in resumes if not _resumed_from(r, epoch)]  # sessions that wrote no checkpoint resumed here
    entry = resume_entry(epoch, num_workers, ran_with)
    return {**dict(record), **{key: earlier[key] for key in kept if key in earlier}, "resumes": [*resumes, entry]}


def _warn_if_other_encoder(pretrained: str | Path, recorded, checkpoint: Path) -> None:
    """Warn (main process, once) when a resume is given a ``--pretrained`` file whose content (SHA-256) is not the
    one its run started from (``recorded``, :func:`pretrained_record`; a run from scratch records an empty path):
    the resume continues ``checkpoint``'s weights and does not use the file. Nothing is said where the run recorded
    no encoder (an earlier version's record) or where the file is that encoder, at any path."""
    if not str(pretrained or "").strip() or not isinstance(recorded, Mapping) or not is_main_process():
        return
    started, digest = str(recorded.get("path") or ""), str(recorded.get("sha256") or "")
    try:
        given = file_sha256(Path(str(pretrained)).expanduser())
    except OSError:
        given = ""
    if started and (not digest or given == digest):
        return
    was = f"{started} (SHA-256 {digest[:12]})" if started else "no pre-trained encoder (from scratch)"
    logger.warning(
        "--pretrained %s (SHA-256 %s) is not the encoder this run started from, %s: the resume continues the weights "
        "of %s and does not use the given file; %s keeps recording the run's start", pretrained, given[:12] or "unreadable",
        was, checkpoint, RECORD_FILE,
    )  # fmt: skip


def _resumed_from(entry, epoch: int) -> bool:
    """Whether ``entry`` records a resume from ``epoch`` or a later checkpoint: that session wrote no checkpoint
    that a resume from ``epoch`` (the newest) continues, and the other bundles' checkpoint of ``epoch`` lists none
    such."""
    found = entry.get("epoch") if isinstance(entry, Mapping) else None
    return isinstance(found, int) and not isinstance(found, bool) and found >= epoch


def read_run_record(output_dir: str | Path, way_forward: str = EXPLICIT_DATA) -> dict | None:
    """The run's record, ``None`` when there is none.

    Args:
        output_dir: the run folder.
        way_forward: what the refusal of a damaged record tells the user to do (:data:`EXPLICIT_DATA`, or
            :data:`RESUME_AFRESH` for a resume).

    Returns:
        The record (a JSON object), or ``None`` when the folder holds no ``training_cases.json``.

    Raises:
        DatasetError: the record exists but cannot be read, does not parse, or is not a record (a JSON object whose
            ``dataset_dir`` / ``datalist`` are text and ``cases`` a list): it is refused, not read as missing (an
            evaluation would otherwise score other data, a resume lose the run's encoder and seed).
    """
    path = Path(output_dir) / RECORD_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = read_json(path, "run record")  # its errors name the file
    except ValueError as e:
        raise DatasetError(f"{e}; {way_forward}") from None
    except OSError as e:
        raise DatasetError(f"{path}: the run record cannot be read ({e.strerror or e}); {way_forward}") from None
    problem = _structure_problem(record)
    if problem:
        raise DatasetError(f"{path}: the run record {problem}; {way_forward}")
    return record


def _structure_problem(record) -> str:
    """What makes ``record`` no run record (``""`` when nothing does)."""
    if not isinstance(record, dict):
        return f"is not a JSON object (it holds {type(record).__name__})"
    wrong = [f"{key} is not text" for key in ("dataset_dir", "datalist") if not isinstance(record.get(key, ""), str)]
    if not isinstance(record.get("cases", []), list):
        wrong.append("cases is not a list")
    return ", ".join(wrong)


def write_run_record(output_dir: str | Path, record: Mapping) -> Path:
    """Write ``record`` as the run's ``training_cases.json`` (atomically), on the main process only (under
    torchrun each rank builds the same record; a resume's ``resumes`` entry is added once); returns its path."""
    path = Path(output_dir) / RECORD_FILE
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json_atomic(dict(record), path)
    return path


def data_source(dataset_dir: str | Path, datalist: str | Path) -> dict[str, str]:
    """``{"dataset_dir", "datalist"}`` as given to training, made absolute (``""`` stays ``""``: phantoms)."""
    absolute = lambda p: str(Path(p).expanduser().resolve()) if str(p).strip() else ""  # noqa: E731
    return {"dataset_dir": absolute(dataset_dir), "datalist": absolute(datalist)}


def run_data_source(dataset_dir: str | Path, datalist: str | Path, output_dir: str | Path) -> tuple[str, str]:
    """``(dataset_dir, datalist)`` to evaluate or segment with: the given ones, or, when both are empty, those the
    run in ``output_dir`` recorded (still empty for a phantom run, or a run folder without a record); a record that
    is there but does not read is refused (``DatasetError`` naming it, :func:`read_run_record`), never read as
    phantom data."""
    if str(dataset_dir).strip() or str(datalist).strip():
        return str(dataset_dir), str(datalist)
    record = read_run_record(output_dir) or {}
    return str(record.get("dataset_dir") or ""), str(record.get("datalist") or "")


def run_datalist(dataset_dir: str | Path, datalist: str | Path, output_dir: str | Path) -> tuple[str, Path]:
    """``(dataset_dir, datalist file)`` to evaluate or segment with: :func:`run_data_source`, then the datalist
    ``dataset_dir/dataset.json`` where none is named, or the phantom run's ``output_dir/phantom/dataset.json``."""
    dataset_dir, datalist = run_data_source(dataset_dir, datalist, output_dir)
    if datalist:
        return dataset_dir, Path(datalist)
    return dataset_dir, folder_datalist_file(Path(dataset_dir).expanduser()) if dataset_dir else Path(output_dir) / "phantom" / "dataset.json"


def folder_datalist_file(dataset_dir: Path) -> Path:
    """``dataset_dir/dataset.json``; a ``DatasetError`` saying what to give when the folder has none (fine-tuning
    needs each image's label, which only a datalist pairs) or when ``dataset_dir`` is the datalist itself."""
    if dataset_dir.is_file():
        raise DatasetError(f"--dataset_dir {dataset_dir} is a file: give a datalist as --datalist "
                           f"{shlex.quote(str(dataset_dir))} (and --dataset_dir the folder its relative paths start "
                           "from, when not the datalist's own)")  # fmt: skip
    path = dataset_dir / "dataset.json"
    if dataset_dir.is_dir() and not path.exists():
        raise DatasetError(f"{dataset_dir} holds no dataset.json: fine-tuning pairs each image with its label through a "
                           "Decathlon datalist ('training' / 'validation' lists of {'image', 'label'}); give it as "
                           "--datalist <file>, its relative paths resolved against --dataset_dir; for a folder of "
                           f"imagesTr/ and labelsTr/, `medgmae-datalist {shlex.quote(str(dataset_dir))}` writes one")  # fmt: skip
    return path


def training_datalist(
    dataset_dir: str | Path,
    datalist: str | Path,
    output_dir: str | Path,
    phantom_cases: int,
    seed: int,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | None = None,
    resume: bool = False,
) -> tuple[str | Path, str | Path, dict[str, str]]:
    """The data a fine-tuning run trains on: the given datalist and folder, or phantom data when both are empty.

    Args:
        dataset_dir: folder with the images (``""``: the datalist's folder, or, without a datalist, phantom data
            written to ``output_dir/phantom``).
        datalist: Decathlon JSON (``""``: ``dataset_dir/dataset.json``).
        output_dir: run folder (phantom data go to ``output_dir/phantom``).
        phantom_cases: phantom cases (training + validation) when no dataset is given.
        seed: seed of the phantom data.
        phantom_shape: phantom volume shape (generator default when ``None``).
        phantom_spacing: phantom voxel size in mm (generator default when ``None``).
        resume: the run resumes its checkpoint: phantom data of other settings are refused before they would be
            generated again (the checkpoint trained on them; evaluation reads them).

    Returns:
        ``(dataset_dir, datalist, source)``: the image folder, the datalist file and the run's data source
        (:func:`data_source`, as given, before phantom data are written).

    Raises:
        DatasetError: a resume whose phantom settings differ from those of the run's phantom data.
    """
    if not str(dataset_dir).strip() and str(datalist).strip():  # a datalist alone: its paths resolve against its folder
        dataset_dir = Path(datalist).parent
    source = data_source(dataset_dir, (datalist or Path(dataset_dir) / "dataset.json") if dataset_dir else "")
    if not dataset_dir:
        n_val = max(1, phantom_cases // 3)
        if resume and (diff := phantom_resume_differences(output_dir, phantom_cases, seed, phantom_shape, phantom_spacing, n_val,
                                                  labels=_PHANTOM_FLAGS)):  # fmt: skip
            raise DatasetError(f"cannot resume {output_dir}: its checkpoint trained on phantoms generated with other "
                               f"settings ({'; '.join(diff)}); resume with the run's phantom settings, or start afresh "
                               "(a new --output_dir), nothing was written")  # fmt: skip
        datalist = phantom_dataset(
            Path(output_dir) / "phantom", phantom_cases, n_val, seed=seed, shape=phantom_shape, spacing=phantom_spacing
        )
        dataset_dir = Path(datalist).parent
    elif not datalist:
        datalist = folder_datalist_file(Path(dataset_dir).expanduser())
    return dataset_dir, datalist, source


def _describe(record: Mapping) -> str:
    source = record.get("datalist") or record.get("dataset_dir") or "the phantom data"
    return (f"{len(record.get('cases', []))} of {record.get('num_total', '?')} training cases (label_fraction "
            f"{record.get('label_fraction')}, seed {record.get('seed')}, data {source})")  # fmt: skip


def check_resume_matches(output_dir: str | Path, new: Mapping) -> None:
    """Raise when resuming the run in ``output_dir`` would train on other cases than it recorded.

    Args:
        output_dir: the run folder.
        new: the record this resumed run would write (``label_fraction``, ``seed``, ``cases``, data source).

    A record without an epoch checkpoint beside it (a run stopped before its first epoch ended, which a resume
    starts afresh) binds nothing.

    Raises:
        DatasetError: naming the recorded and the new choice, and how to resume or start afresh; or naming the
            record when it is there but does not read (:func:`read_run_record`).
    """
    if latest_checkpoint(output_dir) is None:
        return
    old = read_run_record(output_dir, RESUME_AFRESH)
    if old is None:
        return
    keys = [k for k in ("label_fraction", "seed", "cases", "dataset_dir", "datalist") if k in old]
    phantom = not any(str(r.get(k) or "").strip() for r in (old, new) for k in ("dataset_dir", "datalist"))
    norm = _phantom_relative if phantom else _resolved  # the cases as they are compared
    value = (lambda k, r: norm(r.get(k)) if k == "cases" else r.get(k))  # noqa: E731
    differ = [k for k in keys if settings_differences({k: value(k, old)}, {k: value(k, new)})]  # the one comparison
    if not differ:
        return
    first = _first_difference(value("cases", old), value("cases", new)) if differ == ["cases"] else ""
    raise DatasetError(
        f"cannot resume {output_dir}: it was trained on {_describe(old)}, but these settings choose {_describe(new)} "
        f"({', '.join(differ)} differ{first}). Resume with the "
        f"recorded settings (--label_fraction {old.get('label_fraction')} --subset_seed {old.get('seed')} and the same "
        f"data), or start afresh: a new --output_dir, or --resume false (which overwrites this run)."
    )


def _phantom_relative(cases) -> list:
    """Phantom cases by their paths below the run's ``phantom/`` folder: the generated data move with a run folder
    that is moved or copied, and it still resumes."""
    def rel(value):
        text = str(value)
        return text[text.rindex("/phantom/") + 1:] if "/phantom/" in text else value

    return [{k: rel(v) for k, v in case.items()} if isinstance(case, Mapping) else case for case in cases or []]


def _resolved(cases) -> list:
    """Cases with their ``image`` and ``label`` paths resolved (absolute, links followed): a record names its cases
    absolutely, and one written with paths relative to the working folder still matches from that folder."""
    def resolve(key, value):
        return os.path.realpath(value) if key in ("image", "label") and isinstance(value, str) and value else value

    return [{k: resolve(k, v) for k, v in case.items()} if isinstance(case, Mapping) else case for case in cases or []]


def _first_difference(old: Sequence, new: Sequence) -> str:
    """``: e.g. recorded <image>, now <image>`` for the first case that differs (the two choices can read alike)."""
    for a, b in zip(old, new):
        if a != b:
            return f"; e.g. recorded {a.get('image', a) if isinstance(a, Mapping) else a}, now {b.get('image', b) if isinstance(b, Mapping) else b}"
    return ""
