"""What a masked autoencoder's ``forward`` and ``masked_mse`` refuse, each named in one line."""

from __future__ import annotations

import pytest
import torch

from medgmae.networks import MedGMAE, VoxelMAE, masked_mse
from medgmae.twod.gvit import GViT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MedGMAE(img_size=24, patch_size=12, model_size="tiny", num_gaussians=8)


def _volume(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 1, 24, 24, 24, generator=torch.Generator().manual_seed(1))


def test_masked_mse_names_a_patch_mask_given_for_the_voxel_mask(model):
    """``masked_mse(out.pred, x, out.patch_mask)`` failed in torch's ``expand``."""
    x = _volume()
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked_mse(out.pred, x, out.mask), out.loss)
    with pytest.raises(ValueError, match=r"voxel_mask must be a \(B, 1, \*spatial\) voxel mask, \(2, 1, 24, 24, 24\) "
                                         r"for pred \(2, 1, 24, 24, 24\) .*patch_mask\), got \(2, 8\)"):  # fmt: skip
        masked_mse(out.pred, x, out.patch_mask)
    with pytest.raises(ValueError, match=r"got \(1, 1, 24, 24, 24\)"):
        masked_mse(out.pred, x, out.mask[:1])


@pytest.mark.parametrize("cls", [MedGMAE, VoxelMAE, GViT])
def test_an_empty_batch_is_refused(cls):
    """A batch of 0 gave a NaN loss without a word."""
    torch.manual_seed(0)
    net = GViT(1, 16) if cls is GViT else cls(img_size=24, patch_size=12, model_size="tiny")
    x = torch.rand(0, 1, 16, 16) if cls is GViT else torch.rand(0, 1, 24, 24, 24)
    with pytest.raises(ValueError, match=rf"the input batch is empty: got {tuple(x.shape)}".replace("(", r"\(").replace(")", r"\)")):
        net(x)


def test_a_generator_that_is_not_a_torch_generator_is_named(model):
    """``generator=123`` failed in torch's ``rand()`` overloads."""
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int 123"):
        model(_volume(), generator=123)


@pytest.mark.parametrize("autocast", [False, True])
def test_an_integer_input_is_refused_as_not_floating_point(model, autocast):
    """Under autocast an integer input reached the convolution: "Input type (long int) and bias type ... should be
    the same"."""
    x = (_volume() * 10).long()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with pytest.raises(ValueError, match=r"input dtype torch.int64 is not floating point: .*\[0, 1\]"):
            model(x)
