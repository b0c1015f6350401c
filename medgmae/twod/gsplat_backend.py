"""The gsplat backend of the 2D renderer and the choice of backend.

:func:`render_gsplat` renders with :func:`gsplat.rasterization` (``camera_model="ortho"``, CUDA tensors only), in the
frame of :mod:`medgmae.twod.render` and with the conventions of :mod:`medgmae.twod.compositor`. gsplat builds its CUDA
extension just in time; :func:`set_gsplat_cache_dir` keeps that build out of the user's home directory.
:func:`resolve_backend_2d` turns ``"auto"`` into gsplat for CUDA tensors and the PyTorch compositor otherwise,
falling back to the compositor, with a one-line warning logged once per process, where gsplat is not installed or
its CUDA extension cannot be built or loaded (for instance no ``nvcc`` for its just-in-time build). Nothing is built,
and no folder made, where gsplat is not installed or no CUDA device is available.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from typing import Callable

import torch
from torch import Tensor

from medgmae.twod.compositor import EPS2D

__all__ = [
    "BACKENDS", "check_backend_setting", "gsplat_problem", "render_gsplat", "resolve_backend_2d", "set_gsplat_cache_dir",
]  # fmt: skip

BACKENDS = ("auto", "torch", "gsplat")
#: How to install gsplat where it is missing.
GSPLAT_INSTALL = "install it with `pip install gsplat`"
_LOG = logging.getLogger(__name__)
#: Outcome of probing gsplat's CUDA extension in this process: ``{"error": None | str}`` once probed.
_GSPLAT_PROBE: dict = {}
#: Fallback reasons already logged (the notice is given once per reason and process).
_NOTICES: set = set()


def set_gsplat_cache_dir(path: str | os.PathLike | None = None, create: bool = True) -> str:
    """Choose where gsplat's CUDA extension is compiled and cached (``TORCH_EXTENSIONS_DIR``).

    A value already set by the user in the environment is kept. Otherwise ``path`` (e.g. a folder under a
    training run's output directory) is used, else ``$MEDGMAE_CACHE_DIR/torch_extensions``, else a per-user
    folder in the system temporary directory, so that nothing is written to the user's home directory.
    Must be called before gsplat's CUDA backend is first imported to have an effect.

    Args:
        path: the folder, unless the environment names one.
        create: make the folder now (otherwise it is made by the build that needs it).

    Returns:
        The directory in use.
    """
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    if path is None:
        base = os.environ.get("MEDGMAE_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"medgmae-cache-{os.getuid()}")
        path = os.path.join(base, "torch_extensions")
    path = os.path.abspath(os.fspath(path))
    if create:
        os.makedirs(path, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = path
    return path


def _load_gsplat():
    """Import :func:`gsplat.rasterization` with its CUDA extension built (compiling it on first use; the build makes
    its cache folder)."""
    if importlib.util.find_spec("gsplat") is None:
        raise RuntimeError(f"gsplat is not installed: {GSPLAT_INSTALL} (it is one of the toolkit's dependencies)")
    cache = set_gsplat_cache_dir(create=False)
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
    """``None`` when gsplat's CUDA extension loads, else why not (the default probe's result is cached; without a
    CUDA device it builds nothing)."""
    if probe is None:
        if not torch.cuda.is_available():
            return "no CUDA device is available to this process"
        if "error" not in _GSPLAT_PROBE:
            _GSPLAT_PROBE["error"] = _gsplat_error(_load_gsplat)
        return _GSPLAT_PROBE["error"]
    try:
        probe()
    except (RuntimeError, ImportError, OSError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def gsplat_problem() -> str | None:
    """Why :func:`resolve_backend_2d` turns ``"auto"`` into the PyTorch compositor on a CUDA device (``None``: gsplat's
    CUDA extension loads, so it gives gsplat): no CUDA device, gsplat not installed, its extension not built. The
    answer of the probe :func:`resolve_backend_2d` makes itself (once per process; it may build the extension)."""
    return _gsplat_error(None)


def check_backend_setting(backend: str, device: str | torch.device, flag: str = "--render_backend") -> None:
    """A bundle's ``render_backend`` setting, checked up front with its ``device`` setting: gsplat renders on CUDA
    only, so ``gsplat`` on a device that is not CUDA (``cpu``, or ``auto`` without a GPU) is refused before any
    data is read (:func:`resolve_backend_2d` would refuse it at the first rendering).

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"gsplat"``.
        device: the ``--device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        flag: the option that sets ``backend``, as the message names it (a bundle's ``--render_backend``, the
            ``--backend`` of ``medgmae-2d``).

    Raises:
        ValueError: an unknown backend, or ``gsplat`` with a device setting that resolves to a CPU.
    """
    from medgmae.engine import resolve_device

    if backend not in BACKENDS:
        raise ValueError(f"expected one of {list(BACKENDS)}, got {backend!r}")
    if backend != "gsplat":
        return
    try:
        resolved = resolve_device(device)
    except ValueError:  # a bad device setting: its own check names it
        return
    if resolved.type != "cuda":
        raise ValueError(f"gsplat renders on CUDA devices only and --device {device} runs on {resolved}: use "
                         f"{flag} torch (or auto, which picks gsplat on a GPU)")


def resolve_backend_2d(backend: str, device: torch.device | str, probe: Callable[[], object] | None = None) -> str:
    """The backend that renders for ``backend`` on ``device``: ``"torch"`` or ``"gsplat"``.

    ``"auto"`` gives gsplat on CUDA devices when its CUDA extension loads, else the PyTorch compositor; when gsplat
    is unavailable on a CUDA device (no ``nvcc`` for its just-in-time build, a failed build, gsplat not installed,
    no CUDA device at all) a one-line warning naming the reason is logged once. An explicit ``"gsplat"`` is returned as is (its errors
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


def render_gsplat(means, scales, quats, colors, opacities, size, background) -> tuple[Tensor, Tensor]:
    """Render validated CUDA inputs (see :func:`medgmae.twod.render.render_gaussians_2d`) with gsplat, in float32.

    Returns:
        ``(B, C, H, W)`` image and ``(B, 1, H, W)`` accumulated opacity, in the dtype of ``means``.

    Raises:
        RuntimeError: when gsplat is not installed or its CUDA extension cannot be built or loaded.
    """
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
