"""Differentiable splatting of 3D Gaussians onto an image plane with a fixed orthographic camera.

:func:`render_gaussians_2d` is the public entry point shared by 2D GMAE and GViT. It validates its inputs and
dispatches to a backend:

* ``"gsplat"``: :func:`gsplat.rasterization` with ``camera_model="ortho"`` (CUDA tensors only).
* ``"torch"``: plain PyTorch front-to-back alpha compositing of the same projected 2D Gaussians, chunked over
  pixels, any device. It is the CPU path and the test oracle of the gsplat path.
* ``"auto"``: gsplat for CUDA tensors, torch otherwise; on CUDA it falls back to torch, with a one-line warning
  logged once per process, where gsplat's CUDA extension cannot be built or loaded (for instance no ``nvcc`` for its
  just-in-time build). :func:`resolve_backend_2d` makes this choice.

Frame and camera. ``x`` runs along the image width to the right and ``y`` along the height downwards, both in
``[-1, 1]`` with -1/+1 the *outer edges* of the first/last pixel, so pixel ``(i, j)`` of an ``H x W`` image has
its centre at ``x = 2 (j + 0.5) / W - 1``, ``y = 2 (i + 0.5) / H - 1``. ``z`` is depth: smaller is nearer, and
Gaussians are composited front to back in increasing ``z`` (ties keep the input order). The camera looks down
``+z`` orthographically, so a Gaussian's image-plane covariance is the top-left ``2 x 2`` block of
``R S S^T R^T`` (in pixels: scaled by ``W / 2`` along x and ``H / 2`` along y).

Conventions shared by both backends (those of gsplat 1.5's ``"classic"`` rasterisation, which the torch
renderer reproduces):

* a low-pass dilation of ``EPS2D = 0.3`` pixel^2 is added to the diagonal of every projected 2D covariance,
  without opacity compensation (``rasterize_mode="classic"``, ``eps2d=0.3``);
* ``alpha = min(ALPHA_MAX, o * exp(-d^T Sigma^-1 d / 2))`` with ``ALPHA_MAX = 0.999`` (gsplat's clamp; the
  original 3DGS rasteriser uses 0.99);
* contributions with ``alpha < ALPHA_MIN = 1/255`` are skipped;
* a pixel stops compositing before the Gaussian that would bring its transmittance to ``T_MIN = 1e-4`` or below
  (gsplat's exclusive early stop);
* ``pixel = sum_k c_k alpha_k T_k + T_final * background``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from medgmae.rotations import covariance_matrices

__all__ = [
    "render_gaussians_2d",
    "render_2d_gaussians",
    "project_gaussians_2d",
    "set_gsplat_cache_dir",
    "resolve_backend_2d",
    "BACKENDS",
    "EPS2D",
    "ALPHA_MAX",
    "ALPHA_MIN",
    "T_MIN",
]

BACKENDS = ("auto", "torch", "gsplat")
#: Low-pass dilation (pixel^2) added to the projected covariance's diagonal (gsplat's ``eps2d``).
EPS2D = 0.3
#: Upper clamp of a Gaussian's alpha at a pixel (gsplat 1.5).
ALPHA_MAX = 0.999
#: Contributions below this alpha are skipped.
ALPHA_MIN = 1.0 / 255.0
#: Compositing stops before the transmittance would reach this value.
T_MIN = 1e-4
_LOG_T_MIN = math.log(T_MIN)
_LOG = logging.getLogger(__name__)
#: Outcome of probing gsplat's CUDA extension in this process: ``{"error": None | str}`` once probed.
_GSPLAT_PROBE: dict = {}
#: Fallback reasons already logged (the notice is given once per reason and process).
_NOTICES: set = set()
#: Pixels per chunk are chosen so that one chunk holds about this many ``(B, K, pixels)`` elements.
_CHUNK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------------------------- validation
def _check_inputs(means, scales, quats, colors, opacities, image_size, backend, background) -> tuple[int, int]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    named = (("means", means), ("scales", scales), ("quats", quats), ("colors", colors), ("opacities", opacities))
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
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
    try:
        size = tuple(int(s) for s in image_size)
    except TypeError as e:
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}") from e
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
        for bad, msg in zip(flags.tolist(), messages):
            if bad:
                raise ValueError(msg)
    return size


# ----------------------------------------------------------------------------------------------- projection
def project_gaussians_2d(
    means: Tensor, scales: Tensor, quats: Tensor, image_size: Sequence[int], eps2d: float = EPS2D
) -> tuple[Tensor, Tensor]:
    """Orthographic projection of 3D Gaussians to pixel-space 2D means and dilated covariances.

    Args:
        means: ``(B, K, 3)`` centres, ``x, y`` in ``[-1, 1]`` image-plane units.
        scales: ``(B, K, 3)`` standard deviations in the same units.
        quats: ``(B, K, 4)`` rotations ``(w, x, y, z)``.
        image_size: ``(H, W)``.
        eps2d: dilation added to the diagonal of the pixel-space covariance.

    Returns:
        ``(means2d, cov2d)``: ``(B, K, 2)`` centres in pixel units (pixel ``j`` has its centre at ``j + 0.5``)
        and ``(B, K, 2, 2)`` covariances in pixel^2, dilated by ``eps2d``.
    """
    h, w = (int(s) for s in image_size)
    focal = means.new_tensor([w / 2.0, h / 2.0])
    means2d = (means[..., :2] + 1.0) * focal
    cov2d = covariance_matrices(scales, quats)[..., :2, :2] * focal.view(2, 1) * focal.view(1, 2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    return means2d, cov2d


# ----------------------------------------------------------------------------------------------- torch backend
def _composite_chunk(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, pix: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians at a chunk of pixel centres.

    Args:
        means2d: ``(B, K, 2)`` sorted pixel-space centres.
        conics: ``(B, K, 3)`` ``(a, b, c)`` of the inverse covariance ``[[a, b], [b, c]]``.
        opacities: ``(B, K)``.
        colors: ``(B, K, C)``.
        pix: ``(P, 2)`` pixel centres ``(x, y)``.

    Returns:
        ``(B, C, P)`` accumulated colour and ``(B, P)`` final transmittance.
    """
    dx = means2d[..., 0:1] - pix[:, 0]  # (B, K, P)
    dy = means2d[..., 1:2] - pix[:, 1]
    a, b, c = (t.unsqueeze(-1) for t in conics.unbind(-1))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (opacities.unsqueeze(-1) * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    alpha = torch.where((sigma < 0) | (alpha < ALPHA_MIN), torch.zeros_like(alpha), alpha)
    # transmittances as cumulative sums of log(1 - alpha) (1 - alpha >= 1 - ALPHA_MAX > 0): cheaper to
    # differentiate than cumprod
    with torch.no_grad():  # exclusive early stop: drop the Gaussian that would take T to T_MIN or below, and all after
        alive = torch.cumsum(torch.log1p(-alpha), dim=1) > _LOG_T_MIN
    alpha = alpha * alive
    log_keep = torch.log1p(-alpha)
    log_incl = torch.cumsum(log_keep, dim=1)  # (B, K, P): log T after each Gaussian
    weights = alpha * torch.exp(log_incl - log_keep)  # alpha_k * T before Gaussian k
    image = torch.einsum("bkp,bkc->bcp", weights, colors)
    return image, torch.exp(log_incl[:, -1])


def _render_torch(means, scales, quats, colors, opacities, size, background) -> tuple[Tensor, Tensor]:
    h, w = size
    b, k = means.shape[:2]
    means2d, cov2d = project_gaussians_2d(means, scales, quats, size)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    conics = torch.stack([cov2d[..., 1, 1], -cov2d[..., 0, 1], cov2d[..., 0, 0]], -1) / det.unsqueeze(-1)
    order = torch.argsort(means[..., 2].detach(), dim=1, stable=True)
    gather = lambda t: torch.gather(t, 1, order.view(b, k, *([1] * (t.dim() - 2))).expand_as(t))  # noqa: E731
    means2d, conics, opacities, colors = gather(means2d), gather(conics), gather(opacities), gather(colors)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=means.device, dtype=means2d.dtype) + 0.5,
        torch.arange(w, device=means.device, dtype=means2d.dtype) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (H*W, 2)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * k))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, opacities, colors))
    images, trans = [], []
    for start in range(0, pix.shape[0], chunk):
        args = (means2d, conics, opacities, colors, pix[start : start + chunk])
        if needs_grad and pix.shape[0] > chunk:  # recompute per chunk in backward: memory ~ one chunk
            img, t = checkpoint(_composite_chunk, *args, use_reentrant=False)
        else:
            img, t = _composite_chunk(*args)
        images.append(img)
        trans.append(t)
    image = torch.cat(images, -1).reshape(b, -1, h, w)
    t_final = torch.cat(trans, -1).reshape(b, 1, h, w)
    if background is not None:
        image = image + t_final * background.view(-1, background.shape[-1], 1, 1)
    return image, 1.0 - t_final


# ----------------------------------------------------------------------------------------------- gsplat backend
def set_gsplat_cache_dir(path: str | os.PathLike | None = None) -> str:
    """Choose where gsplat's CUDA extension is compiled and cached (``TORCH_EXTENSIONS_DIR``).

    A value already set by the user in the environment is kept. Otherwise ``path`` (e.g. a folder under a
    training run's output directory) is used, else ``$MEDGMAE_CACHE_DIR/torch_extensions``, else a per-user
    folder in the system temporary directory, so that nothing is written to the user's home directory.
    Must be called before gsplat's CUDA backend is first imported to have an effect.

    Returns:
        The directory in use.
    """
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    if path is None:
        base = os.environ.get("MEDGMAE_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"medgmae-cache-{os.getuid()}")
        path = os.path.join(base, "torch_extensions")
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = path
    return path


def _load_gsplat():
    """Import :func:`gsplat.rasterization` with its CUDA extension built (compiling it on first use)."""
    cache = set_gsplat_cache_dir()
    try:
        from gsplat import rasterization
        from gsplat.cuda import _backend
    except Exception as e:  # compilation errors surface here
        raise RuntimeError(f"gsplat's CUDA extension could not be built or loaded (cache {cache}): {e}") from e
    if _backend._C is None:
        hint = "" if _backend.cuda_toolkit_available() else " no CUDA compiler (nvcc) was found: install the CUDA toolkit or set CUDA_HOME;"
        raise RuntimeError(
            f"gsplat's CUDA extension is not available:{hint} cache {cache}. Use backend='torch' to render without it."
        )
    return rasterization


def _gsplat_error(probe: Callable[[], object] | None) -> str | None:
    """``None`` when gsplat's CUDA extension loads, else why not (the default probe's result is cached)."""
    if probe is None:
        if "error" not in _GSPLAT_PROBE:
            _GSPLAT_PROBE["error"] = _gsplat_error(_load_gsplat)
        return _GSPLAT_PROBE["error"]
    try:
        probe()
    except (RuntimeError, ImportError, OSError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def resolve_backend_2d(backend: str, device: torch.device | str, probe: Callable[[], object] | None = None) -> str:
    """The backend that renders for ``backend`` on ``device``: ``"torch"`` or ``"gsplat"``.

    ``"auto"`` gives gsplat on CUDA devices when its CUDA extension loads, else the PyTorch compositor; when gsplat
    is unavailable on a CUDA device (no ``nvcc`` for its just-in-time build, a failed build, gsplat not installed)
    a one-line warning naming the reason is logged once. An explicit ``"gsplat"`` is returned as is (its errors
    surface when rendering).

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"gsplat"``.
        device: where the Gaussians live.
        probe: callable that raises ``RuntimeError`` / ``ImportError`` / ``OSError`` when gsplat cannot be used
            (default: loading gsplat's CUDA extension, once per process).

    Returns:
        ``"torch"`` or ``"gsplat"``.

    Raises:
        ValueError: for an unknown backend, or ``"gsplat"`` on a non-CUDA device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if device.type != "cuda":
        if backend == "gsplat":
            raise ValueError(f"backend='gsplat' needs CUDA tensors, got tensors on {device}; use backend='torch'")
        return "torch"
    if backend == "gsplat":
        return "gsplat"
    error = _gsplat_error(probe)
    if error is None:
        return "gsplat"
    if error not in _NOTICES:
        _NOTICES.add(error)
        _LOG.warning("gsplat is unavailable (%s); rendering 2D Gaussians with the PyTorch compositor instead", error)
    return "torch"


def _render_gsplat(means, scales, quats, colors, opacities, size, background) -> tuple[Tensor, Tensor]:
    rasterization = _load_gsplat()
    h, w = size
    b = means.shape[0]
    dtype = means.dtype
    means, scales, quats, colors, opacities = (t.float().contiguous() for t in (means, scales, quats, colors, opacities))
    # orthographic: depth only orders the Gaussians; shift it in front of gsplat's near plane (0.01)
    z = means[..., 2:] - means[..., 2:].detach().amin(dim=1, keepdim=True) + 1.0
    cam_means = torch.cat([means[..., :2], z], -1)
    viewmats = torch.eye(4, device=means.device).expand(b, 1, 4, 4).contiguous()
    # x = -1 .. 1 maps to pixel coordinates 0 .. W (pixel j has its centre at j + 0.5), likewise y to 0 .. H
    ks = means.new_tensor([[w / 2.0, 0.0, w / 2.0], [0.0, h / 2.0, h / 2.0], [0.0, 0.0, 1.0]]).expand(b, 1, 3, 3).contiguous()
    bg = None
    if background is not None:
        bg = background.float().expand(b, colors.shape[-1]).reshape(b, 1, -1).contiguous()
    with torch.autocast(device_type="cuda", enabled=False):
        image, alpha, _ = rasterization(
            cam_means, quats, scales, opacities, colors, viewmats, ks, w, h,
            near_plane=0.01, eps2d=EPS2D, packed=False, backgrounds=bg,
            rasterize_mode="classic", camera_model="ortho",
        )  # fmt: skip
    return image[:, 0].permute(0, 3, 1, 2).to(dtype), alpha[:, 0].permute(0, 3, 1, 2).to(dtype)


# ----------------------------------------------------------------------------------------------- public API
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
    """Splat 3D Gaussians onto an ``H x W`` image with front-to-back alpha compositing.

    Args:
        means: ``(B, K, 3)`` centres: ``x`` (along W, to the right) and ``y`` (along H, downwards) in ``[-1, 1]``
            with -1/+1 the outer image edges; ``z`` depth, smaller is nearer.
        scales: ``(B, K, 3)`` positive standard deviations along each Gaussian's own axes, in the units of ``x``.
        quats: ``(B, K, 4)`` rotations ``(w, x, y, z)``, normalised inside.
        colors: ``(B, K, C)`` colours, any ``C >= 1``.
        opacities: ``(B, K)`` in ``[0, 1]``.
        image_size: ``(H, W)``.
        backend: ``"torch"``, ``"gsplat"`` (CUDA tensors only) or ``"auto"`` (gsplat on CUDA, torch otherwise, and
            torch with a one-line warning where gsplat's CUDA extension cannot be built; see
            :func:`resolve_backend_2d`).
        background: optional ``(C,)`` or ``(B, C)`` colour behind the Gaussians (default black).
        return_alpha: also return the accumulated opacity ``1 - T_final``.

    Returns:
        ``(B, C, H, W)`` image in the dtype of ``means`` (gsplat computes in float32), differentiable with respect
        to every Gaussian input; with ``return_alpha`` also the ``(B, 1, H, W)`` accumulated opacity.

    Raises:
        ValueError: on wrong shapes, mismatched devices, non-finite values, non-positive scales, zero quaternions,
            opacities outside ``[0, 1]``, a bad ``image_size`` or backend, or ``backend="gsplat"`` on CPU tensors.
        RuntimeError: with ``backend="gsplat"``, when gsplat's CUDA extension cannot be built (e.g. no CUDA
            compiler); ``"auto"`` falls back to torch instead.
    """
    size = _check_inputs(means, scales, quats, colors, opacities, image_size, backend, background)
    backend = resolve_backend_2d(backend, means.device)
    b, k = means.shape[:2]
    if k == 0:
        zero = (means.sum() + scales.sum() + quats.sum() + colors.sum() + opacities.sum()) * 0
        image = zero + torch.zeros(b, colors.shape[-1], *size, dtype=means.dtype, device=means.device)
        if background is not None:
            image = image + background.to(image).view(-1, colors.shape[-1], 1, 1)
        alpha = torch.zeros(b, 1, *size, dtype=means.dtype, device=means.device)
        return (image, alpha) if return_alpha else image
    if background is not None:
        background = background.to(device=means.device, dtype=means.dtype)
    render = _render_gsplat if backend == "gsplat" else _render_torch
    image, alpha = render(means, scales, quats, colors, opacities, size, background)
    return (image, alpha) if return_alpha else image


def render_2d_gaussians(
    means2d: Tensor,
    scales2d: Tensor,
    angles: Tensor,
    colors: Tensor,
    opacities: Tensor,
    image_size: Sequence[int],
    backend: str = "auto",
    background: Tensor | None = None,
) -> Tensor:
    """Render planar 2D Gaussians: a thin wrapper that lifts them onto :func:`render_gaussians_2d`.

    Gaussian ``k`` gets depth ``k``, so the first token is the nearest (composited first). A rotation by
    ``angle`` about ``z`` maps the Gaussian's first axis to ``(cos angle, sin angle)`` in ``(x, y)``; since ``y``
    points down the image, a positive angle turns clockwise on screen.

    Args:
        means2d: ``(B, K, 2)`` centres ``(x, y)`` in ``[-1, 1]`` (see :func:`render_gaussians_2d`).
        scales2d: ``(B, K, 2)`` positive standard deviations along the Gaussian's two axes.
        angles: ``(B, K)`` rotation angles in radians.
        colors: ``(B, K, C)``.
        opacities: ``(B, K)`` in ``[0, 1]``.
        image_size: ``(H, W)``.
        backend: as for :func:`render_gaussians_2d`.
        background: as for :func:`render_gaussians_2d`.

    Returns:
        ``(B, C, H, W)`` image.
    """
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
