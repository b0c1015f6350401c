"""2D GMAE: head activations, the masked loss, checkpoints, depth layers, figure-ground and edges."""

from __future__ import annotations

import pytest
import torch

from medgmae.twod import layering as L
from medgmae.twod.gmae import GMAE2D, SplatGaussians, activate_splat_heads
from medgmae.twod.render import render_gaussians_2d

from gmae2d_helpers import tiny_gmae2d


def test_head_activations_formulae():
    g = torch.Generator().manual_seed(0)
    raw = [torch.randn(2, 5, n, generator=g) * 3 for n in (3, 3, 4, 3)] + [torch.randn(2, 5, generator=g) * 3]
    out = activate_splat_heads(*raw, scale_cap=1.5, min_scale=1e-4)
    torch.testing.assert_close(out.means, torch.tanh(raw[0]))
    torch.testing.assert_close(out.scales, (1.5 / (1 + torch.exp(-raw[1]))).clamp_min(1e-4))
    torch.testing.assert_close(out.quats, raw[2] / raw[2].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.colors, 1 / (1 + torch.exp(-raw[3])))
    torch.testing.assert_close(out.opacities, 1 / (1 + torch.exp(-raw[4])))


@pytest.mark.parametrize("channels", [1, 3])
def test_model_heads_are_wired_to_the_activations(channels):
    model = tiny_gmae2d(channels, k=16, scale_cap=2.0)
    biases = {"head_mean": [0.3, -2.0, 0.7], "head_scale": [-1.0, 0.0, 1.0], "head_rotation": [1.0, 2.0, -2.0, 4.0],
              "head_color": [0.5, -0.5, 1.5][:channels], "head_opacity": [-0.3]}  # fmt: skip
    with torch.no_grad():
        for name, b in biases.items():
            getattr(model, name).weight.zero_()
            getattr(model, name).bias.copy_(torch.tensor(b))
    g = model.predict_gaussians(torch.rand(2, channels, 32, 32))
    assert g.means.shape == (2, 16, 3) and g.colors.shape == (2, 16, channels)
    t = lambda v: torch.tensor(v).expand(2, 16, -1)  # noqa: E731
    torch.testing.assert_close(g.means, torch.tanh(t(biases["head_mean"])))
    torch.testing.assert_close(g.scales, 2.0 * torch.sigmoid(t(biases["head_scale"])))
    torch.testing.assert_close(g.quats, t([0.2, 0.4, -0.4, 0.8]))
    torch.testing.assert_close(g.colors, torch.sigmoid(t(biases["head_color"])))
    torch.testing.assert_close(g.opacities, torch.sigmoid(torch.tensor(-0.3)).expand(2, 16))


@pytest.mark.parametrize("channels", [1, 3])
def test_loss_is_mse_on_masked_pixels_only(channels):
    model = tiny_gmae2d(channels)
    x = torch.rand(3, channels, 32, 32)
    out = model(x, generator=torch.Generator().manual_seed(1))
    assert out.pred.shape == x.shape and out.mask.shape == (3, 1, 32, 32)
    assert out.patch_mask.sum(1).eq(12).all()  # 75 % of 16 patches
    # the pixel mask is the patch mask, patch by patch
    patches = out.mask.reshape(3, 4, 8, 4, 8).permute(0, 1, 3, 2, 4).reshape(3, 16, 64)
    assert torch.equal(patches.amin(-1), patches.amax(-1)) and torch.equal(patches[..., 0], out.patch_mask)
    err = (out.pred.detach() - x).square()
    expected = (err * out.mask).sum() / (out.mask.sum() * channels)
    torch.testing.assert_close(out.loss.detach(), expected)
    out.pred.retain_grad()
    out.loss.backward()
    visible = out.mask.expand_as(x) == 0
    assert torch.all(out.pred.grad[visible] == 0) and torch.all(out.pred.grad[~visible] != 0)  # visible pixels left out
    assert model.query_tokens.grad.abs().sum() > 0 and model.encoder.patch_embedding.patch_embeddings.weight.grad is not None


def test_bf16_autocast_keeps_the_gaussians_and_the_rendering_float32():
    """The bundle trains under bf16 autocast on CUDA (here: on the CPU): the decoder runs in bf16, but the heads and
    the rendering in float32 (they ran in bf16: centres ~0.4 px coarse at 224 px, a bf16 pixel grid that cannot
    hold x.5 beyond 128, a rendering 0.23 off), as the 3D model does."""
    model = tiny_gmae2d(in_channels=3, size=48)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x, generator=torch.Generator().manual_seed(2))
        again = model.render(out.gaussians)
    assert all(t.dtype == torch.float32 for t in out.gaussians.tensors()) and out.pred.dtype == torch.float32
    assert torch.allclose(again, model.render(out.gaussians), rtol=1e-5, atol=1e-6)
    ref = model(x, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out.gaussians.means, ref.gaussians.means, atol=0.05)


def test_number_of_gaussians_does_not_depend_on_the_mask():
    model = tiny_gmae2d(k=24)
    x = torch.rand(2, 1, 32, 32)
    assert model.predict_gaussians(x).num_gaussians == 24
    assert model.predict_gaussians(x, mask_ratio=0.75, generator=torch.Generator().manual_seed(0)).num_gaussians == 24


def test_bad_model_arguments_and_inputs():
    with pytest.raises(ValueError, match="model_size"):
        GMAE2D(img_size=32, patch_size=8, model_size="huge")
    with pytest.raises(ValueError, match="mask_ratio"):
        GMAE2D(img_size=32, patch_size=8, model_size="tiny", mask_ratio=1.0)
    with pytest.raises(ValueError, match="patch_size"):
        GMAE2D(img_size=30, patch_size=8, model_size="tiny")
    with pytest.raises(ValueError, match="expected input"):
        tiny_gmae2d(1)(torch.rand(1, 3, 32, 32))


def test_checkpoint_round_trip_and_wrong_kind(tmp_path):
    model = tiny_gmae2d(3, scale_cap=1.5).eval()
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    loaded = GMAE2D.from_checkpoint(tmp_path / "model.pt").eval()
    assert loaded.config() == model.config()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.predict_gaussians(x).as_tensor(), model.predict_gaussians(x).as_tensor())
    torch.save({"kind": "medgmae", "config": {}, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is a medgmae checkpoint.*expected gmae2d"):
        GMAE2D.from_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        GMAE2D.from_checkpoint(tmp_path / "junk.pt")


def _random_splats(b=2, k=40, c=3, seed=0, max_opacity=1.0):
    g = torch.Generator().manual_seed(seed)
    return SplatGaussians(
        means=torch.rand(b, k, 3, generator=g, dtype=torch.float64) * 2 - 1,
        scales=torch.rand(b, k, 3, generator=g, dtype=torch.float64) * 0.3 + 0.05,
        quats=torch.nn.functional.normalize(torch.randn(b, k, 4, generator=g, dtype=torch.float64), dim=-1),
        colors=torch.rand(b, k, c, generator=g, dtype=torch.float64),
        opacities=torch.rand(b, k, generator=g, dtype=torch.float64) * max_opacity,
    )


@pytest.mark.parametrize("num_layers", [1, 3, 8, 40])
def test_depth_layers_partition_the_gaussians_front_to_back(num_layers):
    g = _random_splats(k=40)
    groups = L.depth_layers(g, num_layers)
    assert len(groups) == num_layers
    sizes = [grp.shape[1] for grp in groups]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 40
    for b in range(2):
        allidx = torch.cat([grp[b] for grp in groups])
        assert torch.equal(allidx.sort().values, torch.arange(40))  # a partition: every Gaussian exactly once
        depth = [g.means[b, grp[b], 2] for grp in groups]
        assert all(d0.max() <= d1.min() for d0, d1 in zip(depth, depth[1:]))  # nearer layers first
    ids = L.layer_ids(g, num_layers)
    for n, grp in enumerate(groups):
        assert ids.gather(1, grp).eq(n).all()
    with pytest.raises(ValueError, match="exceeds"):
        L.depth_layers(g, 41)


def test_a_layer_count_is_a_whole_number_of_any_type():
    """``num_layers=np.int64(4)`` (from an array or a config) was refused as not an int while the rest of the
    toolkit takes whole numbers of any type; it now gives what ``4`` gives, and a fraction is still refused."""
    import numpy as np

    g = _random_splats(k=12)
    fours = [L.depth_layers(g, n) for n in (4, np.int64(4), 4.0)]
    assert all(len(groups) == 4 and all(torch.equal(a, b) for a, b in zip(groups, fours[0])) for groups in fours)
    torch.testing.assert_close(L.cumulative_renders(g, np.int32(3), (8, 8), "torch"), L.cumulative_renders(g, 3, (8, 8), "torch"))
    for bad in (4.5, 0, True, "4"):
        with pytest.raises(ValueError, match="num_layers must be a positive whole number"):
            L.depth_layers(g, bad)
    with pytest.raises(ValueError, match="num_layers must be a positive whole number, got 2.5"):
        L.zero_shot_edges(g, (8, 8), granularities=(2.5,), backend="torch")  # was cut to 2 layers


def test_full_stack_equals_full_render():
    g = _random_splats(k=40, max_opacity=0.6)
    full, alpha = render_gaussians_2d(*g.tensors(), (20, 24), "torch", return_alpha=True)
    assert alpha.max() < 1 - 1e-3  # no early stop anywhere, so layer-wise compositing is exact
    cumulative = L.cumulative_renders(g, 5, (20, 24), "torch")
    torch.testing.assert_close(cumulative[:, -1], full)
    colors, alphas = L.render_layers(g, 5, (20, 24), "torch")
    torch.testing.assert_close(L.composite_layers(colors, alphas), full, atol=1e-12, rtol=1e-10)
    partial = L.partial_renders(g, [8, 16, 40], (20, 24), "torch")
    torch.testing.assert_close(partial[:, 1], cumulative[:, 1])  # the 16 nearest = layers 0 and 1 of 5
    torch.testing.assert_close(partial[:, 2], full)
    assert L.partial_render_counts(200) == [32, 64, 128, 200] and L.partial_render_counts(64) == [32, 64]


def _figure_ground_scene():
    """Near layer: 4 large dim Gaussians (a smooth background). Far layer: 4 opaque small bright Gaussians along a
    horizontal bar; the reference figure is where the bar's Gaussians alone reach alpha 0.5."""
    near = dict(means=[[-0.5, -0.5, -1], [0.5, -0.5, -1], [-0.5, 0.5, -1], [0.5, 0.5, -1]], scale=0.6, color=0.3, opacity=0.35)
    far = dict(means=[[x, 0.1, 1.0] for x in (-0.45, -0.15, 0.15, 0.45)], scale=0.12, color=1.0, opacity=0.99)
    parts = []
    for p in (near, far):
        k = len(p["means"])
        parts.append(SplatGaussians(
            means=torch.tensor(p["means"], dtype=torch.float64)[None],
            scales=torch.full((1, k, 3), p["scale"], dtype=torch.float64),
            quats=torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(1, k, 4),
            colors=torch.full((1, k, 1), p["color"], dtype=torch.float64),
            opacities=torch.full((1, k), p["opacity"], dtype=torch.float64),
        ))  # fmt: skip
    g = SplatGaussians(*(torch.cat(ts, 1) for ts in zip(parts[0].tensors(), parts[1].tensors())))
    _, far_alpha = render_gaussians_2d(*parts[1].tensors(), (48, 48), "torch", return_alpha=True)
    return g, far_alpha[0, 0] > 0.5


def test_figure_ground_recovers_a_known_figure():
    g, reference = _figure_ground_scene()
    assignment = L.layer_assignment(L.cumulative_renders(g, 2, (48, 48), "torch"), threshold=0.25)
    assert set(assignment.unique().tolist()) <= {-1, 0, 1}
    fg = L.figure_ground(assignment, split=1)[0]
    assert 0.05 < reference.float().mean() < 0.5
    assert L.mask_iou(fg, reference) > 0.85
    # the near background alone gives nothing: no pixel is assigned beyond layer 0 when the far layer is dropped
    near_only = SplatGaussians(*(t[:, :4] for t in g.tensors()))
    assert (L.layer_assignment(L.cumulative_renders(near_only, 1, (48, 48), "torch"), 0.25) <= 0).all()


def test_layer_assignment_rule_on_a_handmade_stack():
    cumulative = torch.zeros(1, 3, 1, 2, 3)
    cumulative[0, 0, 0] = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    cumulative[0, 1, 0] = torch.tensor([[0.5, 0.3, 0.9], [0.52, 0.5, 0.0]])
    cumulative[0, 2, 0] = torch.tensor([[0.1, 0.3, 0.9], [0.52, 0.5, 0.0]])
    expected = torch.tensor([[[2, 1, 1], [0, 0, -1]]])
    assert torch.equal(L.layer_assignment(cumulative, threshold=0.1), expected)


def test_edges_of_an_assignment_map():
    a = torch.zeros(1, 6, 6, dtype=torch.long)
    a[0, 2:4, 2:5] = 3
    edges = L.edges_from_assignment(a)[0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1, 2:5] = expected[3, 2:5] = True  # above the block and its last row
    expected[2:4, 1] = expected[2:4, 4] = True  # left of the block and its last column
    assert torch.equal(edges, expected)
    g, reference = _figure_ground_scene()
    maps = L.zero_shot_edges(g, (48, 48), granularities=(2, 4), threshold=0.25, backend="torch")
    assert set(maps) == {2, 4}
    ref_edges = L.edges_from_assignment(reference.long()[None])[0]
    near = torch.nn.functional.max_pool2d(ref_edges.float()[None, None], 5, 1, 2)[0, 0] > 0
    assert maps[2][0].sum() > 0 and (maps[2][0] & near).sum() / maps[2][0].sum() > 0.9  # edges lie on the figure's outline


def test_mask_iou_values():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True
    b[1:3] = True
    assert float(L.mask_iou(a, b)) == pytest.approx(4 / 12)
    assert float(L.mask_iou(torch.zeros(3, 3), torch.zeros(3, 3))) == 1.0
