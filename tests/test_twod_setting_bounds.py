"""The 2D bundles' settings that passed the up-front checks but made training diverge at once, refused with the other
settings (medgmae.twod.gmae.scale_cap_check, medgmae.twod.gvit_settings.classifier_freqs_check)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from monai.bundle import ConfigParser
from gmae2d_helpers import GVIT_TRAIN, gmae_parser

from medgmae.bundle_checks import BundleSettingError, check_settings


@pytest.mark.parametrize("value, refused", [(1e30, True), ("1e30", True), (2.5, True), (1e-5, True), (2.0, False), (1.0, False)])
def test_gmae2d_refuses_a_scale_cap_beyond_the_image_up_front(tmp_path, value, refused):
    """--scale_cap 1e30 passed the check (a positive number) and stopped at the first step with the non-finite-loss
    message after writing outputs: refused with the other settings, naming the value and the bound (the image spans
    2, so 2 is a standard deviation of the whole image)."""
    settings = gmae_parser(tmp_path, scale_cap=value).get_parsed_content("checked_settings")
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


@pytest.mark.parametrize("layers, refused", [(9, True), ("9", True), (8, False), (1, False)])
def test_gmae2d_refuses_more_picture_layers_than_gaussians_up_front(tmp_path, layers, refused):
    """--picture_layers beyond K was drawn as K layers without a word: refused with the other settings."""
    settings = gmae_parser(tmp_path, num_gaussians=8, picture_layers=layers).get_parsed_content("checked_settings")
    if not refused:
        check_settings(settings, output_dirs={})
        return
    with pytest.raises(BundleSettingError) as err:
        check_settings(settings, output_dirs={})
    assert f"--picture_layers: expected at most --num_gaussians 8 (each depth layer holds one Gaussian or more), got {layers!r}" in str(err.value)


@pytest.mark.parametrize("phantom", [True, False])
def test_gmae2d_says_when_there_are_fewer_validation_images_than_val_images(tmp_path, caplog, phantom):
    """--val_images beyond the images there are (a folder of 3 images; the held-out phantom's distinct slices) was
    clamped silently: the validation uses those there are, and one warning says so."""
    from PIL import Image

    (tmp_path / "data").mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(tmp_path / "data" / f"{i}.png")
    extra = {"dataset_dir": ""} if phantom else {}
    for asked in (3, 500):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medgmae.twod"):
            dataset = gmae_parser(tmp_path, val_images=asked, **extra).get_parsed_content("val#dataset")
        notices = [r for r in caplog.records if r.getMessage().startswith("--val_images")]
        if asked == 3:
            assert len(dataset) == 3 and not notices
            continue
        assert 3 <= len(dataset) < 500 and len(notices) == 1 and notices[0].levelno == logging.WARNING
        where = "the held-out phantom has" if phantom else f"dataset_dir {tmp_path / 'data'} holds"
        assert notices[0].getMessage() == f"--val_images 500: {where} {len(dataset)} distinct images, so validation uses those {len(dataset)}"


def test_gmae2d_validates_on_every_val_image(tmp_path):
    """--val_images 10 on a folder of 10 images validated on 8: the handler kept the 3D bundle's max_crops of 8."""
    from PIL import Image

    (tmp_path / "data").mkdir()
    for i in range(10):
        Image.fromarray(np.full((32, 32), 20 * i, np.uint8)).save(tmp_path / "data" / f"{i:02d}.png")
    handler = gmae_parser(tmp_path, val_images=10).get_parsed_content("val#handler")
    assert len(handler.crops()) == 10
