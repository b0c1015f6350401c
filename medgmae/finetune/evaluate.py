"""Segmentation results: per-case and per-class Dice (``metrics.json``, per-case CSV) and NIfTI segmentations.

Every output is written atomically; ``metrics.json`` and the per-case CSV together (an error while writing them
leaves the earlier pair in place). :class:`SegmentationReport` is an ignite handler for a MONAI
``SupervisedEvaluator`` whose post-processing yields one-hot ``pred`` and ``label``; :class:`SaveSegmentationd`
writes an inverted (original-space) prediction as a label-map NIfTI, with the classes' colour table beside it.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import DiceMetric, do_metric_reduction
from monai.transforms import MapTransform

from medgmae.data.reader import volume_stem
from medgmae.distributed import gather_in_order, is_main_process, sharded_loader
from medgmae.files import save_json_atomic, save_nifti_atomic, staged_outputs
from medgmae.finetune.color_table import COLOR_TABLE_NAME, write_color_table
from medgmae.software import software_versions
from medgmae.finetune.segment_resume import segmentation_path

__all__ = ["case_mean_dice", "per_case_dice", "predicted_but_absent", "SegmentationReport", "SaveSegmentationd", "case_name", "case_image", "check_num_classes"]

logger = logging.getLogger(__name__)


def case_name(item: Mapping) -> str:
    """A case's image name without folders and volume extension (:func:`~medgmae.data.reader.volume_stem`)."""
    return volume_stem(case_image(item))


def case_image(item: Mapping) -> str:
    """The path of a case's image, from MONAI metadata (``"case"`` when it has none)."""
    img = item.get("image")
    meta = getattr(img, "meta", None) or item.get("image_meta_dict") or {}
    return str(meta.get("filename_or_obj", "case"))


def check_num_classes(
    network: torch.nn.Module, num_classes: int, source: str = "the model", names: Sequence[str] | None = None
) -> list[str]:
    """Raise a ``ValueError`` when the network predicts another number of classes than the datalist names; warn when
    the datalist's class ``names`` differ from those the model records (``class_names``), as when a model of BTCV's
    label order is scored on AMOS's (class 10: portal and splenic veins, pancreas): Dice goes by class number, under
    the datalist's names. Names are compared ignoring case, ``_`` and ``-``; a generic ``class_<i>`` matches any.

    Returns:
        The differing classes, as the warning names them.
    """
    out = getattr(network, "out_channels", None)
    if out is not None and int(out) != int(num_classes):
        raise ValueError(f"{source} predicts {out} classes but the datalist has {num_classes}: evaluate on the same label set")
    pairs = enumerate(zip(names or [], getattr(network, "class_names", None) or []))
    differ = [f"{i}: {theirs!r} in the datalist, {ours!r} for the model" for i, (theirs, ours) in pairs
              if i and None not in (_said(theirs, i), _said(ours, i)) and _said(theirs, i) != _said(ours, i)]  # fmt: skip
    if differ:
        logger.warning("the datalist names classes otherwise than %s (class %s): Dice is scored by class number and "
                       "reported under the datalist's names; check that both follow one label order", source,
                       "; ".join(differ))  # fmt: skip
    return differ


def _said(name: str, index: int) -> str | None:
    """A class name as :func:`check_num_classes` compares it (lower case, ``_`` and ``-`` as spaces); ``None`` for
    the generic ``class_<index>``, which names nothing."""
    said = " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())
    return None if said == f"class {index}" else said


def case_mean_dice(dice: Sequence[float]) -> float:
    """A case's mean Dice over its classes present in the reference (the finite values); NaN when there are none."""
    finite = [d for d in dice if math.isfinite(d)]
    return sum(finite) / len(finite) if finite else math.nan


def per_case_dice(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dice per foreground class of one case (MONAI :class:`DiceMetric`).

    Args:
        pred: ``(C, *spatial)`` one-hot prediction.
        label: ``(C, *spatial)`` one-hot reference.

    Returns:
        ``(C - 1,)`` Dice of classes 1..C-1; NaN where the reference has no voxel of the class.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    return metric(pred[None].float(), label[None].float())[0].cpu()


def predicted_but_absent(pred: torch.Tensor, label: torch.Tensor) -> list[bool]:
    """Per foreground class of one case: absent from the reference but predicted (a false positive that Dice,
    NaN there and left out of every mean, does not show).

    Args:
        pred: ``(C, *spatial)`` one-hot prediction.
        label: ``(C, *spatial)`` one-hot reference.

    Returns:
        ``C - 1`` flags for classes 1..C-1.
    """
    spatial = tuple(range(1, pred.ndim))
    absent = label[1:].sum(dim=spatial) == 0
    predicted = pred[1:].sum(dim=spatial) > 0
    return (absent & predicted).cpu().tolist()


class SegmentationReport:
    """Collect per-case Dice over an evaluator run; write ``metrics.json`` and ``per_case_dice.csv``.

    ``metrics.json`` holds ``mean_dice`` (MONAI's ``MeanDice`` reduction of the same float32 values: the mean over
    cases of each case's mean over its classes present in the reference, so the log's "mean Dice" and the
    evaluator's key metric are one number), per-class means under ``dice_per_class`` (by label name), the number of
    cases and of those with a labelled class in their reference (``num_cases_scored``: the others add nothing to
    any mean), ``absent_class_predictions`` (per class: in how many cases it is absent from the reference, and in how
    many of those it was predicted all the same, false positives no Dice counts), ``extra`` (e.g. the checkpoint
    used) and ``software`` (:func:`medgmae.software.software_versions` of the evaluator's device: the results
    depend on it). The CSV's ``predicted_but_absent`` column names a case's such classes.

    Args:
        output_dir: folder for the two files.
        label_names: names of classes 0..C-1 (background first).
        extra: more entries for ``metrics.json``.
        csv_name: per-case file name.
        show_table: after the mean Dice line, also log the per-class Dice table
            (:func:`~medgmae.finetune.report.per_class_dice_text`, as training's closing summary prints it): for an
            evaluation, not for the validation of every epoch.
    """

    def __init__(
        self, output_dir: str | Path, label_names: Sequence[str], extra: Mapping | None = None,
        csv_name: str = "per_case_dice.csv", show_table: bool = False,
    ) -> None:  # fmt: skip
        if len(label_names) < 2:
            raise ValueError(f"need at least 2 label names, got {list(label_names)}")
        if not isinstance(show_table, bool):
            raise ValueError(f"SegmentationReport: show_table must be true or false, got {show_table!r}")
        self.output_dir, self.names, self.show_table = Path(output_dir), list(label_names), show_table
        self.extra, self.csv_name = dict(extra or {}), csv_name
        # (case, image path, Dice per class, per class: absent from the reference but predicted)
        self.rows: list[tuple[str, str, list[float], list[bool]]] = []
        self.metrics: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, (list, tuple)) else [output]
        for item in items:
            dice = per_case_dice(item["pred"], item["label"])
            if dice.numel() != len(self.names) - 1:
                raise ValueError(f"prediction has {dice.numel() + 1} classes but {len(self.names)} label names are set")
            fp = predicted_but_absent(item["pred"], item["label"])
            self.rows.append((case_name(item), case_image(item), dice.tolist(), fp))

    def summary(self) -> dict:
        """Metrics of the collected cases."""
        values = np.array([row[2] for row in self.rows], dtype=np.float64).reshape(len(self.rows), len(self.names) - 1)
        with warnings.catch_warnings():  # an all-NaN class (absent from every reference) has no mean
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = np.nanmean(values, axis=0) if len(values) else np.full(len(self.names) - 1, np.nan)
        mean = math.nan  # MeanDice's reduction of its float32 values (it would give 0 when no class is present)
        if np.isfinite(values).any():
            mean = do_metric_reduction(torch.as_tensor(values, dtype=torch.float32), "mean")[0].item()
        clean = lambda v: None if not math.isfinite(v) else float(v)  # noqa: E731  JSON has no NaN
        return {
            "mean_dice": clean(mean),
            "dice_per_class": {n: clean(float(v)) for n, v in zip(self.names[1:], per_class)},
            "num_cases": len(self.rows),
            "num_cases_scored": int(np.isfinite(values).any(axis=1).sum()),
            "absent_class_predictions": {
                n: {"cases_absent": int((~np.isfinite(values[:, c])).sum()),
                    "predicted_in": int(sum(row[3][c] for row in self.rows))}
                for c, n in enumerate(self.names[1:])
            },  # fmt: skip
            **self.extra,
        }

    def write(self, engine: Engine | None = None) -> dict:
        """Write ``metrics.json`` and the per-case CSV together (neither is replaced unless both were written);
        returns the metrics.

        When the evaluator's data loader shards the cases over the processes (:func:`~medgmae.distributed.
        shard_sampler`), every rank gathers every rank's cases first (a collective call: every rank attaches the
        report); rank 0 alone writes and logs."""
        if sharded_loader(getattr(engine, "data_loader", None)):
            self.rows = gather_in_order(self.rows)
        device = getattr(getattr(engine, "state", None), "device", None)  # MONAI's workflows keep it in their state
        self.metrics = {**self.summary(), "software": software_versions(device)}
        if not is_main_process():
            return self.metrics
        with staged_outputs(self.output_dir) as stage:  # both files move in only when both were written
            save_json_atomic(self.metrics, stage / "metrics.json")
            with open(stage / self.csv_name, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["case", "image", "mean_dice"] + self.names[1:] + ["predicted_but_absent"])
                for name, (_, image, dice, fp) in zip(_unique_names(self.rows), self.rows):
                    absent = ";".join(n for n, f in zip(self.names[1:], fp) if f)  # names may hold spaces
                    w.writerow([name, image, _fmt(case_mean_dice(dice))] + [_fmt(d) for d in dice] + [absent])
        n = len(self.rows)
        cases = f"{n} case{'' if n == 1 else 's'}"
        empty = n - self.metrics["num_cases_scored"]
        if empty:  # MONAI's convention: a case whose reference holds no labelled class adds nothing to the mean
            cases = f"{n - empty} of {cases} ({empty} with no labelled class in its reference, not counted)"
        mean = self.metrics["mean_dice"]
        shown = "n/a (no labelled class)" if mean is None else f"{mean:.5f}"  # as the per-case lines
        logger.info("mean Dice %s over %s -> %s", shown, cases, self.output_dir)
        absent = self.metrics["absent_class_predictions"]
        fps = [f"{n} in {a['predicted_in']} of the {a['cases_absent']} case{'' if a['cases_absent'] == 1 else 's'} "
               "lacking it" for n, a in absent.items() if a["predicted_in"]]  # fmt: skip
        if fps:  # Dice leaves these cases out of the class's mean; a reader of the means would not know
            logger.info("predicted in cases whose reference lacks the class (false positives, in no Dice): %s; "
                        "the CSV's predicted_but_absent column names the cases", ", ".join(fps))  # fmt: skip
        if self.show_table:
            from medgmae.finetune.report import per_class_dice_text

            logger.info("\n%s", per_class_dice_text(self.metrics, "the evaluation"))
        return self.metrics


def _unique_names(rows: Sequence[tuple]) -> list[str]:
    """The rows' case names, made unique as segmentation names are (parent folders prefixed where two images share
    a file name: ``a_ct``, ``b_ct``) when they clash; as they are otherwise, or when an image is listed twice."""
    from medgmae.data.datalist import DatasetError
    from medgmae.finetune.segment_inputs import unique_case_names

    names = [row[0] for row in rows]
    if len(set(names)) == len(names):
        return names
    try:
        return unique_case_names([row[1] for row in rows])
    except DatasetError:  # the same image twice: its rows stay as they are (the image column is the same too)
        return names


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.6f}"


class SaveSegmentationd(MapTransform):
    """Write a label map (``argmax`` already applied, in the input image's original space) as ``<case>_seg.nii.gz``.

    ``<case>`` is the item's ``name`` where it has one (:func:`~medgmae.finetune.segment_inputs.inference_cases`
    gives each input a unique one), else the image's file name (:func:`case_name`); one too long for the file
    system keeps its start and 8 hex digits of its hash (:func:`medgmae.temp_names.fitted_name`).

    The affine is the tensor's own (after :class:`monai.transforms.Invertd`, the original image's), so the file
    overlays the input in 3D Slicer or ITK-SNAP. Written atomically. With ``label_names``, the first segmentation
    written is preceded by the 3D Slicer colour table ``labels.ctbl`` in the same folder (label value -> class name
    and colour, :mod:`medgmae.finetune.color_table`).

    Args:
        keys: key of the label map ``(1, *spatial)``.
        output_dir: destination folder.
        postfix: appended to the case name.
        label_names: class names in label order, background first (the network's ``class_names``); ``None``
            writes no colour table.
        description: the NIfTI header's ``descrip`` of every file: what made it
            (:func:`~medgmae.finetune.segment_resume.segmentation_id`, which ``--resume true`` compares).
    """

    def __init__(
        self, keys="pred", output_dir: str | Path = "segmentations", postfix: str = "seg",
        label_names: Sequence[str] | None = None, description: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(keys)
        if label_names is not None and len(label_names) < 2:
            raise ValueError(f"SaveSegmentationd: label_names needs background and at least one class, got {label_names}")
        self.output_dir, self.postfix = Path(output_dir), postfix
        self.label_names = None if label_names is None else list(label_names)
        self.description = description
        self._table_written = False

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            seg = d[key]
            if seg.ndim != 4 or seg.shape[0] != 1:
                raise ValueError(f"{key}: expected a (1, H, W, D) label map, got {tuple(seg.shape)}")
            affine = np.asarray(torch.as_tensor(seg.affine).cpu(), dtype=np.float64)
            labels = np.asarray(seg[0].detach().cpu().round()).astype(np.uint8 if seg.max() < 256 else np.int16)
            self._write_color_table()
            name = d.get("name")
            name = name[0] if isinstance(name, (list, tuple)) and len(name) == 1 else name
            case = name if isinstance(name, str) and name else case_name(d)
            path = segmentation_path(self.output_dir, case, self.postfix)  # a long input's name shortened
            save_nifti_atomic(labels, affine, path, description=self.description)
            logger.info("wrote %s", path)
            d[f"{key}_path"] = str(path)
        return d

    def _write_color_table(self) -> None:
        """Write ``labels.ctbl`` once, before the first segmentation (when names were given)."""
        if self.label_names is not None and not self._table_written:
            path = write_color_table(self.output_dir / COLOR_TABLE_NAME, self.label_names)
            logger.info("wrote %s (%d classes: %s)", path, len(self.label_names), ", ".join(self.label_names[:20]))
            self._table_written = True
