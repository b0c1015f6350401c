"""GViT model files: ``model.pt`` in the toolkit's one checkpoint format (:mod:`medgmae.checkpoint`), kind
``gvit`` (or ``patch-vit`` for the baseline), with the class names in ``extra``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch.nn as nn

from medgmae.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from medgmae.twod.gvit.model import GViT

__all__ = ["load_gvit", "save_gvit"]


def load_gvit(path: str | Path, map_location="cpu", cls: type | None = None) -> nn.Module:
    """Rebuild a model from its ``model.pt``; ``cls`` is the model class (default :class:`GViT`).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: unreadable / unsafe file or a checkpoint of another kind (the message names both kinds), or
            config and weights that do not build the model.
    """
    cls = GViT if cls is None else cls
    ckpt = load_checkpoint(path, cls.kind, f"expected a {cls.kind} model.pt", map_location)
    try:
        model = cls(**ckpt.config)
        model.load_state_dict(ckpt.state_dict)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: config/weights do not describe a {cls.__name__} model ({e})") from e
    model.class_names = ckpt.extra.get("class_names")
    return model


def save_gvit(model: nn.Module, path: str | Path, class_names: Sequence[str] | None = None) -> None:
    """Write ``model.pt`` atomically, with ``class_names`` (default: the model's own) in ``extra``."""
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    save_checkpoint(path, make_checkpoint(model.kind, model.config(), model.state_dict(), extra={"class_names": names}))
