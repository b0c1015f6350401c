"""Differentiable voxel-accumulation rendering of 3D Gaussians.

:func:`render_volume` is the public entry point: it validates its inputs, turns scales and quaternions into
precision matrices and cutoff boxes with ordinary (autograd-tracked) PyTorch, and hands the pre-processed
Gaussians to a backend:

* ``"torch"`` (:mod:`medgmae.render._torch_impl`): plain PyTorch, any device, chunked; every Gaussian is
  evaluated on its in-cutoff voxels only, as runs along the last axis (:mod:`medgmae.render._stencil_impl`);
  tile binning (the Triton kernels' scheme) remains as a forced path for comparison.
* ``"triton"`` (:mod:`medgmae.render._triton_impl`): Triton kernels with a hand-written backward. On CUDA tensors
  they compile to GPU kernels; on CPU tensors they run only under ``TRITON_INTERPRET=1`` (as in the tests).

:func:`medgmae.render._reference.render_volume_reference` is the plain dense float64 evaluation of the same
formula (every Gaussian at every voxel), the oracle the backends are tested against.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import numbers
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from medgmae.rotations import quaternion_to_rotation_matrix
from medgmae.render._torch_impl import TILE, count_pairs, render_torch
from medgmae.whole_numbers import whole_sizes

__all__ = [
    "render_volume", "preprocess_gaussians", "count_pairs", "as_cutoff", "BACKENDS", "NonFiniteGaussiansError",
    "resolve_backend", "triton_installed",
]  # fmt: skip

BACKENDS = ("auto", "torch", "triton")


class NonFiniteGaussiansError(ValueError):
    """Gaussians with NaN or infinite parameters reached a renderer (3D or 2D). The data readers refuse non-finite
    voxels and pixels, so in training this means the model diverged; the checkpoint handler says so."""


def as_cutoff(cutoff: Any) -> float:
    """``cutoff`` (a Python or NumPy number, or a 0-d tensor) as a positive finite float.

    Raises:
        ValueError: anything else (a bool, a bool tensor, a string, a value <= 0, NaN or infinity).
    """
    tensor = isinstance(cutoff, Tensor) and cutoff.dim() == 0 and cutoff.dtype != torch.bool
    number = (isinstance(cutoff, numbers.Real) and not isinstance(cutoff, bool)) or tensor
    value = float(cutoff) if number else math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    return value


def _check_inputs(means, scales, quats, intensities, shape, cutoff, backend) -> tuple[tuple[int, ...], float]:
    """Raise a ``ValueError`` naming the first bad argument; return ``(shape, cutoff)`` as ints and a float."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, t in (("means", means), ("scales", scales), ("quats", quats), ("intensities", intensities)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or NumPy array, got {type(t).__name__}")
        if not (t.is_floating_point()):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if means.dim() != 3 or means.shape[-1] != 3:
        raise ValueError(f"means must have shape (B, K, 3), got {tuple(means.shape)}")
    b, k = means.shape[:2]
    if scales.dim() != 3 or scales.shape[-1] != 3:
        raise ValueError(f"scales must have shape (B, K, 3), got {tuple(scales.shape)}")
    if quats.dim() != 3 or quats.shape[-1] != 4:
        raise ValueError(f"quats must have shape (B, K, 4) as (w, x, y, z), got {tuple(quats.shape)}")
    if intensities.dim() != 2:
        raise ValueError(f"intensities must have shape (B, K), got {tuple(intensities.shape)}")
    for name, t in (("scales", scales), ("quats", quats), ("intensities", intensities)):
        if tuple(t.shape[:2]) != (b, k):
            raise ValueError(
                f"{name} has batch/K dims {tuple(t.shape[:2])} but means has {(b, k)}: mismatched batch or K"
            )
    devs = {t.device for t in (means, scales, quats, intensities)}
    if len(devs) != 1:
        raise ValueError(f"means, scales, quats and intensities must be on one device, got {sorted(map(str, devs))}")
    shape_t = whole_sizes(shape, "shape must be a sequence of three positive ints (D, H, W)")
    if len(shape_t) != 3 or any(s <= 0 for s in shape_t):
        raise ValueError(f"shape must be three positive ints (D, H, W), got {shape!r}")
    checked = shape_t, as_cutoff(cutoff)
    if k == 0:
        return checked
    # one host sync for all value checks; find the culprit only on failure
    with torch.no_grad():
        flags = torch.stack(
            [
                ~torch.isfinite(means).all(),
                ~torch.isfinite(scales).all(),
                ~(scales > 0).all(),
                ~torch.isfinite(quats).all(),
                ~(quats.norm(dim=-1) > 0).all(),
                ~torch.isfinite(intensities).all(),
            ]
        ).cpu()
    messages = [
        "means must be finite (found NaN or Inf)",
        "scales must be finite (found NaN or Inf)",
        "scales must be positive (found a value <= 0)",
        "quats must be finite (found NaN or Inf)",
        "quats must be non-zero (found a zero quaternion)",
        "intensities must be finite (found NaN or Inf)",
    ]
    for bad, msg in zip(flags.tolist(), messages):
        if bad:
            raise (NonFiniteGaussiansError if "finite" in msg else ValueError)(msg)
    return checked


def preprocess_gaussians(
    means: Tensor, scales: Tensor, quats: Tensor, intensities: Tensor, cutoff: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Precision "conics", cutoff-box half-widths and the compute dtype for the backends.

    Returns:
        ``(means, conics, intensities, extents)`` in float32 (float64 when any input is float64), with
        ``conics`` ``(B, K, 6)`` = ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)`` of ``P = R diag(1/s^2) R^T`` and ``extents``
        ``(B, K, 3)`` = ``cutoff * sqrt(diag(Sigma))`` (detached).
    """
    dtype = torch.float64 if torch.float64 in (means.dtype, scales.dtype, quats.dtype, intensities.dtype) else torch.float32
    means, scales, quats, intensities = (t.to(dtype) for t in (means, scales, quats, intensities))
    rot = quaternion_to_rotation_matrix(quats)  # (B, K, 3, 3)
    prec = (rot * scales.unsqueeze(-2).square().reciprocal()) @ rot.transpose(-1, -2)
    conics = torch.stack(
        [prec[..., 0, 0], prec[..., 1, 1], prec[..., 2, 2], prec[..., 0, 1], prec[..., 0, 2], prec[..., 1, 2]], -1
    )
    with torch.no_grad():
        var_diag = (rot.square() * scales.unsqueeze(-2).square()).sum(-1)  # diag(R S^2 R^T)
        extents = cutoff * var_diag.sqrt()
    return means, conics, intensities, extents


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend :func:`render_volume` uses for ``backend`` on ``device``: ``"auto"`` is triton on CUDA where the
    ``triton`` package is installed (a warning, once, where it is not: the PyTorch path, slower), torch elsewhere;
    ``"torch"`` and ``"triton"`` are returned as they are."""
    if backend != "auto":
        return backend
    if torch.device(device).type != "cuda":
        return "torch"
    if triton_installed():
        return "triton"
    _note_once("triton is not installed; rendering 3D Gaussians with the PyTorch renderer on the GPU instead (slower: "
               "install triton, which torch's Linux CUDA wheels bring, for its kernels)")  # fmt: skip
    return "torch"


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (looked for, not imported: once imported, found at once)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent package
        return False


@functools.lru_cache(maxsize=None)
def _note_once(message: str) -> None:
    """Log a warning once per process (as the 2D renderer's gsplat fallback does)."""
    logging.getLogger("medgmae.render").warning("%s", message)


def _triton_usable(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def render_volume(
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    intensities: Tensor,
    shape: Sequence[int],
    cutoff: float = 3.0,
    backend: str = "auto",
) -> Tensor:
    """Render 3D Gaussians into a voxel volume by summing their (truncated) densities.

    ``V(x) = sum_i I_i exp(-1/2 d^T Sigma_i^-1 d)``, ``d = x - mu_i``, ``Sigma_i = R_i diag(s_i^2) R_i^T``; a term is
    dropped where the Mahalanobis distance ``sqrt(d^T Sigma_i^-1 d)`` exceeds ``cutoff``.

    The four Gaussian inputs are tensors or NumPy arrays (taken as tensors on the CPU, dtype kept).

    Args:
        means: ``(B, K, 3)`` positions in voxel-index coordinates along the output's three spatial dims
            (voxel centre ``j`` is at ``j``).
        scales: ``(B, K, 3)`` positive standard deviations in voxels along each Gaussian's own axes.
        quats: ``(B, K, 4)`` rotations as ``(w, x, y, z)``; normalised inside.
        intensities: ``(B, K)``.
        shape: ``(D, H, W)`` of the output.
        cutoff: Mahalanobis distance beyond which a Gaussian contributes nothing.
        backend: ``"torch"``, ``"triton"`` or ``"auto"`` (triton for CUDA tensors, torch otherwise).

    Returns:
        ``(B, D, H, W)`` float32 volume (float64 if any input is float64), differentiable with respect to all
        four Gaussian inputs. Computation happens in float32 even under autocast (bf16 inputs are upcast);
        the torch backend computes in float64 for float64 inputs, the triton backend computes in float32 also
        then (float64 output with float32-accurate values).

    Raises:
        ValueError: on wrong ranks/shapes, mismatched batch or K, non-positive or non-finite scales, zero
            quaternions, non-finite means or intensities, an empty shape, or an unknown backend.
    """
    gaussians = (means, scales, quats, intensities)
    means, scales, quats, intensities = (torch.as_tensor(t) if isinstance(t, np.ndarray) else t for t in gaussians)
    shape, cutoff = _check_inputs(means, scales, quats, intensities, shape, cutoff, backend)
    b, k = means.shape[:2]
    device = means.device
    backend = resolve_backend(backend, device)
    if backend == "triton" and not _triton_usable(device):
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on the CPU); "
            f"got tensors on {device}"
        )
    with torch.autocast(device_type=device.type, enabled=False):
        if k == 0:
            wide = torch.float64 in (means.dtype, scales.dtype, quats.dtype, intensities.dtype)
            dtype = torch.float64 if wide else torch.float32
            zero = (means.sum() + scales.sum() + quats.sum() + intensities.sum()).to(dtype) * 0
            return zero + torch.zeros((b, *shape), device=device, dtype=dtype)
        m, conics, inten, extents = preprocess_gaussians(means, scales, quats, intensities, cutoff)
        if backend == "triton":
            from medgmae.render._triton_impl import render_triton

            return render_triton(m, conics, inten, extents, shape, float(cutoff))
        return render_torch(m, conics, inten, extents, shape, float(cutoff), TILE)
