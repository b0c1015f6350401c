"""ASTRA's CPU path as one sparse product (recon.projectors.astra_matrix) against ASTRA's own per-slice
``create_sino`` / ``create_backprojection`` (the peer reference), for every 2D projector type and view subsets."""

import numpy as np
import pytest
import torch

from recon.geometry import CTGeometry
from recon.projectors import AstraProjector

astra = pytest.importorskip("astra")


def _astra_per_slice(p: AstraProjector, volume: torch.Tensor, proj: torch.Tensor, views):
    """ASTRA's 2D forward and back projection, one call per slice (rows flipped: ASTRA's row 0 is the top)."""
    pid = p._projector_2d(views)
    x, y = volume.numpy(), proj.numpy()
    fwd, bwd = np.zeros(proj.shape), np.zeros(volume.shape)
    for b in range(x.shape[0]):
        for k in range(x.shape[1]):
            sid, s = astra.create_sino(np.ascontiguousarray(x[b, k, ::-1, :], dtype=np.float32), pid)
            astra.data2d.delete(sid)
            fwd[b, :, k, :] = s
            bid, img = astra.create_backprojection(np.ascontiguousarray(y[b, :, k, :], dtype=np.float32), pid)
            astra.data2d.delete(bid)
            bwd[b, k] = img[::-1, :]
    return torch.from_numpy(fwd), torch.from_numpy(bwd)


@pytest.mark.parametrize("kind", ["strip", "linear", "line"])
@pytest.mark.parametrize("views", [None, [0, 3, 4, 10]])
def test_sparse_product_matches_astra_per_slice(kind, views):
    geom = CTGeometry.parallel((5, 12, 12), (2.0, 1.5, 1.5), num_angles=13)
    p = AstraProjector(geom, projector_2d=kind)
    v = None if views is None else torch.tensor(views)
    nv = geom.num_views if v is None else v.numel()
    gen = torch.Generator().manual_seed(len(kind) + nv)
    volume = torch.rand(2, *geom.volume_shape, generator=gen)
    volume[:, :, :3] += 1.0  # asymmetric in y: a wrong row flip shows
    proj = torch.rand(2, nv, *geom.det_shape, generator=gen)
    want_f, want_b = _astra_per_slice(p, volume, proj, v)
    got_f, got_b = p._forward_raw(volume, v), p._adjoint_raw(proj, v)
    assert got_f.shape == want_f.shape and got_b.shape == want_b.shape
    for got, want in ((got_f, want_f), (got_b, want_b)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    p.close()


def test_sparse_product_keeps_dtype_and_is_differentiable():
    geom = CTGeometry.parallel((3, 8, 8), 1.0, num_angles=6)
    p = AstraProjector(geom)
    x = torch.rand(*geom.volume_shape, dtype=torch.float64, requires_grad=True)
    y = p(x)
    assert y.dtype == torch.float64 and y.shape == geom.proj_shape
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, 2 * p.adjoint(y.detach()), rtol=1e-6, atol=1e-8)
