"""Evaluation of a GViT classifier: accuracy, per-class accuracy, confusion matrix and explanation images.

:func:`evaluate_gvit` writes into its output folder (each file atomically):

* ``metrics.json``: ``accuracy``, ``per_class_accuracy`` (class name -> accuracy, ``null`` for a class without
  images), ``confusion_matrix`` (rows = true class, columns = predicted), ``class_names``, ``num_images``,
  ``predicted_classes`` (how many classes were predicted; one, with several present, is warned about),
  ``explanations`` (how many PNGs), and the ``split`` and ``data`` settings evaluated and the model's ``training``
  settings (epochs, optimiser, loss, guidance) when the caller gives them (a training run's ``data`` holds its
  ``seed`` and its start's data loader ``num_workers``), and the ``software`` it ran with
  (:func:`medgmae.software.software_versions`), or the one its caller's record names (a training run's: the
  software its run started with, beside the ``resumes`` of a resumed run,
  :class:`~medgmae.engine.start_record.StartRecord`);
* ``predictions.csv``: one row per image evaluated, its file, true class, predicted class, each class's
  probability and whether it is right (:mod:`medgmae.twod.gvit_predictions`, the table inference writes too);
* ``confusion_matrix.png``;
* ``explanations/<n>_<source>_<true>_pred-<predicted>.png`` (``<source>``: the image file's name without its
  endings, after its folders below its class folder, ``p1-IM0001``; absent for images without a file; a name over
  the file system's 255 bytes shortened: :func:`~medgmae.twod.gvit_figures.explanation_name`): the
  image, its Gaussians drawn as 2-sigma ellipses coloured by ``det(Sigma)`` (the paper's saliency proxy: small,
  yellow = class-relevant; large, purple = background), and the rendering of the Gaussians. They are written
  into a staging folder and moved in when all were written (:func:`medgmae.files.staged_outputs` with
  ``remove_stale``): PNGs of an earlier evaluation do not stay, and a failed evaluation leaves the earlier ones as
  they were.

:func:`evaluate_model_file` evaluates a saved model on the data it was trained on (the settings recorded in its
``model.pt``) unless told otherwise.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, Mapping, Sequence

import numpy as np
import torch

from medgmae.cli_types import as_path_text
from medgmae.data.datalist import DatasetError
from medgmae.files import save_json_atomic, staged_outputs
from medgmae.software import software_versions
from medgmae.twod.gvit import Gaussians2D
from medgmae.twod.gvit_predictions import PREDICTIONS_CSV, predict_loader, write_predictions
from medgmae.twod.gvit_figures import explanation_name, save_confusion_matrix_png, save_explanation_png
from medgmae.twod.images import is_windowed
from medgmae.twod.windows import given_window, input_window, recorded_window

if TYPE_CHECKING:
    from medgmae.twod.classification_data import ClassificationData

__all__ = [
    "predict",
    "confusion_matrix",
    "classification_metrics",
    "evaluate_gvit",
    "evaluate_model_file",
    "evaluation_data_settings",
    "DATA_DEFAULTS",
]

logger = logging.getLogger("medgmae.gvit")

def predict(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(labels, predictions)`` of ``model`` over ``loader`` (eval mode; :func:`predict_loader`)."""
    labels, probs, _ = predict_loader(model, loader, device)
    return labels, probs.argmax(-1)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true class, columns = predicted class."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels and predictions differ in shape: {labels.shape} vs {preds.shape}")
    if labels.size and (labels.min() < 0 or max(labels.max(), preds.max()) >= num_classes):
        raise ValueError(f"labels/predictions outside [0, {num_classes})")
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy (recall of each class; None without images), the confusion matrix and
    ``predicted_classes`` (how many classes were predicted at all: 1 with several present is a classifier that
    gives every image one class)."""
    cm = confusion_matrix(labels, preds, len(class_names))
    support = cm.sum(1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)}
    total = int(cm.sum())
    return {
        "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "num_images": total,
        "predicted_classes": int(np.count_nonzero(cm.sum(0))),
    }


@torch.no_grad()
def evaluate_gvit(
    model: torch.nn.Module,
    loader,
    class_names: Sequence[str],
    output_dir: str | Path,
    device: torch.device | str = "cpu",
    num_explanations: int = 8,
    render_backend: str = "auto",
    record: Mapping | None = None,
) -> dict:
    """Evaluate a :class:`~medgmae.twod.gvit.GViT` and write metrics, confusion matrix and explanations.

    ``num_explanations`` explanation PNGs are written for the first images of ``loader`` (all of them when < 0)
    into a staging folder whose PNGs then replace those of ``output_dir/explanations`` (earlier ones that this
    evaluation did not write are removed; see :func:`medgmae.files.staged_outputs`). ``record`` (e.g. ``{"split": "val",
    "data": {...}}``) is added to the metrics, and ``software`` is this evaluation's where ``record`` names none.

    Returns:
        The metrics dictionary written to ``output_dir/metrics.json``.
    """
    output_dir = Path(output_dir)
    if num_explanations < 0:
        num_explanations = len(loader.dataset) if hasattr(loader, "dataset") else float("inf")
    labels, probs, paths = predict_loader(model, loader, device)
    preds = probs.argmax(-1)
    metrics = classification_metrics(labels, preds, class_names)
    present = int(np.count_nonzero(np.asarray(metrics["confusion_matrix"]).sum(1)))
    if metrics["predicted_classes"] == 1 and present > 1:
        logger.warning("the model predicts %r for every one of the %d images evaluated, of %d classes: a degenerate "
                       "classifier (metrics.json: predicted_classes 1)", class_names[int(preds[0])], len(preds), present)  # fmt: skip
    with staged_outputs(output_dir / "explanations", remove_stale=True) as staging:
        written = _write_explanations(model, loader, class_names, staging, device, num_explanations, render_backend)
    # the table, the picture and the metrics last, one after the other: an evaluation stopped while explaining
    # leaves the earlier evaluation's outputs as they were, not a confusion matrix of this one beside its metrics
    trues = [class_names[int(i)] for i in labels]
    write_predictions(output_dir / PREDICTIONS_CSV, paths, probs, class_names, before=[("true_class", trues)],
                      after=[("correct", [str(bool(t == p)).lower() for t, p in zip(labels, preds)])])  # fmt: skip
    save_confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), class_names, output_dir / "confusion_matrix.png")
    metrics["explanations"] = written
    metrics.update(dict(record or {}))
    metrics.setdefault("software", software_versions(device))  # a training run's record names its start's
    save_json_atomic(metrics, output_dir / "metrics.json")
    return metrics


def _write_explanations(model, loader, class_names, folder: Path, device, num_explanations, render_backend) -> int:
    """Explanation PNGs of the first ``num_explanations`` images of ``loader`` in ``folder``; returns how many."""
    written = 0
    for batch in loader:
        if written >= num_explanations:
            break
        x = batch["image"].to(device)
        g = model.encoder(x)
        pred = model.classifier(g).argmax(-1).cpu()
        dec = model.encoder.decode(g.float())
        rendered = dec.render(x.shape[-2:], backend=render_backend)
        lab = torch.as_tensor(batch["label"]).view(-1)
        paths = batch.get("path") if isinstance(batch, Mapping) else None
        for i in range(x.shape[0]):
            if written >= num_explanations:
                break
            one = Gaussians2D(*(t[i : i + 1] for t in (dec.means, dec.scales, dec.angles, dec.colors, dec.opacities)))
            true, pr = class_names[int(lab[i])], class_names[int(pred[i])]
            name = explanation_name(written, None if paths is None else paths[i], true, pr)
            save_explanation_png(x[i], one, folder / name, rendered[i], title=f"true {true} / predicted {pr}")
            written += 1
    return written


#: the training data's settings assumed for a model file that records none (the bundle's defaults)
DATA_DEFAULTS = {"dataset_dir": "", "num_phantoms": 10, "seed": 0, "val_fraction": 0.2}


def _normalise(key: str, value):
    if key == "dataset_dir":
        return "" if value is None or str(value).strip() == "" else str(Path(value).expanduser().resolve())
    return float(value) if key == "val_fraction" else int(value)


def evaluation_data_settings(recorded: Mapping | None, given: Mapping) -> dict:
    """The data to evaluate on: each ``given`` value that is not None, else the one recorded at training, else
    :data:`DATA_DEFAULTS`.

    A given value that differs from training's is used, with a warning (a different ``seed`` or ``val_fraction``
    makes validation images overlap training images).

    Args:
        recorded: ``model.pt``'s ``data`` settings (None for an older file).
        given: ``dataset_dir``, ``num_phantoms``, ``seed``, ``val_fraction``, each None when not given.

    Returns:
        The settings, with ``default_root`` (training's phantom-task folder, ``""`` if unknown).
    """
    recorded = dict(recorded or {})
    if not recorded:
        logger.warning("the model file records no training data: evaluating on %s unless given",
                       {k: v for k, v in DATA_DEFAULTS.items() if given.get(k) is None})  # fmt: skip
    out = {"default_root": recorded.get("default_root", "")}
    for key, default in DATA_DEFAULTS.items():
        trained = _normalise(key, recorded.get(key, default))
        out[key] = trained if given.get(key) is None else _normalise(key, given[key])
        relevant = key != "num_phantoms" or not out["dataset_dir"]
        if key in recorded and out[key] != trained and relevant:
            overlap = ": validation images may overlap training images" if key in ("seed", "val_fraction") else ""
            logger.warning("evaluating with %s %r, not training's %r%s", key, out[key], trained, overlap)
    return out


def _phantom_root(settings: Mapping, default_root: str | Path | None, output_dir: Path, image_size: int) -> Path:
    """Where the evaluation's phantom task lives: training's (reused when it matches), else ``output_dir/data``,
    so that training's task is never replaced."""
    recorded = settings.get("default_root") or ""
    root = Path(recorded) if recorded and Path(recorded).is_dir() else (Path(default_root) if default_root else None)
    if root is None:
        raise ValueError("dataset_dir is empty and no default_root is given for the default task")
    from medgmae.twod.phantom_task import phantom_task_conflicts

    old = phantom_task_conflicts(root, settings["num_phantoms"], settings["seed"], image_size)
    if old is None:
        return root
    own = output_dir / "data"
    logger.warning("%s holds a phantom task with other settings (%s); leaving it untouched and writing the "
                   "evaluation's task to %s", root, old, own)  # fmt: skip
    return own


def _task_folder_held(root: str | Path, output_dir: Path, settings: Mapping, image_size: int) -> ContextManager:
    """Hold the folder of the phantom task at ``root`` (its parent: the run folder a GViT training holds as its
    ``--output_dir``, the task being its ``data/``) while the evaluation writes the task there
    (:func:`~medgmae.folder_lock.folder_held`): a training run or another evaluation writing it meanwhile is refused
    by name (:class:`~medgmae.folder_lock.FolderInUse`) rather than mixed with. A finished task of these settings is
    only read, and one inside ``output_dir`` (the evaluation's own folder, which its bundle holds) needs no other
    hold: both run without it.

    Args:
        root: the phantom task's folder (``""``: a dataset is evaluated, no task).
        output_dir: the evaluation's folder.
        settings: the evaluation's data settings (``num_phantoms``, ``seed``).
        image_size: the model's image size.

    Returns:
        The context to write the task in.
    """
    from medgmae.folder_lock import folder_held
    from medgmae.twod.phantom_task import phantom_task_ready

    if not str(root) or phantom_task_ready(root, settings["num_phantoms"], settings["seed"], image_size):
        return nullcontext()
    if Path(root).resolve().is_relative_to(output_dir.resolve()):
        return nullcontext()
    return folder_held(Path(root).parent, "--output_dir")


def _evaluation_data(
    model: torch.nn.Module, model_path: str | Path, given: Mapping, output_dir: Path, default_root: str | Path | None
) -> tuple[ClassificationData, tuple[float, float] | None, dict[str, list[dict]]]:
    """The dataset a saved GViT is evaluated on (:func:`evaluation_data_settings`), checked against its classes.

    Args:
        model: the loaded :class:`~medgmae.twod.gvit.GViT`.
        model_path: its file, as messages name it.
        given: ``dataset_dir``, ``seed``, ``val_fraction``, ``num_phantoms`` as given to the evaluation (None: not
            given, training's).
        output_dir: the evaluation's folder (its ``data/`` holds a phantom task of other settings than training's).
        default_root: where the default task lives when the model file does not say.

    Returns:
        ``(data, window, splits)``: the :class:`~medgmae.twod.classification_data.ClassificationData`, training's
        intensity window (or ``None``; how the images are scaled is the caller's to log, :func:`evaluate_model_file`)
        and the images of each split (:func:`~medgmae.twod.classification_split.evaluation_splits`: training's
        recorded split when its ``seed`` and ``val_fraction`` are kept, on its folder; every image of another folder).

    Raises:
        DatasetError: training's recorded data are not found, or the dataset has a class the model does not know
            (a dataset of a part of its classes is evaluated: the others' accuracy is n/a).
        FolderInUse: the phantom task is to be written into a run folder another process holds
            (:func:`_task_folder_held`).
    """
    from medgmae.twod.classification_data import resolve_classification_data
    from medgmae.twod.classification_split import evaluation_splits

    st = evaluation_data_settings(getattr(model, "data_settings", None), given)
    root = "" if st["dataset_dir"] else _phantom_root(st, default_root, output_dir, model.img_size[0])
    window = recorded_window(model.data_settings, model_path)  # training's NIfTI/DICOM window
    names = getattr(model, "class_names", None)  # the dataset's labels map onto these by name (a part may be present)
    if given["dataset_dir"] is None and st["dataset_dir"] and not Path(st["dataset_dir"]).exists():
        raise DatasetError(f"{model_path} records its training data at {st['dataset_dir']}, which is not found (moved, "
                         "or on another machine?): give its place with --dataset_dir")  # fmt: skip
    with _task_folder_held(root, output_dir, st, model.img_size[0]):
        data = resolve_classification_data(st["dataset_dir"], root, image_size=model.img_size[0], seed=st["seed"],
                                           val_fraction=st["val_fraction"], num_cases=st["num_phantoms"],
                                           channels=model.in_channels, class_names=names, scaling_logged=True)  # fmt: skip
    if model.num_classes != data.num_classes:
        raise DatasetError(f"model {model_path} has {model.num_classes} classes but dataset {data.source} has {data.num_classes}")
    keep = given["seed"] is None and given["val_fraction"] is None and data.seeded_split  # training's seeded split
    return data, window, evaluation_splits(data, model.data_settings, keep)


def _evaluated_split(
    data: ClassificationData,
    splits: Mapping,
    split: str,
    model_path: str | Path,
    recorded: tuple[float, float] | None,
    window,
    model_data: Mapping | None = None,
) -> tuple[list[dict], tuple[float, float] | None, dict]:
    """The images of ``split`` of ``data`` (``splits[split]``), the window they are read with (:func:`~medgmae.twod.windows.input_window`:
    the given ``window``, else the ``recorded`` one, else none; logged) and the ``data`` that ``metrics.json``
    records: the data settings, ``source``, ``window`` (``[low, high]`` or ``None``) and ``window_source``
    (``model_data``: the data settings the model records, which tell how training scaled its images).

    Raises:
        DatasetError: the split holds no images (its folder and the split named).
        ValueError: a bad ``window`` (named).
    """
    from medgmae.twod.classification_split import without_split_files

    items = splits[split]
    if not items:
        raise DatasetError(f"the {split!r} split of dataset {data.source} has no images: evaluate another --split "
                           "(all: every image)")  # fmt: skip
    used, origin = input_window(window, recorded, model_path, sum(is_windowed(it["image"]) for it in items),
                                f"the images of the {split!r} split of dataset {data.source}", model_data)  # fmt: skip
    settings = {**without_split_files(data.settings), "source": data.source,
                "window": None if used is None else list(used), "window_source": origin}  # fmt: skip
    return items, used, settings


def evaluate_model_file(
    model_path: str | Path,
    dataset_dir: str | Path | None,
    output_dir: str | Path,
    default_root: str | Path | None = None,
    split: str = "val",
    batch_size: int = 32,
    device: str = "auto",
    num_explanations: int = -1,
    render_backend: str = "auto",
    seed: int | None = None,
    val_fraction: float | None = None,
    num_cases: int | None = None,
    window: Sequence[float] | str | None = None,
) -> dict:
    """Evaluate a saved GViT (``model.pt`` or a training checkpoint) on a split of a dataset.

    The data settings (``dataset_dir``, ``seed``, ``val_fraction``, ``num_cases``) default to the ones recorded in
    ``model.pt`` at training (see :func:`evaluation_data_settings`); ``metrics.json`` records what was used. With
    training's ``seed`` and ``val_fraction``, the images are split as training recorded it
    (:func:`~medgmae.twod.classification_split.evaluation_splits`: added images in ``"all"``; another folder: ``"all"``).
    NIfTI/DICOM images are read with the ``window`` given, else training's, else each by its own (:func:`_evaluated_split`,
    :func:`~medgmae.twod.windows.input_window`); ``metrics.json`` records it (``data.window``, ``data.window_source``).

    Args:
        model_path: file written by training.
        dataset_dir: dataset folder or CSV; ``""`` for the default phantom-slice task; None: training's.
        output_dir: folder for ``metrics.json``, ``predictions.csv``, ``confusion_matrix.png`` and ``explanations/``.
        default_root: where the default task lives when the model file does not say (written there at the model's
            image size if absent, its parent held meanwhile, :func:`_task_folder_held`; another task there is left
            alone, :func:`_phantom_root`).
        split: ``"val"``, ``"train"`` or ``"all"``.
        batch_size: evaluation batch size.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_explanations: explanation PNGs to write (all images when < 0).
        render_backend: 2D renderer backend.
        seed, val_fraction, num_cases, window: split, default-task settings, NIfTI/DICOM ``[low, high]``; None: training's.

    Returns:
        The metrics written to ``output_dir/metrics.json``; a bad ``split``, ``batch_size`` or ``window`` is a ValueError.
    """
    from monai.data import DataLoader

    from medgmae.engine import resolve_device
    from medgmae.twod.classification_data import make_dataset
    from medgmae.twod.gvit import GViT

    if split not in ("val", "train", "all"):
        raise ValueError(f"split must be 'val', 'train' or 'all', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    given_window(window)  # before any data are read or written
    model = GViT.from_checkpoint(model_path, map_location="cpu").to(dev := resolve_device(device))
    given = dict(dataset_dir=as_path_text(dataset_dir), seed=seed, val_fraction=val_fraction, num_phantoms=num_cases)
    data, recorded, splits = _evaluation_data(model, model_path, given, Path(output_dir), default_root)
    items, used, settings = _evaluated_split(data, splits, split, model_path, recorded, window, model.data_settings)
    loader = DataLoader(make_dataset(items, model.img_size, model.in_channels, window=used), batch_size=batch_size, shuffle=False)
    record = {"split": "all" if splits[split] is splits["all"] else split,  # another folder: all its images
              "data": settings, "model": str(model_path), "training": getattr(model, "training_settings", None)}
    return evaluate_gvit(model, loader, data.class_names, output_dir, dev, num_explanations, render_backend, record)
