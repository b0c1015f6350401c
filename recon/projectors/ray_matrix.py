"""The PyTorch ray marcher's operator as one precomputed sparse matrix, for cone beam (and parallel beam) on the CPU.

ASTRA has no CPU cone-beam projector (its 3D projectors need CUDA), and the ray marcher of
:mod:`recon.projectors.torch_proj` re-evaluates ``grid_sample`` over every ray sample on every call, which is slow
on a CPU.
:class:`RayMatrixProjector` builds, once per geometry, the sparse matrix ``A`` of exactly that operator: the same
rays and sample positions (taken from :meth:`TorchProjector._rays` and :meth:`TorchProjector._to_grid`, so the two
cannot drift), the trilinear weights of ``grid_sample(align_corners=False, padding_mode="zeros")`` with corners
outside the volume dropped, times the step. A projection is then one sparse-times-dense product ``A x`` and the
adjoint ``A^T y`` (scipy's CSR products, single-threaded; faster here than ``torch.sparse.mm``), equal to the
ray marcher up to rounding. The build evaluates only the samples on each ray's chord through the volume and sums
those of one lattice cell before expanding them to corners; it costs about two ray-marcher calls
(``python bench/projectors.py --cone-matrix``: 21 s to build, then 0.15-0.21 s against 8-11 s per forward and
adjoint for a 32 x 64 x 64 volume and 90 views at one thread, bench/RESULTS.md), so it pays off in iterative
reconstruction, not for a single projection; :mod:`recon.projectors.matrix_cache` keeps it in a run's folder.

Memory grows with rays x samples inside the volume; :func:`estimate_matrix_bytes` bounds it before anything is
built, and :func:`recon.projectors.make_projector` uses this projector for ``"auto"`` on the CPU only when the
bound fits :data:`MATRIX_BUDGET_BYTES`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recon.geometry import CTGeometry
from recon.projectors.base import Projector
from recon.projectors.torch_proj import TorchProjector, box_interval, sampling_support_half

__all__ = ["RayMatrixProjector", "estimate_matrix_bytes", "BUILD_VERSION", "MATRIX_BUDGET_BYTES"]

#: Largest matrix ``make_projector(..., "auto")`` builds on the CPU (A and A^T together, as bounded by
#: :func:`estimate_matrix_bytes`); 1.5 GiB leaves room for the reconstruction itself on a small machine. The
#: build briefly holds up to about 2.5 times the matrices (measured 2.2 for 20 views of the bench case).
MATRIX_BUDGET_BYTES = 3 << 29

#: Ray samples expanded to trilinear corners at once while building (bounds the build's temporary memory).
_BUILD_SAMPLES = 1 << 18


def _ray_tables(marcher: TorchProjector) -> tuple[Tensor, Tensor, Tensor]:
    """Start points and directions ``(rays, 3)`` (float64, mm) and the sample distances ``t`` of the ray marcher."""
    start, d = marcher._rays(torch.device("cpu"), torch.float64)
    t = (torch.arange(marcher.num_steps, dtype=torch.float64) + 0.5) * marcher.step_mm
    return start.reshape(-1, 3), d.reshape(-1, 3), t


def _box_chords(start: Tensor, d: Tensor, half: Tensor) -> Tensor:
    """Length (mm) of each ray's chord through the box ``|p| <= half`` (slab method), 0 for rays that miss."""
    lo, hi = box_interval(start, d, half)
    return (hi - lo).clamp(min=0)


#: The last scan's bound, by its geometry and step: ``--backend auto`` asks for it to choose the backend and again
#: for its note when the matrix is over budget, and on a scan that large one evaluation takes seconds.
_LAST_ESTIMATE: dict[str, int] = {}


def estimate_matrix_bytes(geometry: CTGeometry, step: float = 0.5) -> int:
    """Upper bound on the memory of :class:`RayMatrixProjector`'s matrices (``A`` and ``A^T``, CSR, float32).

    A ray's row holds the corners of the lattice cells its samples fall in, within the sampling support (the
    volume padded by half a voxel, where ``grid_sample`` still reads an edge voxel): at most 8 per sample, and at
    most 8 for the first cell plus 4 for each lattice plane the chord crosses (a new cell shares a face with the
    last one). The bound takes the smaller of the two per ray.

    Args:
        geometry: the scan.
        step: the ray marcher's step as a fraction of the smallest voxel.

    Returns:
        Bytes (a float32 value and an int32 index per entry, twice, plus the row pointers).
    """
    key = json.dumps([geometry.to_dict(), float(step)], sort_keys=True)
    bound = _LAST_ESTIMATE.get(key)
    if bound is None:
        bound = _matrix_bytes_bound(geometry, step)
        _LAST_ESTIMATE.clear()
        _LAST_ESTIMATE[key] = bound
    return bound


def _matrix_bytes_bound(geometry: CTGeometry, step: float) -> int:
    """:func:`estimate_matrix_bytes`'s bound, evaluated."""
    marcher = TorchProjector(geometry, step=step)
    start, d, _ = _ray_tables(marcher)
    vs = torch.tensor(geometry.voxel_size[::-1], dtype=torch.float64)  # (x, y, z)
    chord = _box_chords(start, d, sampling_support_half(geometry))
    samples = (chord / marcher.step_mm + 1).floor().clamp(max=marcher.num_steps)
    planes = (chord[:, None] * d.abs() / vs).floor().sum(-1) + 3
    per_ray = torch.minimum(8 * samples, 8 + 4 * planes) * (chord > 0)
    rows, cols = start.shape[0], math.prod(geometry.volume_shape)
    return int(2 * float(per_ray.sum()) * 8 + 8 * (rows + cols + 2))


def _pixel_coords(grid: Tensor, shape: tuple) -> Tensor:
    """grid_sample's unnormalisation for align_corners=False: ``(S, 3)`` normalised ``(x, y, z)`` to voxel indices."""
    size = grid.new_tensor([shape[2], shape[1], shape[0]])
    return ((grid + 1) * size - 1) / 2


def _corner_weights(pix: Tensor, shape: tuple, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Trilinear corners of ``grid_sample(align_corners=False, padding_mode="zeros")`` at voxel coordinates.

    Args:
        pix: ``(S, 3)`` voxel coordinates ``(x, y, z)`` (:func:`_pixel_coords`).
        shape: ``(D, H, W)``.
        dtype: the weights' dtype (the positions stay float64).

    Returns:
        ``(base, weight)``: the flat index ``(S,)`` of each sample's lower corner (possibly outside the volume) and
        the weights ``(S, 8)`` of its corners in :func:`_corner_steps`'s order, zero for corners outside the volume.
    """
    d, h, w = shape
    lo = pix.floor()
    frac = (pix - lo).to(dtype)
    lo = lo.long()
    # per axis, the weights of the lower and upper corner, zeroed where that corner lies outside the volume
    axis = []
    for k, n in enumerate((w, h, d)):
        wk = torch.stack([1 - frac[:, k], frac[:, k]], -1)  # (S, 2)
        ck = lo[:, k, None] + torch.tensor([0, 1])
        axis.append(wk * ((ck >= 0) & (ck < n)))
    wx, wy, wz = axis
    weight = (wz[:, :, None, None] * wy[:, None, :, None] * wx[:, None, None, :]).reshape(-1, 8)  # corners (z, y, x)
    return (lo[:, 2] * h + lo[:, 1]) * w + lo[:, 0], weight


def _sample_index(marcher: TorchProjector, start: Tensor, d: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """The ray marcher's samples that can fall within the sampling support, as ``(ray, step)`` index pairs in ray
    then step order: each ray's steps over its chord through the support ``half``
    (:meth:`~recon.projectors.torch_proj.TorchProjector.steps_within`; the exact test follows in :func:`_build_rows`)."""
    first, last = marcher.steps_within(*box_interval(start, d, half))
    count = (last - first + 1).clamp(min=0).long()
    ray = torch.repeat_interleave(torch.arange(start.shape[0]), count)
    offset = torch.cumsum(count, 0) - count
    return ray, torch.arange(ray.numel()) - offset[ray] + first.long()[ray]


def _build_rows(marcher: TorchProjector, rays: slice, start: Tensor, d: Tensor, t: Tensor, dtype: torch.dtype) -> sp.csr_matrix:
    """CSR block of ``A`` for the rays ``rays`` (duplicates summed) in ``dtype``; the samples' positions are float64.

    Only the samples on each ray's chord through the support are evaluated; consecutive samples of a ray in the same
    lattice cell share their 8 corners, so their weights are summed before the corners become matrix entries.
    """
    g = marcher.geometry
    shape = g.volume_shape
    start, d = start[rays], d[rays]
    ray, step = _sample_index(marcher, start, d, sampling_support_half(g))
    pts = start[ray] + t[step, None] * d[ray]  # (S, 3) mm, as the ray marcher computes them
    pix = _pixel_coords(marcher._to_grid(pts), shape)
    inside = ((pix > -1) & (pix < pix.new_tensor(shape[::-1]))).all(-1)  # some corner of the sample is in the volume
    ray, pix = ray[inside], pix[inside]
    base, weight = _corner_weights(pix, shape, dtype)
    new_run = torch.ones_like(ray, dtype=torch.bool)
    new_run[1:] = (ray[1:] != ray[:-1]) | (base[1:] != base[:-1])
    run = torch.cumsum(new_run, 0) - 1
    starts = new_run.nonzero().squeeze(1)
    summed = torch.zeros(starts.numel(), 8, dtype=weight.dtype).index_add_(0, run, weight) * marcher.step_mm
    n = math.prod(shape)
    vox = (base[starts, None] + _corner_steps(shape)).clamp_(0, n - 1)  # a corner outside the volume has weight 0
    rows = ray[starts, None].expand(-1, 8)
    coo = sp.coo_matrix((summed.reshape(-1).numpy(), (rows.reshape(-1).numpy(), vox.reshape(-1).numpy())), shape=(start.shape[0], n))
    block = coo.tocsr()  # sums the entries of neighbouring cells that share a corner
    block.eliminate_zeros()
    return block


def _corner_steps(shape: tuple) -> Tensor:
    """Flat-index offsets of a cell's 8 corners from its lower corner, in the order ``(z, y, x)`` (x fastest)."""
    _, h, w = shape
    return torch.tensor([(dz * h + dy) * w + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)])


#: Version of the matrix :func:`_build_matrix` builds, part of the key of a matrix kept in a run's folder
#: (:mod:`recon.projectors.matrix_cache`): bump when the build changes, so that kept matrices are rebuilt.
BUILD_VERSION = 2


def _build_matrix(marcher: TorchProjector, dtype: torch.dtype) -> sp.csr_matrix:
    """``A`` of the ray marcher, one block of rays (:data:`_BUILD_SAMPLES` samples) at a time."""
    start, d, t = _ray_tables(marcher)
    chunk = max(1, _BUILD_SAMPLES // marcher.num_steps)
    rays = start.shape[0]
    blocks = [_build_rows(marcher, slice(r0, min(r0 + chunk, rays)), start, d, t, dtype) for r0 in range(0, rays, chunk)]
    return sp.vstack(blocks, format="csr")


class RayMatrixProjector(Projector):
    """The :class:`TorchProjector` operator as a CPU sparse matrix, built once per geometry.

    Args:
        geometry: the scan.
        step: the ray marcher's sampling interval as a fraction of the smallest voxel (0.5 by default).
        dtype: the matrix's dtype (``torch.float32`` by default; ``torch.float64`` for reference computations).
        matrix: ``A`` built before for this geometry, step and dtype (:mod:`recon.projectors.matrix_cache` keeps it in
            a run's folder), used instead of building it; only its shape and dtype are checked here.
    """

    name = "matrix"

    def __init__(self, geometry: CTGeometry, step: float = 0.5, dtype: torch.dtype = torch.float32,
                 matrix: sp.csr_matrix | None = None):  # fmt: skip
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        super().__init__(geometry)
        marcher = TorchProjector(geometry, step=step)
        self.step_mm, self.num_steps = marcher.step_mm, marcher.num_steps
        self.step, self.dtype = float(step), dtype  # (the matrix file's key: recon.projectors.matrix_cache)
        shape = (geometry.num_views * geometry.det_shape[0] * geometry.det_shape[1], math.prod(geometry.volume_shape))
        if matrix is not None:
            if matrix.shape != shape or matrix.dtype != (np.float32 if dtype == torch.float32 else np.float64):
                raise ValueError(f"matrix must be {shape} of {dtype}, got {matrix.shape} of {matrix.dtype}")
            self.a = matrix
        else:
            self.a = _build_matrix(marcher, dtype)
        self.at = self.a.T.tocsr()  # A^T as its own CSR: the adjoint gathers instead of scattering
        self._pixels = geometry.det_shape[0] * geometry.det_shape[1]

    @property
    def nbytes(self) -> int:
        """Memory of ``A`` and ``A^T`` in bytes."""
        return sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (self.a, self.at))

    def _view_block(self, v: int) -> sp.csr_matrix:
        """Rows of view ``v`` (a CSR sharing ``A``'s arrays)."""
        a, p = self.a, self._pixels
        lo, hi = a.indptr[v * p], a.indptr[(v + 1) * p]
        indptr = a.indptr[v * p : (v + 1) * p + 1] - lo
        return sp.csr_matrix((a.data[lo:hi], a.indices[lo:hi], indptr), shape=(p, a.shape[1]))

    def _forward_raw(self, volume: Tensor, views: Tensor | None) -> Tensor:
        b = volume.shape[0]
        x = volume.detach().to("cpu", self.dtype).reshape(b, -1).T.contiguous().numpy()  # (N, B), C-ordered
        if views is None:
            y = self.a @ x
        else:
            y = np.concatenate([self._view_block(int(v)) @ x for v in views.tolist()])
        y = torch.from_numpy(np.ascontiguousarray(y.T)).view(b, -1, *self.geometry.det_shape)
        return y.to(volume.device, volume.dtype)

    def _adjoint_raw(self, proj: Tensor, views: Tensor | None) -> Tensor:
        b = proj.shape[0]
        y = proj.detach().to("cpu", self.dtype).reshape(b, -1).T.contiguous().numpy()  # (V * P, B)
        if views is None:
            x = self.at @ y
        else:
            p = self._pixels
            x = np.zeros((self.a.shape[1], b), dtype=y.dtype)
            for i, v in enumerate(views.tolist()):
                x += self._view_block(int(v)).T @ y[i * p : (i + 1) * p]
        x = torch.from_numpy(np.ascontiguousarray(x.T)).view(b, *self.geometry.volume_shape)
        return x.to(proj.device, proj.dtype)
