"""The 2D bundles' settings that passed the up-front checks but made training diverge at once, refused with the other
settings (medgmae.twod.gmae.scale_cap_check, medgmae.twod.gvit_settings.classifier_freqs_check)."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser
from test_twod_bundle_settings import GVIT_TRAIN, _gmae_parser

from medgmae.bundle_checks import BundleSettingError, check_settings


@pytest.mark.parametrize("value, refused", [(1e30, True), ("1e30", True), (2.5, True), (1e-5, True), (2.0, False), (1.0, False)])
def test_gmae2d_refuses_a_scale_cap_beyond_the_image_up_front(tmp_path, value, refused):
    """--scale_cap 1e30 passed the check (a positive number) and stopped at the first step with the non-finite-loss
    message after writing outputs: refused with the other settings, naming the value and the bound (the image spans
    2, so 2 is a standard deviation of the whole image)."""
    settings = _gmae_parser(tmp_path, scale_cap=value).get_parsed_content("checked_settings")
    if not refused:
        check_settings(settings, output_dirs={})
        return
    with pytest.raises(BundleSettingError) as err:
        check_settings(settings, output_dirs={})
    assert "--scale_cap: expected a number in (0.0001, 2] " in str(err.value)
    assert str(err.value).splitlines()[1].endswith(f"got {value!r}")


@pytest.mark.parametrize("image_size, freqs, bound", [(32, 200, 6), (32, 7, 6), (16, 6, 5), (64, 8, 7)])
def test_gvit_refuses_classifier_freqs_finer_than_a_pixel_up_front(image_size, freqs, bound):
    """--classifier_freqs 200 overflowed float32 (NaN features) and stopped with the non-finite-loss message after
    the default task was written; octave k's period is image_size / 2**k pixels, so one pixel at k = log2(size)."""
    parser = ConfigParser()
    parser.read_config(GVIT_TRAIN)
    parser.update({"image_size": image_size, "patch_size": 4, "classifier_freqs": freqs})
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
    assert f"--classifier_freqs: expected at most {bound} for --image_size {image_size} " in str(err.value)
    assert str(err.value).splitlines()[1].endswith(f"got {freqs!r}")
    parser.update({"classifier_freqs": bound})  # the bound itself trains: 6 at 32 pixels, an older run's octaves
    check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
