"""Differentiable splatting of 3D Gaussians onto an image plane with a fixed orthographic camera.

:func:`render_gaussians_2d` is the public entry point shared by 2D GMAE and GViT. It validates its inputs and
dispatches to a backend:

* ``"gsplat"``: :func:`gsplat.rasterization` with ``camera_model="ortho"`` (CUDA tensors only;
  :mod:`medgmae.twod.gsplat_backend`).
* ``"torch"``: plain PyTorch front-to-back alpha compositing of the same projected 2D Gaussians, chunked over
  pixels, any device (:mod:`medgmae.twod.compositor`). It is the CPU path and the test oracle of the gsplat path.
* ``"auto"``: gsplat for CUDA tensors, torch otherwise; on CUDA it falls back to torch, with a one-line warning
  logged once per process, where gsplat's CUDA extension cannot be built or loaded (for instance no ``nvcc`` for its
  just-in-time build). :func:`resolve_backend_2d` makes this choice.

Frame and camera. ``x`` runs along the image width to the right and ``y`` along the height downwards, both in
``[-1, 1]`` with -1/+1 the *outer edges* of the first/last pixel, so pixel ``(i, j)`` of an ``H x W`` image has
its centre at ``x = 2 (j + 0.5) / W - 1``, ``y = 2 (i + 0.5) / H - 1``. ``z`` is depth: smaller is nearer, and
Gaussians are composited front to back in increasing ``z`` (ties keep the input order). The camera looks down
``+z`` orthographically, so a Gaussian's image-plane covariance is the top-left ``2 x 2`` block of
``R S S^T R^T`` (in pixels: scaled by ``W / 2`` along x and ``H / 2`` along y).

The conventions shared by both backends (gsplat 1.5's ``"classic"`` rasterisation: low-pass dilation, alpha clamp
and threshold, early stop) are listed in :mod:`medgmae.twod.compositor`.

:func:`render_planar_gaussians` renders planar Gaussians (a 2D centre, two scales and an angle each, depth given by
their order), GViT's tokens, through :func:`render_gaussians_2d`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from medgmae.render import NonFiniteGaussiansError
from medgmae.twod.compositor import render_torch
from medgmae.twod.gsplat_backend import BACKENDS, render_gsplat, resolve_backend_2d
from medgmae.whole_numbers import whole_sizes

__all__ = ["render_gaussians_2d", "render_planar_gaussians"]


def _check_inputs(means, scales, quats, colors, opacities, image_size, backend, background) -> tuple[int, int]:
    """Validate :func:`render_gaussians_2d`'s arguments (ValueError naming the first bad one); returns ``(H, W)``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    named = (("means", means), ("scales", scales), ("quats", quats), ("colors", colors), ("opacities", opacities))
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or NumPy array, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if means.dim() != 3 or means.shape[-1] != 3:
        raise ValueError(f"means must have shape (B, K, 3) as (x, y, z), got {tuple(means.shape)}")
    b, k = means.shape[:2]
    expected = {"scales": (b, k, 3), "quats": (b, k, 4), "opacities": (b, k)}
    for name, t in (("scales", scales), ("quats", quats), ("opacities", opacities)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} to match means {tuple(means.shape)}, got {tuple(t.shape)}")
    if colors.dim() != 3 or tuple(colors.shape[:2]) != (b, k) or colors.shape[-1] < 1:
        raise ValueError(f"colors must have shape ({b}, {k}, C) with C >= 1 to match means, got {tuple(colors.shape)}")
    devices = {t.device for _, t in named}
    if len(devices) != 1:
        raise ValueError(f"means, scales, quats, colors and opacities must be on one device, got {sorted(map(str, devices))}")
    size = whole_sizes(image_size, "image_size must be two positive ints (H, W)")  # 4.5 refused, not truncated
    if len(size) != 2 or any(s <= 0 for s in size):
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
    if background is not None:
        if not isinstance(background, Tensor) or background.shape not in ((colors.shape[-1],), (b, colors.shape[-1])):
            shape = tuple(background.shape) if isinstance(background, Tensor) else type(background).__name__
            raise ValueError(f"background must be a tensor of shape ({colors.shape[-1]},) or ({b}, {colors.shape[-1]}), got {shape}")
    if k > 0:
        with torch.no_grad():
            flags = torch.stack(
                [
                    ~torch.isfinite(means).all(),
                    ~(torch.isfinite(scales) & (scales > 0)).all(),
                    ~(torch.isfinite(quats).all() & (quats.norm(dim=-1) > 0).all()),
                    ~torch.isfinite(colors).all(),
                    ~((opacities >= 0) & (opacities <= 1)).all(),
                ]
            ).cpu()
        messages = (
            "means must be finite (found NaN or Inf)",
            "scales must be finite and positive",
            "quats must be finite and non-zero",
            "colors must be finite (found NaN or Inf)",
            "opacities must be in [0, 1] (found a value outside it or NaN)",
        )
        for bad, msg, values in zip(flags.tolist(), messages, (means, scales, quats, colors, opacities)):
            if bad:  # NaN / Inf among the values: NonFiniteGaussiansError (a diverged model, in training)
                raise (ValueError if bool(torch.isfinite(values).all()) else NonFiniteGaussiansError)(msg)
    return size


def render_gaussians_2d(
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    colors: Tensor,
    opacities: Tensor,
    image_size: Sequence[int],
    backend: str = "auto",
    background: Tensor | None = None,
    *,
    return_alpha: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Splat 3D Gaussians onto an ``H x W`` image with front-to-back alpha compositing (NumPy arrays are taken as
    tensors, as :func:`medgmae.render.render_volume` takes them).

    Args:
        means: ``(B, K, 3)`` centres: ``x`` (along W, to the right) and ``y`` (along H, downwards) in ``[-1, 1]``
            with -1/+1 the outer image edges; ``z`` depth, smaller is nearer.
        scales: ``(B, K, 3)`` positive standard deviations along each Gaussian's own axes, in the frame's units
            once rotated: units of ``x`` along ``x`` (``W / 2`` pixels) and of ``y`` along ``y`` (``H / 2`` pixels),
            so an unrotated scale ``s`` spreads ``s W / 2`` pixels across and ``s H / 2`` down (a non-square image
            stretches it); the compositor adds 0.3 pixel^2 to each variance and skips alphas below 1/255.
        quats: ``(B, K, 4)`` rotations ``(w, x, y, z)``, normalised inside.
        colors: ``(B, K, C)`` colours, any ``C >= 1``.
        opacities: ``(B, K)`` in ``[0, 1]``.
        image_size: ``(H, W)``, whole numbers (``4.5`` is refused, not truncated).
        backend: ``"torch"``, ``"gsplat"`` (CUDA tensors only) or ``"auto"`` (gsplat on CUDA, torch otherwise, and
            torch with a one-line warning where gsplat's CUDA extension cannot be built; see
            :func:`resolve_backend_2d`).
        background: optional ``(C,)`` or ``(B, C)`` colour behind the Gaussians (default black).
        return_alpha: also return the accumulated opacity ``1 - T_final``.

    Returns:
        ``(B, C, H, W)`` image in the dtype the five Gaussian inputs promote to (``torch.promote_types``: float64
        when any is float64, float32 for float32 inputs with float16 or bfloat16 ones; the inputs are cast to it;
        gsplat computes in float32), differentiable with respect to every Gaussian input; with ``return_alpha``
        also the ``(B, 1, H, W)`` accumulated opacity, in the same dtype.

    Raises:
        ValueError: on wrong shapes, mismatched devices, non-finite values, non-positive scales, zero quaternions,
            opacities outside ``[0, 1]``, a bad ``image_size`` or backend, or ``backend="gsplat"`` on CPU tensors.
        RuntimeError: with ``backend="gsplat"``, when gsplat's CUDA extension cannot be built (e.g. no CUDA
            compiler); ``"auto"`` falls back to torch instead.
    """
    means, scales, quats, colors, opacities, background = (
        torch.as_tensor(t) if isinstance(t, np.ndarray) else t for t in (means, scales, quats, colors, opacities, background))
    size = _check_inputs(means, scales, quats, colors, opacities, image_size, backend, background)
    backend = resolve_backend_2d(backend, means.device)
    b, k = means.shape[:2]
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in (scales, quats, colors, opacities)], means.dtype)
    means, scales, quats, colors, opacities = (t.to(dtype) for t in (means, scales, quats, colors, opacities))
    if background is not None:
        background = background.to(device=means.device, dtype=dtype)
    if k == 0:
        image, alpha = _no_gaussians(b, size, (means, scales, quats, colors, opacities), background)
    else:
        render = render_gsplat if backend == "gsplat" else render_torch
        image, alpha = render(means, scales, quats, colors, opacities, size, background)
    return (image, alpha) if return_alpha else image


def _no_gaussians(
    b: int, size: tuple[int, int], inputs: tuple[Tensor, ...], background: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The image and alpha of ``b`` images without Gaussians: the background (black without one), connected to
    the (empty) inputs so that gradients flow, as zeros."""
    means, colors = inputs[0], inputs[3]
    zero = sum(t.sum() for t in inputs) * 0
    image = zero + torch.zeros(b, colors.shape[-1], *size, dtype=means.dtype, device=means.device)
    if background is not None:
        image = image + background.view(-1, colors.shape[-1], 1, 1)
    return image, torch.zeros(b, 1, *size, dtype=means.dtype, device=means.device)


def render_planar_gaussians(
    means2d: Tensor,
    scales2d: Tensor,
    angles: Tensor,
    colors: Tensor,
    opacities: Tensor,
    image_size: Sequence[int],
    backend: str = "auto",
    background: Tensor | None = None,
) -> Tensor:
    """Render planar Gaussians (GViT's tokens: a 2D centre, two scales and an in-plane angle each, no depth) by
    lifting them onto :func:`render_gaussians_2d`, whose Gaussians are 3D (centre with depth, three scales, quaternion).
    NumPy arrays are taken as tensors, as there.

    Gaussian ``k`` gets depth ``k``, so the first token is the nearest (composited first). A rotation by
    ``angle`` about ``z`` maps the Gaussian's first axis to ``(cos angle, sin angle)`` in ``(x, y)``; since ``y``
    points down the image, a positive angle turns clockwise on screen.

    Args:
        means2d: ``(B, K, 2)`` centres ``(x, y)`` in ``[-1, 1]`` (see :func:`render_gaussians_2d`).
        scales2d: ``(B, K, 2)`` positive standard deviations along the Gaussian's two axes, in the frame's units
            (``W / 2`` pixels along ``x``, ``H / 2`` along ``y``: see :func:`render_gaussians_2d`'s ``scales``).
        angles: ``(B, K)`` rotation angles in radians.
        colors: ``(B, K, C)``.
        opacities: ``(B, K)`` in ``[0, 1]``.
        image_size: ``(H, W)``.
        backend: as for :func:`render_gaussians_2d`.
        background: as for :func:`render_gaussians_2d`.

    Returns:
        ``(B, C, H, W)`` image.
    """
    planar = (means2d, scales2d, angles)
    means2d, scales2d, angles = (torch.as_tensor(t) if isinstance(t, np.ndarray) else t for t in planar)
    if not (isinstance(means2d, Tensor) and means2d.dim() == 3 and means2d.shape[-1] == 2):
        raise ValueError(f"means2d must be a (B, K, 2) tensor, got {getattr(means2d, 'shape', type(means2d).__name__)}")
    b, k = means2d.shape[:2]
    if not (isinstance(scales2d, Tensor) and tuple(scales2d.shape) == (b, k, 2)):
        raise ValueError(f"scales2d must be a ({b}, {k}, 2) tensor, got {getattr(scales2d, 'shape', type(scales2d).__name__)}")
    if not (isinstance(angles, Tensor) and tuple(angles.shape) == (b, k)):
        raise ValueError(f"angles must be a ({b}, {k}) tensor, got {getattr(angles, 'shape', type(angles).__name__)}")
    depth = torch.arange(k, dtype=means2d.dtype, device=means2d.device).expand(b, k).unsqueeze(-1)
    means = torch.cat([means2d, depth], -1)
    scales = torch.cat([scales2d, scales2d.mean(-1, keepdim=True)], -1)  # the z scale does not reach the image
    half = 0.5 * angles
    zeros = torch.zeros_like(half)
    quats = torch.stack([torch.cos(half), zeros, zeros, torch.sin(half)], -1)
    return render_gaussians_2d(means, scales, quats, colors, opacities, image_size, backend, background)
