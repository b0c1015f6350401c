"""``medgmae-phantom``: write a phantom dataset from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medgmae.cli_types import ToolParser, expand_home, nonneg_int, positive_float, positive_int
from medgmae.data.phantom.generator import DEFAULT_SHAPE, DEFAULT_SPACING, shape_memory_problem
from medgmae.data.phantom.writer import recorded_differences, write_phantom_dataset
from medgmae.files import output_dir_problem
from medgmae.folder_lock import FolderInUse, folder_held
from medgmae.write_failures import OutputWriteError

__all__ = ["build_parser", "default_num_validation", "main"]


def _shape_dim(text: str) -> int:
    v = positive_int(text)
    if v < 8:
        raise argparse.ArgumentTypeError(f"each shape dimension must be >= 8, got {text!r}")
    return v


#: The most cases one run writes: far more than any phantom study needs, while a mistyped count (1e9) would spend
#: memory on its case list before writing anything.
MAX_CASES = 100_000


def _num_cases(text: str) -> int:
    v = positive_int(text)
    if v > MAX_CASES:
        raise argparse.ArgumentTypeError(f"at most {MAX_CASES} cases, got {text!r}")
    return v


def default_num_validation(num_cases: int) -> int:
    """Validation cases of ``num_cases`` when ``--num-validation`` is not given: ``num_cases // 5``, at least 1 when
    there are 2 or more cases (fine-tuning stops on an empty validation list), 0 for a single case."""
    return max(1, num_cases // 5) if num_cases >= 2 else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``medgmae-phantom`` argument parser."""
    p = ToolParser(
        prog="medgmae-phantom",
        description="Write a Decathlon-style dataset of synthetic abdominal CT phantoms (NIfTI images and labels).",
    )
    p.add_argument("--out", required=True, help="output folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--num-cases", type=_num_cases, required=True, help=f"number of cases (at most {MAX_CASES})")
    p.add_argument("--seed", type=nonneg_int, default=0, help="dataset seed (default 0)")
    p.add_argument("--shape", type=_shape_dim, nargs=3, metavar=("X", "Y", "Z"), default=list(DEFAULT_SHAPE),
                   help=f"voxels along R, A, S (default {' '.join(map(str, DEFAULT_SHAPE))})")
    p.add_argument("--spacing", type=positive_float, nargs="+", metavar="MM", default=list(DEFAULT_SPACING),
                   help="voxel size in mm: one value or three (default 1.5)")
    p.add_argument("--num-validation", type=nonneg_int, default=None,
                   help="cases in the validation list, taken from --num-cases (default num-cases // 5, at least 1 "
                        "when num-cases >= 2: fine-tuning needs a validation list; 0 for a single case)")
    p.add_argument("--force", action="store_true",
                   help="replace a phantom dataset of other settings in --out (without it such a folder is refused; "
                        "one of the same settings is kept as it is)")
    return p


#: The recorded generator parameters each named by its flag in a refusal.
_FLAGS = ("num_cases", "seed", "shape", "spacing", "num_validation")


def _identity(path: Path) -> tuple[int, int] | None:
    """``(inode, modification time)`` of ``path``, ``None`` when it does not exist: a file written again (to a
    temporary name, then renamed) has another."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def main(argv: Sequence[str] | None = None) -> int:
    """``medgmae-phantom`` entry point. Returns 0 on success, 1 when generating fails (out of memory, a full disk:
    what this run wrote is removed), 130 after Ctrl-C (the same, in one line); bad flags, an ``--out`` where no file
    can be created or holding a phantom dataset of other settings (without ``--force``), and a ``--shape`` too large
    for this machine's memory, exit with code 2 before anything is written."""
    parser = build_parser()
    args = expand_home(parser.parse_args(argv))
    if len(args.spacing) not in (1, 3):
        parser.error(f"--spacing takes one or three values, got {len(args.spacing)}")
    spacing = tuple(args.spacing) * 3 if len(args.spacing) == 1 else tuple(args.spacing)
    if args.num_validation is None:
        args.num_validation = default_num_validation(args.num_cases)
    elif args.num_validation >= args.num_cases:
        parser.error(f"--num-validation ({args.num_validation}) must be smaller than --num-cases ({args.num_cases})")
    if not str(args.out).strip():  # Path("") is the current folder
        parser.error("--out is empty: give the output folder")
    out = Path(args.out)
    if problem := output_dir_problem(out):  # a file, or a folder no file can be created in: before any phantom
        parser.error(f"--out {out}: {problem}")
    if problem := shape_memory_problem(args.shape):
        parser.error(f"--shape: {problem}")
    differences = recorded_differences(out, args.num_cases, args.seed, args.shape, spacing, args.num_validation,
                                       labels={k: "--" + k.replace("_", "-") for k in _FLAGS})
    if differences and not args.force:  # a dataset a study used stays unless asked
        parser.error(f"--out {out} holds a phantom dataset of other settings ({'; '.join(differences)}): give "
                     "--force to replace it, or another --out")
    t0 = time.perf_counter()
    before = _identity(out / "dataset.json")
    try:
        with folder_held(out):  # one generation at a time in the folder: two would mix their phantoms
            json_path = write_phantom_dataset(out, args.num_cases, seed=args.seed, shape=tuple(args.shape),
                                              spacing=spacing, num_validation=args.num_validation, verbose=True)
    except FolderInUse as e:
        parser.error(str(e))
    except ValueError as e:
        parser.error(f"--out: {e}")
    except (MemoryError, OSError) as e:  # what this run created is removed (write_phantom_dataset)
        why = e.said if isinstance(e, OutputWriteError) else f"{type(e).__name__}: {e}"
        print(f"{parser.prog}: error: generating the phantoms failed ({why}); what this run had written to {out} "
              "was removed", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:  # as above: what this run created is removed
        print(f"\n{parser.prog}: interrupted: what this run had written to {out} was removed", file=sys.stderr)
        return 130
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    # an existing dataset of these settings is kept as it is (write_phantom_dataset): its dataset.json is the same file
    kept = before is not None and _identity(json_path) == before
    done = f"kept {json_path} (already generated with these settings: " if kept else f"wrote {json_path} ("
    print(f"{done}{doc['numTraining']} training + {doc['numValidation']} validation cases, "
          f"shape {tuple(args.shape)}, spacing {spacing} mm, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
