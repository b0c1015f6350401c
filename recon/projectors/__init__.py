"""Differentiable CT projectors: one interface, two backends.

:func:`make_projector` picks ``"astra"`` (ASTRA's CUDA 3D projectors when ASTRA has CUDA and the data lives on a
GPU) or ``"torch"`` (the pure-PyTorch ray marcher, any device) for ``backend="auto"``.
"""

from __future__ import annotations

from recon.geometry import CTGeometry
from recon.projectors.astra_proj import AstraProjector, astra_cuda_available
from recon.projectors.base import BackProjection, ForwardProjection, Projector
from recon.projectors.torch_proj import TorchProjector

__all__ = [
    "Projector",
    "TorchProjector",
    "AstraProjector",
    "ForwardProjection",
    "BackProjection",
    "make_projector",
    "astra_cuda_available",
    "PROJECTOR_BACKENDS",
]

PROJECTOR_BACKENDS = ("auto", "torch", "astra")


def make_projector(geometry: CTGeometry, backend: str = "auto", device="cpu", **kwargs) -> Projector:
    """Build a projector for ``geometry``.

    Args:
        geometry: the scan.
        backend: ``"auto"`` (ASTRA on CUDA devices when ASTRA has CUDA, else PyTorch), ``"torch"`` or ``"astra"``.
        device: where the data will live (decides ``"auto"``).
        kwargs: passed to the backend's constructor (``step`` for torch, ``projector_2d`` for astra).

    Returns:
        A :class:`Projector`.
    """
    if backend not in PROJECTOR_BACKENDS:
        raise ValueError(f"backend must be one of {PROJECTOR_BACKENDS}, got {backend!r}")
    if backend == "auto":
        on_cuda = str(device).startswith("cuda")
        backend = "astra" if on_cuda and astra_cuda_available() else "torch"
    if backend == "astra":
        return AstraProjector(geometry, **kwargs)
    return TorchProjector(geometry, **kwargs)
