"""The scale a model takes its inputs on and the one line for an input off it (medgmae.input_scale): the range low
end first whatever way the window runs, half the scale's width of slack on either side whatever the scale, and the
8-bit hint only for whole numbers from 0 to 255."""

from __future__ import annotations

import pytest
import torch

from medgmae.input_scale import model_input_range, off_scale_problem
from medgmae.preprocessing import PreprocessingSpec


def test_an_inverted_intensity_range_is_given_low_end_first():
    """A window mapping -175 HU to 1 and 250 HU to 0: clipped, the range is (0, 1); unclipped, the int16 ends
    -32768 and 32767 HU map (by the line through the window's ends, worked out here) to 1 + 32593 / 425 and
    1 - 32942 / 425, given low end first."""
    assert model_input_range(PreprocessingSpec(intensity_range=(1.0, 0.0))) == (0.0, 1.0)
    lo, hi = model_input_range(PreprocessingSpec(intensity_range=(1.0, 0.0), clip=False))
    assert lo == pytest.approx(1.0 - 32942.0 / 425.0) and hi == pytest.approx(1.0 + 32593.0 / 425.0)


def test_values_at_the_edges_of_the_slack_are_on_the_scale():
    """Half the 0-1 scale's width of slack: -0.5 to 1.5 is on it, a little further is not."""
    assert off_scale_problem(None, -0.5, 1.5, "image", "how") is None
    assert off_scale_problem(None, -0.5001, 1.0, "image", "how") is not None
    assert off_scale_problem(None, 0.0, 1.5001, "image", "how") is not None


@pytest.mark.parametrize("scale, inside, outside", [((-1.0, 1.0), (-2.0, 2.0), (-2.01, 2.01)),
                                                    ((100.0, 200.0), (50.0, 250.0), (49.9, 250.1)),
                                                    ((0.0, 4.0), (-2.0, 6.0), (-2.1, 6.1))])  # fmt: skip
def test_the_slack_is_half_the_width_of_the_models_own_scale(scale, inside, outside):
    """On a scale other than 0-1 the slack is half its width beyond each of its own ends: the values up to there
    are on it, a little beyond either end they are not, and the line names that scale."""
    assert off_scale_problem(None, *inside, "model input", "how", scale) is None
    low, high = scale
    for lo, hi in ((outside[0], high), (low, outside[1])):
        said = off_scale_problem(None, lo, hi, "model input", "how", scale)
        assert said == f"model input values must be on the model's {low:.3g} to {high:.3g} scale, got {lo:.4g} to {hi:.4g} (how)"


def test_an_8_bit_image_is_told_to_divide_by_255():
    x = torch.arange(0, 256, dtype=torch.float32)
    assert off_scale_problem(x, 0.0, 255.0, "image", "how") == (
        "image values must be on the 0-1 scale, got 0 to 255; an 8-bit image: divide by 255 (how)")


@pytest.mark.parametrize("values", [torch.arange(-5, 251), torch.tensor([0, 1, 2] * 10), torch.arange(0, 1024, 4),
                                    torch.linspace(0.5, 200.5, 256) + 0.25],
                         ids=["negative whole numbers", "whole numbers up to 2", "whole numbers past 255", "fractions"])
def test_only_whole_numbers_from_0_to_255_are_called_an_8_bit_image(values):
    """Off the scale but no 8-bit image (below 0, at most 2, above 255, or not whole): no hint to divide by 255."""
    x = values.to(torch.float32)
    said = off_scale_problem(x, float(x.min()), float(x.max()), "image", "how")
    assert said is not None and said.startswith("image values must be on the 0-1 scale") and "divide by 255" not in said


def test_without_the_values_no_8_bit_hint_is_given():
    """``x=None`` (the values not to be read again): the range alone is told."""
    assert off_scale_problem(None, 0.0, 255.0, "image", "how") == "image values must be on the 0-1 scale, got 0 to 255 (how)"
