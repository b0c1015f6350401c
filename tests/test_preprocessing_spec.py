"""PreprocessingSpec refuses malformed values instead of converting them: a clip that is not a bool, fractional
sizes; the values the toolkit's own model files record still load."""

from __future__ import annotations

import pytest
import torch

from medgmae.preprocessing import PreprocessingSpec


@pytest.mark.parametrize("clip", ["false", "true", 0, 1, None])
def test_clip_must_be_a_bool(clip):
    with pytest.raises(ValueError, match="clip must be True or False"):
        PreprocessingSpec(clip=clip)
    with pytest.raises(ValueError, match="clip"):
        PreprocessingSpec.from_dict({**PreprocessingSpec().to_dict(), "clip": clip}, source="model.pt")


@pytest.mark.parametrize("field", ["input_size", "patch_size"])
@pytest.mark.parametrize("value", [96.7, (96, 96.5, 96), True, (True, 96, 96), float("nan")])
def test_sizes_must_be_whole_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        PreprocessingSpec(**{field: value})


def test_whole_float_sizes_are_taken_as_ints():
    spec = PreprocessingSpec(clip=False, input_size=96.0, patch_size=(12.0, 12, 12))
    assert spec.clip is False
    assert spec.input_size == (96, 96, 96) and all(type(v) is int for v in spec.input_size)
    assert spec.patch_size == (12, 12, 12)


def test_a_written_spec_loads_back(tmp_path):
    from medgmae.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint

    spec = PreprocessingSpec(clip=False, input_size=(32, 48, 64), patch_size=16)
    assert PreprocessingSpec.from_dict(spec.to_dict()) == spec
    save_checkpoint(tmp_path / "model.pt", make_checkpoint("gmae2d", {}, {"w": torch.zeros(1)}, spec))
    assert load_checkpoint(tmp_path / "model.pt").preprocessing == spec
