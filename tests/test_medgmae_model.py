"""MedGMAE, MedGMAE* and the voxel-MAE baseline: shapes, masking, heads, loss, gradients, levels, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from medgmae.gaussians import INTENSITY_BIAS_INIT, SCALE_BIAS_INIT, Gaussians3D
from medgmae.networks import MaskedViTEncoder, MedGMAE, VoxelMAE, masked_mse, patch_mask_to_voxels
from medgmae.networks.medgmae import ResidualGaussianLevel

IMG, PATCH, K = 32, 8, 12
N_PATCHES = (IMG // PATCH) ** 3


def _gmae(**kw) -> MedGMAE:
    torch.manual_seed(0)
    return MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=K, **kw)


def _vmae(**kw) -> VoxelMAE:
    torch.manual_seed(0)
    return VoxelMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", **kw)


def _volume(b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, IMG, IMG, IMG, generator=g)


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def models():
    return {"medgmae": _gmae(), "star": _gmae(multi_level=True), "voxel": _vmae()}


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


def test_star_levels_counts_parents_and_scale_shrink():
    model = _gmae(multi_level=True, level_multipliers=(1, 2, 4), level_deltas=(0.02, 0.05), scale_cap=0.3)
    x = _volume(1)
    with torch.no_grad():
        latent, _, ids = model.encoder(x)
        levels = model.decode_gaussians(latent, ids)
    assert [g.num_gaussians for g in levels] == [K, 2 * K, 4 * K]
    assert model.total_gaussians == 7 * K
    s0 = levels[0].scales / 0.3  # relative (sigmoid) scales of the roots
    for l, (g, delta) in enumerate(zip(levels[1:], (0.02, 0.05)), start=1):
        parent, root = levels[l - 1], s0.repeat_interleave(2**l, dim=1)
        # each child stays within sigma_mu of its parent (children of parent p at p * 2 + c)
        assert (g.means - parent.means.repeat_interleave(2, dim=1)).abs().max() <= model.sigma_mu + 1e-6
        # s_l = s_0 + tanh(.) * 0.1 - delta_l in units of the cap
        assert ((g.scales / 0.3 - (root - delta)).abs() <= 0.1 + 1e-6).all()
        assert torch.allclose(g.quats.norm(dim=-1), torch.ones(1, g.num_gaussians))
    # with zero residuals the scales shrink exactly by delta_l per level: monotone
    lvl = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3)
    parent = Gaussians3D(torch.rand(1, 3, 3), torch.full((1, 3, 3), 0.06), torch.randn(1, 3, 4), torch.rand(1, 3))
    root = torch.full((1, 3, 3), 0.2)
    child, _ = lvl.refine(parent, root, torch.zeros(1, 6, 11))
    assert torch.allclose(child.scales, torch.full((1, 6, 3), (0.2 - 0.05) * 0.3))
    assert torch.equal(child.means, parent.means.repeat_interleave(2, dim=1))
    # large negative residuals are clamped positive
    child, _ = lvl.refine(parent, torch.full((1, 3, 3), 0.01), torch.full((1, 6, 11), -50.0))
    assert (child.scales > 0).all()


def test_star_levels_shrink_from_the_level_0_ancestor_not_the_parent():
    """MedGMAE*'s ``s_l = s_0 + tanh(.) * sigma - delta_l`` is relative to the level-0 ancestor's scale ``s_0``:
    ``refine`` hands each child its ancestor's relative scale (the root's, repeated per child), and with zero
    residual heads a level-2 Gaussian's scale is ``cap * (s_0 - delta_2)`` (from its parent's it would be
    ``cap * (s_0 - delta_1 - delta_2)``)."""
    lvl = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3)
    parent = Gaussians3D(torch.rand(1, 3, 3), torch.full((1, 3, 3), 0.06), torch.randn(1, 3, 4), torch.rand(1, 3))
    root = torch.rand(1, 3, 3) * 0.3 + 0.2
    _, child_root = lvl.refine(parent, root, torch.randn(1, 6, 11))
    assert torch.equal(child_root, root.repeat_interleave(2, dim=1))
    model = _gmae(multi_level=True, level_multipliers=(1, 2, 4), level_deltas=(0.02, 0.05), scale_cap=0.3)
    for level in model.levels:
        torch.nn.init.zeros_(level.heads.weight)
    with torch.no_grad():
        latent, _, ids = model.encoder(_volume(1))
        levels = model.decode_gaussians(latent, ids)
    s0 = levels[0].scales.double() / 0.3
    assert torch.allclose(levels[2].scales.double(), 0.3 * (s0.repeat_interleave(4, dim=1) - 0.05), atol=1e-6)


def test_star_child_intensity_rules_against_their_formulas():
    """Both rules against their closed forms in float64; under "logit" a child that "clamp" switches off (residual
    pushing it below 0) still gets a gradient."""
    parent = Gaussians3D(torch.rand(1, 5, 3), torch.full((1, 5, 3), 0.06), torch.randn(1, 5, 4), torch.rand(1, 5) * 0.3)
    root = torch.full((1, 5, 3), 0.2)
    r = torch.randn(1, 10, 11) * 3.0
    ip = parent.intensities.double().repeat_interleave(2, dim=1)
    t = torch.tanh(r[..., 10].double())
    logit = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3)
    child, _ = logit.refine(parent, root, r)
    expect = torch.sigmoid(torch.log(ip / (1 - ip)) + 3.0 * t)
    assert torch.allclose(child.intensities.double(), expect, rtol=1e-5, atol=1e-7)
    clamp = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3, intensity_residual="clamp")
    child, _ = clamp.refine(parent, root, r)
    assert torch.allclose(child.intensities.double(), (ip + 0.1 * t).clamp(0, 1), atol=1e-7)
    # a dim parent and a strongly negative residual: clamp gives 0 and no gradient, logit a positive one
    dim = Gaussians3D(parent.means, parent.scales, parent.quats, torch.full((1, 5), 0.05))
    for level, has_grad in ((clamp, False), (logit, True)):
        rr = torch.full((1, 10, 11), -5.0, requires_grad=True)
        child, _ = level.refine(dim, root, rr)
        child.intensities.sum().backward()
        assert (rr.grad[..., 10].abs() > 0).all() == has_grad
        assert ((child.intensities > 0).all()) == has_grad
    with pytest.raises(ValueError, match="intensity_residual"):
        ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3, intensity_residual="relu")


def test_star_checkpoint_from_before_the_intensity_rule_loads_as_clamp(tmp_path):
    """A MedGMAE* config saved without ``level_intensity`` rebuilds with the rule it was trained with."""
    model = _gmae(multi_level=True, level_intensity="clamp")
    cfg = {k: v for k, v in model.config().items() if k != "level_intensity"}
    assert MedGMAE.upgrade_config(cfg)["level_intensity"] == "clamp"
    assert MedGMAE(**MedGMAE.upgrade_config(cfg)).levels[0].intensity_residual == "clamp"
    assert MedGMAE.upgrade_config({**cfg, "multi_level": False})["level_intensity"] == "logit"  # no levels: no rule
    assert _gmae(multi_level=True).config()["level_intensity"] == "logit"
    with pytest.raises(ValueError, match="level_intensity"):
        _gmae(multi_level=True, level_intensity="relu")


def test_resuming_a_star_training_from_before_the_intensity_rule_keeps_or_names_it():
    """A training checkpoint's model record from before ``level_intensity``: a run built with the clamp rule it was
    trained with resumes; one built with today's default (logit) is refused, naming the field and both values."""
    from medgmae.mae_training import ModelConfigRecord

    old = ModelConfigRecord(_gmae(multi_level=True, level_intensity="clamp")).state_dict()
    old["config"] = {k: v for k, v in old["config"].items() if k != "level_intensity"}
    ModelConfigRecord(_gmae(multi_level=True, level_intensity="clamp")).load_state_dict(old)
    with pytest.raises(ValueError, match=r"level_intensity: saved 'clamp', now 'logit'") as e:
        ModelConfigRecord(_gmae(multi_level=True)).load_state_dict(old)
    assert "num_gaussians" not in str(e.value)  # only the fields that differ
    assert "--network_def#level_intensity clamp" in str(e.value)  # the override that restores the saved rule
    with pytest.raises(ValueError, match=r"level_intensity: saved 'logit', now 'clamp'") as e:  # and the other way
        ModelConfigRecord(_gmae(multi_level=True, level_intensity="clamp")).load_state_dict(
            ModelConfigRecord(_gmae(multi_level=True)).state_dict())
    assert "--network_def#level_intensity logit" in str(e.value) and "level_intensity clamp)" not in str(e.value)
    with pytest.raises(ValueError, match=r"configuration \(num_gaussians: saved 16, now 8\)\. Resume"):
        ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=8)).load_state_dict(
            ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=16)).state_dict())


def test_resuming_a_plain_medgmae_training_from_before_the_intensity_rule_resumes():
    """A plain MedGMAE run's model record as releases before ``level_intensity`` existed wrote it (pre-training
    bundle 0.1.0 before f9dccec: no ``level_intensity`` key) was refused with "level_intensity: saved (not recorded), now
    'logit'" and no flag helped, though the rule does nothing without levels; it resumes as built today."""
    from medgmae.mae_training import ModelConfigRecord

    old = ModelConfigRecord(_gmae()).state_dict()
    old["config"] = {k: v for k, v in old["config"].items() if k != "level_intensity"}
    ModelConfigRecord(_gmae()).load_state_dict(old)
    with pytest.raises(ValueError, match=r"configuration \(num_gaussians: saved 12, now 8\)\. Resume"):
        ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=8)).load_state_dict(old)


def test_a_resume_as_another_model_kind_names_the_kind_and_its_flag_not_an_override_of_a_field():
    """A MedGMAE* run resumed as a voxel-MAE was refused listing ten fields each "saved X, now (not set)" and the
    advice to resume with --network_def#level_intensity logit, which cannot help; it names the kind and
    --model_kind."""
    from medgmae.mae_training import ModelConfigRecord

    star = ModelConfigRecord(_gmae(multi_level=True)).state_dict()
    with pytest.raises(ValueError) as e:
        ModelConfigRecord(_vmae()).load_state_dict(star)
    said = str(e.value)
    assert "kind: saved 'medgmae-star', now 'voxel-mae'" in said and "(here --model_kind medgmae-star)" in said, said
    assert "level_intensity" not in said and "num_gaussians" not in said


def test_a_resume_into_another_model_configuration_is_a_resume_refusal():
    """``--resume true`` with another ``--num_gaussians`` (3D pre-training, 2D GMAE) is a refusal of the settings
    given: a ``ResumeRefused``, alone or beside another refusal of the checkpoint, so that the bundle prints its
    message alone (README, "When it stops"), not under MONAI's traceback as an unexpected ``ValueError``."""
    from pathlib import Path

    from medgmae.engine.restore import ResumeRefused, refusal, restore_states
    from medgmae.mae_training import ModelConfigRecord

    saved = ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=16)).state_dict()
    now = ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=8))
    with pytest.raises(ResumeRefused, match=r"num_gaussians: saved 16, now 8"):
        now.load_state_dict(saved)
    with pytest.raises(ResumeRefused, match=r"\('config'\): the checkpoint was written by a different model") as e:
        restore_states(Path("run/checkpoint_epoch=3.pt"), [("config", now)], {"config": saved})
    epochs = ResumeRefused("checkpoint run/checkpoint_epoch=3.pt has already trained 3 epochs = --max_epochs 3")
    assert type(refusal("both", [epochs, e.value])) is ResumeRefused


def test_star_renders_the_sum_of_levels():
    model = _gmae(multi_level=True)
    x = _volume(1)
    with torch.no_grad():
        latent, _, ids = model.encoder(x)
        levels = model.decode_gaussians(latent, ids)
        pred, g = model.reconstruct(latent, ids)
        summed = sum(model.render(lv) for lv in levels)
    assert g.num_gaussians == 7 * K
    assert torch.allclose(pred, summed, atol=1e-5)


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


@pytest.mark.parametrize(
    "cls,kw,kind", [(MedGMAE, {}, "medgmae"), (MedGMAE, {"multi_level": True}, "medgmae-star"), (VoxelMAE, {}, "voxel-mae")]
)
def test_checkpoint_round_trip(tmp_path, cls, kw, kind):
    torch.manual_seed(3)
    model = cls(img_size=IMG, patch_size=PATCH, model_size="tiny", **({"num_gaussians": K} if cls is MedGMAE else {}), **kw)
    x = _volume(1)
    ref = model(x, generator=_gen()).pred
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    record = {"kind": model.kind, "config": model.config(), "preprocessing": None}  # CheckpointHandler's layout
    torch.save({"objects": {"model": model.state_dict(), "config": record}}, tmp_path / "train.pt")
    for name in ("model.pt", "train.pt"):
        loaded = cls.from_checkpoint(tmp_path / name)
        assert loaded.config() == model.config() and loaded.kind == model.kind
        assert torch.equal(loaded(x, generator=_gen()).pred, ref)
    enc = model.encoder_checkpoint()
    assert enc["kind"] == "medgmae-encoder" and enc["extra"]["source"] == kind  # tells MedGMAE* from MedGMAE
    encoder = MaskedViTEncoder(**enc["config"])
    encoder.load_state_dict(enc["state_dict"])
    assert torch.equal(encoder(x)[0], model.encoder(x)[0])


def test_from_checkpoint_wrong_kind_and_bad_files(tmp_path, models):
    torch.save(models["voxel"].model_checkpoint(), tmp_path / "voxel.pt")
    torch.save(models["medgmae"].encoder_checkpoint(), tmp_path / "encoder.pt")
    torch.save(models["medgmae"].model_checkpoint(), tmp_path / "gmae.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"voxel\.pt is a voxel-mae checkpoint.*expected medgmae or medgmae-star"):
        MedGMAE.from_checkpoint(tmp_path / "voxel.pt")
    with pytest.raises(ValueError, match=r"encoder\.pt is a medgmae-encoder checkpoint.*expected voxel-mae"):
        VoxelMAE.from_checkpoint(tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"gmae\.pt is a medgmae checkpoint"):
        VoxelMAE.from_checkpoint(tmp_path / "gmae.pt")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        MedGMAE.from_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        MedGMAE.from_checkpoint(tmp_path / "missing.pt")


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
