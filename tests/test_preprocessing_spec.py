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


@pytest.mark.parametrize("value", [250, "-175,250", (-175, 0, 250), ("a", "b"), None, (True, False)])
def test_hu_window_must_be_a_pair_of_numbers(value):
    """``hu_window=250`` failed with "'int' object is not iterable", ``"-175,250"`` with "could not convert string
    to float: '-'"."""
    with pytest.raises(ValueError, match=r"hu_window must be a pair of numbers \(a_min, a_max\) in HU"):
        PreprocessingSpec(hu_window=value)


@pytest.mark.parametrize("value", [1, "0,1", None])
def test_intensity_range_must_be_a_pair_of_numbers(value):
    with pytest.raises(ValueError, match=r"intensity_range must be a pair of numbers \(b_min, b_max\)"):
        PreprocessingSpec(intensity_range=value)


@pytest.mark.parametrize(("field", "value"), [("spacing", "123"), ("input_size", "969"), ("patch_size", "111")])
def test_triples_are_not_read_from_strings_digit_by_digit(field, value):
    """``spacing="123"`` was taken as (1, 2, 3) mm, one value per character."""
    with pytest.raises(ValueError, match=f"{field} must be a number or three numbers, got '{value}'"):
        PreprocessingSpec(**{field: value})


def test_transforms_take_a_string_as_one_key():
    """``transforms(keys="image")`` made the keys 'i', 'm', 'a', 'g', 'e'."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    spec = PreprocessingSpec(spacing=2.0, input_size=12, patch_size=6)
    assert [t.keys for t in spec.transforms(keys="image", label_keys="label")][0] == ("image", "label")
    data = {"image": MetaTensor(torch.full((1, 4, 4, 4), 250.0)), "label": MetaTensor(torch.ones(1, 4, 4, 4))}
    out = Compose(spec.transforms(keys="image", label_keys="label"))(data)
    assert out["image"].shape[1:] == (2, 2, 2) and torch.allclose(out["image"], torch.ones(()))
    assert torch.equal(out["label"].as_tensor(), torch.ones(1, 2, 2, 2))


def test_numpy_scalars_are_taken_as_the_numbers_they_hold():
    """``input_size=np.int64(96)`` (an array's shape) was refused as "a number or three numbers", while the models
    take it; a NumPy bool or fraction is refused as a Python one is."""
    import numpy as np

    spec = PreprocessingSpec(input_size=np.int64(96), patch_size=np.int32(16), spacing=np.float32(1.5))
    assert (spec.input_size, spec.patch_size, spec.spacing) == ((96,) * 3, (16,) * 3, (1.5,) * 3)
    with pytest.raises(ValueError, match="input_size must be whole numbers of voxels"):
        PreprocessingSpec(input_size=np.float64(96.5))
    with pytest.raises(ValueError, match="input_size must be a number or three numbers"):
        PreprocessingSpec(input_size=np.bool_(True))


def test_spacing_overrides_take_numpy_scalars_too():
    """``pixdim`` overrides went through their own scalar test, which refused ``np.float32(1.5)``."""
    import numpy as np

    from medgmae.preprocessing import check_spacing_override, spec_with_overrides

    assert spec_with_overrides(None, spacing=np.float32(1.5)).spacing == (1.5, 1.5, 1.5)
    check_spacing_override(np.int64(2))
    with pytest.raises(ValueError, match="pixdim must be a positive finite number"):
        spec_with_overrides(None, spacing=np.float64(-1.0))
