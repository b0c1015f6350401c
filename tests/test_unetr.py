"""UNETR around the pre-trained encoder: decoder design, strict weight loading, 12^3 / 16^3 patches, LR decay."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNETR

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.spec import finetune_spec
from medgmae.finetune.weights import (
    build_unetr,
    layer_id,
    load_pretrained_encoder,
    param_groups,
    read_encoder_file,
    stock_unetr_from_encoder,
)
from medgmae.networks.unetr import MedGMAEUNETR, skip_layer_indices, upsample_factors
from medgmae.networks.vit import MaskedViTEncoder

TINY = dict(hidden_size=48, num_heads=4, mlp_ratio=2.0)


def save_encoder(encoder: MaskedViTEncoder, path, source="test") -> str:
    torch.save(make_checkpoint("medgmae-encoder", encoder.config(), encoder.state_dict(), extra={"source": source}), path)
    return str(path)


@pytest.mark.parametrize(
    "patch, expected",
    [
        (16, [2, 2, 2, 2]),
        (12, [1, 3, 2, 2]),
        (32, [4, 2, 2, 2]),
        (6, [1, 1, 3, 2]),
        (7, [1, 1, 1, 7]),
    ],
)
def test_upsample_factors(patch, expected):
    stages = upsample_factors((patch, patch, patch))
    assert [s[0] for s in stages] == expected
    assert math.prod(s[0] for s in stages) == patch


def test_upsample_factors_anisotropic_product():
    stages = upsample_factors((12, 16, 8))
    for axis, p in enumerate((12, 16, 8)):
        assert math.prod(s[axis] for s in stages) == p


def test_skip_layers_match_unetr():
    assert skip_layer_indices(12) == (3, 6, 9)  # MONAI UNETR's hidden_states_out[3], [6], [9]
    assert skip_layer_indices(24) == (6, 12, 18)
    assert skip_layer_indices(2) == (0, 1, 1)


@pytest.mark.parametrize("img, patch", [(24, 12), (32, 16), ((32, 32, 16), (16, 16, 8))])
def test_output_shape(img, patch):
    net = MedGMAEUNETR(3, img_size=img, patch_size=patch, num_layers=2, feature_size=4, **TINY)
    x = torch.randn(1, 1, *net.vit.img_size)
    assert net(x).shape == (1, 3, *net.vit.img_size)


def test_pretrained_round_trip_from_pretraining_model(tmp_path):
    """encoder.pt written by MedGMAE pre-training -> UNETR: every tensor loaded, identical encoder outputs."""
    medgmae = pytest.importorskip("medgmae.networks.medgmae")
    model = medgmae.MedGMAE(img_size=24, patch_size=12, model_size="tiny", num_gaussians=8)
    with torch.no_grad():  # make the weights distinguishable from a fresh initialisation
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "encoder.pt"
    torch.save(model.encoder_checkpoint(), path)

    net = build_unetr(num_classes=4, roi_size=24, pretrained=str(path), feature_size=4)
    src = model.encoder.state_dict()
    dst = net.vit.state_dict()
    assert set(src) == set(dst)
    for k in src:
        assert torch.equal(src[k], dst[k]), k
    assert load_pretrained_encoder(net, str(path)) == len(src)

    model.eval(), net.eval()
    x = torch.randn(2, 1, 24, 24, 24)
    with torch.no_grad():
        lat_a, _, _, hid_a = model.encoder(x, return_hidden=True)
        lat_b, _, _, hid_b = net.vit(x, return_hidden=True)
    assert torch.equal(lat_a, lat_b)
    for a, b in zip(hid_a, hid_b):
        assert torch.equal(a, b)
    assert net(x).shape == (2, 4, 24, 24, 24)


def test_round_trip_12_patch_base_depth(tmp_path):
    enc = MaskedViTEncoder(img_size=24, patch_size=12, num_layers=12, **TINY)
    path = save_encoder(enc, tmp_path / "encoder.pt")
    net = build_unetr(3, (24, 24, 24), pretrained=path, feature_size=4)
    assert net.skip_layers == (3, 6, 9) and net.stages[0] == (1, 1, 1)
    assert all(torch.equal(v, net.vit.state_dict()[k]) for k, v in enc.state_dict().items())


def test_16_patch_into_stock_monai_unetr(tmp_path, caplog):
    torch.manual_seed(0)
    enc = MaskedViTEncoder(img_size=32, patch_size=16, num_layers=12, **TINY).eval()
    path = save_encoder(enc, tmp_path / "encoder.pt")
    with caplog.at_level("INFO"):
        stock = stock_unetr_from_encoder(path, num_classes=3, feature_size=4).eval()
    assert isinstance(stock, UNETR)
    n = len(enc.state_dict())
    assert f"loaded {n - 1}/{n}" in caplog.text and "cls_token" in caplog.text
    x = torch.randn(1, 1, 32, 32, 32)
    # the same ViT without the class token (MONAI's ViT computes attention without the fused kernel: float32 rounding)
    with torch.no_grad():
        tokens = enc.patch_embedding(x)
        ref_hidden = []
        for blk in enc.blocks:
            tokens = blk(tokens)
            ref_hidden.append(tokens)
        ref = enc.norm(tokens)
        out, hidden = stock.vit(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden[9], ref_hidden[9], rtol=1e-5, atol=1e-5)
    assert stock(x).shape == (1, 3, 32, 32, 32)

    # with 16^3 patches the generic UNETR is MONAI's UNETR plus the class token: same names and shapes
    ours = MedGMAEUNETR(3, encoder=MaskedViTEncoder(**enc.config()), feature_size=4)
    state = dict(stock.state_dict(), **{"vit.cls_token": enc.cls_token.detach()})
    ours.load_state_dict(state, strict=True)
    # as documented: the stock network's position embedding (the loaded sin-cos values) trains, ours stays fixed
    for net, trains in ((stock, True), (ours, False)):
        position = net.vit.patch_embedding.position_embeddings
        assert torch.equal(position.detach(), enc.patch_embedding.position_embeddings.detach())
        optimised = [p for group in param_groups(net, 1e-3) for p in group["params"]]
        assert position.requires_grad is trains and any(p is position for p in optimised) is trains


def test_a_stock_unetr_without_attention_biases_is_told_to_add_them(tmp_path):
    """MONAI's UNETR defaults to qkv_bias=False: the encoder's 12 qkv biases have no place, and the error says
    which setting gives them one."""
    enc = MaskedViTEncoder(img_size=32, patch_size=16, num_layers=12, **TINY)
    path = save_encoder(enc, tmp_path / "encoder.pt")
    stock = UNETR(1, 3, img_size=32, feature_size=4, hidden_size=48, mlp_dim=96, num_heads=4, qkv_bias=False)
    with pytest.raises(ValueError, match=r"12 checkpoint tensors with no place in the network") as e:
        load_pretrained_encoder(stock, read_encoder_file(path))
    assert "build the network with qkv_bias=True" in str(e.value)


def test_stock_unetr_rejects_other_patch(tmp_path):
    path = save_encoder(MaskedViTEncoder(img_size=24, patch_size=12, num_layers=12, **TINY), tmp_path / "e.pt")
    with pytest.raises(ValueError, match="16\\^3 patches"):
        stock_unetr_from_encoder(path, 3)


def test_missing_tensor_fails_loudly(tmp_path):
    enc = MaskedViTEncoder(img_size=24, patch_size=12, num_layers=2, **TINY)
    ckpt = {"kind": "medgmae-encoder", "config": enc.config(), "state_dict": enc.state_dict()}
    del ckpt["state_dict"]["blocks.1.mlp.linear1.weight"]
    net = MedGMAEUNETR(3, encoder=MaskedViTEncoder(**enc.config()))
    before = net.vit.blocks[0].mlp.linear1.weight.detach().clone()
    with pytest.raises(ValueError, match="blocks.1.mlp.linear1.weight"):
        load_pretrained_encoder(net, ckpt["state_dict"])
    assert torch.equal(net.vit.blocks[0].mlp.linear1.weight, before)  # nothing partially loaded


def test_mis_shaped_and_unexpected_tensors_fail(tmp_path):
    enc = MaskedViTEncoder(img_size=24, patch_size=12, num_layers=2, **TINY)
    state = enc.state_dict()
    state["norm.weight"] = torch.ones(40)
    state["decoder_embed.weight"] = torch.ones(3, 3)
    net = MedGMAEUNETR(3, encoder=MaskedViTEncoder(**enc.config()))
    with pytest.raises(ValueError) as err:
        load_pretrained_encoder(net, state)
    msg = str(err.value)
    assert "norm.weight: checkpoint (40,) vs network (48,)" in msg and "decoder_embed.weight" in msg



def test_a_checkpoint_object_is_named_by_its_file(tmp_path):
    """A :class:`Checkpoint` already read (its ``path`` set) is named by that file in the refusal, not as "encoder
    state dict"."""
    from medgmae.checkpoint import Checkpoint

    enc = MaskedViTEncoder(img_size=24, patch_size=12, num_layers=2, **TINY)
    state = enc.state_dict()
    del state["norm.weight"]
    ckpt = Checkpoint("medgmae-encoder", enc.config(), state, path=tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=f"cannot load pre-trained encoder {tmp_path / 'encoder.pt'} into"):
        load_pretrained_encoder(MedGMAEUNETR(3, encoder=MaskedViTEncoder(**enc.config())), ckpt)

def test_pretrained_img_size_and_kind_checked(tmp_path):
    enc = MaskedViTEncoder(img_size=24, patch_size=12, num_layers=2, **TINY)
    path = save_encoder(enc, tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"--roi_size \(48, 48, 48\) differs from the img_size \(24, 24, 24\)"):
        build_unetr(3, 48, pretrained=path)
    # the pre-processing, built before the network, names the setting too (not the spec's input_size)
    with pytest.raises(ValueError, match=r"--roi_size \(8, 8, 8\) differs .* set --roi_size to \[24, 24, 24\]"):
        finetune_spec(path, roi_size=[8, 8, 8])
    torch.save({"kind": "gmae2d", "config": {}, "state_dict": {}}, tmp_path / "model.pt")  # another kind
    with pytest.raises(ValueError, match="model.pt is a gmae2d checkpoint.*fine-tuning needs the encoder.pt"):
        read_encoder_file(tmp_path / "model.pt")
    torch.save({"kind": "voxel-mae", "config": {}, "state_dict": {}}, tmp_path / "model.pt")  # a broken model file
    with pytest.raises(ValueError, match="model.pt: config/weights do not describe a VoxelMAE model"):
        read_encoder_file(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_encoder_file(tmp_path / "nope.pt")


@pytest.mark.parametrize("kind", ["medgmae", "medgmae-star", "voxel-mae"])
def test_a_pretraining_model_file_gives_its_encoder(tmp_path, kind, caplog):
    """Pre-training writes the last epoch's encoder.pt only; fine-tuning from the best validated epoch takes its
    best_model.pt (it was refused, naming the last epoch's encoder.pt): the same tensors, config and pre-processing
    as the encoder.pt that model writes, loaded into the UNETR alike, said once per file."""
    from medgmae.networks import MedGMAE, VoxelMAE
    from medgmae.preprocessing import PreprocessingSpec

    torch.manual_seed(0)
    tiny = dict(img_size=24, patch_size=12, model_size="tiny")
    model = VoxelMAE(**tiny) if kind == "voxel-mae" else MedGMAE(**tiny, num_gaussians=4, multi_level=kind == "medgmae-star")
    model.preprocessing = PreprocessingSpec(spacing=(0.8, 0.8, 2.0), hu_window=(-100.0, 200.0), input_size=24, patch_size=12)
    torch.save({**model.model_checkpoint(), "extra": {"best": {"epoch": 3, "val_psnr": 20.5}}}, tmp_path / "best_model.pt")
    torch.save(model.encoder_checkpoint(), tmp_path / "encoder.pt")
    with caplog.at_level("INFO", logger="medgmae.finetune.weights"):
        got, ref = read_encoder_file(tmp_path / "best_model.pt"), read_encoder_file(tmp_path / "encoder.pt")
        read_encoder_file(tmp_path / "best_model.pt", mmap=True)
    assert (got.kind, got.config, got.preprocessing) == (ref.kind, ref.config, ref.preprocessing)
    assert got.state_dict.keys() == ref.state_dict.keys() and all(torch.equal(got.state_dict[k], v) for k, v in ref.state_dict.items())
    said = [r.getMessage() for r in caplog.records if "fine-tuning takes its encoder" in r.getMessage()]
    assert said == [f"{tmp_path / 'best_model.pt'} is a {kind} model (epoch 3): fine-tuning takes its encoder, as the "
                    "encoder.pt of that epoch would hold it"]  # fmt: skip
    nets = [MedGMAEUNETR(3, encoder=MaskedViTEncoder(**ref.config)) for _ in range(2)]
    assert load_pretrained_encoder(nets[0], tmp_path / "best_model.pt") == load_pretrained_encoder(nets[1], tmp_path / "encoder.pt")
    assert all(torch.equal(a, b) for a, b in zip(nets[0].vit.state_dict().values(), nets[1].vit.state_dict().values()))


def test_a_pretraining_training_checkpoint_is_named_as_one(tmp_path):
    """checkpoint_final.pt of a pre-training run (the --resume state, holding a medgmae model) is called a training
    checkpoint of pre-training, not a medgmae model file, and the encoder.pt beside it is named."""
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    save_encoder(MaskedViTEncoder(img_size=24, patch_size=12, num_layers=2, **TINY), run / "encoder.pt")
    record = {"kind": "medgmae", "config": {"img_size": [24, 24, 24]}, "preprocessing": None}
    torch.save({"objects": {"model": {}, "config": record, "optimizer": {}}}, run / "checkpoint_final.pt")
    with pytest.raises(ValueError) as error:
        read_encoder_file(run / "checkpoint_final.pt")
    message = str(error.value)
    assert message.startswith("checkpoint_final.pt is a training checkpoint of pre-training (the state --resume")
    assert "a medgmae checkpoint" not in message
    assert f"fine-tuning needs the encoder.pt written by pre-training: {run / 'encoder.pt'}" in message


def test_layer_decay_groups():
    net = MedGMAEUNETR(3, img_size=24, patch_size=12, num_layers=4, feature_size=4, **TINY)
    groups = param_groups(net, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert lr_of[id(named["vit.patch_embedding.patch_embeddings.weight"])] == (pytest.approx(1e-3 * 0.5**5), 0.05)
    assert lr_of[id(named["vit.blocks.2.attn.qkv.weight"])][0] == pytest.approx(1e-3 * 0.5**2)
    assert lr_of[id(named["vit.blocks.2.norm1.bias"])][1] == 0.0
    assert lr_of[id(named["decoder2.transp_conv.conv.weight"])] == (pytest.approx(1e-3), 0.05)
    assert id(named["vit.patch_embedding.position_embeddings"]) not in lr_of  # fixed sin-cos
    assert layer_id("vit.blocks.3.mlp.linear1.weight", 4) == 4 and layer_id("out.conv.conv.weight", 4) == 5
    # every trainable parameter is in exactly one group
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(net, 1e-3, layer_decay=0.0)


def test_frozen_encoder_does_not_change():
    torch.manual_seed(0)
    net = MedGMAEUNETR(2, img_size=24, patch_size=12, num_layers=2, feature_size=4, **TINY)
    opt = torch.optim.AdamW(param_groups(net, lr=1e-2, freeze_encoder=True))
    enc_before = {k: v.clone() for k, v in net.vit.state_dict().items()}
    dec_before = net.out.conv.conv.weight.detach().clone()
    loss = net(torch.randn(1, 1, 24, 24, 24)).square().mean()
    loss.backward()
    opt.step()
    assert all(torch.equal(v, net.vit.state_dict()[k]) for k, v in enc_before.items())
    assert not torch.equal(dec_before, net.out.conv.conv.weight)
    assert all(not p.requires_grad for p in net.vit.parameters())


def test_every_trainable_parameter_gets_a_gradient_after_unfreezing():
    """DistributedDataParallel rejects a parameter that requires a gradient and gets none: after freezing and
    unfreezing the encoder, exactly MONAI's unused cross-attention norms (and the fixed position embedding) stay
    frozen, and one backward pass reaches every other parameter."""
    from medgmae.finetune.weights import set_encoder_trainable

    torch.manual_seed(0)
    net = MedGMAEUNETR(3, img_size=24, patch_size=12, num_layers=2, feature_size=4, **TINY)
    set_encoder_trainable(net, False)
    set_encoder_trainable(net, True)
    net(torch.randn(1, 1, 24, 24, 24)).square().mean().backward()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all("norm_cross_attn" in n or n.endswith("position_embeddings") for n in frozen)
    assert len([n for n in frozen if "norm_cross_attn" in n]) == 2 * 2  # weight and bias of each of the 2 blocks
    assert [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None] == []


def test_a_finetuning_training_checkpoint_given_as_pretrained_is_sent_to_the_encoder(tmp_path):
    """checkpoint_final.pt of a fine-tuning run holds no model record: the generic refusal advised "model.pt or
    best_model.pt", which fine-tuning refuses in turn; for ``--pretrained`` the message names the encoder.pt."""
    objects = {"network": {}, "optimizer": {}, "lr_scheduler": {}, "best": {}, "settings": {}, "validation": {}}
    torch.save({"engine": {}, "objects": objects}, tmp_path / "checkpoint_final.pt")
    with pytest.raises(ValueError) as error:
        read_encoder_file(tmp_path / "checkpoint_final.pt")
    message = str(error.value)
    assert message.startswith("checkpoint_final.pt is a training checkpoint (the state --resume continues")
    assert "fine-tuning needs the encoder.pt written by pre-training" in message and "best_model.pt" not in message
