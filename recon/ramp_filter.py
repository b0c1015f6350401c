"""The ramp filter of FBP and FDK (:mod:`recon.fbp`): Ram-Lak, optionally apodised by Shepp-Logan, cosine or Hann
windows, built in the spatial domain as in Kak & Slaney so that it has no DC bias, applied along detector rows.

The rows of every view are filtered a chunk at a time (at most :data:`FILTER_CHUNK_BYTES` of float64 zero-padded
rows) with a real FFT, so that the working set does not grow with the number of views.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from recon.cli_names import FILTERS

__all__ = ["FILTERS", "FILTER_CHUNK_BYTES", "filter_name", "ramp_filter", "filter_projections", "projections_tensor"]

#: Bytes of float64 zero-padded detector rows ramp-filtered per chunk (:func:`filter_projections`): the filter's
#: working set is a few times this, whatever the number of views (filtering 90 x 256 x 725 float32 views as one
#: whole-stack complex FFT grew with the stack: ``bench/fbp_filter.py`` in ``bench/RESULTS.md``).
FILTER_CHUNK_BYTES = 2**25
_ALIASES = {"ramlak": "ram-lak", "ramp": "ram-lak", "shepp_logan": "shepp-logan", "hanning": "hann"}


def projections_tensor(proj) -> Tensor:
    """``proj`` as FBP's functions take it: a tensor as it is; a NumPy array (or nested list) as a CPU tensor,
    float64 kept and any other dtype as float32 (:func:`recon.projectors.base.as_tensor` makes every array float32,
    which would round a float64 scan that FBP keeps in float64)."""
    if isinstance(proj, Tensor):
        return proj
    a = np.asarray(proj)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64 if a.dtype == np.float64 else np.float32))


def filter_name(name: str) -> str:
    """``name`` as one of :data:`FILTERS` (aliases such as ``ramp`` or ``hanning`` accepted, any case).

    Raises:
        ValueError: an unknown filter (or not a string, such as ``None``), naming those known.
    """
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else None
    if key not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    return key


def ramp_filter(size: int, name: str = "ram-lak", dtype=torch.float64) -> Tensor:
    """Frequency response (length ``size``, FFT order) of the band-limited ramp for unit sample spacing.

    Args:
        size: FFT length (even).
        name: one of :data:`FILTERS`.

    Returns:
        ``(size,)`` real tensor, ``|f|`` in cycles per sample (0 at DC, 0.5 at Nyquist) times the window.
    """
    name = filter_name(name)
    n = torch.cat([torch.arange(0, size // 2 + 1), torch.arange(size // 2 - 1, 0, -1)]).to(torch.float64)
    h = torch.zeros(size, dtype=torch.float64)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (math.pi * n[odd]) ** 2
    filt = torch.fft.fft(h).real
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    if name == "shepp-logan":
        filt = filt * torch.sinc(f)
    elif name == "cosine":
        filt = filt * torch.cos(math.pi * f)
    elif name == "hann":
        filt = filt * 0.5 * (1 + torch.cos(2 * math.pi * f))
    return filt.to(dtype)


def _fft_size(cols: int) -> int:
    """Zero-padded FFT length of a detector row of ``cols``: the next power of two from ``2 * cols`` (at least 64),
    so that the filter's circular convolution does not wrap."""
    return max(64, 1 << int(math.ceil(math.log2(2 * cols))))


def filter_projections(
    proj: Tensor, spacing: float, name: str = "ram-lak", chunk_bytes: int = FILTER_CHUNK_BYTES
) -> Tensor:
    """Ramp-filter ``proj`` ``(..., cols)`` along its last axis (detector pitch ``spacing`` mm), zero-padded.

    The rows (of every view) are filtered in chunks of at most ``chunk_bytes`` of float64 zero-padded rows (at least
    one row), with a real FFT: the filter is real and even, so ``irfft(rfft(x) * filt[:size // 2 + 1])`` is the
    full complex ``ifft(fft(x) * filt).real`` without its redundant half. Arithmetic is float64 inside a chunk
    (float32 FFTs would add about 1e-7 of relative error; ``bench/fbp_filter.py`` measures it); the working set is
    a small multiple of one chunk, not of the whole stack.

    Args:
        proj: ``(..., cols)`` projections, float32 or float64: a tensor, or a NumPy array (:func:`projections_tensor`).
        spacing: detector column pitch in mm.
        name: one of :data:`FILTERS`.
        chunk_bytes: float64 padded rows per chunk, in bytes.

    Returns:
        ``(..., cols)`` filtered projections (a tensor), ``proj``'s dtype.
    """
    proj = projections_tensor(proj)
    cols = proj.shape[-1]
    size = _fft_size(cols)
    half = ramp_filter(size, name, torch.float64).to(proj.device)[: size // 2 + 1] / spacing
    rows = proj.reshape(-1, cols)
    out = torch.empty(rows.shape, dtype=proj.dtype, device=proj.device)
    step = max(1, int(chunk_bytes) // (8 * size))
    for r0 in range(0, rows.shape[0], step):
        spec = torch.fft.rfft(rows[r0 : r0 + step].to(torch.float64), n=size, dim=-1)  # zero-pads to size
        spec *= half
        out[r0 : r0 + step] = torch.fft.irfft(spec, n=size, dim=-1)[:, :cols]
        del spec
    return out.reshape(proj.shape)
