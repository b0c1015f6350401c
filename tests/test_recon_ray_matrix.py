"""The sparse-matrix projector against the PyTorch ray marcher whose operator it stores (``grid_sample`` is the
independent reference for the trilinear weights): forward, view subsets, adjoint, gradients, backend choice."""

import pytest
import torch

from recon.geometry import CTGeometry
from recon.projectors import (
    RayMatrixProjector, TorchProjector, estimate_matrix_bytes, make_projector, ray_matrix, resolve_backend,
)  # fmt: skip

GEOMETRIES = {
    "cone": lambda: CTGeometry.cone((8, 12, 10), (3.0, 2.0, 1.5), num_angles=6),
    "parallel": lambda: CTGeometry.parallel((8, 12, 10), (3.0, 2.0, 1.5), num_angles=6, arc_deg=170.0),
    # a detector that overhangs the volume and rows that do not fall on voxel centres
    "cone-wide": lambda: CTGeometry.cone((8, 12, 10), (2.5, 1.0, 2.0), num_angles=5, det_shape=(15, 17), det_spacing=(2.3, 2.1)),
}
SEEDS = range(6)


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def pair(request):
    g = GEOMETRIES[request.param]()
    return g, TorchProjector(g), RayMatrixProjector(g, dtype=torch.float64)


def _rand(shape, seed, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_forward_equals_ray_marcher(pair):
    g, tp, mp = pair
    for seed in SEEDS:
        x = _rand((2, *g.volume_shape), seed)
        ref = tp.forward_plain(x)
        assert ref.abs().max() > 1  # the rays see the volume
        torch.testing.assert_close(mp(x), ref, rtol=1e-10, atol=1e-12)
        views = torch.randperm(g.num_views, generator=torch.Generator().manual_seed(seed))[:3]
        torch.testing.assert_close(mp(x, views=views), tp.forward_plain(x, views), rtol=1e-10, atol=1e-12)


def test_adjoint_equals_ray_marcher_autograd_and_is_the_transpose(pair):
    g, tp, mp = pair
    for seed in SEEDS:
        x = _rand((2, *g.volume_shape), seed)
        y = _rand((2, *g.proj_shape), 100 + seed)
        aty = mp.adjoint(y)
        torch.testing.assert_close(aty, tp.adjoint_plain(y), rtol=1e-10, atol=1e-12)
        assert float((mp(x) * y).sum()) == pytest.approx(float((x * aty).sum()), rel=1e-12)
        views = torch.tensor([g.num_views - 1, 0, 2])
        ys = y[:, views]
        torch.testing.assert_close(mp.adjoint(ys, views=views), tp.adjoint_plain(ys, views), rtol=1e-10, atol=1e-12)


def test_float32_matrix_matches_to_single_precision(pair):
    g, tp, _ = pair
    mp = RayMatrixProjector(g)  # default float32 weights
    x = _rand((1, *g.volume_shape), 7, torch.float32)
    y = _rand((1, *g.proj_shape), 8, torch.float32)
    fwd, adj = mp(x), mp.adjoint(y)
    assert fwd.dtype == adj.dtype == torch.float32
    torch.testing.assert_close(fwd, tp.forward_plain(x.double()).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adj, tp.adjoint_plain(y.double()).float(), rtol=1e-5, atol=1e-5)


def test_gradients_match_ray_marcher(pair):
    g, tp, mp = pair
    target = _rand((1, *g.proj_shape), 3)
    views = torch.tensor([1, 4])
    grads = []
    for p in (tp, mp):
        x = _rand((1, *g.volume_shape), 4).requires_grad_()
        loss = ((p(x) - target) ** 2).sum() + (p(x, views=views) ** 3).sum()
        loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-10)
    # and through the adjoint (its backward is the forward)
    y = _rand((1, *g.proj_shape), 5).requires_grad_()
    (mp.adjoint(y) ** 2).sum().backward()
    ref = _rand((1, *g.proj_shape), 5).requires_grad_()
    (tp.adjoint(ref) ** 2).sum().backward()
    torch.testing.assert_close(y.grad, ref.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_memory_estimate_bounds_the_matrix(name):
    g = GEOMETRIES[name]()
    mp = RayMatrixProjector(g)
    assert mp.nbytes <= estimate_matrix_bytes(g) <= 4 * mp.nbytes


def test_make_projector_picks_matrix_for_cpu_cone_within_budget(monkeypatch):
    cone = GEOMETRIES["cone"]()
    assert make_projector(cone, "auto", "cpu").name == "matrix"
    assert make_projector(cone, "matrix", "cpu").name == "matrix"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the choice a CUDA machine makes
    assert resolve_backend(cone, "auto", "cuda") in ("torch", "astra")  # GPU data never gets the matrix
    monkeypatch.undo()
    monkeypatch.setattr(ray_matrix, "MATRIX_BUDGET_BYTES", estimate_matrix_bytes(cone) - 1)
    assert make_projector(cone, "auto", "cpu").name == "torch"
    assert make_projector(cone, "matrix", "cpu").name == "matrix"  # an explicit choice is honoured


def test_input_validation():
    g = GEOMETRIES["cone"]()
    with pytest.raises(ValueError, match="dtype"):
        RayMatrixProjector(g, dtype=torch.float16)
    with pytest.raises(ValueError, match="step"):
        RayMatrixProjector(g, step=0.0)
    p = RayMatrixProjector(g)
    with pytest.raises(ValueError, match="views"):
        p(torch.zeros(1, *g.volume_shape), views=[g.num_views])
    with pytest.raises(ValueError, match="volume"):
        p(torch.zeros(1, 3, 4, 5))


@pytest.mark.parametrize("chunk", [1, 200])
def test_ray_chunks_that_miss_the_volume_read_zero_forward_and_adjoint(chunk, monkeypatch):
    """Each chunk of rays samples only the steps where one of its rays can meet the volume, and a chunk whose rays
    all miss it (the overhanging detector's edge, one ray per chunk) reads zero without a sample: forward and adjoint
    still equal the sparse matrix's own trilinear weights, over the whole scan and a subset of views."""
    import recon.projectors.torch_proj as tp

    g = GEOMETRIES["cone-wide"]()
    mp = RayMatrixProjector(g, dtype=torch.float64)
    monkeypatch.setattr(tp, "_CHUNK_SAMPLES", chunk)
    marcher = TorchProjector(g)
    x, y = _rand((2, *g.volume_shape), 7), _rand((2, *g.proj_shape), 8)
    ref = mp(x)
    assert (ref[0] == 0).any() and (ref[0] != 0).any()  # rays that miss the volume and rays that meet it
    torch.testing.assert_close(marcher.forward_plain(x), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(marcher.adjoint_plain(y), mp.adjoint(y), rtol=1e-10, atol=1e-12)
    views = torch.tensor([4, 1])
    torch.testing.assert_close(marcher.adjoint_plain(y[:, views], views), mp.adjoint(y[:, views], views=views),
                               rtol=1e-10, atol=1e-12)  # fmt: skip
