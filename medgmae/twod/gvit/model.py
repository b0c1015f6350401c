"""GViT: the Gaussian encoder and the Gaussian-token classifier together, and its model files.

Model files are ``model.pt`` in the toolkit's one checkpoint format (:mod:`medgmae.checkpoint`), kind ``gvit``
(or ``patch-vit`` for the baseline), with the class names, the training data's settings (``data``: dataset
folder or phantom-task settings, seed, validation fraction, image size; see
:func:`medgmae.twod.classification_data.resolve_classification_data`) and how it was trained (``training``: epochs,
optimiser, reconstruction loss and guidance; see :meth:`medgmae.twod.gvit_train.GViTWorkflow.training_settings`)
in ``extra``, and the training run's seed and data loader workers (``run``: :func:`medgmae.checkpoint.run_record`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from medgmae.checkpoint import Checkpoint, load_checkpoint, make_checkpoint, save_checkpoint
from medgmae.checkpoint_checks import CheckpointRefused, TrainingStateError
from medgmae.twod.gvit.classifier import CLASSIFIER_FREQS, LEGACY_CLASSIFIER_FREQS, GaussianViTClassifier, vit_preset
from medgmae.twod.gvit.encoder import DenoisingGaussianEncoder

__all__ = ["GViT", "load_gvit", "save_gvit", "read_gvit_file", "model_path_check", "is_gvit_training_state"]


class GViT(nn.Module):
    """Gaussian encoder plus Gaussian-token classifier; ``forward(images) -> logits``.

    Args:
        in_channels: image channels (1 or 3).
        img_size: image size ``(H, W)`` or an int.
        num_classes: number of classes.
        num_gaussians: K Gaussians per image.
        model_size: a :data:`~medgmae.networks.vit.VIT_PRESETS` key, used for the encoder and the classifier.
        patch_size: encoder patch edge.
        mode: encoder variant, ``"denoising"`` or ``"queries"``.
        scale_factor: the scale bound ``c``.
        classifier_freqs: Fourier octaves of the centres in the classifier's token embedding (see
            :class:`~medgmae.twod.gvit.GaussianViTClassifier`); a ``model.pt`` that does not record it was made
            with 6.
    """

    kind = "gvit"

    def __init__(
        self,
        in_channels: int = 3,
        img_size: Sequence[int] | int = 32,
        num_classes: int = 2,
        num_gaussians: int = 64,
        model_size: str = "tiny",
        patch_size: Sequence[int] | int = 4,
        mode: str = "denoising",
        scale_factor: float = 1.0,
        classifier_freqs: int = CLASSIFIER_FREQS,
    ) -> None:
        super().__init__()
        # the images it reads (medgmae.twod.images) are grey or RGB
        if isinstance(in_channels, bool) or in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        in_channels = int(in_channels)  # 3.0 or np.int64(3) as 3
        p = vit_preset(model_size)
        self.model_size = model_size
        self.encoder = DenoisingGaussianEncoder(
            in_channels, img_size, patch_size, num_gaussians, p.hidden_size, p.num_layers, p.num_heads, p.mlp_ratio,
            mode=mode, scale_factor=scale_factor,
        )  # fmt: skip
        self.classifier = GaussianViTClassifier(
            in_channels, num_classes, p.hidden_size, p.num_layers, p.num_heads, p.mlp_ratio, scale_factor, classifier_freqs
        )

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.encoder.vit.img_size)

    @property
    def in_channels(self) -> int:
        return self.encoder.in_channels

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def config(self) -> dict:
        """Constructor arguments, saved beside the weights."""
        e = self.encoder
        return dict(
            in_channels=e.in_channels, img_size=list(e.vit.img_size), num_classes=self.classifier.num_classes,
            num_gaussians=e.num_gaussians, model_size=self.model_size, patch_size=list(e.vit.patch_size),
            mode=e.mode, scale_factor=e.scale_factor, classifier_freqs=self.classifier.num_freqs,
        )  # fmt: skip

    def gaussians(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Raw Gaussians ``(B, K, 6 + C)`` of images ``x``."""
        return self.encoder(x, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, num_classes)``."""
        return self.classifier(self.encoder(x))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location="cpu") -> "GViT":
        """Rebuild from a ``model.pt``, in eval mode (see :func:`load_gvit`)."""
        return load_gvit(path, map_location, cls)

    def save(
        self, path: str | Path, class_names: Sequence[str] | None = None, data: Mapping | None = None,
        training: Mapping | None = None, run: Mapping | None = None,
    ) -> None:  # fmt: skip
        """Write ``model.pt`` atomically (see :func:`save_gvit`)."""
        save_gvit(self, path, class_names, data, training, run)


def read_gvit_file(path: str | Path, kind: str = "gvit", map_location="cpu", mmap: bool = False) -> Checkpoint:
    """The model file ``path`` of ``kind`` (:func:`~medgmae.checkpoint.load_checkpoint`); a training-state
    checkpoint, such as a GViT phase's, is refused as one (:class:`~medgmae.checkpoint_checks.CheckpointRefused`,
    naming the model.pt to give).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: as :func:`load_gvit`.
    """
    try:
        return load_checkpoint(path, kind, f"expected a {kind} model.pt", map_location, mmap=mmap)
    except TrainingStateError as e:
        if "model" not in e.objects:
            raise
        what = "GViT training checkpoint (a phase's state" if is_gvit_training_state(e.objects) else (
            "training-state checkpoint (a run's state")
        raise CheckpointRefused(f"{path}: a {what}, for --resume; it holds {sorted(e.objects)}), not a model file: "
                                "give the GViT run's model.pt") from None


def model_path_check(value) -> None:
    """The ``model_path`` kind of the GViT evaluation and inference bundles' settings check
    (:func:`medgmae.bundle_checks.check_settings`): a GViT ``model.pt`` (kind and config read memory-mapped), so
    that a missing or wrong file is a bad setting, named before anything is read or written."""
    if not str(value or "").strip():
        raise ValueError("no model given: set model_path (e.g. --model_path runs/gvit/model.pt)")
    try:
        read_gvit_file(Path(str(value)).expanduser(), mmap=True)
    except FileNotFoundError:
        raise ValueError(f"{value}: no such file (the model.pt of a GViT training run)") from None


def load_gvit(path: str | Path, map_location="cpu", cls: type | None = None) -> nn.Module:
    """Rebuild a model from its ``model.pt``; ``cls`` is the model class (default :class:`GViT`).

    The model is returned in eval mode, so that ``load_gvit(path)(x)`` is the same on every call (in training mode
    each call draws new initial Gaussians); call ``.train()`` on it to train it further.

    Args:
        path: the ``model.pt``.
        map_location: passed to :func:`torch.load`.
        cls: the model class (default :class:`GViT`).

    Returns:
        The model, in eval mode, with ``class_names``, ``data_settings``, ``training_settings`` and ``run_settings``
        (the training run's seed and loader workers) from the file (``None`` where a file written before records none).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: unreadable / unsafe file, a checkpoint of another kind (the message names both kinds), a
            training-state checkpoint (named as a GViT phase's when it is one), or config and weights that do not
            build the model.
    """
    cls = GViT if cls is None else cls
    ckpt = read_gvit_file(path, cls.kind, map_location)
    try:
        model = cls(**{"classifier_freqs": LEGACY_CLASSIFIER_FREQS, **ckpt.config})  # files from before the setting
        model.load_state_dict(ckpt.state_dict)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: config/weights do not describe a {cls.__name__} model ({e})") from e
    model.class_names = ckpt.extra.get("class_names")
    model.data_settings = ckpt.extra.get("data")
    model.training_settings = ckpt.extra.get("training")  # None: a file written before it was recorded
    model.run_settings = ckpt.run  # likewise
    return model.eval()


def is_gvit_training_state(objects: Mapping) -> bool:
    """Whether a training state's ``objects`` (as :class:`~medgmae.checkpoint_checks.TrainingStateError` carries them,
    read once by :func:`~medgmae.checkpoint.load_checkpoint`) are a GViT training phase's
    (``checkpoints/<phase>/checkpoint_epoch=N.pt``): model weights and a settings record
    (:func:`medgmae.twod.gvit_phases.resume_records`) holding a GViT configuration.

    Args:
        objects: the checkpoint's ``objects``.

    Returns:
        ``True`` for a GViT phase's checkpoint.
    """
    record = objects.get("settings") if "model" in objects else None
    settings = record.get("settings") if isinstance(record, dict) else None
    config = settings.get("model") if isinstance(settings, dict) else None
    params = set(inspect.signature(GViT.__init__).parameters) - {"self"}
    return isinstance(config, dict) and "num_classes" in config and set(config) <= params


def save_gvit(
    model: nn.Module, path: str | Path, class_names: Sequence[str] | None = None, data: Mapping | None = None,
    training: Mapping | None = None, run: Mapping | None = None,
) -> None:  # fmt: skip
    """Write ``model.pt`` atomically.

    Args:
        model: the model.
        path: the file to write.
        class_names: class index -> name (default: the model's own ``class_names``).
        data: the training data's settings (default: the model's ``data_settings``).
        training: how it was trained, plain data (default: the model's ``training_settings``).
        run: the training run's ``{"seed", "num_workers"}`` (:func:`medgmae.checkpoint.run_record`; default: the
            model's ``run_settings``), ``extra["run"]``; none recorded when neither is given.
    """
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    data = dict(data) if data is not None else getattr(model, "data_settings", None)
    training = dict(training) if training is not None else getattr(model, "training_settings", None)
    run = run if run is not None else getattr(model, "run_settings", None)
    extra = {"class_names": names, "data": data, "training": training}
    save_checkpoint(path, make_checkpoint(model.kind, model.config(), model.state_dict(), extra=extra, run=run))
