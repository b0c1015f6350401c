"""A bad ``pixdim`` (the 3D bundles' voxel spacing: pre-training's setting, fine-tuning's override) is refused naming
the setting the user gave, not the pre-processing spec's ``spacing`` field."""

from __future__ import annotations

import math

import pytest

from medgmae.bundle_checks import BundleSettingError, check_settings
from medgmae.preprocessing import DEFAULT_SPEC, check_spacing_override, check_spec_setting, pixdim_spacing, spec_with_overrides


@pytest.mark.parametrize("value, message", [
    ([1, 0, 1], "pixdim must be 3 positive finite numbers (mm), got [1, 0, 1]"),
    ([1.0, -1.0, 2.0], "pixdim must be 3 positive finite numbers (mm), got [1.0, -1.0, 2.0]"),
    ([1.5, math.nan, 1.5], "pixdim must be 3 positive finite numbers (mm), got [1.5, nan, 1.5]"),
    (["1.5", "abc", "1.5"], "pixdim must be 3 positive finite numbers (mm), got [1.5, abc, 1.5]"),
    ([True, 1, 1], "pixdim must be 3 positive finite numbers (mm), got [True, 1, 1]"),
    ([1.5, 1.5], "pixdim must be a number or 3 numbers (mm), got [1.5, 1.5]"),
    ("1.5", "pixdim must be a number or 3 numbers (mm), got '1.5'"),
    (0, "pixdim must be a positive finite number (mm) or 3 of them, got 0"),
    (math.inf, "pixdim must be a positive finite number (mm) or 3 of them, got inf"),
])  # fmt: skip
def test_a_bad_pixdim_is_named_with_its_problem(value, message):
    for check in (check_spacing_override, lambda v: check_spec_setting(pixdim=v)):
        with pytest.raises(ValueError) as e:
            check(value)
        assert str(e.value) == message


def test_the_bundle_check_names_the_setting():
    """``--pixdim "[1, 0, 1]"`` was refused as 'spacing must be positive millimetres, got (1.0, 0.0, 1.0)'."""
    with pytest.raises(BundleSettingError) as e:
        check_settings({"pixdim": ([1, 0, 1], check_spacing_override)})
    assert str(e.value).splitlines()[1:] == ["  --pixdim: pixdim must be 3 positive finite numbers (mm), got [1, 0, 1]"]


def test_a_good_pixdim_is_taken_and_the_api_names_a_bad_one_alike():
    assert check_spacing_override(None) is None and check_spacing_override([1.0, 1.5, 2]) is None
    assert check_spec_setting(pixdim=1.5) is None and check_spec_setting(orientation="LPS") is None
    assert pixdim_spacing(["1", "1.5", "2.5"]) == (1.0, 1.5, 2.5) and pixdim_spacing(2) == (2.0, 2.0, 2.0)
    assert spec_with_overrides(None, [2, 2, 3]).spacing == (2.0, 2.0, 3.0)
    assert spec_with_overrides(None, None).spacing == DEFAULT_SPEC.spacing
    with pytest.raises(ValueError, match=r"^pixdim must be 3 positive finite numbers \(mm\), got \[1, 0, 1\]$"):
        spec_with_overrides(None, [1, 0, 1])
