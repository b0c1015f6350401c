"""MAE's weight-decay rule in the pre-training and GViT optimisers, and resuming an optimiser of the earlier release
(one group over every parameter) onto the rule's groups.

The expected groups come from the module types, not from the rule's names: a ``Linear`` / ``Conv`` weight is
decayed; a ``LayerNorm``'s parameters, a layer's bias and a tensor a model holds itself (its tokens and embeddings)
are not."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from gmae2d_helpers import tiny_gmae2d
from model_helpers import tiny_medgmae
from monai.bundle import ConfigParser
from monai.optimizers import WarmupCosineSchedule

from medgmae.engine.decay_rule import decay_groups
from medgmae.engine.restore import restore_states
from medgmae.mae_training import build_model
from medgmae.twod.gvit import GViT

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _expected_exempt(model: nn.Module) -> dict[int, bool]:
    """id(parameter) -> whether it is exempt from decay, by the type of the module that holds it."""
    exempt = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, LAYERS):
                exempt[id(p)] = pname != "weight"  # the bias
            elif isinstance(module, nn.LayerNorm):
                exempt[id(p)] = True
            else:  # a tensor of the model's own: a token or an embedding (never a weight matrix in these models)
                assert p.ndim >= 2 and type(module).__name__ in TOKEN_HOLDERS, (type(module).__name__, pname)
                exempt[id(p)] = True
    return exempt


#: the modules of the toolkit's networks that hold tokens or embeddings of their own
TOKEN_HOLDERS = {"MedGMAE", "VoxelMAE", "MaskedViTEncoder", "PatchEmbeddingBlock", "ResidualGaussianLevel", "GMAE2D",
                 "DenoisingGaussianEncoder", "GaussianViTClassifier"}  # fmt: skip


def _check_groups(groups: list[dict], params: list[nn.Parameter], exempt: dict[int, bool], wd: float) -> None:
    assert [g["weight_decay"] for g in groups] == [wd, 0.0]
    held = [id(p) for g in groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in params) and len(set(held)) == len(held)  # each in exactly one
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in params if not exempt[id(p)]}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in params if exempt[id(p)]}
    for g in groups:  # in the network's order
        order = [id(p) for p in params if id(p) in {id(q) for q in g["params"]}]
        assert [id(p) for p in g["params"]] == order


MODELS = {
    "medgmae": tiny_medgmae,
    "medgmae-star": lambda: build_model("medgmae-star", img_size=16, patch_size=8, num_gaussians=48),
    "voxel-mae": lambda: build_model("voxel-mae", img_size=16, patch_size=8),
    "gmae2d": tiny_gmae2d,
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pretraining_groups_leave_biases_norms_and_tokens_undecayed(kind):
    model = MODELS[kind]()
    exempt = _expected_exempt(model)
    groups = decay_groups(model, 0.05)
    _check_groups(groups, list(model.parameters()), exempt, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)].rsplit(".", 1)[-1] for p in groups[1]["params"]}
    assert {"cls_token", "position_embeddings"} <= undecayed
    assert undecayed & {"query_tokens", "mask_token"}
    assert decay_groups(nn.DataParallel(model), 0.05)[0]["params"] == groups[0]["params"]  # a wrapper is unwrapped


@pytest.mark.parametrize("bundle, model", [("medgmae_pretrain", tiny_medgmae), ("gmae2d_pretrain", tiny_gmae2d)])
def test_the_pretraining_bundles_build_the_groups(bundle, model):
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser["network"] = net = model()
    opt = parser.get_parsed_content("optimizer", lazy=False)
    _check_groups(opt.param_groups, list(net.parameters()), _expected_exempt(net), parser["weight_decay"])
    assert {g["lr"] for g in opt.param_groups} == {parser["learning_rate"]}


@pytest.mark.parametrize("phase", ["warmup", "classifier", "joint"])
def test_each_gvit_phase_decays_only_its_weight_matrices(phase):
    from medgmae.twod.gvit_train import build_phase_trainer

    model = GViT(1, 16, 2, num_gaussians=6, patch_size=4)
    trainer = build_phase_trainer(phase, model, [None] * 2, 1, weight_decay=0.05)
    modules = {"warmup": [model.encoder], "classifier": [model.classifier], "joint": [model.encoder, model.classifier]}
    params = [p for m in modules[phase] for p in m.parameters()]
    _check_groups(trainer.optimizer.param_groups, params, _expected_exempt(model), 0.05)


def test_decay_groups_refuses_a_bad_weight_decay():
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0, got -1"):
        decay_groups(nn.Linear(2, 2), -1)


def _trained_earlier_release(model: nn.Module, params: list[nn.Parameter], steps: int):
    """An AdamW over one group of ``params`` (the earlier release), ``steps`` steps of seeded gradients taken."""
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    sched = WarmupCosineSchedule(opt, warmup_steps=2, t_total=10)
    for step in range(steps):
        _step(model, opt, sched, seed=step)
    return opt, sched


def _step(model: nn.Module, opt, sched, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # the same gradient for a parameter in either run
        p.grad = torch.randn(p.shape, generator=gen) if p.requires_grad else None
    opt.step()
    sched.step()


def _round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _resume_check(model_fn, old_params, new_groups, tmp_path, caplog, wrap=lambda m: m) -> None:
    """Resume the earlier release's checkpoint of ``model_fn()`` (AdamW over ``old_params``) into ``new_groups``,
    the network among the objects (last, so that found not by its name or place) as ``wrap`` wraps it."""
    old_model, new_model = model_fn(), model_fn()
    old_opt, old_sched = _trained_earlier_release(old_model, old_params(old_model), 3)
    saved = _round_trip({"model": wrap(old_model).state_dict(), "optimizer": old_opt.state_dict(),
                         "lr_scheduler": old_sched.state_dict()})  # fmt: skip
    opt = torch.optim.AdamW(new_groups(wrap(new_model)), lr=1e-3, betas=(0.9, 0.95))
    sched = WarmupCosineSchedule(opt, warmup_steps=2, t_total=10)
    with caplog.at_level(logging.INFO, logger="medgmae"):
        restore_states(tmp_path / "c.pt", [("optimizer", opt), ("lr_scheduler", sched), ("model", wrap(new_model))],
                       saved)  # fmt: skip
    assert "c.pt ('optimizer'): its optimiser decayed every parameter" in caplog.text
    assert "biases, norms and tokens are not decayed" in caplog.text
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    new_by_name = dict(new_model.named_parameters())
    moved = 0
    for p_old, state in old_opt.state.items():  # every parameter's Adam state on the same parameter
        new_state = opt.state[new_by_name[old_names[id(p_old)]]]
        assert set(new_state) == set(state)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(new_state[key], state[key]), (old_names[id(p_old)], key)
        moved += 1
    assert moved == len(opt.state) > 0
    for _ in range(8):  # the rate of every group is the saved run's at each later step
        assert [g["lr"] for g in opt.param_groups] == [old_opt.param_groups[0]["lr"]] * len(opt.param_groups)
        _step(old_model, old_opt, old_sched, seed=99)
        _step(new_model, opt, sched, seed=99)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    old_model.load_state_dict(new_model.state_dict())  # the same weights: one step differs by the decay alone
    before, lr = {n: p.detach().clone() for n, p in new_model.named_parameters()}, opt.param_groups[0]["lr"]
    _step(old_model, old_opt, old_sched, seed=7)
    _step(new_model, opt, sched, seed=7)
    old_by_name, names = dict(old_model.named_parameters()), {id(p): n for n, p in new_by_name.items()}
    for g in opt.param_groups:  # a decayed parameter steps as in the saved run; the others without its decay
        for p in g["params"]:
            name = names[id(p)]
            decay = 0.0 if g["weight_decay"] or not p.requires_grad else lr * 0.05 * before[name]
            torch.testing.assert_close(p.detach(), old_by_name[name].detach() + decay, rtol=1e-5, atol=1e-7)


def test_a_checkpoint_of_one_group_resumes_onto_the_decay_groups(tmp_path, caplog):
    _resume_check(tiny_medgmae, lambda m: m.parameters(), lambda m: decay_groups(m, 0.05), tmp_path, caplog)


def test_a_wrapped_network_is_found_among_the_objects(tmp_path, caplog):
    _resume_check(tiny_gmae2d, lambda m: m.parameters(), lambda m: decay_groups(m, 0.05), tmp_path, caplog,
                  wrap=nn.DataParallel)


@pytest.mark.parametrize("phase", ["warmup", "joint"])
def test_a_gvit_phase_checkpoint_of_one_group_resumes(phase, tmp_path, caplog):
    from medgmae.twod.gvit_step import phase_parameters

    def model():
        torch.manual_seed(0)
        return GViT(1, 16, 2, num_gaussians=6, patch_size=4)

    mods = {"warmup": ("encoder",), "joint": ("encoder", "classifier")}[phase]
    _resume_check(model, lambda m: [p for n in mods for p in getattr(m, n).parameters()],  # the earlier release's
                  lambda m: decay_groups(phase_parameters(m, phase), 0.05), tmp_path, caplog)


def test_a_checkpoint_of_another_network_still_fails(tmp_path):
    model = tiny_medgmae()
    params = list(model.parameters())
    old_opt, _ = _trained_earlier_release(model, params[:-1], 1)  # one parameter fewer
    opt = torch.optim.AdamW(decay_groups(model, 0.05), lr=1e-3)
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*c\.pt \('optimizer'\):.*parameter group"):
        restore_states(tmp_path / "c.pt", [("model", model), ("optimizer", opt)], {"model": model.state_dict(), "optimizer": old_opt.state_dict()})
    other = nn.ParameterList([nn.Parameter(torch.zeros(3, 3)) for _ in params])  # as many, other shapes
    old_opt, _ = _trained_earlier_release(other, list(other.parameters()), 1)
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*\('optimizer'\):.*parameter group"):
        restore_states(tmp_path / "c.pt", [("model", model), ("optimizer", opt)], {"model": model.state_dict(), "optimizer": old_opt.state_dict()})
