"""CT reconstruction: geometries, differentiable projectors, FBP/FDK and Gaussian (3DGR-CT) reconstruction
with random, FBP or zero-shot MedGMAE initialisation.

The names below are imported on first use, so that ``python -m recon`` reaches its ``__main__`` (and its Ctrl-C
handling) before torch is imported."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CTGeometry", "Projector", "TorchProjector", "AstraProjector", "make_projector"]

_HOMES = {"CTGeometry": "recon.geometry", "Projector": "recon.projectors", "TorchProjector": "recon.projectors",
          "AstraProjector": "recon.projectors", "make_projector": "recon.projectors"}  # fmt: skip


def __getattr__(name: str) -> Any:
    """One of :data:`__all__`, imported from its module on first use.

    Args:
        name: the attribute asked for.

    Returns:
        The class or function of that name.
    """
    if name not in _HOMES:
        raise AttributeError(f"module 'recon' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
