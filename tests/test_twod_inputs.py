"""What the 2D models and their input conversion are given from Python: images off the 0-1 scale, NaN, arrays in
another layout or type are refused naming the fix (they were clipped to 0-1, passed on as NaN logits, or ended in
torch's own errors), as the 3D models' inputs are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgmae.twod.gvit.model import GViT
from medgmae.twod.images import to_model_input


def test_an_image_off_the_0_1_scale_or_in_another_layout_is_refused_naming_the_fix():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"got \(20, 24, 3\) \(an \(H, W, C\) image: image.transpose\(2, 0, 1\)\)"):
        to_model_input(rgb, 3, (16, 16))
    with pytest.raises(ValueError, match=r"got \(20, 24\) \(a grey \(H, W\) image: image\[None\]\)"):
        to_model_input(rgb[..., 0], 1, (16, 16))
    with pytest.raises(ValueError, match=r"0-1 scale, got \d+ to 255; an 8-bit image: divide by 255"):
        to_model_input(rgb.transpose(2, 0, 1), 3, (16, 16))
    with pytest.raises(ValueError, match=r"0-1 scale, got -1000 to 400 \(.*a CT slice: its window"):
        to_model_input(np.linspace(-1000, 400, 400, dtype=np.float32).reshape(1, 20, 20), 1, (16, 16))
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_model_input(np.full((1, 8, 8), np.nan, np.float32), 1, (16, 16))
    scaled = to_model_input(rgb.transpose(2, 0, 1) / 255.0, 3, (16, 16))  # the same image on the 0-1 scale
    assert scaled.shape == (1, 3, 16, 16) and 0.3 < float(scaled.mean()) < 0.7


def test_gvit_refuses_what_the_masked_autoencoders_refuse():
    """A NaN image gave NaN logits, a float64 batch torch's ``Input type (double) and bias type (float)``, a NumPy
    array ``AttributeError``; each is now the message the masked autoencoders give."""
    model = GViT(1, 16, 2, num_gaussians=6, patch_size=4).eval()
    x = torch.rand(2, 1, 16, 16)
    assert model(x).shape == (2, 2)
    cases = [(x.numpy(), r"expected input \(B, 1, 16, 16\), got ndarray"),
             (x.double(), r"input dtype torch.float64 differs from the model's weights \(torch.float32\)"),
             (torch.full_like(x, float("nan")), "NaN or infinite values"),
             (x[:, :, :8], r"expected input \(B, 1, 16, 16\), got \(2, 1, 8, 16\)")]  # fmt: skip
    for bad, said in cases:
        with pytest.raises(ValueError, match=said):
            model(bad)


def test_the_2d_models_warn_once_of_a_batch_off_the_0_1_scale(caplog):
    """``GMAE2D.predict_gaussians`` and a GViT's call took a 0-255 image without a word (``to_model_input`` refuses
    one): each model now warns once, in ``to_model_input``'s words; a 0-1 batch is not warned of."""
    from gmae2d_helpers import tiny_gmae2d

    eight_bit = (torch.arange(32 * 32, dtype=torch.float32) % 256).reshape(1, 1, 32, 32)  # 0 .. 255, whole numbers
    small = eight_bit.reshape(4, 1, 16, 16)  # 0 .. 255 in each image
    gmae, gvit = tiny_gmae2d().eval(), GViT(1, 16, 2, num_gaussians=6, patch_size=4).eval()
    with caplog.at_level("WARNING", logger="medgmae"):
        gmae.predict_gaussians(torch.rand(2, 1, 32, 32))
        gvit(torch.rand(2, 1, 16, 16))
        assert caplog.records == []
        for _ in range(3):
            gmae.predict_gaussians(eight_bit)
            gvit(small)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    for message in said:
        assert message.startswith("model input values must be on the 0-1 scale, got 0 to 255; an 8-bit image: divide "
                                  "by 255 (medgmae.twod.images.read_image reads files onto it"), message  # fmt: skip


def test_a_resize_or_noise_overshooting_the_0_1_scale_a_little_is_clipped_as_before():
    """A bicubic resize of a 0-1 image reaches -0.16 to 1.10, noise slightly beyond 0 and 1: those are clipped, as
    they always were; 1.2 is not called an 8-bit image."""
    x = np.clip(np.random.default_rng(1).normal(0.5, 0.4, (1, 12, 12)), 0, 1).astype(np.float32)
    over = x * 1.26 - 0.16
    out = to_model_input(over, 1, (12, 12))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    with pytest.raises(ValueError) as e:
        to_model_input(x * 3.0 - 1.0, 1, (12, 12))
    assert "divide by 255" not in str(e.value)



def test_gvit_takes_grey_or_rgb_images_only():
    """``GViT(in_channels=2)`` was built though no image the toolkit reads has two channels."""
    with pytest.raises(ValueError, match=r"in_channels must be 1 \(grey\) or 3 \(RGB\), got 2"):
        GViT(2, 16, 2, num_gaussians=6, patch_size=4)



def test_figure_ground_refuses_a_split_that_separates_nothing():
    """A split past the last layer gave an all-background mask, a negative one an all-foreground one, silently."""
    from medgmae.twod import layering as L

    assignment = torch.tensor([[[0, 1], [2, 3]]])
    assert L.figure_ground(assignment, 2, num_layers=4).tolist() == [[[False, False], [True, True]]]
    for split, said in ((9, r"split must be in 0\.\.3, got 9"), (-1, r"split must be in 0\.\.3, got -1")):
        with pytest.raises(ValueError, match=said):
            L.figure_ground(assignment, split, num_layers=4)
    with pytest.raises(ValueError, match=r"split must be in 0 or more, got -1"):
        L.figure_ground(assignment, -1)
    with pytest.raises(ValueError, match=r"split must be in 0\.\.3, got 9 \(num_layers is 4\)"):
        L.figure_ground(assignment, 9, num_layers=4)
