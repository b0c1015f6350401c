"""Differentiable CT projectors: one interface, three backends.

:func:`make_projector` picks ``"astra"`` (ASTRA's CUDA 3D projectors when ASTRA has CUDA and the data lives on a
GPU) or ``"torch"`` (the pure-PyTorch ray marcher, any device) for ``backend="auto"``; on the CPU, parallel beam goes
to ASTRA's 2D projectors, slice by slice, and cone beam to ``"matrix"`` (the ray marcher's operator as one sparse
matrix) when that matrix fits :data:`MATRIX_BUDGET_BYTES`.
"""

from __future__ import annotations

import logging

from medgmae.engine.devices import usable_device
from medgmae.words import byte_size
from recon.cli_names import PROJECTOR_BACKENDS
from recon.geometry import CTGeometry
from recon.projectors.astra_proj import (
    AstraProjector, astra_cpu_problem, astra_cpu_supports, astra_cuda_available, astra_installed,
)  # fmt: skip
from recon.projectors import ray_matrix
from recon.projectors.base import BackProjection, ForwardProjection, Projector, check_geometry
from recon.projectors.ray_matrix import MATRIX_BUDGET_BYTES, RayMatrixProjector, estimate_matrix_bytes
from recon.projectors.torch_proj import TorchProjector

__all__ = [
    "Projector",
    "TorchProjector",
    "AstraProjector",
    "RayMatrixProjector",
    "ForwardProjection",
    "BackProjection",
    "make_projector",
    "resolve_backend",
    "simulation_backend",
    "describe_backend",
    "slow_backend_note",
    "astra_cpu_supports",
    "astra_cuda_available",
    "PROJECTOR_BACKENDS",
    "MATRIX_BUDGET_BYTES",
    "estimate_matrix_bytes",
]

logger = logging.getLogger("recon")


def resolve_backend(geometry: CTGeometry, backend: str = "auto", device="cpu", step: float = 0.5) -> str:
    """The backend :func:`make_projector` builds for ``backend`` (``"auto"`` resolved as described there).

    Args:
        geometry: the scan.
        backend: one of :data:`PROJECTOR_BACKENDS`.
        device: where the data will live.
        step: the ray marcher's step (voxels), which sizes the sparse matrix.

    Returns:
        ``"torch"``, ``"astra"`` or ``"matrix"``.

    Raises:
        ValueError: an unknown backend, or a CUDA device on a machine without one
            (:func:`~medgmae.engine.devices.usable_device`).
    """
    check_geometry(geometry)
    device = usable_device(device)
    if backend not in PROJECTOR_BACKENDS:
        raise ValueError(f"backend must be one of {PROJECTOR_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    # ASTRA's CUDA 3D projectors on the GPU; on the CPU, ASTRA's 2D projectors slice by slice for parallel
    # beam (about 25x faster than the PyTorch ray marcher on a 160 x 128 x 112 volume, 30 views: 1.5 s against
    # 39 s for a forward and adjoint); ASTRA has no CPU cone beam, so there the ray marcher's own operator is
    # precomputed as a sparse matrix when it fits the memory budget (bench/RESULTS.md, "CPU cone beam").
    if str(device).startswith("cuda"):
        return "astra" if astra_cuda_available() else "torch"
    if astra_cpu_supports(geometry):
        return "astra"
    if geometry.kind == "cone" and estimate_matrix_bytes(geometry, step) <= ray_matrix.MATRIX_BUDGET_BYTES:
        return "matrix"
    return "torch"


def simulation_backend(geometry: CTGeometry, device="cpu") -> str:
    """The backend ``medgmae-recon simulate`` asks :func:`make_projector` for (:func:`resolve_backend` then resolves
    it): ``"torch"`` for cone beam on the CPU, where building the sparse matrix would cost more than the ray
    marcher's one pass over the scan, else ``"auto"``.

    Args:
        geometry: the scan to simulate.
        device: where the volume is projected.

    Returns:
        ``"torch"`` or ``"auto"``.
    """
    return "torch" if geometry.kind == "cone" and usable_device(device).type == "cpu" else "auto"


def describe_backend(backend: str, device="cpu") -> str:
    """A few words naming a resolved backend (:func:`resolve_backend`) as it runs on ``device``."""
    on_cuda = str(device).startswith("cuda")
    return {"astra": "ASTRA 3D, CUDA" if on_cuda else "ASTRA 2D, slice by slice", "matrix": "the ray marcher's operator as one sparse matrix",
            "torch": "PyTorch ray marcher"}[backend]  # fmt: skip


def slow_backend_note(geometry: CTGeometry, step: float = 0.5) -> str | None:
    """Why ``backend="auto"`` chose the PyTorch ray marcher on the CPU for ``geometry``, and how to get a faster
    backend: ASTRA's 2D projectors do not take this parallel-beam scan (:func:`astra_cpu_problem`), or this cone
    beam's sparse matrix is over :data:`~recon.projectors.ray_matrix.MATRIX_BUDGET_BYTES`; ``None`` where no faster
    CPU backend is near (parallel beam without astra-toolbox). :func:`make_projector` logs it as a warning.

    Args:
        geometry: the scan, one ``"auto"`` resolves to ``"torch"`` on the CPU (:func:`resolve_backend`).
        step: the ray marcher's step (voxels), which sizes the sparse matrix.
    """
    if geometry.kind == "parallel":
        problem = astra_cpu_problem(geometry)
        if not (problem and astra_installed()):
            return None
        return (f"ASTRA's CPU projectors cannot take this scan ({problem}); the PyTorch ray marcher is much slower "
                "on the CPU (resample the volume to square in-plane voxels, one detector row per slice, for ASTRA)")  # fmt: skip
    need, budget = (byte_size(n, binary=True) for n in (estimate_matrix_bytes(geometry, step), ray_matrix.MATRIX_BUDGET_BYTES))
    return (f"this cone beam's sparse matrix would take up to {need}, over the {budget} that backend 'auto' builds on "
            "the CPU, so it projects with the PyTorch ray marcher, much slower (fewer views or a "
            "coarser volume grid fit the matrix; backend 'matrix' builds it anyway, briefly needing about 2.5 times "
            "that memory; a GPU runs ASTRA or the ray marcher fast)")  # fmt: skip


def make_projector(geometry: CTGeometry, backend: str = "auto", device="cpu", **kwargs) -> Projector:
    """Build a projector for ``geometry``.

    Args:
        geometry: the scan.
        backend: ``"auto"`` (ASTRA on CUDA devices when ASTRA has CUDA; on the CPU, ASTRA's 2D path for the
            parallel-beam geometries it takes, whether or not ASTRA has CUDA, and the sparse matrix for cone beam
            when its bound fits ``ray_matrix.MATRIX_BUDGET_BYTES``; else PyTorch), ``"torch"``, ``"astra"`` or
            ``"matrix"``. The ASTRA projector itself routes by the tensors' device, so a choice made for the CPU
            holds on any machine; the matrix works on the CPU (other devices' tensors are copied there and back).
        device: where the data will live (decides ``"auto"``); CUDA on a machine without it is refused
            (:func:`resolve_backend`).
        kwargs: passed to the backend's constructor (``step`` for torch and matrix, ``projector_2d`` for astra).

    Returns:
        A :class:`Projector`. Where ``"auto"`` falls back to the PyTorch ray marcher on the CPU, many times slower,
        a warning on the ``recon`` logger says why and what gives a faster one (:func:`slow_backend_note`).
    """
    chosen = resolve_backend(geometry, backend, device, kwargs.get("step", 0.5))
    if backend == "auto" and chosen == "torch" and usable_device(device).type == "cpu":
        note = slow_backend_note(geometry, kwargs.get("step", 0.5))
        if note:
            logger.warning(note)
    backend = chosen
    if backend == "astra":
        return AstraProjector(geometry, **kwargs)
    if backend == "matrix":
        return RayMatrixProjector(geometry, **kwargs)
    return TorchProjector(geometry, **kwargs)
