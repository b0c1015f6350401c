"""The fine-tuned UNETR's file, ``best_model.pt``: written when validation improves, read back for evaluation,
inference and export.

The file is a :mod:`medgmae.checkpoint` model file of kind ``medgmae-unetr``: the network's ``config()`` plus the
run's ``class_names`` (label order, background first), the weights, the run's pre-processing and
``extra = {"epoch", "metric_name", "metric", "run"}``, ``run`` the training run's seed and data loader workers
(:func:`medgmae.checkpoint.run_record`; a file written before it was recorded has none).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch

from medgmae.checkpoint import Checkpoint, load_checkpoint, lost_best_warning, make_checkpoint, run_record
from medgmae.engine import is_main_process, unwrap_model
from medgmae.finetune.classes import run_label_names
from medgmae.networks.unetr import MedGMAEUNETR
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

__all__ = ["FINETUNED_KIND", "load_finetuned", "finetuned_model_check", "finetuned_model_record", "warn_if_training",
           "BestCheckpointSaver"]

logger = logging.getLogger(__name__)

#: the checkpoint kind of a fine-tuned UNETR
FINETUNED_KIND = "medgmae-unetr"


def finetuned_model_check(value, purpose: str = "evaluation and inference need the best_model.pt of a fine-tuning run") -> None:
    """The ``checkpoint`` kind of the evaluation and inference bundles' settings check
    (:func:`medgmae.bundle_checks.check_settings`): a fine-tuned UNETR file (kind and config read memory-mapped), so
    that a missing one (a wrong ``--output_dir``, a run that saved none) or one of another kind is a bad setting,
    named before anything is read or written."""
    if not str(value or "").strip():  # Path("") is the current folder, "a folder, not a file"
        raise ValueError("expected the path of a fine-tuning run's best_model.pt, got an empty value")
    path = Path(str(value)).expanduser()
    try:
        load_checkpoint(path, FINETUNED_KIND, purpose, mmap=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (the best_model.pt of a fine-tuning run)") from None


def load_finetuned(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    purpose: str = "evaluation and inference need the best_model.pt of a fine-tuning run",
) -> MedGMAEUNETR:
    """Rebuild a fine-tuned :class:`MedGMAEUNETR` from ``best_model.pt``; its recorded pre-processing is set as
    the network's ``preprocessing`` attribute and its class names (label order) as ``class_names`` (a file that
    records none: the names of the run's datalist, see :func:`~medgmae.finetune.classes.run_label_names`).

    Args:
        path: the checkpoint.
        map_location: device for its weights.
        purpose: what needs the file, said when it is of another kind.

    Returns:
        The network, in train mode as built, with ``preprocessing``, ``class_names`` and ``run_settings`` (the
        training run's ``{"seed", "num_workers"}``, ``None`` for a file that records none) set.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not a fine-tuned UNETR (the message names both kinds), or its class names do not
            number its output channels.
    """
    ckpt = load_checkpoint(path, FINETUNED_KIND, purpose, map_location)
    cfg = dict(ckpt.config)
    out_channels, feature_size, names = cfg.pop("out_channels"), cfg.pop("feature_size"), cfg.pop("class_names", None)
    if names is not None and len(names) != out_channels:
        raise ValueError(f"{path}: records {len(names)} class names for {out_channels} output channels")
    net = MedGMAEUNETR(out_channels, encoder=MaskedViTEncoder(**cfg), feature_size=feature_size)
    net.load_state_dict(ckpt.state_dict, strict=True)
    net.preprocessing = ckpt.preprocessing
    net.class_names = [str(n) for n in names] if names is not None else run_label_names(path, out_channels)
    net.run_settings = ckpt.run  # None: a file written before the run was recorded
    return net


def finetuned_model_record(path: str | Path, checkpoint: Checkpoint | None = None) -> dict:
    """Which model a result came from, for the results' ``metrics.json``: the epoch and validation metric
    ``best_model.pt`` records, its size and modification time (UTC), so that a result left beside a later run's
    file of the same path reads as the earlier model's; ``checkpoint``: the file as already read (else it is read,
    memory-mapped)."""
    import datetime

    from medgmae.data.fingerprint import file_fingerprint

    ckpt = checkpoint if checkpoint is not None else load_checkpoint(path, FINETUNED_KIND, mmap=True)
    extra = dict(ckpt.extra or {})
    size, mtime_ns = file_fingerprint(path) or (None, None)
    modified = None if mtime_ns is None else datetime.datetime.fromtimestamp(mtime_ns / 1e9, datetime.timezone.utc)
    return {"epoch": extra.get("epoch"), "metric_name": extra.get("metric_name"), "metric": extra.get("metric"),
            "size_bytes": size, "modified_utc": None if modified is None else modified.isoformat(timespec="seconds")}  # fmt: skip


def warn_if_training(checkpoint: str | Path) -> bool:
    """Warn, one line, when another run (a training run) holds the folder of ``checkpoint`` (:func:`medgmae.folder_lock.folder_holder`,
    which does not take its lock): its ``best_model.pt`` may still be replaced by a later epoch's, and a result of
    this one then no longer describes the run's model (``medgmae-runs-table`` says so, by the result's
    :func:`finetuned_model_record`).

    Args:
        checkpoint: the ``best_model.pt`` an evaluation reads.

    Returns:
        Whether it warned (never for a lock this process holds, nor where the host cannot tell who holds it).
    """
    import os

    from medgmae.folder_lock import folder_holder

    if not str(checkpoint or "").strip():
        raise ValueError("checkpoint: expected the path of a fine-tuning run's best_model.pt, got an empty value")
    folder = Path(str(checkpoint)).expanduser().parent
    held = folder_holder(folder)
    if held is None or held[0] == os.getpid():
        return False
    logger.warning("%s: another run holds this run folder (process %d%s): where it is training, its best_model.pt "
                   "may be replaced by a later epoch's after this evaluation; evaluate again once it has ended",
                   folder, held[0], f": {held[1]}" if held[1] else "")  # fmt: skip
    return True


class BestCheckpointSaver:
    """Save ``best_model.pt`` atomically whenever a validation metric improves (attach to the evaluator).

    The file is a :mod:`medgmae.checkpoint` model file of kind ``medgmae-unetr`` with the run's pre-processing, its
    class names (in the config, ``class_names``) and ``extra = {"epoch", "metric_name", "metric"}`` (and ``"run"``
    when ``run`` is given), readable by :func:`load_finetuned`. The best value so far is
    part of ``state_dict()`` so that resumed runs keep it, as long as the file still holds that epoch's model
    (:meth:`load_state_dict`).

    Args:
        output_dir: run folder.
        network: the :class:`MedGMAEUNETR` being trained.
        metric_name: key in ``engine.state.metrics`` (higher is better).
        filename: file name.
        preprocessing: the run's pre-processing, recorded in the file for evaluation and inference.
        label_names: the run's class names in label order, background first (one per output channel), recorded
            for evaluation, inference and export; ``None`` records none.
        run: the training run's seed and data loader workers, ``{"seed", "num_workers"}``
            (:func:`medgmae.checkpoint.run_record`), recorded as ``extra["run"]``; ``None`` records none.
    """

    def __init__(
        self,
        output_dir: str | Path,
        network: MedGMAEUNETR,
        metric_name: str = "val_mean_dice",
        filename: str = "best_model.pt",
        preprocessing: PreprocessingSpec | None = None,
        label_names: Sequence[str] | None = None,
        run: Mapping | None = None,
    ) -> None:
        if not hasattr(network, "config"):
            raise ValueError(f"{type(network).__name__} has no config(); use MedGMAEUNETR")
        channels = network.config().get("out_channels")
        if label_names is not None and len(label_names) != channels:
            raise ValueError(f"BestCheckpointSaver: {len(label_names)} label_names for a network of {channels} classes")
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.path, self.network, self.metric_name = Path(output_dir) / filename, network, metric_name
        self.best, self.best_epoch = -float("inf"), 0
        self.preprocessing = preprocessing
        self.run_settings = None if run is None else run_record(run)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_engine_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _restore_engine_best(self, engine) -> None:
        """Give a MONAI evaluator built by a resumed run the best value so far: its own ``best_metric`` starts
        afresh, and it would log a worse epoch as a "new best" and report it as the run's best."""
        best = getattr(engine.state, "best_metric", None)
        if self.best_epoch and isinstance(best, (int, float)) and best < self.best:
            engine.state.best_metric, engine.state.best_metric_epoch = self.best, self.best_epoch

    def __call__(self, engine) -> None:
        from medgmae.torch_files import save_torch_atomic

        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"metric '{self.metric_name}' not computed; available: {sorted(engine.state.metrics)}")
        value = float(engine.state.metrics[self.metric_name])
        if not value > self.best:  # NaN never improves
            return
        self.best, self.best_epoch = value, int(engine.state.epoch)
        net = unwrap_model(self.network)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        config = net.config() if self.label_names is None else {**net.config(), "class_names": self.label_names}
        payload = make_checkpoint(FINETUNED_KIND, config, state, self.preprocessing, run=self.run_settings,
                                  extra={"epoch": self.best_epoch, "metric_name": self.metric_name, "metric": value})
        save_torch_atomic(payload, self.path)
        logger.info("new best %s %.4f at epoch %d -> %s", self.metric_name, value, self.best_epoch, self.path)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore the best value and epoch of a resumed run, then check the file (main process): a restored best
        epoch whose ``best_model.pt`` is missing, unreadable or of another epoch
        (:func:`~medgmae.checkpoint.lost_best_warning`) is warned about and forgotten, so that the next validation
        writes the file and the run's best is that of a model it has.

        Args:
            state: a :meth:`state_dict`.
        """
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        if self.best_epoch <= 0 or not is_main_process():
            return
        best = f"best {self.metric_name} {self.best:.4f}"
        if lost := lost_best_warning(self.path, self.best_epoch, best, lambda extra: extra.get("epoch"), FINETUNED_KIND):
            logger.warning("%s", lost)
            self.best, self.best_epoch = -float("inf"), 0
