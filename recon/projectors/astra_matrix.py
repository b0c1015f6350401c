"""ASTRA's 2D CPU parallel-beam projector as a sparse matrix applied to every slice at once.

ASTRA's 2D projectors (``strip``, ``linear``, ``line``) are linear maps from a slice to its sinogram; ASTRA
exports their weights (``astra.projector.matrix``). A parallel-beam scan with one detector row per slice applies
the same map to every slice, so one sparse-times-dense product ``A [x_1 ... x_n]`` projects the whole volume and
``A^T [y_1 ... y_n]`` back-projects it, instead of one ASTRA call per slice (measured in
``bench/recon_profile.py``). The weights are ASTRA's own, so results equal ASTRA's ``create_sino`` /
``create_backprojection`` up to float32 rounding.

ASTRA's images have row 0 at the top (largest ``y``); the matrix's columns are permuted once so it takes the
slices in this package's ``(H, W)`` order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["SliceMatrix"]


class SliceMatrix:
    """``A`` (and ``A^T``) of one ASTRA 2D projector, applied slice by slice as one sparse product.

    Args:
        projector_id: an ASTRA 2D projector id (its volume geometry is ``rows x cols`` = ``H x W``).
        image_shape: ``(H, W)`` of a slice.
        num_views: views of the projector's geometry.
        num_dets: detector columns.
    """

    def __init__(self, projector_id: int, image_shape: tuple, num_views: int, num_dets: int):
        import astra

        mid = astra.projector.matrix(projector_id)
        try:
            a = astra.matrix.get(mid).tocsr()
        finally:
            astra.matrix.delete(mid)
        h, w = image_shape
        # column j of ASTRA's matrix is pixel (r, c) = divmod(j, w) of the flipped image, i.e. row h - 1 - r here
        r, c = np.divmod(np.arange(h * w), w)
        a = a[:, (h - 1 - r) * w + c].astype(np.float32).tocsr()
        self.a, self.at = a, a.T.tocsr()
        self.image_shape, self.num_views, self.num_dets = (h, w), num_views, num_dets

    def forward(self, volume: Tensor) -> Tensor:
        """``(B, D, H, W)`` -> ``(B, views, D, dets)`` line integrals (float32 products)."""
        b, d, h, w = volume.shape
        x = volume.detach().to("cpu", torch.float32).reshape(b * d, h * w).T.contiguous().numpy()
        y = self.a @ x  # (views * dets, B * D); scipy's CSR product is fastest on a C-ordered right-hand side
        y = torch.from_numpy(np.ascontiguousarray(y)).view(self.num_views, self.num_dets, b, d)
        return y.permute(2, 0, 3, 1).contiguous().to(volume.device, volume.dtype)

    def adjoint(self, proj: Tensor) -> Tensor:
        """``(B, views, D, dets)`` -> ``(B, D, H, W)`` back-projection."""
        b, v, d, n = proj.shape
        y = proj.detach().to("cpu", torch.float32).permute(1, 3, 0, 2).reshape(v * n, b * d).numpy()
        x = self.at @ y  # (H * W, B * D)
        x = torch.from_numpy(np.ascontiguousarray(x.T)).view(b, d, *self.image_shape)
        return x.to(proj.device, proj.dtype)
