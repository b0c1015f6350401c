"""ASTRA Toolbox backend.

* On CUDA tensors: ASTRA's 3D GPU projector (``cuda3d``) on ``parallel3d_vec`` / ``cone_vec`` geometries (each
  view's own detector centre, so a per-view detector offset too), with
  the torch tensors handed to ASTRA through DLPack (``astra.experimental.direct_FP3D`` / ``direct_BP3D``: ASTRA
  links the device memory, no host copies).
* On CPU tensors (whether or not ASTRA has CUDA): parallel beam only, slice by slice with ASTRA's 2D CPU projectors
  (``strip`` by default, or ``linear`` / ``line``), whose weights are applied to all slices in one sparse product
  (:class:`recon.projectors.astra_matrix.SliceMatrix`); needs one detector row per volume slice at the slice
  pitch and square pixels in-plane. ASTRA's 2D images have row 0 at the top (largest ``y``), hence the flips.

The path is chosen by the tensor's device, never by ``astra.use_cuda()`` alone: astra-toolbox's Linux wheels are
CUDA builds, so on a GPU machine CPU tensors still take the 2D CPU path. ASTRA's 3D functions abort the process
when ASTRA has no CUDA, so every 3D call is guarded by ``astra.use_cuda()`` and raises a ``ValueError`` instead.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from recon.geometry import CTGeometry
from recon.projectors.astra_matrix import SliceMatrix
from recon.projectors.base import Projector

__all__ = ["AstraProjector", "astra_cuda_available", "astra_installed"]


def astra_installed() -> bool:
    """Whether astra-toolbox can be imported (a dependency, but one without wheels for every platform)."""
    try:
        import astra  # noqa: F401
    except ImportError:
        return False
    return True


def astra_cuda_available() -> bool:
    """True when ASTRA was built with CUDA and sees a GPU (the only case its 3D functions are safe to call)."""
    if not astra_installed():
        return False
    import astra

    return bool(astra.use_cuda())


def astra_cpu_problem(geometry: CTGeometry) -> str | None:
    """Why ASTRA's CPU path (2D parallel-beam projectors, slice by slice) cannot take a parallel-beam ``geometry``
    (``None``: it can): it needs one detector row per volume slice at the slice pitch, level with the slices (no
    row offset ``det_offset[1]``, in any view), and square in-plane voxels (ASTRA's 2D volume geometry has one pixel
    size). A column offset is no problem, one per view (a flexmap) included: its ``parallel_vec`` geometry takes each
    view's shifted detector centre."""
    g = geometry
    if g.det_shape[0] != g.volume_shape[0] or not math.isclose(g.det_spacing[0], g.voxel_size[0], rel_tol=1e-6):
        return (f"it needs one detector row per slice at the slice pitch: rows {g.det_shape[0]} vs slices "
                f"{g.volume_shape[0]}, row pitch {g.det_spacing[0]:g} vs {g.voxel_size[0]:g} mm")  # fmt: skip
    v = g.offsets()[:, 1]
    if (v != 0).any():
        k = int(np.argmax(np.abs(v)))
        where = f" in view {k}" if g.per_view_offset else ""
        return f"it needs the detector rows level with the slices, not offset by v = {v[k]:g} mm{where}"
    if not math.isclose(g.voxel_size[1], g.voxel_size[2], rel_tol=1e-6):
        return f"it needs square in-plane voxels, not {g.voxel_size[1]:g} x {g.voxel_size[2]:g} mm"
    return None


def astra_cpu_supports(geometry: CTGeometry) -> bool:
    """Whether ASTRA's CPU path can take ``geometry``: ASTRA is installed, the scan is parallel beam, and
    :func:`astra_cpu_problem` finds nothing."""
    return astra_installed() and geometry.kind == "parallel" and astra_cpu_problem(geometry) is None

def astra_problem(geometry: CTGeometry, device) -> str | None:
    """Why ``--backend astra`` cannot project ``geometry`` on ``device`` (``None``: it can): ASTRA missing, its 3D
    (CUDA) projectors without a CUDA build, or on the CPU, where it has 2D parallel-beam projectors only
    (:func:`astra_cpu_problem`)."""
    if not astra_installed():
        return "astra-toolbox is not installed"
    if str(device).startswith("cuda"):
        return None if astra_cuda_available() else "this ASTRA has no CUDA (astra.use_cuda() is False)"
    if geometry.kind != "parallel":
        return "ASTRA projects cone beam on the GPU only; on the CPU it has 2D parallel-beam projectors"
    problem = astra_cpu_problem(geometry)
    return None if problem is None else f"ASTRA's CPU path projects slice by slice, and {problem}"


class AstraProjector(Projector):
    """``A`` and ``A^T`` computed by ASTRA.

    Args:
        geometry: the scan.
        projector_2d: ASTRA 2D CPU projector type for the CPU path (``"strip"``, ``"linear"`` or ``"line"``).
    """

    name = "astra"

    def __init__(self, geometry: CTGeometry, projector_2d: str = "strip"):
        super().__init__(geometry)
        if not astra_installed():
            raise ValueError("the ASTRA backend needs astra-toolbox installed ('auto' uses PyTorch without it)")
        if projector_2d not in ("strip", "linear", "line"):
            raise ValueError(f"projector_2d must be 'strip', 'linear' or 'line', got {projector_2d!r}")
        self.projector_2d = projector_2d
        self._ids: dict = {}
        self._matrices: dict = {}

    # ------------------------------------------------------------------ 3D (CUDA)
    def _geoms_3d(self, views: Tensor | None):
        import astra

        g = self.geometry
        (ez, ey, ex), (d, h, w) = g.extent, g.volume_shape
        vol = astra.create_vol_geom(h, w, d, -ex / 2, ex / 2, -ey / 2, ey / 2, -ez / 2, ez / 2)
        vec = g.vectors()
        if views is not None:
            vec = vec[views.cpu().numpy()]
        kind = "parallel3d_vec" if g.kind == "parallel" else "cone_vec"
        return vol, astra.create_proj_geom(kind, g.det_shape[0], g.det_shape[1], vec)

    def _projector_3d(self, views: Tensor | None) -> int:
        import astra

        key = None if views is None else tuple(views.tolist())
        if key not in self._ids:
            if len(self._ids) > 16:
                self.close()
            vol, proj = self._geoms_3d(views)
            self._ids[key] = astra.create_projector("cuda3d", proj, vol)
        return self._ids[key]

    def _check_cuda(self, t: Tensor) -> None:
        if not astra_cuda_available():
            raise ValueError(
                "ASTRA's 3D projectors need CUDA but astra.use_cuda() is False; use backend='torch' "
                "(or a parallel-beam geometry on CPU tensors for ASTRA's 2D CPU path)"
            )
        if t.device.type != "cuda":
            raise ValueError(f"ASTRA's 3D path takes CUDA tensors, got a tensor on {t.device}")

    # ------------------------------------------------------------------ 2D (CPU)
    def _check_2d(self) -> None:
        g = self.geometry
        if g.kind != "parallel":
            raise ValueError(
                "ASTRA on CPU tensors supports parallel-beam geometries only (cone beam needs CUDA tensors); "
                "use backend='torch' for cone beam on the CPU"
            )
        if problem := astra_cpu_problem(g):
            raise ValueError(f"ASTRA's CPU path projects slice by slice, and {problem} ('auto' uses PyTorch for such a scan)")

    def _projector_2d(self, views: Tensor | None) -> int:
        import astra

        key = ("2d", None if views is None else tuple(views.tolist()))
        if key not in self._ids:
            if len(self._ids) > 16:  # random view subsets: keep the cache of ASTRA objects bounded
                self.close()
            g = self.geometry
            _, ey, ex = g.extent
            vol = astra.create_vol_geom(g.volume_shape[1], g.volume_shape[2], -ex / 2, ex / 2, -ey / 2, ey / 2)
            vec = g.vectors()
            if views is not None:
                vec = vec[views.cpu().numpy()]
            vec2 = np.concatenate([vec[:, 0:2], vec[:, 3:5], vec[:, 6:8]], 1)
            proj = astra.create_proj_geom("parallel_vec", g.det_shape[1], vec2)
            self._ids[key] = astra.create_projector(self.projector_2d, proj, vol)
        return self._ids[key]

    def _matrix_2d(self, views: Tensor | None) -> SliceMatrix:
        """The 2D projector's weights as a sparse matrix applied to all slices at once (cached per view set)."""
        key = ("matrix", None if views is None else tuple(views.tolist()))
        if key not in self._matrices:
            if len(self._matrices) > 16:  # random view subsets: keep the cached matrices bounded too
                self._matrices.clear()
            g = self.geometry
            nv = g.num_views if views is None else views.numel()
            self._matrices[key] = SliceMatrix(self._projector_2d(views), g.volume_shape[1:], nv, g.det_shape[1])
        return self._matrices[key]

    # ------------------------------------------------------------------ raw operators
    def _forward_raw(self, volume: Tensor, views: Tensor | None) -> Tensor:
        g = self.geometry
        nv = g.num_views if views is None else views.numel()
        if volume.device.type != "cpu":
            self._check_cuda(volume)
            import astra.experimental as ax

            pid = self._projector_3d(views)
            out = []
            for x in volume.float():
                y = torch.zeros((g.det_shape[0], nv, g.det_shape[1]), device=volume.device, dtype=torch.float32)
                x = x.contiguous()  # queued before the synchronisation, not after
                with _astra_on(volume.device):
                    ax.direct_FP3D(pid, x, y)
                out.append(y.permute(1, 0, 2))
            return torch.stack(out).to(volume.dtype)
        self._check_2d()
        return self._matrix_2d(views).forward(volume)

    def _adjoint_raw(self, proj: Tensor, views: Tensor | None) -> Tensor:
        g = self.geometry
        if proj.device.type != "cpu":
            self._check_cuda(proj)
            import astra.experimental as ax

            pid = self._projector_3d(views)
            out = []
            for y in proj.float():
                x = torch.zeros(g.volume_shape, device=proj.device, dtype=torch.float32)
                y = y.permute(1, 0, 2).contiguous()  # queued before the synchronisation, not after
                with _astra_on(proj.device):
                    ax.direct_BP3D(pid, x, y)
                out.append(x)
            return torch.stack(out).to(proj.dtype)
        self._check_2d()
        return self._matrix_2d(views).adjoint(proj)

    def close(self) -> None:
        """Free the ASTRA projector objects."""
        import astra

        for key, pid in self._ids.items():
            (astra.projector.delete if key and key[0] == "2d" else astra.projector3d.delete)(pid)
        self._ids.clear()


@contextmanager
def _astra_on(device: torch.device):
    """Run an ASTRA call on ``device``'s GPU. ASTRA keeps its own GPU index and CUDA stream, not PyTorch's: it is
    pointed at the tensors' GPU (it defaults to GPU 0, wrong for ``cuda:1``), PyTorch's queued work on the
    tensors is finished first (they may still be being written on PyTorch's stream) and ASTRA's before PyTorch
    reads its output (unverified on a GPU: these synchronisations cost little beside a 3D projection)."""
    import astra

    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.synchronize(device)
    with torch.cuda.device(device):  # ASTRA's call sets the thread's device too: restored when the block ends
        astra.set_gpu_index(index)
        yield
        torch.cuda.synchronize(device)
