"""``medgmae-datalist``: the Decathlon ``dataset.json`` of a folder laid out as the Medical Segmentation Decathlon or
nnU-Net's raw data, for a folder that has none.

Fine-tuning pairs each image with its label map through a datalist (:mod:`medgmae.data.datalist`); a folder of
``imagesTr/`` and ``labelsTr/`` without ``dataset.json`` (a download unpacked, a conversion's output, nnU-Net's
``dataset.json`` of another format) has no such pairing. This writes one:

* ``imagesTr/<case>.nii.gz`` (or nnU-Net's single channel ``<case>_0000.nii.gz``) paired with
  ``labelsTr/<case>.nii.gz`` by case name, or, where the names differ (BTCV's ``img0001`` and ``label0001``), by
  the number ending them (:mod:`medgmae.data.case_pairing`); any volume format
  :func:`~medgmae.data.reader.read_volume` reads, and DICOM series folders;
* each label map on its image's voxel grid (shape and affine, the fine-tuning pre-check's test and tolerance:
  :func:`~medgmae.data.grid.same_grid_problem`), else refused naming both files;
* a seeded split of the pairs into ``training`` and ``validation`` (``--validation-fraction``), or, in AMOS's
  layout, ``imagesVa/`` paired with ``labelsVa/`` as the ``validation`` list (all of ``imagesTr/`` trains);
* ``imagesTs/`` as the ``test`` list (images only);
* the ``labels`` map: background and a name for each class value up to the largest found in the label maps, as
  given (``--labels 1=liver,2=spleen``, each name once, for values the maps hold), else as the folder's own
  ``dataset.json`` names it (the Decathlon's or nnU-Net's ``labels``), else ``class_<i>``; values no map holds are
  noted.

Paths are relative to the folder, as the Decathlon's. The file is written whole or not at all
(:func:`medgmae.files.save_json_atomic`); an existing datalist is replaced only with ``--force``, and nnU-Net's own
``dataset.json`` never (write this one beside it with ``--out``, and fine-tune with ``--datalist``).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae.data.case_pairing import case_pairs
from medgmae.data.datalist import DatasetError, is_nnunet_datalist, load_datalist_json
from medgmae.data.grid import grid_fix_once, label_grid_problem
from medgmae.data.reader import Volume, read_volume, volume_grid
from medgmae.files import absolute_path, output_dir_problem
from medgmae.words import plural, plural_noun

__all__ = ["case_pairs", "class_values", "decathlon_datalist", "folder_class_names", "main", "split_cases"]


def class_values(
    labels: Sequence[str | Path], progress: bool = False, images: Sequence[str | Path] | None = None
) -> dict[int, str]:
    """The class values found in the label maps, sorted, each with the first map holding it (background 0
    included, ``""`` where no map holds it).

    Args:
        labels: the label maps.
        progress: print how many maps were read.
        images: the image of each label map: each map must be on its image's voxel grid (the fine-tuning pre-check's
            :func:`~medgmae.data.grid.same_grid_problem`; the image's header only where its format allows).

    Raises:
        DatasetError: maps (or images) that cannot be read, maps not on their images' grids (each with its image)
            and maps holding values that are not whole numbers >= 0 (float noise within
            :data:`~medgmae.data.reader.LABEL_TOLERANCE` of a whole number is rounded, not refused): all of them, each
            named, in one error after the last map.
    """
    found: dict[int, str] = {0: ""}
    grids: list[str] = []  # every map off its image's grid, in one error after the last map
    bad: list[str] = []  # every map that cannot be read or holds no class numbers, likewise
    for i, path in enumerate(labels, 1):
        values, problem, grid = _map_values(path, images[i - 1] if images is not None else None)
        bad += [problem] if problem else []
        grids += [grid] if grid else []
        for v in values:
            found[int(v)] = found.get(int(v)) or str(path)
        if progress and (i % 10 == 0 or i == len(labels)):
            print(f"read {i}/{len(labels)} label maps", flush=True)
    _refuse_maps(bad, grids)
    return dict(sorted(found.items()))


def _map_values(path: str | Path, image: str | Path | None) -> tuple[np.ndarray, str | None, str | None]:
    """The class values of the label map ``path`` (none where it cannot be used), why it cannot be (``None``: it
    can) and why it is not on ``image``'s voxel grid (``None``: it is, or no image given)."""
    try:
        label = read_volume(path, label=True)  # float noise rounded, other fractions refused
        grid = _grid_problem(label, image) if image is not None else None
    except (OSError, ValueError) as e:  # its message names the file
        return np.zeros(0), str(e), None
    values = np.unique(label.array)
    if (values < 0).any():
        shown = ", ".join(f"{v:g}" for v in values[:8])
        return np.zeros(0), (f"{path}: a label map holds whole class numbers >= 0, this one holds {shown}"
                             f"{' ...' if len(values) > 8 else ''}"), grid  # fmt: skip
    return values, None, grid


def _refuse_maps(bad: Sequence[str], grids: Sequence[str]) -> None:
    """Refuse, in one error, every label map that cannot be used (``bad``) and every one off its image's grid
    (``grids``), the resampling advice said once after them (:func:`~medgmae.data.grid.grid_fix_once`); one
    problem alone is the error's whole message."""
    if len(bad) + len(grids) == 1:
        raise DatasetError([*bad, *grids][0])
    if bad or grids:
        lines, fix = grid_fix_once(grids)
        head = ([f"{len(bad)} label maps cannot be used"] if bad else []) + (
            [f"{len(grids)} label maps are not on their images' voxel grids"] if grids else [])
        raise DatasetError(" and ".join(head) + ":\n  " + "\n  ".join([*bad, *lines]) + (f"\n{fix}" if fix else ""))


def _grid_problem(label: Volume, image: str | Path) -> str | None:
    """Why ``label`` is not on the voxel grid of ``image`` (as fine-tuning's pre-check words it), else ``None``."""
    shape, affine = volume_grid(image)
    return label_grid_problem(label.path, label.array.shape, label.affine, Path(image).expanduser(), shape, affine)


def _classes(named: Sequence) -> str:
    """``"class"`` for one, ``"classes"`` for several."""
    return "class" if len(named) == 1 else plural_noun("class")


def split_cases(pairs: Sequence[dict], validation_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``(training, validation)``: ``max(1, floor(fraction * n + 0.5))`` cases drawn for validation by a seeded
    permutation, each list in the pairs' order.

    Raises:
        DatasetError: fewer than two pairs, or a fraction that leaves no training case.
    """
    n = len(pairs)
    if n < 2:
        raise DatasetError(f"{plural(n, 'labelled case')}: fine-tuning needs at least two (one to train on, one to validate)")
    n_val = max(1, math.floor(validation_fraction * n + 0.5))  # half up, as fine-tuning's label_fraction
    if n_val >= n:
        raise DatasetError(f"--validation-fraction {validation_fraction} of {n} cases leaves none to train on")
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in chosen], [p for i, p in enumerate(pairs) if i in chosen]


#: Class values up to which gaps are taken as classes absent from these maps; above it, a value beyond four times
#: the number of classes found is taken for an ignore or border value (255), not a class.
SPARSE_CLASSES = 32


def _label_map(
    found: dict[int, str], names: dict[int, str], source: Path, progress: bool = False, names_from: str = "--labels"
) -> dict[str, str]:
    """The datalist's ``labels``: ``0..max`` of the values ``found``, each named as given, else ``class_<i>``.

    Classes are one-hot channels ``0..max``: a value below the largest that no map holds keeps its channel, and is
    named in a note (``progress``: printed), as the model will learn it from no voxel. Names read from a file
    (``names_from`` other than ``--labels``) of values above the largest found are left out, also in a note.

    Raises:
        DatasetError: a name given for a value no label map holds, or a largest value that would make mostly empty
            classes (:data:`SPARSE_CLASSES`; e.g. an ignore value 255 beside classes 1 and 2), naming its map.
    """
    values = list(found)
    top = max(values)
    if top >= SPARSE_CLASSES and top > 4 * len(values):
        mask = sorted(values) == [0, 255]  # as the pre-check says of such maps (medgmae.data.precheck)
        why = ("only 0 and 255: binary masks saved as 0/255? divide them by 255" if mask else
               "an ignore or border value? Map it to a class (0 for background) in the label maps, or number the "
               "classes 0, 1, 2, ...")  # fmt: skip
        raise DatasetError(f"{found[top]}: holds the value {top}, which would make {top + 1} classes of which "
                           f"{len(values)} appear in the label maps ({values}); {why}")  # fmt: skip
    beyond = {v: n for v, n in sorted(names.items()) if v > top}
    if names_from != "--labels" and beyond:  # e.g. a tumour class that no case of this folder holds
        names = {v: n for v, n in names.items() if v <= top}
        if progress:
            print(f"note: {names_from} names {_classes(beyond)} {', '.join(f'{v} {n}' for v, n in beyond.items())}, which no "
                  f"label map holds: left out (the classes are 0..{top})", flush=True)  # fmt: skip
    absent_named = sorted(set(names) - set(values)) if names_from == "--labels" else []
    if absent_named:
        raise DatasetError(f"{source}: --labels names {_classes(absent_named)} {absent_named}, which no label map holds (they hold "
                           f"{list(values)})")  # fmt: skip
    unnamed = [v for v in sorted(values) if v > 0 and v not in names] if names else []
    if unnamed and progress:  # a stray value (a few voxels of an annotation slip) becomes a class the model learns
        print(f"note: {names_from} names no class for {', '.join(f'value {v} (in {found[v]})' for v in unnamed)}: "
              f"{_classes(unnamed)} {', '.join(f'class_{v}' for v in unnamed)} of the model; fix the label map if "
              f"{'it is' if len(unnamed) == 1 else 'they are'} a slip, or name {'it' if len(unnamed) == 1 else 'them'} "
              f"in {names_from}", flush=True)  # fmt: skip
    missing = sorted(set(range(max(values) + 1)) - set(values))
    if missing and progress:
        values_are = "class value {} is" if len(missing) == 1 else "class values {} are"
        print(f"note: {values_are.format(missing)} in no label map; they keep their channels 0..{max(values)} (the "
              "model's classes are the values up to the largest) and learn from no voxel", flush=True)  # fmt: skip
    return {str(i): ("background" if i == 0 else names.get(i, f"class_{i}")) for i in range(max(values) + 1)}


def decathlon_datalist(
    folder: str | Path, validation_fraction: float | None = None, seed: int = 0, names: dict[int, str] | None = None,
    progress: bool = False, names_from: str = "--labels",
) -> dict:
    """The Decathlon datalist of ``folder`` (see the module): ``name``, ``labels``, ``numTraining``, ``training``,
    ``validation``, ``test``; paths relative to ``folder``. ``names`` are class names given as ``--labels``, or
    read from the file ``names_from`` (:func:`folder_class_names`). The validation cases are AMOS's ``imagesVa/``
    and ``labelsVa/`` where the folder has both (``validation_fraction`` must then be ``None``), else a seeded
    draw of ``validation_fraction`` (``None``: 0.2) of the training pairs."""
    folder = Path(folder).expanduser()
    pairs, test, how = case_pairs(folder, progress)
    if (folder / "imagesVa").is_dir() and (folder / "labelsVa").is_dir():
        if validation_fraction is not None:
            raise DatasetError(f"{folder}: holds imagesVa/ and labelsVa/, its validation cases (AMOS's layout), so "
                               "--validation-fraction draws none: leave it out")  # fmt: skip
        training, (validation, _, how_va) = pairs, case_pairs(folder, progress, "Va")
        drawn = f"validation: imagesVa/ paired with labelsVa/ by case {how_va}"
    else:
        training, validation = split_cases(pairs, 0.2 if validation_fraction is None else validation_fraction, seed)
        drawn = f"validation: {len(validation)} of {len(pairs)} cases drawn with seed {seed}"
    cases = training + validation
    found = class_values([p["label"] for p in cases], progress, [p["image"] for p in cases])
    labels = _label_map(found, names or {}, folder, progress, names_from)
    rel = lambda items: [{k: Path(v).relative_to(folder).as_posix() for k, v in item.items()} for item in items]  # noqa: E731
    return {
        "name": folder.resolve().name,
        "description": f"imagesTr/ paired with labelsTr/ by case {how}; {drawn}",
        "labels": labels,
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": len(test),
        "training": rel(training),
        "validation": rel(validation),
        "test": rel(test),
    }


def folder_class_names(folder: Path) -> dict[int, str]:
    """The class names (background left out) of ``folder/dataset.json``'s ``labels`` map, in the Decathlon's form
    (``{"0": "background", "1": "liver"}``) or nnU-Net v2's (``{"background": 0, "liver": 1}``; region entries,
    which map a name to several values, left out); ``{}`` without a readable map."""
    try:
        labels = load_datalist_json(folder / "dataset.json", check_lists=False).get("labels")
    except DatasetError:  # none, or not a JSON object
        return {}
    names: dict[int, str] = {}
    for key, value in (labels or {}).items() if isinstance(labels, dict) else ():
        if isinstance(value, int) and not isinstance(value, bool):  # nnU-Net: name -> value
            number, name = value, str(key)
        elif str(key).strip().isdigit() and isinstance(value, str):  # Decathlon: value -> name
            number, name = int(key), value
        else:
            continue
        if number > 0 and name.strip():
            names[number] = name.strip()
    unique = len(set(names.values())) == len(names) and "background" not in names.values()
    return names if unique else {}  # two classes of one name would merge their Dice columns: not taken


def _names(text: str) -> dict[int, str]:
    """``"1=liver,2=spleen"`` -> ``{1: "liver", 2: "spleen"}`` (argparse type); a class given twice, or two classes
    of one name (their Dice columns would merge), is refused."""
    names: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, sep, name = part.partition("=")
        name = name.strip()
        if sep and value.strip().isdigit() and int(value) == 0:
            raise argparse.ArgumentTypeError(f"class 0 is the background, reserved (named 'background'): name the "
                                             f"classes from 1 on, such as 1=liver,2=spleen, got {part!r}")  # fmt: skip
        if not sep or not value.strip().isdigit() or not name or "=" in name or ";" in name:
            raise argparse.ArgumentTypeError(f"expected class=name pairs such as 1=liver,2=spleen, got {part!r}")
        if int(value) in names:
            raise argparse.ArgumentTypeError(f"class {int(value)} is named twice ({names[int(value)]!r}, {name!r})")
        if name in names.values() or name == "background":
            raise argparse.ArgumentTypeError(f"two classes are named {name!r}: each class needs its own name")
        names[int(value)] = name
    return names


def build_parser() -> argparse.ArgumentParser:
    from medgmae.cli_types import ToolParser, nonneg_int

    p = ToolParser(prog="medgmae-datalist", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("folder", help="the folder holding imagesTr/ and labelsTr/ (and imagesTs/)")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="share of the labelled cases kept for validation, strictly between 0 and 1 (default 0.2; not "
                        "with AMOS's imagesVa/ and labelsVa/, which are the validation cases where the folder has them)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the validation draw (default 0)")
    p.add_argument("--labels", type=_names, default={},
                   help="class names, e.g. 1=liver,2=spleen; classes not named are class_<i> (default: the names of "
                        "FOLDER/dataset.json's 'labels' map where it has one, else all)")
    p.add_argument("--out", default=None, help="the .json file to write (default FOLDER/dataset.json)")
    p.add_argument("--force", action="store_true", help="replace an existing datalist")
    return p


def _out_problem(out: Path, folder: Path, force: bool, given: bool = True) -> str | None:
    """Why the datalist cannot be written to ``out``, else ``None``: not a ``.json`` name (``--force`` would have
    replaced a scan), a folder, inside a folder of scans, under a file, existing without ``force``, or in a folder
    where no file can be created (a read-only dataset mount; ``given``: ``out`` was named by ``--out``, else it is
    the default, ``FOLDER/dataset.json``, and the message says how to write the datalist elsewhere; a FOLDER that
    is a file is named as the positional argument, not as ``--out``)."""
    where = f"--out {out}" if given else str(out)
    if not given and folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder: give the folder holding imagesTr/ and labelsTr/"
    if out.is_dir():
        return f"{where} is a folder: give the .json file to write (e.g. {out / 'dataset.json'})"
    if not out.name.lower().endswith(".json"):
        return f"{where}: a datalist is a .json file"
    if out.resolve().parent in {(folder / d).resolve() for d in ("imagesTr", "labelsTr", "imagesTs")}:
        return f"{where}: inside a folder of scans, where it would be read as one; write it beside them"
    blocking = next((q for q in out.parents if q.exists() and not q.is_dir()), None)
    if blocking is not None:
        return f"{where}: {blocking} is a file, not a folder"
    if out.exists() and _is_nnunet_datalist(out):  # nnU-Net reads it: never ours to replace
        return (f"{out} is nnU-Net's dataset.json (another format, which nnU-Net needs): write this one beside it, "
                f"e.g. --out {out.with_name('dataset_decathlon.json')}")  # fmt: skip
    if out.exists() and not force:
        return f"{out} exists: give --force to replace it, or --out another file"
    if problem := output_dir_problem(out.parent):  # a read-only dataset mount: said before every label map is read
        if given:
            return f"--out {out}: {problem}"
        return (f"cannot write the default {out}: {problem}; give --out a .json file in a folder you can write, "
                f"then fine-tune with --datalist that file --dataset_dir {shlex.quote(str(absolute_path(folder)))}")
    return None


def _is_nnunet_datalist(path: Path) -> bool:
    """Whether ``path`` is nnU-Net v2's ``dataset.json`` (:func:`~medgmae.data.datalist.is_nnunet_datalist`), read as
    every datalist is (:func:`~medgmae.data.datalist.load_datalist_json`)."""
    try:
        content = load_datalist_json(path, check_lists=False)
    except DatasetError:  # not a JSON object: not nnU-Net's either
        return False
    return is_nnunet_datalist(content)


def _refuse(message: str) -> None:
    """Exit with status 2 (as a flag error does) after ``medgmae-datalist: error: <message>`` on stderr, without the
    usage block argparse prints before a flag error: the data or the output file, not the command line, are at fault."""
    print(f"medgmae-datalist: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """``medgmae-datalist`` entry point: 0 on success; bad flags or unusable data exit with code 2 and the problem
    (nothing written); Ctrl-C exits with 130, nothing written."""
    from medgmae.cli_types import expand_home
    from medgmae.files import os_error_message, save_json_atomic
    from medgmae.folder_lock import folder_made

    parser = build_parser()
    args = expand_home(parser.parse_args(argv))
    if args.validation_fraction is not None and not 0 < args.validation_fraction < 1:
        parser.error(f"--validation-fraction must be strictly between 0 and 1, got {args.validation_fraction}")
    folder = Path(args.folder).expanduser()
    out = Path(args.out).expanduser() if args.out else folder / "dataset.json"
    try:
        problem = _out_problem(out, folder, args.force, given=bool(args.out))
    except OSError as e:  # a name too long, a folder that cannot be read
        problem = f"{'--out ' if args.out else ''}{out}: {e.strerror or e}"
    if problem:
        _refuse(problem)
    names, names_from = args.labels, "--labels"
    if not names and folder_class_names(folder):
        names, names_from = folder_class_names(folder), str(folder / "dataset.json")
    try:
        doc = decathlon_datalist(folder, args.validation_fraction, args.seed, names, True, names_from)
        with folder_made(out.parent):  # a write that fails (a full disk) leaves no folder it made
            save_json_atomic(doc, out)
    except DatasetError as e:
        _refuse(str(e))
    except OSError as e:  # a folder that cannot be listed, a datalist that cannot be written (nothing is left half-written)
        _refuse(os_error_message(e) or f"{e.filename or out}: {e.strerror or e}")
    except KeyboardInterrupt as e:
        if type(e) is not KeyboardInterrupt:  # SIGTERM (medgmae.launch's): its own line and status, 143
            raise
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    classes = ", ".join(f"{k} {v}" for k, v in doc["labels"].items() if k != "0")
    named = f" (names from {names_from})" if names_from != "--labels" else ""
    print(f"wrote {out}: {len(doc['training'])} training, {len(doc['validation'])} validation, {len(doc['test'])} "
          f"test cases; classes {classes}{named}")  # fmt: skip
    same = out.resolve() == (folder / "dataset.json").resolve()
    # absolute: the bundles are run from the repository's folder, which need not be this one
    folder_word, out_word = shlex.quote(str(absolute_path(args.folder))), shlex.quote(str(absolute_path(out)))
    print(f"fine-tune with --dataset_dir {folder_word}" if same else f"fine-tune with --datalist {out_word} --dataset_dir {folder_word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
