"""A bad ``hu_range`` (fine-tuning's HU window override) is refused naming the setting and its problem: a NaN or
infinite bound as a bound that must be a finite number, not as a window of the wrong order."""

from __future__ import annotations

import math

import pytest

from medgmae.bundle_checks import BundleSettingError, check_settings
from medgmae.preprocessing import DEFAULT_SPEC, check_hu_window_override, hu_range_bounds, spec_with_overrides


@pytest.mark.parametrize("value, message", [
    ([math.nan, 250], "hu_range bounds must be finite numbers, got [nan, 250] (a_min is nan)"),
    (["nan", "250"], "hu_range bounds must be finite numbers, got [nan, 250] (a_min is nan)"),
    ([-175, math.inf], "hu_range bounds must be finite numbers, got [-175, inf] (a_max is inf)"),
    (["abc", 250], "hu_range bounds must be finite numbers, got [abc, 250] (a_min is abc)"),
    ([True, 250], "hu_range bounds must be finite numbers, got [True, 250] (a_min is True)"),
    ([300, -100], "hu_range must be [a_min, a_max] with a_max above a_min, got [300, -100]"),
    ([250, 250], "hu_range must be [a_min, a_max] with a_max above a_min, got [250, 250]"),
    ([1, 2, 3], "hu_range must be two numbers [a_min, a_max], got [1, 2, 3]"),
    ("-175, 250", "hu_range must be two numbers [a_min, a_max], got '-175, 250'"),
    (250, "hu_range must be two numbers [a_min, a_max], got 250"),
])  # fmt: skip
def test_a_bad_hu_range_is_named_with_its_problem(value, message):
    with pytest.raises(ValueError) as e:
        check_hu_window_override(value)
    assert str(e.value) == message


def test_the_bundle_check_names_the_setting_and_the_finite_bounds():
    """``--hu_range "[nan, 250]"`` was refused as 'hu_window must be (a_min, a_max) with a_max > a_min, both
    finite, got (nan, 250.0)': another name than the setting's, and an order problem the user did not have."""
    with pytest.raises(BundleSettingError) as e:
        check_settings({"hu_range": ([math.nan, 250.0], check_hu_window_override)})
    assert str(e.value).splitlines()[1:] == ["  --hu_range: hu_range bounds must be finite numbers, got [nan, 250.0] "
                                             "(a_min is nan)"]  # fmt: skip


def test_a_good_hu_range_is_taken_and_the_api_names_a_bad_one_alike():
    assert check_hu_window_override(None) is None and check_hu_window_override([-175, 250]) is None
    assert hu_range_bounds(["-100", "200.5"]) == (-100.0, 200.5)
    assert spec_with_overrides(None, None, [-100, 200]).hu_window == (-100.0, 200.0)
    assert spec_with_overrides(None, None, None).hu_window == DEFAULT_SPEC.hu_window
    with pytest.raises(ValueError, match=r"^hu_range bounds must be finite numbers, got \[-inf, 200\]"):
        spec_with_overrides(None, None, [-math.inf, 200])
