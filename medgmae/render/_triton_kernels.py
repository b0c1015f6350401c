"""The Triton renderer's forward and backward kernels and the device helpers they share.

Both kernels evaluate exactly the same weights (the backward recomputes them), so they live in one module with the
precision argument below; the binning they read is :mod:`medgmae.render._triton_binning`, their launch and autograd
wrapper :mod:`medgmae.render._triton_impl`.

**Forward** (``_forward_kernel``, one program per ``(batch, tile)``). With tile-centred voxel coordinates
``x`` (components in ``[-(T-1)/2, (T-1)/2]``, so no float32 cancellation from large absolute positions) and the
tile-local mean ``m``, the quadratic form is linear in the ten monomials of ``x``::

    q = x^T P x - 2 (P m)^T x + m^T P m = A(x) . C(P, m),
    A = (xd^2, xh^2, xw^2, xd xh, xd xw, xh xw, xd, xh, xw, 1),
    C = (Pdd, Phh, Pww, 2Pdh, 2Pdw, 2Phw, -2(Pm)_d, -2(Pm)_h, -2(Pm)_w, m^T P m).

A block of ``BLOCK_V`` voxels of the tile against a chunk of ``BLOCK_G`` Gaussians is therefore one
``(BLOCK_V, 16) x (16, BLOCK_G)`` matrix product (``tl.dot``, the 10 monomials zero-padded to 16) followed by
``exp2``, the cutoff mask and a weighted row sum, like a FlashAttention tile. The program walks its tile block by
block (outer loop) and the tile's Gaussians chunk by chunk (inner loop), so the output is written once, with no
atomics, and every voxel of the volume exactly once (``torch.empty`` output). The coefficients are pre-scaled by ``-log2(e) / 2`` so the product is directly
the ``exp2`` argument.

*Precision of the product.* The terms of ``A . C`` are large and cancel: for a Gaussian of scale 0.06 voxel near a
tile corner the ten products reach ~3e4 in sum while the result ``e`` (``log2`` of the weight) must be right to
~1e-5 where the weight matters (``|e| <= 6.5`` inside the cutoff). Plain float32 arithmetic errs by ~2^-24 of the
terms (~1e-3 in ``e``), in three places: rounding the coefficients ``C`` (``m^T P m`` alone), the tensor cores'
accumulation (on NVIDIA GPUs products are aligned to the largest term, low bits truncated), and TF32's 10-bit
operands. The kernels avoid all three:

1. ``C`` is computed in float64 from the float32 ``m`` and ``P`` (products of two float32 values are exact), then
   held as ``c1 + c2`` in float32 (~2^-48 relative).
2. With ``2^k <= M = max_j |C_j| < 2^(k+1)`` per Gaussian, ``C`` is sliced as ``hi + mid + lo``: ``hi`` is ``C``
   rounded to the grid ``g1 = 2^(k-10)`` (at most 11 significant bits: exact in TF32), ``mid`` the remainder
   rounded to ``g2 = 2^(k-21)`` (exact in TF32, ``|mid| <= g1 / 2``), ``lo`` the rest (``<= g2 / 2``) rounded to
   TF32 (``(x + 1.5 * 2^23 g) - 1.5 * 2^23 g`` rounds ``x`` to the grid ``g`` exactly).
3. The monomials of the tile-centred grid are multiples of 1/4 no larger than ``(T/2)^2``, so ``A_j hi_j`` are
   integers times ``g1 / 4`` and their partial sums stay below ``2^22`` such units for ``T <= 16``: the ``hi``
   product is exact in any order and under any alignment. The ``mid`` product accumulates onto it: for a pair
   inside the cutoff ``|A . hi| <= |e| + sum_j |A_j| g1 / 2``, so that sum and the ``mid`` products span under 24
   bits above ``g2 / 4`` and are exact too (or, when ``|e|`` dominates, rounded to ~2^-22 of ``|e|``). The ``lo``
   product adds to a running sum that is already ``~e``, with errors ~2^-24 of it.

So ``|e_kernel - e| <= 2^(k-33) sum_j |A_j| + 2^-21 |e|``: the only sizeable term is the TF32 rounding of ``lo``,
``sum_j |A_j| <= 85`` for ``T = 8`` (361 for ``T = 16``) at a tile corner, and ``M`` at most ~``0.72 |P| |m|^2``.
For a scale of 0.06 voxel (``|P| = 278``) at an 8^3 tile's corner (``|m|^2 ~ 37``) the bound is ~7e-5 in ``e``,
i.e. ~5e-5 relative in the weight; errors of random sign over ten slices stay far below it. Measured against the
float64 oracle with TF32-truncated products (interpreter; the draws of ``tests/test_render_triton.py``, Gaussians
of 0.06-0.3 voxel): worst relative weight error 2.9e-6 over 24 draws on 8^3 tiles (the previous scheme: 1.5e-4),
6.0e-5 on 16^3 tiles (previously 5.9e-4), whose bound is ~20x larger. The error scales as ``1 / scale^2``, so
Gaussians of a voxel or more are accurate to ~1e-7. The price: the float64 coefficients and the slicing, per
Gaussian and voxel block in the forward (in the compiled code, 24 float64 instructions per thread and chunk, i.e.
1.5 per Gaussian-voxel pair at the launch shapes used: ``bench/triton_aot.py``; not yet timed on a GPU) and per
Gaussian chunk in the backward; the three chained TF32 products per pair are as before (the previous scheme
rounded ``C`` in float32, sliced each coefficient relative to its own size and accumulated the smallest slice
first). ``bench/triton_aot.py`` (and its test) checks that the grid rounding survives compilation (two exact FMAs
with ``+-12288 * 2^k``).

**Backward** (``_backward_kernel``, one program per ``(batch, tile)``). For each chunk of ``BLOCK_G`` Gaussians
it walks the tile in blocks of ``BLOCK_V`` voxels, recomputing the weights with the same sliced product (the
slices computed once per chunk; here transposed, Gaussians along the rows, so that the per-Gaussian sums are row
reductions inside a thread and a few lanes, and per-Gaussian values are not replicated across the accumulator
layout), and accumulates with ``g`` the
incoming gradient: ``dL/dI = sum_v g w`` and the nine monomial moments ``sum_v g w A_vj``; ``dL/dC_j`` is these
times ``-I/2`` (``dL/dq = -1/2 g I w``), the constant monomial's being ``-I/2 dL/dI``. A voxel block lies inside
one d-slice of the tile, so ``xd`` is constant over it and the four moments involving ``xd`` follow from the
others: per Gaussian-voxel element this costs 5 multiplies and 6 row-sum adds besides the exponential. The moments
map to the conic and mean gradients in closed form. The moments are plain FMAs and row sums rather than a second ``A^T r`` tensor-core
product: that product has a 16-row output and a long contraction, which ``mma`` can only do with every warp
holding whole operands (255 registers and heavy spills in ``ptxas -v``). Each program then adds its per-Gaussian
partial sums (10 floats per pair) to the outputs with relaxed ``tl.atomic_add`` (``red.global.add.f32``). A
per-pair buffer plus segmented reduction would need ``10 x 4`` bytes per pair written and read again (1.1 GB at
B=8, K=2048, 96^3, where a pair is 512 voxel evaluations), while the atomics touch only ``B*K*10`` floats that stay
resident in L2; to spread the contention of the dense regime (every tile holding the same Gaussians) each program
starts its chunk loop at a different chunk (``pid mod n_chunks``). The price is that the gradient summation order,
and so the last bits of the gradients, are not deterministic (the forward is).

Everything runs unchanged under ``TRITON_INTERPRET=1`` on CPU tensors (how the tests run it); ``tl.dot``'s
``input_precision`` is ignored there (numpy float32 matmul).

The device helpers both kernels call are in :mod:`medgmae.render._triton_device`. The backward kernel follows the
derivation above step by step; split into helpers it would pass a dozen per-Gaussian values back and forth as long
tuples, which reads worse.
"""

from __future__ import annotations

import triton
import triton.language as tl

from medgmae.render._triton_device import (  # noqa: F401 (device functions the kernels call)
    _tile_coords,
    _voxel_coords,
    _voxel_block,
    _load_chunk,
    _bcast,
    _coefficient_slices,
    _round_tf32,
    _log2_weights,
    _voxel_block_t,
    _log2_weights_t,
)


# --------------------------------------------------------------------------------------------------------------------
# forward / backward kernels
# --------------------------------------------------------------------------------------------------------------------
@triton.jit
def _forward_kernel(
    means_ptr,
    conics_ptr,
    inten_ptr,
    gids_ptr,
    tile_start_ptr,
    out_ptr,
    N_TILES,
    NT_H,
    NT_W,
    D,
    H,
    W,
    thr,
    TILE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """The voxels of one ``(batch, tile)`` program, each written once: block by block, the sum over the tile's
    Gaussians chunk by chunk (see the module docstring)."""
    pid = tl.program_id(0).to(tl.int64)
    b, t_d, t_h, t_w, c_d, c_h, c_w = _tile_coords(pid, N_TILES, NT_H, NT_W, TILE)
    start = tl.load(tile_start_ptr + pid)
    end = tl.load(tile_start_ptr + pid + 1)
    for s in range(0, TILE * TILE * TILE // BLOCK_V):
        a, out_off, inside, xd, xh, xw = _voxel_block(s * BLOCK_V, b, t_d, t_h, t_w, D, H, W, TILE, BLOCK_V)
        acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        for j in range(start, end, BLOCK_G):
            g, gmask, md, mh, mw, pdd, phh, pww, pdh, pdw, phw, inten = _load_chunk(
                gids_ptr, means_ptr, conics_ptr, inten_ptr, j, end, c_d, c_h, c_w, BLOCK_G
            )
            hi, mid, lo = _coefficient_slices(md, mh, mw, pdd, phh, pww, pdh, pdw, phw, False)
            e, keep = _log2_weights(a, hi, mid, lo, gmask, thr)
            w = tl.where(keep, tl.exp2(e), 0.0)
            acc += tl.sum(w * inten[None, :], axis=1)
        tl.store(out_ptr + out_off, acc, mask=inside)


@triton.jit
def _backward_kernel(
    means_ptr,
    conics_ptr,
    inten_ptr,
    gids_ptr,
    tile_start_ptr,
    grad_out_ptr,
    g_means_ptr,
    g_conics_ptr,
    g_inten_ptr,
    N_TILES,
    NT_H,
    NT_W,
    D,
    H,
    W,
    thr,
    TILE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Gradients of the means, conics and intensities from one ``(batch, tile)`` program (see the module docstring).

    Over 60 lines because the ten per-Gaussian moment accumulators of the voxel-block loop feed the closed-form
    conic and mean gradients right after it; helpers would pass the ten values back and forth as long tuples.
    """
    pid = tl.program_id(0).to(tl.int64)
    b, t_d, t_h, t_w, c_d, c_h, c_w = _tile_coords(pid, N_TILES, NT_H, NT_W, TILE)
    start = tl.load(tile_start_ptr + pid)
    end = tl.load(tile_start_ptr + pid + 1)
    n_chunks = (end - start + BLOCK_G - 1) // BLOCK_G
    tl.static_assert(BLOCK_V <= TILE * TILE, "a backward voxel block must lie in one d-slice of the tile")
    for i in range(0, n_chunks):
        # staggered start: concurrent programs of the dense regime add to different Gaussians
        j = start + ((i + pid) % n_chunks) * BLOCK_G
        g, gmask, md, mh, mw, pdd, phh, pww, pdh, pdw, phw, inten = _load_chunk(
            gids_ptr, means_ptr, conics_ptr, inten_ptr, j, end, c_d, c_h, c_w, BLOCK_G
        )
        hi, mid, lo = _coefficient_slices(md, mh, mw, pdd, phh, pww, pdh, pdw, phw, True)
        # dL/dC_j = sum_v A_vj r_v, accumulated over the tile's voxel blocks; g9 = sum r = -I/2 dL/dI
        d_inten = tl.zeros([BLOCK_G], dtype=tl.float32)
        g0 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g1 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g2 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g3 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g4 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g5 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g6 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g7 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g8 = tl.zeros([BLOCK_G], dtype=tl.float32)
        for s in range(0, TILE * TILE * TILE // BLOCK_V):
            a_t, out_off, inside, xd, xh, xw = _voxel_block_t(s * BLOCK_V, b, t_d, t_h, t_w, D, H, W, TILE, BLOCK_V)
            go = tl.load(grad_out_ptr + out_off, mask=inside, other=0.0)
            e, keep = _log2_weights_t(a_t, hi, mid, lo, gmask, thr)
            gw = tl.where(keep, tl.exp2(e), 0.0) * go[None, :]
            # the block lies in one d-slice of the tile: xd is constant, its moments follow from the others
            xd0 = ((s * BLOCK_V) // (TILE * TILE)) * 1.0 - (TILE - 1) * 0.5  # "* 1.0": a loop index or a Python int
            r_h = gw * xh[None, :]
            r_w = gw * xw[None, :]
            s0 = tl.sum(gw, axis=1)
            s_h = tl.sum(r_h, axis=1)
            s_w = tl.sum(r_w, axis=1)
            d_inten += s0
            g1 += tl.sum(r_h * xh[None, :], axis=1)
            g2 += tl.sum(r_w * xw[None, :], axis=1)
            g5 += tl.sum(r_h * xw[None, :], axis=1)
            g7 += s_h
            g8 += s_w
            g6 += xd0 * s0
            g0 += (xd0 * xd0) * s0
            g3 += xd0 * s_h
            g4 += xd0 * s_w
        # the sums above are of g*w; dL/dq = -I/2 g w
        rs = -0.5 * inten
        g0 = g0 * rs
        g1 = g1 * rs
        g2 = g2 * rs
        g3 = g3 * rs
        g4 = g4 * rs
        g5 = g5 * rs
        g6 = g6 * rs
        g7 = g7 * rs
        g8 = g8 * rs
        g9 = d_inten * rs
        # C = (Pdd, Phh, Pww, 2Pdh, 2Pdw, 2Phw, -2Pm, m^T P m) -> gradients of P's six entries and of m
        pmd = pdd * md + pdh * mh + pdw * mw
        pmh = pdh * md + phh * mh + phw * mw
        pmw = pdw * md + phw * mh + pww * mw
        gp_dd = g0 - 2.0 * md * g6 + md * md * g9
        gp_hh = g1 - 2.0 * mh * g7 + mh * mh * g9
        gp_ww = g2 - 2.0 * mw * g8 + mw * mw * g9
        gp_dh = 2.0 * (g3 - mh * g6 - md * g7 + md * mh * g9)
        gp_dw = 2.0 * (g4 - mw * g6 - md * g8 + md * mw * g9)
        gp_hw = 2.0 * (g5 - mw * g7 - mh * g8 + mh * mw * g9)
        gm_d = -2.0 * (pdd * g6 + pdh * g7 + pdw * g8) + 2.0 * pmd * g9
        gm_h = -2.0 * (pdh * g6 + phh * g7 + phw * g8) + 2.0 * pmh * g9
        gm_w = -2.0 * (pdw * g6 + phw * g7 + pww * g8) + 2.0 * pmw * g9
        tl.atomic_add(g_inten_ptr + g, d_inten, mask=gmask, sem="relaxed")
        tl.atomic_add(g_means_ptr + g * 3 + 0, gm_d, mask=gmask, sem="relaxed")
        tl.atomic_add(g_means_ptr + g * 3 + 1, gm_h, mask=gmask, sem="relaxed")
        tl.atomic_add(g_means_ptr + g * 3 + 2, gm_w, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 0, gp_dd, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 1, gp_hh, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 2, gp_ww, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 3, gp_dh, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 4, gp_dw, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 5, gp_hw, mask=gmask, sem="relaxed")
