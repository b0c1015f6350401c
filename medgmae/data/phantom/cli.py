"""``medgmae-phantom``: write a phantom dataset from the command line.

Runs of the same command started together (the tasks of a job array, each making the dataset before it trains)
take turns: one writes the dataset while the others wait for its ``--out`` (up to ``--wait-seconds``), then find
it made with their settings and keep it; a run of other settings is refused once the wait is over, as it is at
once when the dataset is already there.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from medgmae.bundle_errors import Terminated, catch_sigterm, on_sigint
from medgmae.cli_types import ToolParser, expand_home, nonneg_float, nonneg_int, positive_float, positive_int
from medgmae.data.phantom.generator import DEFAULT_SHAPE, DEFAULT_SPACING, shape_memory_problem
from medgmae.data.phantom.writer import recorded_differences, write_phantom_dataset
from medgmae.files import output_dir_problem
from medgmae.folder_lock import FolderInUse, folder_held
from medgmae.write_failures import OutputWriteError

__all__ = ["build_parser", "default_num_validation", "main", "DEFAULT_WAIT_SECONDS"]

#: How long a run waits by default for another run writing into its ``--out`` (a day: a job's time limit ends it
#: first; the dataset that other run writes is usually the one this run would write).
DEFAULT_WAIT_SECONDS = 86400.0


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
    p.add_argument("--wait-seconds", type=nonneg_float, default=DEFAULT_WAIT_SECONDS, metavar="S",
                   help="wait up to S seconds for another run writing into --out to end, then keep the dataset it "
                        "wrote when its settings are these (a line every minute says so); 0: refuse such an --out at "
                        f"once (default {DEFAULT_WAIT_SECONDS:g}, a day)")
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
    what this run wrote is removed), 130 after Ctrl-C and 143 after SIGTERM (the same, in one line; also while it
    waits for another run writing into ``--out``); bad flags, an ``--out`` where no file
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
    _refuse_other_settings(parser, args, spacing)  # at once where the dataset is there already
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = catch_sigterm() if main_thread else None  # SIGTERM (a job's time limit) stops it as Ctrl-C does
    try:
        return _generate(parser, args, spacing)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
            if signal.getsignal(signal.SIGINT) is on_sigint:  # Ctrl-C as it was (the tool run in-process)
                signal.signal(signal.SIGINT, signal.default_int_handler)


def _refuse_other_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, spacing: tuple) -> None:
    """Exit with status 2 (``parser.error``) when ``--out`` holds a phantom dataset of other settings than
    ``args``' and ``--force`` is not given: a dataset a study used stays unless asked."""
    differences = recorded_differences(Path(args.out), args.num_cases, args.seed, args.shape, spacing,
                                       args.num_validation, labels={k: "--" + k.replace("_", "-") for k in _FLAGS})
    if differences and not args.force:
        parser.error(f"--out {args.out} holds a phantom dataset of other settings ({'; '.join(differences)}): give "
                     "--force to replace it, or another --out")


def _generate(parser: argparse.ArgumentParser, args: argparse.Namespace, spacing: tuple) -> int:
    """Hold ``--out`` (waiting up to ``--wait-seconds`` for another run writing into it), check its dataset again
    (that run may have written one) and write or keep the dataset; returns the exit status (see :func:`main`)."""
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        # one generation at a time in the folder: two would mix their phantoms
        with folder_held(out, "--out", wait=args.wait_seconds):
            _refuse_other_settings(parser, args, spacing)  # what a run waited for wrote is checked as any dataset
            before = _identity(out / "dataset.json")
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
    except KeyboardInterrupt as e:  # as above: what this run created is removed
        terminated = isinstance(e, Terminated) or isinstance(e.__context__, Terminated)
        print(f"\n{parser.prog}: {'terminated (SIGTERM)' if terminated else 'interrupted'}: what this run had written "
              f"to {out} was removed", file=sys.stderr)  # fmt: skip
        return 143 if terminated else 130
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    # an existing dataset of these settings is kept as it is (write_phantom_dataset): its dataset.json is the same file
    kept = before is not None and _identity(json_path) == before
    done = f"kept {json_path} (already generated with these settings: " if kept else f"wrote {json_path} ("
    print(f"{done}{doc['numTraining']} training + {doc['numValidation']} validation cases, "
          f"shape {tuple(args.shape)}, spacing {spacing} mm, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
