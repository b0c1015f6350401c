"""The checks that a file is a model file of the toolkit's format (:mod:`medgmae.checkpoint`), and its refusals.

A file is read (:func:`read_model_record`) as its model record: a model file as it is, a training (resume)
checkpoint of :class:`medgmae.engine.CheckpointHandler` through the model record in its ``objects``
(:func:`training_state_record`). A folder, a file of another format, a training state without a model record
(:class:`TrainingStateError`, carrying what it holds) and a file of a newer format version are refused, naming the
file; so is a model whose recorded pre-processing states other sizes than its network's
(:func:`recorded_preprocessing`). A bare ``state_dict`` and a model pickled whole (``torch.save(model)``) are refused
with the way to save a model file (:data:`RESAVE_ADVICE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from medgmae.bundle_errors import InputRefusal
from medgmae.preprocessing import PreprocessingSpec
from medgmae.torch_files import load_torch_file
from medgmae.whole_numbers import nonnegative_count

__all__ = [
    "FORMAT", "VERSION", "RUN_KEY", "CheckpointRefused", "TrainingStateError", "read_model_record",
    "recorded_preprocessing", "run_record", "training_state_record",
]  # fmt: skip

#: The format's name and the newest version this release reads (and writes).
FORMAT, VERSION = "medgmae", 1

#: The ``extra`` key of the training run a model file comes from (:func:`run_record`).
RUN_KEY = "run"


def run_record(run: Mapping) -> dict:
    """The record of the training run a model file comes from, ``extra["run"]``, checked.

    Args:
        run: ``{"seed": int}``, optionally with ``"num_workers"`` (the training data loader's workers).

    Returns:
        ``{"seed": int, "num_workers": int}`` (``num_workers`` only when given).

    Raises:
        ValueError: no mapping, another key, no ``seed``, or a value that is not a non-negative whole number.
    """
    if not isinstance(run, Mapping) or "seed" not in run or set(run) - {"seed", "num_workers"}:
        raise ValueError(f"a run record is {{'seed': N}} or {{'seed': N, 'num_workers': W}}, got {run!r}")
    return {k: nonnegative_count(v, k) for k, v in run.items()}


#: How a model in memory becomes a model file the toolkit's loaders read (:mod:`medgmae.checkpoint`).
RESAVE_ADVICE = ("save the model with medgmae.checkpoint.save_checkpoint(path, model.model_checkpoint()) (a network "
                 "without model_checkpoint(): make_checkpoint(kind, config, model.state_dict(), preprocessing))")


class CheckpointRefused(InputRefusal):
    """A model checkpoint the user gave that cannot be used: a folder, not this toolkit's, inconsistent, or of
    another kind than the consumer needs; the message names the file and what it is."""


class TrainingStateError(CheckpointRefused):
    """:func:`~medgmae.checkpoint.load_checkpoint`'s refusal of a training-state checkpoint (for ``--resume``) that
    holds no model record, e.g. a GViT phase's ``checkpoint_epoch=N.pt``.

    Args:
        message: the error message (naming the file).
        objects: the checkpoint's ``objects`` as read.

    Attributes:
        objects: what the checkpoint holds (model weights, optimizer state, settings records, ...), for a caller
            that can tell which run wrote it.
    """

    def __init__(self, message: str, objects: Mapping) -> None:
        super().__init__(message)
        self.objects = dict(objects)


def _recorded_data(objects: Mapping) -> dict | None:
    """The data settings a training state records: its settings record (``objects["settings"]``, a
    :class:`~medgmae.engine.records.SettingsRecord`) when that holds no model configuration (the 2D GMAE's
    ``{"flip", "window"}``, which its ``model.pt`` records as ``extra["data"]``); ``None`` otherwise (no record, or
    a record of the model's settings, as fine-tuning keeps)."""
    record = objects.get("settings")
    settings = record.get("settings") if isinstance(record, dict) else None
    if not isinstance(settings, dict) or "model" in settings:
        return None
    return dict(settings)


def training_state_record(ckpt: dict) -> dict | None:
    """A :class:`CheckpointHandler` payload -> the model-file layout (``extra``: ``training_state`` and, when
    recorded, ``data``), or ``None`` when it holds no model."""
    objects = ckpt.get("objects")
    if not isinstance(objects, dict) or "model" not in objects:
        return None
    record = objects.get("config")
    if not isinstance(record, dict):
        return None
    extra: dict[str, Any] = {"training_state": True}
    data = _recorded_data(objects)
    if data is not None:
        extra["data"] = data
    return {
        "kind": record.get("kind"),
        "config": record.get("config"),
        "preprocessing": record.get("preprocessing"),
        "state_dict": objects["model"],
        "extra": extra,
    }


def _sizes_problem(config: Mapping, spec: PreprocessingSpec) -> str | None:
    """How a 3D model's ``config`` (``img_size``, ``patch_size``) disagrees with the sizes its recorded
    pre-processing states (``input_size``, ``patch_size``), ``None`` when they agree or either is absent: the spec is
    the contract consumers read, the config what the network was built with, and both must be one."""
    for key, field in (("img_size", "input_size"), ("patch_size", "patch_size")):
        value, stated = config.get(key), tuple(getattr(spec, field))
        if value is None:
            continue
        value = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * len(stated)
        if len(value) == len(stated) and value != stated:
            return f"its network's {key} {list(value)} differs from its recorded pre-processing's {field} {list(stated)}"
    return None


def read_model_record(path: Path, map_location: Any, mmap: bool) -> dict:
    """Read a model file (or the model record of a training checkpoint) as a dict with ``kind``, ``config`` and
    ``state_dict``.

    Args:
        path: the file.
        map_location: passed to :func:`torch.load`.
        mmap: memory-map the file.

    Returns:
        The model record.

    Raises:
        TrainingStateError: a training-state checkpoint without a model record.
        ValueError: a folder, unreadable / unsafe file, or not a model file of this toolkit.
    """
    if path.is_dir():
        hint = f"; did you mean {path / 'model.pt'}?" if (path / "model.pt").is_file() else ""
        raise CheckpointRefused(f"model checkpoint {path} is a folder, not a file{hint}")
    ckpt = load_torch_file(path, map_location, what="model checkpoint", mmap=mmap,
                           objects_advice=f"A model pickled whole (torch.save(model)) is not read: {RESAVE_ADVICE}.")
    if not isinstance(ckpt, dict):
        raise CheckpointRefused(f"{path}: not a model checkpoint (a {type(ckpt).__name__}, expected a dict)")
    if "kind" not in ckpt:
        ckpt = training_state_record(ckpt) or ckpt
    kind = ckpt.get("kind")
    if kind is None or not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("config"), dict):
        objects = ckpt.get("objects")
        if isinstance(objects, dict) and "optimizer" in objects:  # a training state without a model record
            raise TrainingStateError(
                f"{path}: a training-state checkpoint (for --resume; it holds {sorted(objects)}), not a model file: "
                "give the model file the run wrote beside it (pre-training: model.pt or best_model.pt; fine-tuning: "
                "best_model.pt)",
                objects,
            )
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):  # torch.save(model.state_dict())
            raise CheckpointRefused(f"{path}: a bare state_dict of {len(ckpt)} tensor{'s' * (len(ckpt) != 1)} (torch.save(model.state_dict())): "
                                    f"it records no architecture or pre-processing, so no model can be built from it; "
                                    f"{RESAVE_ADVICE}")  # fmt: skip
        raise CheckpointRefused(f"{path}: not a model checkpoint of this toolkit (no 'kind', 'config' and 'state_dict')")
    version = ckpt.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:  # fields this one cannot read
        raise CheckpointRefused(f"{path}: written by a newer release of the toolkit (checkpoint version {version}; this "
                                f"one reads version {VERSION}): update the toolkit to use it")  # fmt: skip
    return ckpt


def recorded_preprocessing(ckpt: Mapping, path: Path) -> PreprocessingSpec | None:
    """The pre-processing a model record states, checked against its network's sizes.

    Args:
        ckpt: the model record.
        path: its file, as messages name it.

    Returns:
        The :class:`PreprocessingSpec`, or ``None`` when none is recorded.

    Raises:
        ValueError: the recorded sizes disagree with the network's config.
    """
    spec = ckpt.get("preprocessing")
    preprocessing = None if spec is None else PreprocessingSpec.from_dict(spec, source=str(path))
    problem = None if preprocessing is None else _sizes_problem(ckpt["config"], preprocessing)
    if problem:
        raise CheckpointRefused(f"{path}: {problem}; the file is inconsistent (written by hand?), so neither can be trusted")
    return preprocessing
