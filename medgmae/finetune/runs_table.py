"""``medgmae-runs-table``: fine-tuning runs side by side, one row per run folder.

Each row reads what a run of ``bundles/unetr_finetune`` left in its folder: ``training_cases.json`` (label
fraction given and effective, training cases, subset seed, and, for runs recorded since they are, the training seed
and the pre-trained encoder: a path whose content differs between runs, by the SHA-256 they recorded, gets a note),
the ``checkpoint_epoch=N.pt`` files (epochs trained), ``best_model.pt`` (best
validation mean Dice and its epoch), ``validation/metrics.json`` (the last validation's mean and per-class Dice)
and ``eval/metrics.json`` (the mean Dice of ``evaluate.json``, where it was run, unless the ``best_model.pt`` it
records having evaluated is not the one there now: then the cell is empty, with a note naming both epochs), and,
last, the run's pre-processing (``spacing``, ``hu_window``, ``orientation``: as the run record holds it, for runs
recorded since it does, else as ``best_model.pt`` records it; empty cells where neither does). A folder
that is not a fine-tuning run is named on stderr and left out; a run not validated yet is listed without Dice, with
a note.
A run still training (another process holds its folder) or stopped before its ``max_epochs`` (or training on
another machine) says so in its markdown ``epochs`` cell (``1 of 3, still training``), with a note
(:mod:`medgmae.finetune.runs_experiment`); the CSV keeps ``epochs`` a number and says it in a ``status`` column.
``--summary METRIC`` adds a table of the runs of each experiment together (a study's seeds), with notes under it
(:mod:`medgmae.finetune.runs_summary`, whose names are importable from here too): an experiment is one
initialisation, label fraction and pre-processing and one of what else the runs record of their training (data,
validation cases, network, ``max_epochs``, ...: a ``differs_in`` column names what tells rows apart; runs from
several encoder files of one kind pool, their files named); it gives how many runs and how many of them scored, the metric's mean,
sample standard deviation, minimum and maximum; a note names a setting that holds one training seed more than once
from one encoder file (those runs are no independent repeats), and label fractions of one initialisation and
pre-processing that trained on the same number of cases of the same data (one experiment, not several fractions).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from medgmae.finetune.runs_experiment import markdown_rows, read_experiment
from medgmae.finetune.runs_summary import (  # the summary's names, also importable from here
    PREPROCESSING_COLUMNS, SETTING_KEYS, SUMMARY_COLUMNS, SUMMARY_METRICS, markdown_cell, repeated_seed_notes,
    same_cases_notes, summary_columns, summary_table, unfinished_notes,
)  # fmt: skip
from medgmae.files import output_dir_problem

__all__ = ["RunUnreadable", "read_run", "runs_table", "replaced_encoder_notes", "summary_table", "summary_columns",
           "repeated_seed_notes", "same_cases_notes", "unfinished_notes",
           "markdown_table", "csv_table", "main", "SUMMARY_METRICS", "SUMMARY_COLUMNS", "SETTING_KEYS",
           "PREPROCESSING_COLUMNS"]  # fmt: skip

PROG = "medgmae-runs-table"
#: The table's first columns, in order (per-class Dice columns, ``dice <class>``, follow with ``--per-class``, then
#: :data:`PREPROCESSING_COLUMNS`).
COLUMNS = ["run", "init", "encoder", "label_fraction", "effective_fraction", "training_cases", "training_seed",
           "subset_seed", "epochs", "best_dice", "best_epoch", "last_dice", "eval_dice"]  # fmt: skip


class RunUnreadable(ValueError):
    """A folder that is not a readable fine-tuning run; the message names it and why."""


def _json(path: Path, what: str) -> dict | None:
    """The JSON object in ``path``; ``None`` when there is no file; :class:`RunUnreadable` when it does not parse."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunUnreadable(f"{path}: {what} cannot be read ({e})") from None
    if not isinstance(content, dict):
        raise RunUnreadable(f"{path}: {what} is not a JSON object")
    return content


def _initialisation(record: dict) -> tuple[str, str]:
    """``(init, encoder)``: ``scratch``, the pre-training the encoder came from (its recorded source or kind; a source
    recorded from an old encoder, a class name such as ``MedGMAE``, as :func:`medgmae.checkpoint.encoder_source` maps
    it, so that its runs group with those of newer files), or ``not recorded`` for a record written before runs
    recorded it; the encoder's path."""
    from medgmae.checkpoint import encoder_source

    pretrained = record.get("pretrained")
    if not isinstance(pretrained, dict):
        return "not recorded", ""
    path = str(pretrained.get("path") or "")
    if not path:
        return "scratch", ""
    return encoder_source(pretrained.get("source")) or str(pretrained.get("kind") or "pre-trained"), path


def _encoder_sha256(record: dict) -> str | None:
    """The SHA-256 the run recorded of its ``--pretrained`` file; ``None`` for runs recorded before it was."""
    pretrained = record.get("pretrained")
    digest = pretrained.get("sha256") if isinstance(pretrained, dict) else None
    return digest if isinstance(digest, str) and digest else None


def replaced_encoder_notes(rows: Sequence[dict]) -> list[str]:
    """A note per encoder path that runs name with other content: the file was replaced between them (e.g. by the
    next pre-training run in its folder), so that their encoders differ though the ``encoder`` column reads alike.

    Args:
        rows: rows of :func:`read_run` (with their ``encoder_sha256``).

    Returns:
        One line per such path, naming each content's first 12 hex digits and its runs; none where every path
        names one content (runs that record none are not compared).
    """
    by_path: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        if row.get("encoder") and row.get("encoder_sha256"):
            by_path.setdefault(row["encoder"], {}).setdefault(row["encoder_sha256"], []).append(str(row["run"]))
    return [f"note: encoder {path} had other content in different runs ("
            + "; ".join(f"sha256 {digest[:12]}: {', '.join(runs)}" for digest, runs in contents.items())
            + "): the file was replaced between them, so they started from different encoders"
            for path, contents in by_path.items() if len(contents) > 1]  # fmt: skip


def _best(folder: Path) -> tuple[dict | None, Any, dict | None]:
    """``best_model.pt``'s record (:func:`~medgmae.finetune.best_model.finetuned_model_record`: its best validation
    metric and epoch, read memory-mapped, and the file's size and time), its recorded pre-processing (a
    :class:`~medgmae.preprocessing.PreprocessingSpec`, ``None`` where it records none) and its network's config;
    ``(None, None, None)`` without the file."""
    from medgmae.checkpoint import load_checkpoint
    from medgmae.finetune.best_model import FINETUNED_KIND, finetuned_model_record

    path = folder / "best_model.pt"
    if not path.is_file():
        return None, None, None
    try:
        ckpt = load_checkpoint(path, FINETUNED_KIND, mmap=True)  # read once, for all three
        return finetuned_model_record(path, ckpt), ckpt.preprocessing, dict(ckpt.config or {})
    except (OSError, ValueError) as e:
        raise RunUnreadable(f"{path}: {e}") from None


def _shown(values: Sequence) -> str:
    """Numbers as a cell shows them, ``[2, 2, 3]`` / ``[-175, 250.5]``: whole numbers without ``.0``, others in
    full (two values that differ never read alike, so that the summary never pools them)."""
    return "[" + ", ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values) + "]"


def _preprocessing(record: dict, model_spec: Any, record_path: Path) -> tuple[dict[str, str | None], dict | None]:
    """The run's ``spacing``, ``hu_window`` and ``orientation`` cells: as the run record holds them (runs recorded
    since it does, validated or not), else as ``best_model.pt`` records them (``model_spec``), else ``None``; and
    that pre-processing whole (``to_dict()``, ``None`` where neither records it); a record's pre-processing that
    does not read is :class:`RunUnreadable`, naming ``record_path``."""
    from medgmae.preprocessing import PreprocessingSpec

    spec = model_spec
    if record.get("preprocessing") is not None:
        try:
            spec = PreprocessingSpec.from_dict(record["preprocessing"], source=f"{record_path}: preprocessing")
        except ValueError as e:
            raise RunUnreadable(str(e)) from None
    if spec is None:
        return dict.fromkeys(PREPROCESSING_COLUMNS), None
    cells = {"spacing": _shown(spec.spacing), "hu_window": _shown(spec.hu_window), "orientation": spec.orientation}
    return cells, spec.to_dict()


#: What tells two ``best_model.pt`` files apart in :func:`~medgmae.finetune.best_model.finetuned_model_record`'s
#: record (its time is left out: a run folder copied without times would read as evaluated on another model).
MODEL_KEYS = ("epoch", "metric", "size_bytes")


def _evaluated_another(folder: str | Path, evaluated: Any, best: dict | None) -> str | None:
    """Why ``eval/metrics.json``'s Dice is not of the run's ``best_model.pt`` now (the evaluation ran while the run
    still trained, or before a resume trained on): its record of the model it evaluated (``evaluated``, its
    ``model`` entry) differs from the file's record ``best``; ``None`` when they agree or cannot be compared (no
    ``best_model.pt``, an evaluation of a release that recorded no model)."""
    if not isinstance(evaluated, dict) or best is None or all(evaluated.get(k) == best[k] for k in MODEL_KEYS):
        return None
    then, now = evaluated.get("epoch"), best["epoch"]
    if then == now:
        then = (f"another best_model.pt of epoch {then} ({evaluated.get('size_bytes')} bytes, validation metric "
                f"{evaluated.get('metric')}), not the one there now ({best['size_bytes']} bytes, {best['metric']})")
        return f"{folder}: eval/metrics.json evaluated {then}: evaluate again (listed without eval_dice)"
    return (f"{folder}: eval/metrics.json evaluated epoch {then}; best_model.pt is now epoch {now}: evaluate again "
            "(listed without eval_dice)")


def _number(value: Any, kind: type) -> float | int | None:
    """``value`` as ``kind`` where it is a number (a bool is not), else ``None``: a result file of another writer
    leaves its cell empty rather than stopping the table."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def read_run(folder: str | Path) -> tuple[dict[str, Any], dict[str, float | None], str | None]:
    """One run's row.

    Args:
        folder: a fine-tuning run folder (the bundle's ``output_dir``).

    Returns:
        ``(row, dice_per_class, note)``: the row keyed by :data:`COLUMNS` and :data:`PREPROCESSING_COLUMNS`
        (``None`` where the run records nothing), ``status`` (an unfinished run's, the CSV's column) and
        ``encoder_sha256`` (the encoder file's SHA-256 as the run recorded it, for :func:`replaced_encoder_notes`),
        the last validation's Dice by class name, and a note (else ``None``) for a run not validated yet or whose
        ``eval/metrics.json`` evaluated another ``best_model.pt`` than the one there now (its ``eval_dice`` is then
        ``None``: an evaluation run while the run still trained, or before a resume trained on).

    Raises:
        RunUnreadable: no such folder, no (or an unreadable) ``training_cases.json``, or an unreadable result file.
    """
    from medgmae.engine.resume import epoch_checkpoints
    from medgmae.finetune.run_record import RECORD_FILE

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise RunUnreadable(f"{folder}: {'not a folder' if path.exists() else 'no such folder'}")
    record = _json(path / RECORD_FILE, "the run record")
    if record is None:
        raise RunUnreadable(f"{folder}: not a fine-tuning run (no {RECORD_FILE})")
    last = _json(path / "validation" / "metrics.json", "the last validation's metrics") or {}
    evaluation = _json(path / "eval" / "metrics.json", "the evaluation's metrics") or {}
    model, model_spec, model_config = _best(path)
    best, best_epoch = (None, None) if model is None else (_number(model["metric"], float), _number(model["epoch"], int))
    init, encoder = _initialisation(record)
    epochs = epoch_checkpoints(path)
    cases = record.get("cases")
    preprocessing, spec = _preprocessing(record, model_spec, path / RECORD_FILE)
    experiment = read_experiment(path, record, spec, model_config, evaluation, epochs[0][1] if epochs else None)
    row = {"run": str(folder), "init": init, "encoder": encoder, "label_fraction": record.get("label_fraction"),
           "effective_fraction": record.get("effective_fraction"),
           "training_cases": len(cases) if isinstance(cases, list) else None,
           "training_seed": record.get("training_seed"), "subset_seed": record.get("seed"),
           "epochs": epochs[0][0] if epochs else None, "best_dice": best, "best_epoch": best_epoch,
           "last_dice": _number(last.get("mean_dice"), float),
           "eval_dice": _number(evaluation.get("mean_dice"), float),
           **preprocessing, "encoder_sha256": _encoder_sha256(record), "experiment": experiment}  # fmt: skip
    notes = []
    if progress := experiment["_progress"]:  # not finished: its status (the CSV's), said in the markdown's epochs cell
        row["status"] = progress[2]
        notes.append(progress[1])
    if best is None and row["last_dice"] is None:
        validated = (path / "validation" / "metrics.json").is_file()
        notes.append(f"{folder}: validated, but no class of its validation cases was scored (mean Dice null): "
                     "listed without Dice" if validated else
                     f"{folder}: no validation yet (no best_model.pt or validation/metrics.json): listed without Dice")
    if stale := _evaluated_another(folder, evaluation.get("model"), model):
        row["eval_dice"] = None
        notes.append(stale)
    note = "; ".join(notes) or None
    by_class = last.get("dice_per_class")
    by_class = {str(k): _number(v, float) for k, v in by_class.items()} if isinstance(by_class, dict) else {}
    return row, by_class, note


def runs_table(folders: Sequence[str | Path], per_class: bool = False) -> tuple[list[str], list[dict], list[str]]:
    """The table of ``folders``.

    Args:
        folders: run folders, in the table's order.
        per_class: add one column per class (``dice <class>``, the last validation's; classes in the order of
            first appearance across the runs), before :data:`PREPROCESSING_COLUMNS`.

    Returns:
        ``(columns, rows, messages)``: the readable runs' rows (a folder given again, or through a link, once; each
        with its ``encoder_sha256`` too, no column, which the summary's notes read), and a
        one-line message per folder left out or listed without (evaluation) Dice, then per encoder path whose
        content differs between runs (:func:`replaced_encoder_notes`).
    """
    rows, messages, classes, seen = [], [], {}, {}
    for folder in folders:
        if (same := seen.get(key := Path(folder).resolve())) is not None:  # again, a link, "run/", "./run"
            messages.append(f"{folder} is the run folder {same} (given twice, or a link to it): listed once")
            continue
        seen[key] = folder
        try:
            row, dice, note = read_run(folder)
        except RunUnreadable as e:
            messages.append(str(e))
            continue
        if note:
            messages.append(note)
        classes.update(dict.fromkeys(dice))
        rows.append({**row, **{f"dice {name}": value for name, value in dice.items()}})
    messages += replaced_encoder_notes(rows)
    columns = COLUMNS + ([f"dice {name}" for name in classes] if per_class else []) + PREPROCESSING_COLUMNS
    hidden = ("status", "encoder_sha256", "experiment")  # no columns: the CSV's status, read by the summary and notes
    return columns, [{**{c: row.get(c) for c in columns}, **{k: row.get(k) for k in hidden}} for row in rows], messages


def _csv_columns(columns: Sequence[str]) -> list[str]:
    """The CSV's columns: ``columns`` with ``status`` after ``epochs`` (an unfinished run's, else empty)."""
    at = list(columns).index("epochs") + 1
    return [*columns[:at], "status", *columns[at:]]


def markdown_table(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """The rows as a markdown table (floats to 4 decimals, an empty cell where a run records nothing)."""
    lines = ["| " + " | ".join(markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(markdown_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """The rows as CSV text (numbers in full, an empty field where a run records nothing)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if row.get(c) is None else row.get(c) for c in columns] for row in rows])
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (an existing file is replaced only once the new one is whole)."""
    from medgmae.files import atomic_write

    with atomic_write(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def build_parser():
    """The command's argument parser."""
    from medgmae.cli_types import ToolParser

    p = ToolParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("runs", nargs="+", help="fine-tuning run folders (the bundle's output_dir), one row each")
    p.add_argument("--per-class", action="store_true", help="add the last validation's Dice of each class")
    p.add_argument("--summary", choices=SUMMARY_METRICS, default=None, metavar="METRIC",
                   help="also gather the runs of each experiment (initialisation, label fraction, "
                   "pre-processing, and data, validation cases, network, max_epochs and settings as the runs record "
                   "them: a study's seeds; a differs_in column names what else tells rows apart): runs, mean, "
                   "standard deviation, min and max of METRIC (best_dice, last_dice or eval_dice; eval_dice also by "
                   "its dice_space), with a note for a training seed a setting holds twice, for label fractions that "
                   "kept the same number of cases and for unfinished runs; --markdown then holds both tables")  # fmt: skip
    p.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    return p


def _out_problem(value: str | None, flag: str) -> str | None:
    """Why the table cannot be written to ``value``, else ``None`` (checked before any run is read): a folder, or a
    file whose folder is missing (:func:`medgmae.files.output_dir_problem` says why it cannot be made, if it cannot;
    the table is not written into a folder made for it)."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        return f"{flag} {value} is a folder: give the file to write"
    if not path.parent.is_dir():
        return f"{flag} {value}: {output_dir_problem(path.parent) or f'no folder {path.parent} to write it in'}"
    return None


def _outs_problem(markdown: str | None, csv_file: str | None) -> str | None:
    """Why the tables cannot be written to the ``--markdown`` and ``--csv`` files, else ``None``: each file's
    :func:`_out_problem`, or one file named by both (the CSV would replace the markdown)."""
    if problem := _out_problem(markdown, "--markdown") or _out_problem(csv_file, "--csv"):
        return problem
    if markdown is not None and csv_file is not None and Path(markdown).resolve() == Path(csv_file).resolve():
        return f"--markdown {markdown} and --csv {csv_file} are one file: give each table its own"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``medgmae-runs-table`` entry point: prints the table; 0 when at least one run was read, 2 (with a message per
    folder) when none could be, or for bad flags or an output file that cannot be written."""
    from medgmae.cli_types import expand_home
    from medgmae.files import os_error_message

    args = expand_home(build_parser().parse_args(argv))
    if problem := _outs_problem(args.markdown, args.csv):
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    columns, rows, messages = runs_table(args.runs, args.per_class)
    for message in messages:
        print(f"{PROG}: {message}", file=sys.stderr)
    if not rows:
        print(f"{PROG}: error: none of the {len(args.runs)} folders could be read as a fine-tuning run", file=sys.stderr)
        return 2
    text = markdown_table(columns, markdown_rows(rows))
    if args.summary:
        summary = summary_table(rows, args.summary)
        split = ", and what differs_in names" if "differs_in" in (columns_shown := summary_columns(summary)) else ""
        text += (f"\n{args.summary} by setting (initialisation, label fraction, pre-processing{split}):\n\n"
                 f"{markdown_table(columns_shown, summary)}")  # fmt: skip
        notes = [*repeated_seed_notes(rows, args.summary), *same_cases_notes(rows, args.summary),
                 *unfinished_notes(rows, args.summary)]  # fmt: skip
        text += "".join(f"\n{note}\n" for note in notes)
    print(text, end="")
    try:
        for value, content in ((args.markdown, text), (args.csv, csv_table(_csv_columns(columns), rows))):
            if value is not None:
                _write(Path(value), content)
                print(f"wrote {value}")
    except OSError as e:  # a write without room is named in the words of the other tools, its file once
        said = os_error_message(e) or f"{e.filename or value}: {e.strerror or e}"
        print(f"{PROG}: error: {said}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
