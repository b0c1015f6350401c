"""Triton voxel-accumulation renderer with a hand-written backward: launch shapes and the autograd wrapper.

Same inputs and maths as :func:`medgmae.render._torch_impl.render_torch` (pre-processed Gaussians in the
voxel-index frame; ``conics`` = ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)`` of the precision matrix ``P``; ``extents`` =
half-widths of the cutoff boxes), organised like a 3DGS tile rasteriser and evaluated like attention, in three
modules:

* :mod:`medgmae.render._triton_binning`: the ``(tile, Gaussian)`` pairs, sorted by tile (:func:`bin_pairs`);
* :mod:`medgmae.render._triton_kernels`: the forward kernel (one program per ``(batch, tile)``, a sliced TF32
  product per voxel block and Gaussian chunk, no atomics) and its hand-written backward (the same weights
  recomputed, per-Gaussian moments added with relaxed atomics), with their precision argument;
* this module: the launch shapes and the :class:`torch.autograd.Function` joining them.

Launch shapes (:func:`_launch_config`) are chosen so that no kernel spills registers on sm_80 or sm_90.

Everything runs unchanged under ``TRITON_INTERPRET=1`` on CPU tensors (how the tests run it); ``tl.dot``'s
``input_precision`` is ignored there (numpy float32 matmul).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Sequence

import torch
from torch import Tensor

from medgmae.render._torch_impl import _tile_grid
from medgmae.render._triton_binning import FP_FUSION, TILE, bin_pairs
from medgmae.render._triton_kernels import _backward_kernel, _forward_kernel

__all__ = ["TILE", "bin_pairs", "render_triton"]

_LOG2E = 1.4426950408889634


def _launch_config(n_pairs: int, n_keys: int, tile: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(BLOCK_V, BLOCK_G, num_warps)`` for the forward and the backward kernel.

    Wide Gaussian chunks when tiles hold many Gaussians (dense regime), narrow ones when they hold few (sparse). The
    choices keep every kernel free of register spills on sm_80 and sm_90 with Triton 3.6 to 3.9
    (``bench/triton_aot.py`` compiles them ahead of time and reads the machine code; ``tests/test_triton_aot.py``):
    168-182 registers per thread in the dense backward, whose chunk of 64 Gaussians fills one warpgroup's 64-row
    tensor-core tile, 82-128 elsewhere.
    """
    per_tile = n_pairs / max(n_keys, 1)
    bv = min(tile**3, 128)
    bv_b = min(tile * tile, 64)  # backward blocks stay inside one d-slice of the tile
    if per_tile >= 48:
        return (bv, 32, 8 if bv * 32 >= 4096 else 4), (min(bv_b, 32), 64, 4)
    if per_tile >= 20:
        return (bv, 32, 8 if bv * 32 >= 4096 else 4), (bv_b, 32 if bv_b <= 32 else 16, 4)
    return (bv, 16, 4 if bv * 16 >= 2048 else 2), (bv_b, 16, 4 if bv_b * 16 >= 1024 else 2)


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU (Triton uses the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _RenderTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, extents, shape, cutoff, tile):  # type: ignore[override]
        out_dtype = means.dtype
        b, k = means.shape[:2]
        d, h, w = shape
        nt = _tile_grid(shape, tile)
        n_tiles = nt[0] * nt[1] * nt[2]
        m32, c32, i32 = (t.detach().to(torch.float32).contiguous() for t in (means, conics, intensities))
        with _device_guard(means.device):
            gids, tile_start, n_pairs = bin_pairs(m32, c32, extents, shape, cutoff, tile)
            cfg_fwd, cfg_bwd = _launch_config(n_pairs, b * n_tiles, tile)
            out = torch.empty((b, d, h, w), device=means.device, dtype=torch.float32)
            thr = -0.5 * _LOG2E * cutoff * cutoff
            _forward_kernel[(b * n_tiles,)](
                m32, c32, i32, gids, tile_start, out,
                n_tiles, nt[1], nt[2], d, h, w, thr,
                TILE=tile, BLOCK_V=cfg_fwd[0], BLOCK_G=cfg_fwd[1], num_warps=cfg_fwd[2], enable_fp_fusion=FP_FUSION,
            )  # fmt: skip
        ctx.save_for_backward(m32, c32, i32, gids, tile_start)
        ctx.meta = (shape, cutoff, tile, cfg_bwd, n_tiles, nt, (means.dtype, conics.dtype, intensities.dtype))
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        m32, c32, i32, gids, tile_start = ctx.saved_tensors
        shape, cutoff, tile, cfg_bwd, n_tiles, nt, (m_dtype, c_dtype, i_dtype) = ctx.meta
        b, k = m32.shape[:2]
        d, h, w = shape
        g_means = torch.zeros_like(m32)
        g_conics = torch.zeros_like(c32)
        g_inten = torch.zeros_like(i32)
        if gids.numel() > 0:
            go = grad_out.to(torch.float32).contiguous()
            with _device_guard(m32.device):
                _backward_kernel[(b * n_tiles,)](
                    m32, c32, i32, gids, tile_start, go, g_means, g_conics, g_inten,
                    n_tiles, nt[1], nt[2], d, h, w, -0.5 * _LOG2E * cutoff * cutoff,
                    TILE=tile, BLOCK_V=cfg_bwd[0], BLOCK_G=cfg_bwd[1], num_warps=cfg_bwd[2], enable_fp_fusion=FP_FUSION,
                )  # fmt: skip
        return (
            g_means.to(m_dtype) if ctx.needs_input_grad[0] else None,
            g_conics.to(c_dtype) if ctx.needs_input_grad[1] else None,
            g_inten.to(i_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )


def render_triton(
    means: Tensor,
    conics: Tensor,
    intensities: Tensor,
    extents: Tensor,
    shape: Sequence[int],
    cutoff: float,
    tile: int = TILE,
) -> Tensor:
    """Render pre-processed Gaussians to ``(B, D, H, W)`` with Triton; differentiable w.r.t. means, conics, intensities.

    Same contract as :func:`medgmae.render._torch_impl.render_torch`. The kernels compute in float32; a float64
    input gives a float64 output holding float32-accurate values (and float64 gradients likewise).

    Args:
        means: ``(B, K, 3)`` voxel-frame centres.
        conics: ``(B, K, 6)`` precision entries ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``.
        intensities: ``(B, K)``.
        extents: ``(B, K, 3)`` cutoff-box half-widths (no gradient).
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
        tile: tile edge in voxels: 4, 8 or 16.

    Returns:
        ``(B, D, H, W)`` volume in the dtype of ``means``.

    Raises:
        ValueError: for tensors on a CPU without ``TRITON_INTERPRET=1``, or a bad ``tile``.
    """
    if means.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {means.device}"
        )
    if tile not in (4, 8, 16):
        # >= 4: tl.dot needs 16+ rows; <= 16: tile-centred monomials and the hi/mid sums stay exact (module docstring)
        raise ValueError(f"tile must be 4, 8 or 16, got {tile}")
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    shape = tuple(int(s) for s in shape)
    return _RenderTriton.apply(means, conics, intensities, extents, shape, float(cutoff), int(tile))
