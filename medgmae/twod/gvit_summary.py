"""The closing summary of a GViT run: accuracy, the confusion matrix, the ellipse explanations and what to run next.

:func:`gvit_summary` reads what :func:`~medgmae.twod.gvit_eval.evaluate_gvit` wrote (``metrics.json``,
``confusion_matrix.png``, ``explanations/``), logs the accuracy, per-class accuracy and the confusion matrix as a
text table, how the model was trained (guidance and loss, as ``model.pt`` records them), where the PNGs and
``model.pt`` are, and (after training) the evaluation command, and saves the same
as ``summary.json`` beside ``metrics.json``, with the ``software`` ``metrics.json`` names (a training run's: the
software it started with) and a resumed training run's ``resumes``. The ``gvit_classification`` bundle calls it
after training and after evaluation.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, Mapping

from medgmae.engine import is_main_process
from medgmae.words import plural
from medgmae.files import absolute_path, bundle_config, save_json_atomic

__all__ = ["confusion_table", "training_line", "evaluate_command", "gvit_summary"]

logger = logging.getLogger("medgmae.twod")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def confusion_table(matrix: list[list[int]], class_names: list[str]) -> str:
    """A markdown table of a confusion matrix (rows = true class, columns = predicted)."""
    head = "| true \\ predicted | " + " | ".join(class_names) + " |"
    rule = "| --- |" + " --- |" * len(class_names)
    rows = [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |" for name, row in zip(class_names, matrix)]
    return "\n".join([head, rule] + rows)


def _count(n: Any, word: str) -> str:
    """``"1 iteration"``, ``"3 iterations"``; ``"None iteration(s)"`` where the record holds no count."""
    return plural(n, word) if isinstance(n, int) and not isinstance(n, bool) else f"{n} {word}(s)"


def training_line(training: dict | None) -> str:
    """How a model was trained, in one line: its guidance and reconstruction loss, e.g. ``with guidance (gamma 0.1
    every 1 iteration of 10 joint epochs), loss bce + 0.1 D-SSIM``.

    Args:
        training: the ``training`` settings of ``model.pt`` / ``metrics.json`` (None: not recorded).

    Returns:
        The line (``"with settings not recorded (an earlier version's model.pt)"`` for None).
    """
    if not training:
        return "with settings not recorded (an earlier version's model.pt)"
    joint = (training.get("epochs") or {}).get("joint")
    if training.get("guidance"):
        how = (f"with guidance (gamma {training.get('gamma')} every {_count(training.get('guidance_interval'), 'iteration')} "
               f"of {_count(joint, 'joint epoch')})")
    else:
        how = f"without guidance (gamma {training.get('gamma')}, {_count(joint, 'joint epoch')})"
    return f"{how}, loss {training.get('pixel_loss')} + {training.get('perceptual_weight')} D-SSIM"


def evaluate_command(run_dir: str | Path) -> str:
    """The evaluation command of a run: its folder alone. The evaluation reads ``model.pt`` there, which records the
    training data (``dataset_dir`` or the phantom task, ``seed``, ``val_fraction``, ``window``), and evaluates on
    them unless told otherwise."""
    config = shlex.quote(bundle_config("gvit_classification", "evaluate.json"))
    cmd = f"python -m monai.bundle run evaluating --config_file {config}"
    return cmd + f" --output_dir {shlex.quote(str(run_dir))}"


def _summary_record(m: Mapping, results: Path, run: Path, explanations: list[Path], stage: str) -> dict:
    """The summary of an evaluation's ``metrics.json``, as ``summary.json`` holds it.

    Args:
        m: the evaluation's metrics.
        results: the folder holding them.
        run: the training run folder.
        explanations: the explanation PNGs.
        stage: ``"training"`` or ``"evaluation"``.

    Returns:
        The summary.
    """
    return {
        "accuracy": m.get("accuracy"),
        "per_class_accuracy": m.get("per_class_accuracy", {}),
        "num_images": m.get("num_images"),
        "predicted_classes": m.get("predicted_classes"),
        "split": m.get("split"),
        "dataset": (m.get("data") or {}).get("source") or (m.get("data") or {}).get("dataset_dir") or None,
        "files": {
            "model": str(absolute_path(m["model"])) if stage == "evaluation" and m.get("model") else str(run / "model.pt"),
            "metrics": str(results / "metrics.json"),
            "predictions": str(results / "predictions.csv"),
            "confusion_matrix": str(results / "confusion_matrix.png"),
            "explanations": str(results / "explanations"),
            "checkpoints": str(run / "checkpoints"),
        },
        "explanation_files": [str(p) for p in explanations],
        "training": m.get("training"),
        "software": m.get("software"),  # the evaluation's; a training run's: its start's
        **({"resumes": m["resumes"]} if "resumes" in m else {}),  # a resumed training run's
        "next": {"evaluate": evaluate_command(run)} if stage == "training" else {},
    }


def _summary_lines(s: Mapping, m: Mapping, explanations: list[Path], stage: str, max_listed: int) -> list[str]:
    """The lines of the closing summary's log message.

    Args:
        s: the summary (:func:`_summary_record`).
        m: the evaluation's metrics.
        explanations: the explanation PNGs.
        stage: ``"training"`` or ``"evaluation"``.
        max_listed: explanation PNGs named.

    Returns:
        The lines.
    """
    per_class = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in s["per_class_accuracy"].items())
    return [
        f"GViT {stage} finished: accuracy {_fmt(s['accuracy'])} on {plural(s['num_images'], 'image')} ({per_class})"
        + (f", {s['split']} split of {s['dataset'] or 'the phantom task'}" if s["split"] else ""),
        f"  trained {training_line(s['training'])}",
        "confusion matrix (rows = true class):",
        confusion_table(m.get("confusion_matrix", []), m.get("class_names", [])),
        f"  {'model.pt':<18} {s['files']['model']}",
        f"  {'metrics':<18} {s['files']['metrics']}",
        f"  {'confusion matrix':<18} {s['files']['confusion_matrix']}",
        f"  {'explanations':<18} {plural(len(explanations), 'PNG')} in {s['files']['explanations']} (image | 2-sigma ellipses, "
        "small det(Sigma) yellow | rendering)" + "".join(f"\n{'':<22}{p.name}" for p in explanations[:max_listed]),
    ] + (["next:"] if s["next"] else []) + [f"  {k}: {v}" for k, v in s["next"].items()]


def gvit_summary(
    results_dir: str | Path, run_dir: str | Path | None = None, max_listed: int = 3, stage: str = "training"
) -> dict:
    """Log and save (``summary.json``) the closing summary of a GViT training or evaluation.

    Args:
        results_dir: the folder holding ``metrics.json``, ``confusion_matrix.png`` and ``explanations/``.
        run_dir: the training run folder (``model.pt``, ``checkpoints/``); ``results_dir`` when None.
        max_listed: explanation PNGs named in the log.
        stage: ``"training"`` (``next`` holds the evaluation command) or ``"evaluation"`` (``next`` is empty: the
            evaluation has just run).

    Returns:
        The summary; its file paths are absolute.

    Raises:
        ValueError: ``stage`` is neither ``"training"`` nor ``"evaluation"``.
        FileNotFoundError: ``metrics.json`` is missing (the evaluation did not run).
    """
    if stage not in ("training", "evaluation"):
        raise ValueError(f"stage must be 'training' or 'evaluation', got {stage!r}")
    # absolute paths: summary.json is read later, from other folders than the one the run was started in
    results, run = absolute_path(results_dir), absolute_path(run_dir or results_dir)
    metrics_path = results / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics.json in {results}: the evaluation did not run")
    from medgmae.files import read_json

    m = read_json(metrics_path, "evaluation's metrics.json")
    explanations = sorted((results / "explanations").glob("*.png")) if (results / "explanations").is_dir() else []
    s = _summary_record(m, results, run, explanations, stage)
    if is_main_process():
        logger.info("\n%s", "\n".join(_summary_lines(s, m, explanations, stage, max_listed)))
        save_json_atomic(s, results / "summary.json")
    return s
