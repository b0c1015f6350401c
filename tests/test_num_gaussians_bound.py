"""``num_gaussians`` bounded up front by the crop's voxels (pixels), MedGMAE*'s levels counted: 100000000 passed the
settings check, wrote phantom data and then failed in the allocator."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser
from bundle_helpers import BUNDLES, run_bundle
from gmae2d_helpers import gmae_parser

from medgmae.bundle_checks import BundleSettingError, check_settings


def _pretrain_settings(tmp_path, **overrides) -> dict:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "medgmae_pretrain" / "configs" / "train.json"))
    parser.update({"output_dir": str(tmp_path / "run"), **overrides})
    return parser.get_parsed_content("checked_settings")


@pytest.mark.parametrize(
    "kind, roi, bound", [("medgmae", 96, 96**3), ("medgmae", 32, 32**3), ("medgmae-star", 32, 32**3 // 7)]
)  # fmt: skip
def test_pretraining_refuses_more_gaussians_than_the_crop_has_voxels(tmp_path, kind, roi, bound):
    """The bound: a 32^3 crop has 32768 voxels; MedGMAE*'s levels 1, 2, 4 hold 7 K Gaussians."""
    check_settings(_pretrain_settings(tmp_path, model_kind=kind, roi_size=roi, patch_size=8, num_gaussians=bound), {})
    settings = _pretrain_settings(tmp_path, model_kind=kind, roi_size=roi, patch_size=8, num_gaussians=bound + 1)
    with pytest.raises(BundleSettingError) as err:
        check_settings(settings, {})
    line = next(s for s in str(err.value).splitlines() if "--num_gaussians" in s)
    assert line.strip().startswith(f"--num_gaussians: expected at most {bound} (the {roi**3} voxels of a {roi}^3 crop")
    assert line.endswith(f"got {bound + 1}")
    assert ("levels 1 + 2 + 4" in line) == (kind == "medgmae-star")


def test_a_voxel_mae_has_no_gaussian_bound(tmp_path):
    settings = _pretrain_settings(tmp_path, model_kind="voxel-mae", roi_size=32, patch_size=8, num_gaussians=10**8)
    check_settings(settings, {})


def test_gmae2d_refuses_more_gaussians_than_the_image_has_pixels(tmp_path):
    """A 32 x 32 image has 1024 pixels."""
    check_settings(gmae_parser(tmp_path, num_gaussians=1024).get_parsed_content("checked_settings"), {})
    with pytest.raises(BundleSettingError) as err:
        check_settings(gmae_parser(tmp_path, num_gaussians=1025).get_parsed_content("checked_settings"), {})
    assert "--num_gaussians: expected at most 1024 (the 1024 pixels of a 32 x 32 image), got 1025" in str(err.value)


def test_the_pretraining_bundle_stops_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(out),
                      "--num_gaussians", "100000000")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--num_gaussians: expected at most 884736 (the 884736 voxels of a 96^3 crop), got 100000000" in log
    assert "tried to allocate" not in log and not out.exists()


def test_gvit_refuses_more_gaussians_than_the_image_has_pixels():
    """GViT's K as 2D GMAE's: a 16 x 16 image has 256 pixels; 257 Gaussians passed before."""
    from monai.bundle import ConfigParser as _Parser
    from gmae2d_helpers import GVIT_TRAIN

    parser = _Parser()
    parser.read_config(GVIT_TRAIN)
    parser.update({"image_size": 16, "patch_size": 4, "classifier_freqs": 2, "num_gaussians": 256})
    check_settings(parser.get_parsed_content("checked_settings"), {})
    parser.update({"num_gaussians": 257})
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), {})
    assert "--num_gaussians: expected at most 256 (the 256 pixels of a 16 x 16 image), got 257" in str(err.value)
