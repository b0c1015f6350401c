"""MedGMAE, MedGMAE* and the voxel-MAE baseline: shapes, masking, heads, rendering, loss, gradients, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from medgmae.gaussians import INTENSITY_BIAS_INIT, SCALE_BIAS_INIT, Gaussians3D
from medgmae.networks import MedGMAE, masked_mse, patch_mask_to_voxels

from medgmae_model_helpers import (  # noqa: F401 - fixtures
    IMG,
    K,
    PATCH,
    models,
    random_volume as _volume,
    seeded_generator as _gen,
    small_medgmae as _gmae,
    small_voxel_mae as _vmae,
)

N_PATCHES = (IMG // PATCH) ** 3


@pytest.mark.parametrize("name", ["medgmae", "star", "voxel"])
def test_output_shapes_and_mask_ratio(models, name):
    model, x = models[name], _volume()
    out = model(x, generator=_gen())
    assert out.pred.shape == x.shape and out.mask.shape == (2, 1, IMG, IMG, IMG)
    assert out.patch_mask.shape == (2, N_PATCHES)
    # 75 % of the patches of every sample are masked
    assert out.patch_mask.sum(1).tolist() == [0.75 * N_PATCHES] * 2
    # the voxel mask is the patch mask upsampled: every patch is all-0 or all-1 and matches its patch flag
    per_patch = model.encoder.patchify(out.mask)
    assert torch.equal(per_patch.amin(-1), per_patch.amax(-1))
    assert torch.equal(per_patch[..., 0], out.patch_mask)
    assert out["loss"].dim() == 0 and math.isfinite(out.loss.item())
    if name == "voxel":
        assert out.gaussians is None
    else:
        total = K * (7 if name == "star" else 1)
        assert out.gaussians.means.shape == (2, total, 3) and out.gaussians.quats.shape == (2, total, 4)


def test_patch_mask_to_voxels_against_loop():
    m = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]])
    vox = patch_mask_to_voxels(m, (2, 2, 2), (3, 2, 1))
    assert vox.shape == (1, 1, 6, 4, 2)
    for i in range(6):
        for j in range(4):
            for k in range(2):
                assert vox[0, 0, i, j, k] == m[0, (i // 3) * 4 + (j // 2) * 2 + k]


def test_head_bias_init_and_activations():
    model = _gmae(scale_cap=0.25)
    assert torch.allclose(model.head_scale.bias, torch.full((3,), SCALE_BIAS_INIT))
    assert torch.allclose(model.head_intensity.bias, torch.full((1,), INTENSITY_BIAS_INIT))
    raw = {}
    for name in ("head_mean", "head_scale", "head_rotation", "head_intensity"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: raw.__setitem__(name, o.detach().double()))
    g = model.predict_gaussians(_volume(1))
    assert torch.allclose(g.means.double(), torch.sigmoid(raw["head_mean"]), atol=1e-6)
    assert torch.allclose(g.scales.double(), 0.25 * torch.sigmoid(raw["head_scale"]), atol=1e-6)
    q = raw["head_rotation"]
    assert torch.allclose(g.quats.double(), q / q.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(g.intensities.double(), torch.sigmoid(raw["head_intensity"][..., 0]), atol=1e-6)
    # with zero head weights the Gaussians sit at the paper's initial values
    for head in (model.head_mean, model.head_scale, model.head_rotation, model.head_intensity):
        torch.nn.init.zeros_(head.weight)
    g = model.predict_gaussians(_volume(1))
    assert torch.allclose(g.means, torch.full_like(g.means, 0.5))
    assert torch.allclose(g.scales, torch.full_like(g.scales, 0.25 / (1 + math.exp(-SCALE_BIAS_INIT))))  # ~0.2 cap
    assert torch.allclose(g.intensities, torch.full_like(g.intensities, 1 / (1 + math.exp(-INTENSITY_BIAS_INIT))))
    assert torch.allclose(g.quats, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand_as(g.quats))


def test_root_scales_are_floored_at_min_scale():
    """A scale head driven far negative (bias -40: sigmoid ~4e-18 of the cap) gives every Gaussian the floor
    ``min_scale``, not a scale the renderer would divide by."""
    model = _gmae()
    torch.nn.init.constant_(model.head_scale.bias, -40.0)
    with torch.no_grad():
        latent, _, ids = model.encoder(_volume(1))
        scales = model.decode_gaussians(latent, ids)[0].scales
    assert torch.equal(scales, torch.full_like(scales, model.min_scale))


def test_gaussians_are_read_from_the_query_tokens_outputs(models, monkeypatch):
    """The decoder's tokens are ``[cls] + K queries + visible patches``; Gaussian ``j`` is the heads applied to the
    output at query ``j`` (position ``1 + j``). Shifting the decoder's output at one position: at the class token or a
    visible patch's token no Gaussian moves, at query 0 (position 1) only Gaussian 0, at the last query (position K)
    only Gaussian K - 1."""
    model = models["medgmae"]
    latent, _, ids = model.encoder(_volume(1), mask_ratio=0.75, generator=_gen())
    run = model.run_decoder

    def shifted_at(position: int):
        def run_decoder(tokens: torch.Tensor) -> torch.Tensor:
            out = run(tokens).clone()
            out[:, position] += 1.0
            return out

        return run_decoder

    with torch.no_grad():
        ref = model.decode_gaussians(latent, ids)[0].as_tensor()
        for position, moved in ((0, []), (1, [0]), (K, [K - 1]), (K + 1, [])):
            monkeypatch.setattr(model, "run_decoder", shifted_at(position))
            got = model.decode_gaussians(latent, ids)[0].as_tensor()
            assert torch.nonzero((got - ref).abs().amax(-1)[0] > 1e-6).flatten().tolist() == moved, position


def _dense_render(g: Gaussians3D, n: int, cutoff: float) -> torch.Tensor:
    """float64 oracle: sum of truncated Gaussians at voxel centres (j + 0.5) / n of the normalised frame."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    pts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    out = torch.zeros(g.batch_size, pts.shape[0], dtype=torch.float64)
    prec = g.precisions().double()
    for b in range(g.batch_size):
        for k in range(g.num_gaussians):
            d = pts - g.means[b, k].double()
            m2 = torch.einsum("pi,ij,pj->p", d, prec[b, k], d)
            out[b] += torch.where(m2 <= cutoff**2, g.intensities[b, k].double() * torch.exp(-0.5 * m2), 0.0)
    return out.reshape(g.batch_size, n, n, n)


def test_rendered_prediction_matches_dense_oracle(models):
    model, x = models["medgmae"], _volume()
    out = model(x, generator=_gen())
    ref = _dense_render(out.gaussians.detach(), IMG, model.cutoff)
    assert torch.allclose(out.pred[:, 0].double(), ref, atol=2e-4)


@pytest.mark.parametrize("name", ["medgmae", "voxel"])
def test_loss_is_masked_mse(models, name):
    model, x = models[name], _volume()
    out = model(x, generator=_gen())
    m = out.mask.double()
    ref = ((out.pred.double() - x.double()).square() * m).sum() / m.sum()
    assert torch.allclose(out.loss.double(), ref, rtol=1e-5)
    # perturbing the target's visible voxels leaves the loss unchanged; perturbing masked voxels changes it
    noise = torch.rand_like(x)
    vis = x + noise * (1 - out.mask)
    hid = x + noise * out.mask
    assert torch.equal(masked_mse(out.pred, vis, out.mask), out.loss)
    assert masked_mse(out.pred, hid, out.mask) > out.loss + 1e-3


def test_encoder_sees_only_visible_patches(models):
    model, x = models["medgmae"], _volume()
    out = model(x, generator=_gen())
    x_masked_changed = x + torch.rand_like(x) * out.mask
    out2 = model(x_masked_changed, generator=_gen())
    assert torch.equal(out2.patch_mask, out.patch_mask)
    assert torch.allclose(out2.pred, out.pred, atol=1e-6)  # same prediction ...
    assert out2.loss > out.loss + 1e-3  # ... scored against the changed hidden voxels
    out3 = model(x + torch.rand_like(x) * (1 - out.mask), generator=_gen())
    assert not torch.allclose(out3.pred, out.pred, atol=1e-4)


def test_loss_on_all_voxels_option():
    model, x = _gmae(loss_on_all_voxels=True), _volume()
    out = model(x, generator=_gen())
    assert torch.allclose(out.loss, (out.pred - x).square().mean(), rtol=1e-6)


@pytest.mark.parametrize("name", ["medgmae", "star", "voxel"])
def test_gradient_reaches_every_parameter(name):
    model = {"medgmae": _gmae, "star": lambda: _gmae(multi_level=True), "voxel": _vmae}[name]()
    model(_volume(), generator=_gen()).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 20
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []


def test_predict_gaussians_zero_mask_is_forward_without_mask(models):
    model, x = models["medgmae"], _volume()
    g = model.predict_gaussians(x)
    out = model(x, mask_ratio=0.0)
    assert out.patch_mask.sum() == 0
    assert torch.allclose(g.as_tensor(), out.gaussians.as_tensor().detach(), atol=1e-6)
    # with nothing masked the loss falls back to all voxels
    assert torch.allclose(out.loss, (out.pred - x).square().mean(), rtol=1e-6)


def test_decoder_positions_are_those_of_the_visible_patches(models):
    model = models["medgmae"]
    latent, mask, ids = model.encoder(_volume(), mask_ratio=0.75, generator=_gen())
    pos = model.visible_positions(ids, latent.shape[1] - 1)
    table = model.decoder_pos_embed[0]
    for b in range(2):
        rows = torch.cdist(pos[b], table).argmin(-1)
        assert sorted(rows.tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask_ratio"):
        _gmae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="model_size"):
        MedGMAE(img_size=IMG, patch_size=PATCH, model_size="huge")
    with pytest.raises(ValueError, match="divide"):
        _gmae(multi_level=True, level_multipliers=(1, 3, 4), level_deltas=(0.02, 0.05))
    with pytest.raises(ValueError, match="num_gaussians"):
        MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=0)
    with pytest.raises(ValueError, match="expected input"):
        _vmae()(torch.rand(1, 1, IMG, IMG, IMG // 2))
    with pytest.raises(ValueError, match="render_backend must be one of"):
        _gmae(render_backend="bogus")
    for cutoff in (-1.0, "3"):
        with pytest.raises(ValueError, match="cutoff must be a positive finite"):
            _gmae(cutoff=cutoff)


@pytest.mark.parametrize("name", ["medgmae", "star", "voxel"])
def test_bad_inputs_at_forward_are_named(models, name):
    """A mask ratio outside [0, 1) (a negative or NaN one masked nothing), an input of another dtype than the
    weights, or NaN voxels (blamed on the Gaussians before) are named at the call."""
    model, x = models[name], _volume(1)
    for ratio in (-0.5, float("nan"), 1.0):
        with pytest.raises(ValueError, match="mask_ratio must be in"):
            model(x, mask_ratio=ratio)
    with pytest.raises(ValueError, match=r"input dtype torch.float64 differs from the model's weights \(torch.float32\)"):
        model(x.double())
    x[0, 0, 3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values"):
        model(x)


def test_an_input_off_the_models_scale_is_warned_of_once_per_model(caplog):
    """``predict_gaussians`` of a raw HU crop ran on it without a word (``zero_shot_gaussians`` warns of a scan that
    is not in HU, ``to_model_input`` refuses a 0-255 image): the model now warns, in ``to_model_input``'s words, once
    per model (a training loop is not told every step); an overshoot within half the scale, as augmentation or a
    resize gives, is not warned of, nor is an input an unclipped window gives."""
    from medgmae.preprocessing import PreprocessingSpec

    hu = torch.linspace(-1000.0, 1500.0, IMG**3).reshape(1, 1, IMG, IMG, IMG)
    model = _gmae().eval()
    with caplog.at_level("WARNING", logger="medgmae"):
        model.predict_gaussians(hu)
        model.predict_gaussians(hu)
        model.train()(hu)  # a training step
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("model input values must be on the 0-1 scale, got -1000 to 1500 (a CT in "
                                                 "HU: its window, model.preprocessing.window(hu)"), said  # fmt: skip
    caplog.clear()
    slightly_over = torch.linspace(-0.45, 1.45, IMG**3).reshape(1, 1, IMG, IMG, IMG)
    unclipped = PreprocessingSpec(clip=False, input_size=(IMG,) * 3, patch_size=(PATCH,) * 3)  # [-175, 250] HU -> [0, 1]
    wide = _vmae().eval()
    wide.preprocessing = unclipped  # int16's -32768 HU maps to -32593 / 425 = -76.7, 32767 HU to 32942 / 425 = 77.5
    extended = torch.linspace(-1000.0, 1500.0, IMG**3).reshape(1, 1, IMG, IMG, IMG)
    extended[0, 0, 0], extended[0, 0, -1] = -32768.0, 30000.0  # padding and metal of extended-range CT
    with caplog.at_level("WARNING", logger="medgmae"):
        _gmae().eval().predict_gaussians(slightly_over)
        wide(unclipped.window(extended))  # correctly windowed: -76.7 to 71 (12-bit CT's range made it -2 to 7.64)
        assert caplog.records == []
        wide(hu)
    assert [r.getMessage()[:60] for r in caplog.records] == ["model input values must be on the model's -76.7 to 77.5 scal"]
    with pytest.raises(ValueError, match="NaN or infinite values"):
        _gmae().predict_gaussians(torch.full((1, 1, IMG, IMG, IMG), -math.inf))


@pytest.mark.gpu
def test_the_input_check_waits_for_the_gpu_once():
    """The range is read with the finiteness, in one read of two numbers: a training step waits for the device in
    the input check once, as it did for the finiteness alone."""
    import warnings

    from medgmae.networks.vit import check_model_input

    model, x = _gmae().cuda(), _volume(1).cuda()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_model_input(x, 1, (IMG,) * 3, torch.float32, model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", ["medgmae", "star", "voxel"])
def test_a_float64_model_runs_in_float64(models, name):
    """A float64 copy (for gradient checks) keeps float64 through the heads, the rendering and the loss, and
    agrees with the float32 model to float32 accuracy."""
    import copy

    model, x = models[name], _volume(1)
    wide = copy.deepcopy(model).double()
    out, ref = wide(x.double(), generator=_gen()), model(x, generator=_gen())
    assert out.loss.dtype == out.pred.dtype == torch.float64
    assert torch.allclose(out.pred.float(), ref.pred, atol=1e-4) and math.isclose(out.loss.item(), ref.loss.item(), rel_tol=1e-4)


def test_bf16_autocast_keeps_gaussians_float32():
    model, x = _gmae(multi_level=True), _volume(1)
    seen = []
    model.decoder_blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x, generator=_gen())
    assert seen == [torch.bfloat16]  # the transformer ran in bf16 ...
    assert all(t.dtype == torch.float32 for t in out.gaussians.tensors())  # ... the heads and levels in float32
    assert out.pred.dtype == torch.float32 and torch.isfinite(out.loss)
    ref = model(x, generator=_gen())
    assert torch.allclose(out.gaussians.means, ref.gaussians.means, atol=0.05)


def test_bf16_autocast_renders_a_non_cubic_input_in_float32():
    """Under autocast the model renders its Gaussians as in float32: a non-cubic input's covariances are products
    that bf16 rounded (about 1 % in the scales), which the renderer then drew; the 3D check of the 2D case below."""
    torch.manual_seed(0)
    model = MedGMAE(img_size=(PATCH, 2 * PATCH, 3 * PATCH), patch_size=PATCH, model_size="tiny", num_gaussians=K)
    g = model.predict_gaussians(torch.rand(1, 1, PATCH, 2 * PATCH, 3 * PATCH, generator=_gen()))
    ref = model.render(g)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = model.render(g)
    assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=1e-5, atol=1e-6), (got - ref).abs().max()


def test_initial_gaussians_spread_over_the_volume():
    g = _gmae().predict_gaussians(_volume(1))
    # centres roughly uniform over [0, 1]^3 (a uniform distribution has std 0.29), not bunched in the middle
    assert (g.means.std(dim=1) > 0.15).all()
    assert g.means.amin() < 0.2 and g.means.amax() > 0.8


@pytest.mark.parametrize("text, expected", [("false", False), ("true", True), ("off", False), (0, False)])
def test_true_false_arguments_given_as_text_are_read_as_the_word_says(text, expected):
    """A bundle's ``--network_def#multi_level false`` / ``#loss_on_all_voxels false`` reach the model as text: the
    word decides (bool('false') would be True); a word that is neither is refused, naming the argument."""
    model = MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=K, multi_level=text,
                    loss_on_all_voxels=text)  # fmt: skip
    assert model.multi_level is expected and model.loss_on_all_voxels is expected
    with pytest.raises(ValueError, match="loss_on_all_voxels must be true or false"):
        MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=K, loss_on_all_voxels="maybe")
