"""``medgmae-runs-table --summary METRIC``: the runs of each setting together, and notes on runs that are not what
their settings say.

A setting is one initialisation (the encoder's kind), label fraction and pre-processing (:data:`SETTING_KEYS`):
runs of another spacing or HU window are never pooled; runs from several encoder files of one kind are (a study over
pre-training seeds), their files named. A setting's runs are split further by what else they record of their
training (:mod:`medgmae.finetune.runs_experiment`: data, validation cases, network, ``max_epochs``, settings, and for
``eval_dice`` its ``dice_space``): one row per experiment, ``differs_in`` naming what tells it from the others.
:func:`summary_table` gives each experiment's runs, how many of them scored (finished runs with a value), the
metric's mean, sample standard deviation, minimum and maximum. Notes go under it: :func:`unfinished_notes` for
runs still training or stopped, :func:`repeated_seed_notes`
for a setting that holds one training seed more than once from one encoder file (those runs are no independent
repeats), and :func:`same_cases_notes` for label fractions of one initialisation and pre-processing that trained on
the same number of cases of the same data (at least one case is always kept, so 1 % and 10 % of 6 cases are both one
case: one experiment, not two label fractions). Only the latter reads the runs' ``training_cases.json`` again (their
data source and chosen cases); the rest works on the rows of :func:`medgmae.finetune.runs_table.runs_table`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

from medgmae.finetune.runs_experiment import EVAL_FIELDS, agree, differing_fields

__all__ = ["SUMMARY_METRICS", "PREPROCESSING_COLUMNS", "SUMMARY_COLUMNS", "SETTING_KEYS", "markdown_cell",
           "summary_table", "summary_columns", "repeated_seed_notes", "same_cases_notes", "unfinished_notes"]  # fmt: skip

#: The metrics ``--summary`` can gather across the runs of one setting.
SUMMARY_METRICS = ("best_dice", "last_dice", "eval_dice")
#: The run's pre-processing, the runs table's last columns (after those of earlier releases, which keep their places).
PREPROCESSING_COLUMNS = ["spacing", "hu_window", "orientation"]
#: The summary table's columns; a setting is the first two and the last three together (:data:`SETTING_KEYS`);
#: :func:`summary_columns` adds ``differs_in`` where rows differ in more.
SUMMARY_COLUMNS = ["init", "label_fraction", "runs", "scored", "mean", "sd", "min", "max", "training_seeds", "encoder",
                   *PREPROCESSING_COLUMNS]  # fmt: skip
#: What tells the settings of :func:`summary_table` apart.
SETTING_KEYS = ("init", "label_fraction", *PREPROCESSING_COLUMNS)
#: How many label fractions a note says are one experiment, in words.
_HOW_MANY = {2: ("both", "two"), 3: ("all", "three")}


def markdown_cell(value: Any) -> str:
    """A markdown cell: numbers of Dice and fractions to 4 decimals, nothing for ``None``, ``|`` escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def _fields(rows: Sequence[dict], metric: str | None) -> list[str]:
    """The experiment fields the rows record (:func:`~medgmae.finetune.runs_experiment.read_experiment`), in order
    of first appearance; those of the evaluation only for ``eval_dice``."""
    fields = dict.fromkeys(k for row in rows for k in (row.get("experiment") or {}) if not k.startswith("_"))
    return [f for f in fields if metric == "eval_dice" or f not in EVAL_FIELDS]


def _groups(rows: Sequence[dict], metric: str | None = None) -> list[tuple[tuple, list[dict], str]]:
    """The rows by experiment, in order of first appearance: ``(setting, runs, differs_in)``, a setting being the
    rows' :data:`SETTING_KEYS` values; a row joins the first group of its setting whose every run it agrees with
    (:func:`~medgmae.finetune.runs_experiment.agree`: a field one of them does not record is not compared), and
    ``differs_in`` names what tells the group from the others (:func:`~medgmae.finetune.runs_experiment.differing_fields`)."""
    fields = _fields(rows, metric)
    groups: list[tuple[tuple, list[dict]]] = []
    for row in rows:
        setting, mine = tuple(row.get(key) for key in SETTING_KEYS), row.get("experiment") or {}
        for key, runs in groups:
            if key == setting and all(agree(mine, run.get("experiment") or {}, fields) for run in runs):
                runs.append(row)
                break
        else:
            groups.append((setting, [row]))
    differs = differing_fields([[r.get("experiment") or {} for r in runs] for _, runs in groups], fields)
    return [(setting, runs, cell) for (setting, runs), cell in zip(groups, differs)]


def _unfinished(row: dict) -> bool:
    """Whether the row's run is still training or stopped before its ``max_epochs``."""
    return bool((row.get("experiment") or {}).get("_progress"))


def summary_table(rows: Sequence[dict], metric: str) -> list[dict]:
    """The runs of each experiment gathered, for a study repeated over seeds.

    Args:
        rows: rows of :func:`~medgmae.finetune.runs_table.runs_table`.
        metric: one of :data:`SUMMARY_METRICS`.

    Returns:
        One row per experiment in order of first appearance, keyed by :data:`SUMMARY_COLUMNS`. An experiment is one
        ``init``, ``label_fraction``, ``spacing``, ``hu_window`` and ``orientation`` and one of everything else the
        runs record of how they trained (:func:`~medgmae.finetune.runs_experiment.read_experiment`: data, validation
        cases, ``max_epochs``, network, optimiser, ``input_size``, ...; for ``eval_dice`` also where the Dice was
        scored); runs that differ only in their seeds or encoder files of one kind (a study over pre-training
        seeds) are pooled. ``differs_in`` says what tells the row from the others (``""`` where nothing but the
        columns does). ``runs`` counts all its runs, ``scored`` those with a value of ``metric`` that have finished
        (a run still training, or stopped before its ``max_epochs``, is not scored); then the values' ``mean``,
        sample standard deviation ``sd`` (``None`` below two values), ``min`` and ``max`` (``None`` without
        values), the runs' training seeds (``"-"`` where a run does not record one) and their encoder files
        (``encoder``, in order of first appearance, comma-separated).
    """
    if metric not in SUMMARY_METRICS:
        raise ValueError(f"metric must be one of {', '.join(SUMMARY_METRICS)}, got {metric!r}")
    out = []
    for setting, runs, differs in _groups(rows, metric):
        values = [r[metric] for r in runs if r[metric] is not None and not _unfinished(r)]
        seeds = ", ".join("-" if r["training_seed"] is None else str(r["training_seed"]) for r in runs)
        out.append({**dict(zip(SETTING_KEYS, setting)), "runs": len(runs), "scored": len(values),
                    "mean": statistics.mean(values) if values else None,
                    "sd": statistics.stdev(values) if len(values) > 1 else None,
                    "min": min(values, default=None), "max": max(values, default=None), "training_seeds": seeds,
                    "encoder": ", ".join(dict.fromkeys(r.get("encoder") or "" for r in runs)), "differs_in": differs})  # fmt: skip
    return out


def summary_columns(summary: Sequence[dict]) -> list[str]:
    """The summary table's columns: :data:`SUMMARY_COLUMNS`, and ``differs_in`` where a row has something in it."""
    return SUMMARY_COLUMNS + ["differs_in"] * any(row.get("differs_in") for row in summary)


def _named(pairs: Sequence[tuple[str, Any]], differs: str = "") -> str:
    """A setting's ``(key, value)`` pairs as the notes name them: ``init scratch, label_fraction 0.1000, ...``,
    then what else tells its row apart (``differs``: ``max_epochs 2; data /d/dataset.json``), where anything."""
    named = ", ".join(f"{key} {markdown_cell(value) or '-'}" for key, value in pairs)
    return f"{named} ({differs})" if differs else named


def repeated_seed_notes(rows: Sequence[dict], metric: str | None = None) -> list[str]:
    """A note per training seed that one setting of :func:`summary_table` holds more than once from one encoder
    file of one content (``encoder_sha256``, where recorded): those runs are no independent repeats (and the
    setting's ``sd`` no spread over them).

    Args:
        rows: rows of :func:`~medgmae.finetune.runs_table.runs_table`.
        metric: the summary's metric (:data:`SUMMARY_METRICS`): the rows it splits by (for ``eval_dice`` also
            where its Dice was scored) are those the note names; ``None``: those of ``best_dice``.

    Returns:
        One line each, naming the setting, the seed, its runs and their subset seeds; none where every setting's
        recorded training seeds differ (runs that record none are not compared).
    """
    notes = []
    for setting, runs, differs in _groups(rows, metric):
        by_seed: dict[Any, list[dict]] = {}
        for run in runs:
            if run.get("training_seed") is not None:  # the same seed from another encoder file: another repeat
                by_seed.setdefault((run["training_seed"], run.get("encoder") or ""), []).append(run)
        named = _named(list(zip(SETTING_KEYS, setting)), differs)
        for (seed, _), of_seed in by_seed.items():
            for same in _same_content(of_seed):
                if len(same) > 1:
                    notes.append(f"note: {named}: training seed {seed} in {len(same)} runs ({', '.join(r['run'] for r in same)};"
                                 f" subset seeds {', '.join(str(r.get('subset_seed')) for r in same)}): not independent "
                                 "repeats over training seeds; give each run its own --seed")  # fmt: skip
    return notes


def _same_content(runs: list[dict]) -> list[list[dict]]:
    """``runs`` of one encoder path split by the file's recorded content (``encoder_sha256``) where two contents
    were recorded (the file was replaced between them; a run that recorded none then stands alone); one group where
    at most one content was (a run recorded before the digest was may have loaded the same file)."""
    digests = {run.get("encoder_sha256") for run in runs} - {None}
    if len(digests) <= 1:
        return [runs]
    groups: dict[Any, list[dict]] = {}
    for run in runs:
        groups.setdefault(run.get("encoder_sha256") or id(run), []).append(run)
    return list(groups.values())


def _trained_on(run: dict) -> tuple[tuple, str] | None:
    """``((cases kept, training cases, data source), chosen cases)`` of the run of a row as its
    ``training_cases.json`` records them (the data source as the run record names it: its datalist, else its
    dataset folder, else ``phantom data``; the chosen cases as JSON text); ``None`` where the record does not read,
    holds no consistent count, or no longer agrees with the row (nothing is then said of the run)."""
    from medgmae.finetune.run_record import read_run_record

    try:
        record = read_run_record(Path(str(run["run"])).expanduser())
    except ValueError:  # read once already; it no longer reads
        return None
    cases, total = (record or {}).get("cases"), (record or {}).get("num_total")
    if not cases or isinstance(total, bool) or not isinstance(total, int) or total < len(cases):
        return None
    if run.get("training_cases") != len(cases):  # read once already; changed since: not compared
        return None
    source = str(record.get("datalist") or record.get("dataset_dir") or "phantom data")
    return (len(cases), total, source), json.dumps(cases, sort_keys=True)


def same_cases_notes(rows: Sequence[dict], metric: str | None = None) -> list[str]:
    """A note per group of settings of :func:`summary_table` that differ only in their label fraction and whose
    runs all trained on the same number of cases of the same data (at least one case is kept, so two fractions
    of few cases can keep as many): one experiment, not several label fractions.

    Args:
        rows: rows of :func:`~medgmae.finetune.runs_table.runs_table`; each run's ``training_cases.json`` is read
            for its data source (datalist, dataset folder, or phantom data) and its chosen cases.
        metric: the summary's metric (:data:`SUMMARY_METRICS`): the rows it splits by (for ``eval_dice`` also
            where its Dice was scored) are those the note names; ``None``: those of ``best_dice``.

    Returns:
        One line per such group, naming the initialisation and pre-processing, the label fractions (in order of
        first appearance), the cases kept of how many and the data source; it says ``the same cases`` where every
        setting's runs recorded the same chosen cases (one data source, the same case lists: phantom data, made in
        each run's folder, never are), else ``the same number of cases``. None where the label fractions of each
        initialisation and pre-processing kept different numbers of cases (a setting whose runs kept several, or do
        not record them, is not compared).
    """
    groups: dict[tuple, dict[Any, set[str]]] = {}
    for setting, runs, differs in _groups(rows, metric):
        trained = [_trained_on(run) for run in runs]
        if None in trained or len({kept for kept, _ in trained}) != 1:
            continue
        others = tuple((key, value) for key, value in zip(SETTING_KEYS, setting) if key != "label_fraction")
        fraction = setting[SETTING_KEYS.index("label_fraction")]
        groups.setdefault((others, differs, trained[0][0]), {})[fraction] = {cases for _, cases in trained}
    notes = []
    for (others, differs, (kept, total, source)), by_fraction in groups.items():
        if len(by_fraction) < 2:
            continue
        fractions = [markdown_cell(f) for f in by_fraction]
        same = all(cases == next(iter(by_fraction.values())) for cases in by_fraction.values())
        every, count = _HOW_MANY.get(len(fractions), ("all", str(len(fractions))))
        notes.append(f"note: {_named(others, differs)}: label fractions {', '.join(fractions[:-1])} and "
                     f"{fractions[-1]} {every} trained on {'the same cases' if same else 'the same number of cases'}, "
                     f"{kept} of {total} (effective fraction {markdown_cell(kept / total)}; {source}): one experiment, "
                     f"not {count} label fractions; choose fractions that keep different numbers of the {total} "
                     "training cases")  # fmt: skip
    return notes


def unfinished_notes(rows: Sequence[dict], metric: str | None = None) -> list[str]:
    """A note per run still training, or stopped before its ``max_epochs`` (its newest checkpoint says so), naming
    its experiment: its Dice are of an unfinished run, not scored in the summary.

    Args:
        rows: rows of :func:`~medgmae.finetune.runs_table.runs_table`.
        metric: the summary's metric (:data:`SUMMARY_METRICS`): the rows it splits by (for ``eval_dice`` also
            where its Dice was scored) are those the note names; ``None``: those of ``best_dice``.

    Returns:
        One line per such run; none where every run finished or does not say.
    """
    return [f"note: {_named(list(zip(SETTING_KEYS, setting)), differs)}: {row['run']} has not finished (epochs "
            f"{row['experiment']['_progress'][0]}): counted in runs, not scored"
            for setting, runs, differs in _groups(rows, metric) for row in runs if _unfinished(row)]  # fmt: skip
