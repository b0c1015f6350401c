"""What a fine-tuning run shows: a picture of one validation segmentation and a closing summary with a Dice table.

:class:`SegmentationPicture` (an evaluator handler) draws the first validation case at the first validation at or
after each multiple of ``picture_interval`` and at the run's last validation: three orthogonal slices through the centre of its labelled structures, the prediction overlaid in the top row and
the reference label in the bottom row (``segmentation.png``, ``val/segmentation`` in TensorBoard).
:class:`FinetuneSummary` (a trainer handler) ends the run with the best validation mean Dice and its epoch, the
per-class Dice of the last validation (printed and saved as ``dice_per_class.md``), where the outputs are and the
evaluation, inference and export commands.
"""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events

from medgmae.engine import is_main_process
from medgmae.files import atomic_write, bundle_config, read_json
from medgmae.whole_numbers import positive_count
from medgmae.finetune.color_table import class_colours
from medgmae.engine.figures import (
    add_image,
    grey_rgb,
    label_tile,
    mid_slices,
    ras_oriented,
    save_png,
    tile_grid,
    upscale,
    with_orientation_letters,
)

__all__ = ["FinetuneSummary", "SegmentationPicture", "dice_table", "overlay", "per_class_dice_text", "segmentation_figure"]

logger = logging.getLogger("medgmae.finetune")

_VIEWS = ("sag", "cor", "ax")


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A 2D image in ``[0, 1]`` as grey with its non-zero ``labels`` blended in their class colours
    (:func:`~medgmae.finetune.color_table.class_colours`)."""
    rgb = grey_rgb(image).astype(np.float64)
    fg = labels > 0
    colours = class_colours(labels[fg])
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours
    return np.round(rgb).astype(np.uint8)


def segmentation_figure(
    image: np.ndarray, pred: np.ndarray, label: np.ndarray, title: str = "", min_tile: int = 160, letters: bool = True
) -> np.ndarray:
    """Two rows of three orthogonal slices (prediction over the image, reference label over the image).

    Args:
        image: ``(X, Y, Z)`` RAS volume in ``[0, 1]`` (:func:`~medgmae.engine.figures.ras_oriented`).
        pred: ``(X, Y, Z)`` predicted class indices.
        label: ``(X, Y, Z)`` reference class indices.
        title: text above the picture.
        min_tile: slices are enlarged by an integer factor to at least this many pixels.
        letters: mark each tile's edges with the patient directions
            (:func:`~medgmae.engine.figures.with_orientation_letters`); only for volumes known to be RAS.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if not image.shape == pred.shape == label.shape or image.ndim != 3:
        raise ValueError(f"image, pred and label must be 3D of one shape, got {image.shape}, {pred.shape}, {label.shape}")
    fg = np.argwhere(label > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else None  # through the labelled structures
    f = max(1, math.ceil(min_tile / max(image.shape)))
    slices = mid_slices(image, centre)
    rows = []
    for name, lab in (("prediction", pred), ("label", label)):
        tiles = [upscale(overlay(s, l), f) for s, l in zip(slices, mid_slices(lab, centre))]
        tiles = [with_orientation_letters(t, view) for view, t in enumerate(tiles)] if letters else tiles
        rows.append([label_tile(t, f"{name}: {v}") for t, v in zip(tiles, _VIEWS)])
    return label_tile(tile_grid(rows), title)


def _labels(t: Any) -> np.ndarray:
    """``(C, X, Y, Z)`` one-hot or ``(1, X, Y, Z)`` index tensor -> ``(X, Y, Z)`` class indices."""
    t = torch.as_tensor(t).detach().cpu()
    return (t.argmax(0) if t.shape[0] > 1 else t[0]).numpy().astype(np.int64)


def _list_flag(paths: list[str]) -> str:
    """A list of paths as a bundle flag's shell word: ``"['a.nii.gz']"`` as the README writes it, where the shell
    leaves the double quotes' content alone (no ``"``, ``$``, backquote, backslash, ``'`` or ``!`` in a path), else
    :func:`shlex.quote` of it."""
    text = str([str(p) for p in paths])
    if any(c in "".join(map(str, paths)) for c in "\"$`\\'!"):
        return shlex.quote(text)
    return f'"{text}"'


class SegmentationPicture:
    """:func:`segmentation_figure` of the first validation case, at the first validation at or after each multiple
    of ``interval`` and at the run's last validation (evaluator handler).

    Writes ``output_dir/segmentation.png`` (replaced each time) and ``val/segmentation`` to TensorBoard at
    ``global_step(the trainer's epoch)``; main process only. Expects decollated evaluator outputs with ``image``
    (scaled to ``[0, 1]``), ``pred`` and ``label`` (one-hot or indices). A validation of another epoch draws and
    writes nothing (each picture is about 15 kB of TensorBoard events on the phantoms, 200 kB at CT size).

    Args:
        output_dir: run folder.
        summary_writer: TensorBoard ``SummaryWriter`` (optional).
        filename: PNG name.
        global_step: the TensorBoard step of an epoch's picture (the bundle's: the iteration that ends the epoch,
            as its scalars, so that a resume's purge step covers it); default the epoch.
        interval: epochs between pictures (the bundle's ``picture_interval``): the first validation at or after
            each multiple of it (with ``val_interval`` 4 and ``interval`` 10: epochs 12, 20, 32, 40, ...); 1 (the
            default) pictures every validation.
        last_epoch: the trainer's ``max_epochs``: the last validation (of the last multiple of ``val_interval`` up
            to it) is always pictured (none by default).
        val_interval: epochs between validations (the bundle's ``val_interval``: they validate its multiples).
    """

    def __init__(
        self, output_dir: str | Path, summary_writer: Any = None, filename: str = "segmentation.png",
        global_step: Callable[[int], int] | None = None, interval: int = 1, last_epoch: int | None = None,
        val_interval: int = 1,
    ) -> None:  # fmt: skip
        self.path, self.writer = Path(output_dir) / filename, summary_writer
        self.global_step = global_step or (lambda epoch: epoch)
        self.interval = positive_count(interval, "picture_interval")
        self.last_epoch = None if last_epoch is None else positive_count(last_epoch, "last_epoch")
        self.val_interval = positive_count(val_interval, "val_interval")
        self._case: dict | None = None

    def due(self, epoch: int) -> bool:
        """Whether the validation of the trainer's ``epoch`` is pictured: a multiple of ``interval`` lies between
        the previous validation (``val_interval`` epochs before) and it, or no validation follows it."""
        v, last = self.val_interval, self.last_epoch
        return epoch // self.interval > (epoch - v) // self.interval or (last is not None and epoch + v > last)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._capture)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._case = None

    def _capture(self, engine: Engine) -> None:
        if self._case is not None or not self.due(engine.state.epoch):  # the evaluator's epoch is the trainer's
            return
        out = engine.state.output
        item = out[0] if isinstance(out, (list, tuple)) else out
        if not all(k in item for k in ("image", "pred", "label")):
            return
        from medgmae.finetune.evaluate import case_name

        image = torch.as_tensor(item["image"]).detach().float().cpu()[0].numpy()
        arrays = {"image": image, "pred": _labels(item["pred"]), "label": _labels(item["label"])}
        affine = getattr(item["image"], "affine", None)  # a MetaTensor's: the arrays' voxel-to-RAS-mm matrix
        if affine is not None:  # the model's orientation (its spec's, e.g. LPS) drawn as RAS, with the letters
            affine = torch.as_tensor(affine).detach().cpu().double().reshape(-1, 4, 4)[0].numpy()
            arrays = {k: ras_oriented(a, affine)[0] for k, a in arrays.items()}
        self._case = {"name": case_name(item), "ras": affine is not None, **arrays}

    def __call__(self, engine: Engine) -> None:
        if self._case is None or not is_main_process():
            return
        c = self._case
        img = segmentation_figure(c["image"], c["pred"], c["label"], title=f"epoch {engine.state.epoch}: {c['name']}",
                                  letters=c["ras"])  # fmt: skip
        save_png(img, self.path)
        add_image(self.writer, "val/segmentation", img, self.global_step(engine.state.epoch))


def dice_table(dice_per_class: Mapping[str, float | None], mean: float | None = None) -> str:
    """A markdown table of per-class Dice (``n/a`` where the class is absent from every reference)."""
    fmt = lambda v: "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.4f}"  # noqa: E731
    lines = ["| class | Dice |", "| --- | --- |"] + [f"| {name} | {fmt(v)} |" for name, v in dice_per_class.items()]
    if mean is not None:
        lines.append(f"| **mean over cases** (each case's mean over the classes in its reference) | {fmt(mean)} |")
    return "\n".join(lines)


def per_class_dice_text(metrics: Mapping[str, Any], what: str) -> str:
    """The per-class Dice of a validation or an evaluation as the log prints it: a line naming ``what`` and the
    number of cases, then :func:`dice_table` of its per-class and mean Dice.

    Args:
        metrics: a :class:`~medgmae.finetune.SegmentationReport`'s metrics (``dice_per_class``, ``mean_dice``,
            ``num_cases``; missing entries read as none).
        what: what was scored, e.g. ``"the last validation"``.

    Returns:
        ``"per-class Dice of <what> (<n> case[s]):"`` and the table, on separate lines.
    """
    cases = int(metrics.get("num_cases", 0))
    table = dice_table(metrics.get("dice_per_class", {}), metrics.get("mean_dice"))
    return f"per-class Dice of {what} ({cases} case{'' if cases == 1 else 's'}):\n{table}"


class FinetuneSummary:
    """Closing summary of a fine-tuning run (trainer handler, at completion, main process).

    Args:
        output_dir: run folder.
        report: the validation :class:`~medgmae.finetune.SegmentationReport` (its last metrics are tabulated).
        best_saver: the :class:`~medgmae.finetune.BestCheckpointSaver` (best mean Dice and epoch).
        tensorboard_dir: the TensorBoard log folder.
        summary_writer: TensorBoard ``SummaryWriter`` to flush (optional).
        table_name: file name of the markdown Dice table.
    """

    def __init__(
        self,
        output_dir: str | Path,
        report: Any,
        best_saver: Any,
        tensorboard_dir: str | Path | None = None,
        summary_writer: Any = None,
        table_name: str = "dice_per_class.md",
    ) -> None:
        self.out, self.report, self.best = Path(output_dir), report, best_saver
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir else self.out / "tensorboard"
        self.writer, self.table_path = summary_writer, Path(output_dir) / table_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def _example_image(self) -> str:
        """The first validation image of the run's data (``ct.nii.gz`` when it cannot be read), for the segment
        command."""
        from medgmae.data.datalist import read_datalist
        from medgmae.finetune.run_record import run_datalist

        try:
            dataset_dir, datalist = run_datalist("", "", self.out)
            cases = read_datalist(datalist, "validation", dataset_dir or None)
        except (OSError, ValueError, KeyError):
            return "ct.nii.gz"
        return str(cases[0]["image"]) if cases else "ct.nii.gz"

    def next_commands(self) -> dict[str, str]:
        """README's evaluation, inference and export (``model.ts``) commands for this run; the evaluation names the run's recorded data
        (``dataset_dir`` / ``datalist`` of ``training_cases.json``) where it did not train on phantoms, the
        segmentation its first validation image."""
        from medgmae.data.datalist import DatasetError
        from medgmae.finetune.run_record import read_run_record

        out = shlex.quote(str(self.out))
        try:
            record = read_run_record(self.out) or {}
        except DatasetError:  # damaged since the run wrote it: the evaluate command printed then refuses, naming it
            record = {}
        data = "".join(f" --{k} {shlex.quote(str(record[k]))}" for k in ("dataset_dir", "datalist") if record.get(k))
        image = _list_flag([self._example_image()])
        config = lambda name: shlex.quote(bundle_config("unetr_finetune", name))  # noqa: E731
        return {
            "evaluate": f"python -m monai.bundle run evaluating --config_file {config('evaluate.json')} "
            f"--output_dir {out}{data}",
            "segment": f"python -m monai.bundle run inferring --config_file {config('inference.json')} "
            f"--output_dir {out} --input_files {image}",
            "export": f"python -m monai.bundle run exporting --config_file {config('export.json')} "
            f"--output_dir {out}",
        }

    def _last_validation(self) -> dict:
        """The last validation's metrics: the report's, or its ``metrics.json`` in a resumed run that validated
        nothing (it had only its closing steps left); ``{}`` when there are none."""
        if metrics := getattr(self.report, "metrics", None):
            return metrics
        path = Path(getattr(self.report, "output_dir", self.out / "validation")) / "metrics.json"
        try:
            saved = read_json(path, "validation metrics")
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def text(self, epochs: int) -> tuple[str, str]:
        """``(summary lines, markdown Dice table)``."""
        metrics = self._last_validation()
        table = dice_table(metrics.get("dice_per_class", {}), metrics.get("mean_dice"))
        best = getattr(self.best, "best", -math.inf)
        head = (f"best validation mean Dice {best:.4f} at epoch {self.best.best_epoch}" if math.isfinite(best)
                else "no best validation model")  # fmt: skip
        val_dir = Path(getattr(self.report, "output_dir", self.out / "validation"))
        lines = [
            f"fine-tuning finished: {epochs} epoch{'' if epochs == 1 else 's'}; {head}",
            per_class_dice_text(metrics, "the last validation"),
            f"  {'best_model.pt':<14} {self.best.path}" if math.isfinite(best)
            else f"  {'best_model.pt':<14} none: no validation has written one",
            f"  {'validation':<14} {val_dir / 'metrics.json'}, {val_dir / 'per_case_dice.csv'}",
            f"  {'Dice table':<14} {self.table_path}",
            f"  {'segmentation':<14} {self.out / 'segmentation.png'}" if (self.out / "segmentation.png").is_file()
            else f"  {'segmentation':<14} none: no validation has drawn one",
            f"  {'TensorBoard':<14} tensorboard --logdir {shlex.quote(str(self.tensorboard_dir))}",
            "next:",
        ] + [f"  {k}: {v}" for k, v in self.next_commands().items()]
        return "\n".join(lines), table

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        text, table = self.text(engine.state.epoch)
        with atomic_write(self.table_path) as tmp:
            tmp.write_text(table + "\n", encoding="utf-8")
        if self.writer is not None:
            self.writer.flush()
        logger.info("\n%s", text)
