"""GViT model files: ``model.pt`` writing and reading (training checkpoints too)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from medgmae.engine import atomic_write
from medgmae.twod.gvit.model import GViT

__all__ = ["load_gvit", "save_gvit"]


def load_gvit(path: str | Path, map_location="cpu", cls: type | None = None) -> nn.Module:
    """Rebuild from a ``model.pt`` (``{"kind": "gvit", "config", "state_dict"}``) or a training checkpoint
    (a dict with ``"model"`` and ``"config"``); ``cls`` is the model class (default :class:`GViT`)."""
    cls = GViT if cls is None else cls
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"cannot read model file {path}: {e}") from e
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"{path} is not a GViT model file (no 'config' entry)")
    if "state_dict" in ckpt:
        if ckpt.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a model of kind {ckpt.get('kind')!r}, expected {cls.kind!r}")
        state = ckpt["state_dict"]
    elif "model" in ckpt:
        state = ckpt["model"]
    else:
        raise ValueError(f"{path} has neither 'state_dict' nor 'model' weights")
    model = cls(**ckpt["config"])
    model.load_state_dict(state)
    model.class_names = ckpt.get("class_names")
    return model


def save_gvit(model: nn.Module, path: str | Path, class_names: Sequence[str] | None = None) -> None:
    """Write ``model.pt`` (``{"kind": "gvit", "config", "state_dict", "class_names"}``) atomically."""
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    with atomic_write(path) as tmp:
        torch.save({"kind": model.kind, "config": model.config(), "state_dict": model.state_dict(), "class_names": names}, tmp)
