"""The shared masked-autoencoder base (2D and 3D) and the shared argparse value types."""

from __future__ import annotations

import argparse
import itertools
import math

import pytest
import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from medgmae.cli_types import nonneg_float, positive_float, positive_int
from medgmae.networks import MedGMAE, VoxelMAE
from medgmae.networks.mae_base import MaskedAutoencoder, sincos_embedding
from medgmae.networks.vit import MaskedViTEncoder, random_masking
from medgmae.twod.gmae import GMAE2D


@pytest.mark.parametrize("spatial_dims, grid", [(2, (3, 4)), (3, (2, 3, 2))])
def test_sincos_embedding_matches_monai_and_zero_pads(spatial_dims, grid):
    unit = 2 * spatial_dims
    ref = build_sincos_position_embedding(list(grid), 4 * unit, spatial_dims=spatial_dims).data
    assert torch.equal(sincos_embedding(grid, 4 * unit, spatial_dims), ref)
    padded = sincos_embedding(grid, 4 * unit + unit - 1, spatial_dims)
    assert torch.equal(padded[..., : 4 * unit], ref) and not padded[..., 4 * unit :].any()
    with pytest.raises(ValueError, match=f"at least {unit}"):
        sincos_embedding(grid, unit - 1, spatial_dims)


def test_random_masking_draws_each_samples_mask_on_its_own():
    """MAE's per-sample masking: every row of a batch masks exactly round(0.75 N) patches, its ``ids_keep`` are its
    unmasked patches, ``ids_restore`` undoes its shuffle, and the rows differ (one noise row for the whole batch
    gave every sample the same mask; four equal 48-of-64 masks by chance are out of reach)."""
    for seed in range(4):
        keep, mask, restore = random_masking(64, 4, 0.75, "cpu", torch.Generator().manual_seed(seed))
        assert mask.sum(1).tolist() == [48.0] * 4 and keep.shape == (4, 16)
        assert not mask.gather(1, keep).any()
        # unshuffling puts visible token j back at patch keep[:, j] and a mask token at every masked patch
        assert torch.equal(restore.gather(1, keep), torch.arange(16).expand(4, -1))
        assert torch.equal(restore >= 16, mask.bool())
        assert len({tuple(row.tolist()) for row in mask}) == 4, seed


@pytest.mark.parametrize("spatial_dims, grid, patch", [(3, (2, 3, 4), (2, 3, 4)), (2, (2, 3), (3, 2))])
def test_patchify_against_a_loop_and_unpatchify_inverts_it(spatial_dims, grid, patch):
    """Token ``n`` of :meth:`MaskedViTEncoder.patchify` is the ``n``-th grid cell in row-major order (the patch
    embedding's), its values the cell's voxels channel-last, against a loop over the cells of an anisotropic grid of
    anisotropic patches in float64; :meth:`unpatchify` gives the volume back exactly (a swap of two grid axes or of
    two axes within a patch still reshapes to the volume's size, so only the values tell)."""
    img = tuple(g * p for g, p in zip(grid, patch))
    enc = MaskedViTEncoder(2, img, patch, hidden_size=24, num_layers=1, num_heads=2, spatial_dims=spatial_dims)
    x = torch.randn(2, 2, *img, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tokens = enc.patchify(x)
    assert tokens.shape == (2, math.prod(grid), 2 * math.prod(patch))
    for n, cell in enumerate(itertools.product(*(range(g) for g in grid))):
        block = x[(..., *(slice(i * p, (i + 1) * p) for i, p in zip(cell, patch)))]
        assert torch.equal(tokens[:, n], block.movedim(1, -1).reshape(2, -1)), cell
    assert torch.equal(enc.unpatchify(tokens, 2), x)


def test_base_validates_dimensions_and_channels():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        MaskedAutoencoder(16, 4, model_size="tiny", spatial_dims=4)
    with pytest.raises(ValueError, match=r"img_size must be 2 positive whole numbers .*got \(16, 16, 16\)"):
        MaskedAutoencoder((16, 16, 16), 4, model_size="tiny", spatial_dims=2)
    with pytest.raises(ValueError, match="in_channels must be a positive whole number, got 0"):
        MaskedAutoencoder(16, 4, in_channels=0, model_size="tiny")


def test_2d_and_3d_models_share_the_trunk_names():
    torch.manual_seed(0)
    models = [MedGMAE(16, 4, model_size="tiny", num_gaussians=4), VoxelMAE(16, 4, model_size="tiny"),
              GMAE2D(16, 4, 1, model_size="tiny", num_gaussians=4)]  # fmt: skip
    trunk = [{k for k in m.state_dict() if k.split(".")[0] in ("encoder", "decoder_embed", "decoder_blocks", "decoder_norm")} for m in models]
    assert trunk[0] == trunk[1] == trunk[2] and trunk[0]
    for m in models:
        assert m.decoder_pos_embed.shape == (1, m.encoder.num_patches, m.preset.decoder_hidden_size)
        frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
        fixed = {"encoder.patch_embedding.position_embeddings"}  # MONAI's sin-cos patch positions
        assert frozen > fixed and all("norm_cross_attn" in n for n in frozen - fixed)
    assert models[2].spatial_dims == 2 and "loss_on_all_voxels" not in models[2].config()


def test_from_checkpoint_with_mismatched_weights_names_the_file(tmp_path):
    torch.manual_seed(0)
    payload = MedGMAE(16, 4, model_size="tiny", num_gaussians=4).model_checkpoint()
    payload["config"]["num_gaussians"] = 5
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt: config/weights do not describe a MedGMAE model"):
        MedGMAE.from_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize(
    "parse, good, bad",
    [
        (positive_int, {"3": 3, "1": 1, "15e3": 15000, "100.0": 100, "12345678901234567e0": 12345678901234567},
         ["0", "-2", "1.5", "x", "1e400", "nan", "-1e2"]),
        (positive_float, {"0.5": 0.5, "1e3": 1000.0}, ["0", "-1", "nan", "inf", "x"]),
        (nonneg_float, {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "inf", "y"]),
    ],
)
def test_cli_types(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value and type(parse(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            parse(text)


def test_save_pretrained_interrupted_while_saving_leaves_the_earlier_pair(tmp_path, monkeypatch):
    """encoder.pt was renamed into place before model.pt was written: a SIGTERM in between left a new encoder.pt
    beside an old (or, after the first epoch, no) model.pt. Both are now written before either is renamed."""
    import medgmae.mae_training.export as export
    from medgmae.networks import MedGMAE

    torch.manual_seed(0)
    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, render_backend="torch")
    export.save_pretrained(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save = torch.save

    def stop_at_the_model(obj, path, *a, **kw):
        if obj.get("kind") == "medgmae":  # the second file: interrupted while it is written
            raise KeyboardInterrupt
        save(obj, path, *a, **kw)

    monkeypatch.setattr(export.torch, "save", stop_at_the_model)
    with pytest.raises(KeyboardInterrupt):
        export.save_pretrained(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either
