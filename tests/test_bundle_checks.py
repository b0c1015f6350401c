"""The bundles' settings check: each kind of setting and output folder, every bad key named in one error."""

from __future__ import annotations

import re

import pytest

from medgmae.bundle_checks import BundleSettingError, check_output_dirs, check_settings
from medgmae.setting_kinds import roi_size_check


def test_check_settings_names_every_bad_key():
    good = {"max_epochs": (3, "positive_int"), "roi_size": ([48, 48, 48], "positive_ints"), "lr": ("1e-4", "positive_float"),
            "kind": ("medgmae", ["medgmae", "voxel-mae"]), "fraction": (0.5, "fraction"), "ratio": (0.0, "proper_fraction"),
            "amp": ("false", "bool"), "resume": (True, "bool")}
    assert check_settings(good) is True
    bad = {"max_epochs": (-3, "positive_int"), "num_gaussians": ("abc", "positive_int"), "kind": ("foo", ["medgmae"]),
           "mask_ratio": (1.0, "proper_fraction"), "label_fraction": (2, "fraction"), "roi_size": ([48, 0], "positive_ints"),
           "epochs": (2.5, "positive_int"), "batch_size": (True, "positive_int"), "amp": ("maybe", "bool")}
    with pytest.raises(BundleSettingError) as e:
        check_settings(bad)
    for key in bad:
        assert f"--{key}: expected" in str(e.value), key
    assert "got 'abc'" in str(e.value) and "one of ['medgmae']" in str(e.value)


def test_image_size_is_checked_against_the_patch_size_beside_it():
    def problems(image_size, patch_size) -> str:
        with pytest.raises(BundleSettingError) as e:
            check_settings({"image_size": (image_size, "image_size"), "patch_size": (patch_size, "positive_int")})
        return str(e.value)

    assert check_settings({"image_size": (32, "image_size"), "patch_size": (4, "positive_int")}) is True
    assert check_settings({"image_size": ("12", "image_size"), "patch_size": (12, "positive_int")}) is True
    assert "--image_size: expected at least 11 (the SSIM uses an 11-pixel window), got '8'" in problems(8, 4)
    assert "--image_size: expected a multiple of --patch_size 4, got '18'" in problems(18, 4)
    assert "--image_size: expected a positive integer, got 'abc'" in problems("abc", 4)
    assert "--image_size: expected positive int, got True" in problems(True, 4)  # a flag is not a size
    # a bad patch size is named on its own line, not as a divisibility problem of image_size
    text = problems(32, 0)
    assert "--patch_size: expected a positive integer, got '0'" in text and "--image_size" not in text
    with pytest.raises(ValueError, match="needs the patch_size setting"):
        check_settings({"image_size": (32, "image_size")})


def test_a_learning_rate_schedule_shorter_than_the_run_is_refused():
    """WarmupCosineSchedule goes on along its cosine past t_total, so the rate of a run longer than its schedule
    climbed back to the peak: --lr_schedule_epochs below --max_epochs is refused, naming both and what to give."""
    def settings(max_epochs, schedule):
        return {"max_epochs": (max_epochs, "positive_int"), "lr_schedule_epochs": (schedule, "schedule_epochs")}

    assert check_settings(settings(5, 5)) is True and check_settings(settings("2", "7")) is True
    with pytest.raises(BundleSettingError) as e:
        check_settings(settings(5, 2))
    assert ("--lr_schedule_epochs: expected at least --max_epochs 5 (past the schedule's end its cosine brings the "
            "learning rate back up to its peak), got '2': give --lr_schedule_epochs 5 or more, or leave it out") in str(e.value)
    with pytest.raises(BundleSettingError) as e:  # a bad max_epochs is named on its own line
        check_settings(settings(-1, 2))
    assert "--max_epochs: expected a positive integer" in str(e.value) and "--lr_schedule_epochs" not in str(e.value)
    with pytest.raises(ValueError, match="needs the max_epochs setting"):
        check_settings({"lr_schedule_epochs": (2, "schedule_epochs")})


def test_a_warm_up_as_long_as_the_schedule_is_refused():
    """A warm-up of at least the schedule's epochs only ramped the learning rate up (it never reached its peak nor
    decayed); it started training. Zero (no warm-up) is fine whatever the schedule."""
    def settings(warmup, schedule=3):
        return {"lr_schedule_epochs": (schedule, "positive_int"), "warmup_epochs": (warmup, "warmup_epochs")}

    assert check_settings(settings(2)) is True and check_settings(settings(0, 1)) is True
    for warmup in (3, "5"):
        with pytest.raises(BundleSettingError) as e:
            check_settings(settings(warmup))
        assert (f"--warmup_epochs: expected fewer than the schedule's 3 epochs (--lr_schedule_epochs, which follows "
                f"--max_epochs unless given), got '{warmup}'") in str(e.value)
    with pytest.raises(BundleSettingError) as e:  # a bad schedule is named on its own line, not this one's
        check_settings(settings(4, -1))
    assert "--lr_schedule_epochs: expected a positive integer" in str(e.value) and "--warmup_epochs" not in str(e.value)


def test_integer_and_callable_kinds():
    def at_most_one(value):
        if not 0 <= float(value) <= 1:
            raise ValueError(f"strength must be in [0, 1], got {value!r}")

    assert check_settings({"n": (-1, "int"), "gamma": (0.5, at_most_one)}) is True
    with pytest.raises(BundleSettingError) as e:
        check_settings({"n": (1.5, "int"), "gamma": (2, at_most_one), "other": ("x", at_most_one),
                        "epochs": (100.0, "positive_int"), "steps": ("1e2", "nonneg_int"), "k": ("12", "positive_int")})
    assert "--n: expected an integer, got 1.5\n" in str(e.value) + "\n"
    # MONAI reads --epochs 1e2 as the float 100.0, which the configs would use as given
    assert "--epochs: expected a positive integer, got 100.0 (write it as 100)" in str(e.value)
    assert "--steps: expected a non-negative integer, got '1e2' (write it as 100)" in str(e.value) and "--k" not in str(e.value)
    assert "--gamma: strength must be in [0, 1], got 2" in str(e.value)
    assert "--other: could not convert string to float: 'x'" in str(e.value)


def test_check_output_dirs(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert check_output_dirs(output_dir=tmp_path / "new" / "run", seg_dir=tmp_path) is True
    with pytest.raises(BundleSettingError, match=r"--output_dir .*afile is an existing file, not a folder"):
        check_output_dirs(output_dir=afile)
    with pytest.raises(BundleSettingError, match=r"--seg_dir .*afile \(above .*\) is an existing file, not a folder"):
        check_output_dirs(seg_dir=afile / "sub")
    assert not (tmp_path / "new").exists()  # nothing created


def test_an_output_folder_too_long_to_create_is_a_setting_error(tmp_path):
    """An ``--output_dir`` with a name over the file system's 255 bytes: one ``BundleSettingError`` naming it, as for
    any unusable folder; its lookups (the checkpoints a run finds at its start, another run's model files) raised
    ``OSError: [Errno 36] File name too long`` under MONAI's traceback."""
    out = tmp_path / ("x" * 300)
    with pytest.raises(BundleSettingError) as e:
        check_settings({}, output_dirs={"output_dir": str(out), "tensorboard_dir": str(out / "tensorboard")},
                       run_kinds=["medgmae"])  # fmt: skip
    assert f"--output_dir {str(out)!r}: a name in it is 300 bytes long, longer than the 255 the file system takes" in str(e.value)
    assert "--tensorboard_dir" in str(e.value) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("roi_size, problem", [
    (8, "expected positive multiples of --patch_size 12, got 8"),
    ([24, 24, 18], "expected positive multiples of --patch_size 12, got [24, 24, 18]"),
    ([24, 24], "expected a positive integer or a list of 3, got [24, 24]"),
    ([24, 0, 24], "expected a positive integer or a list of 3, got [24, 0, 24]"),
    ("abc", "expected a positive integer or a list of 3, got 'abc'"),
    (True, "expected a positive integer or a list of 3, got True"),
])  # fmt: skip
def test_roi_size_is_one_or_3_multiples_of_the_patch_size(roi_size, problem):
    with pytest.raises(BundleSettingError) as e:
        check_settings({"roi_size": (roi_size, "roi_size"), "patch_size": (12, "positive_ints")})
    assert f"--roi_size: {problem}" in str(e.value) and "--patch_size" not in str(e.value).split(problem)[1]
    for good in (24, "36", [24, 36, 12], (12, 12, 12)):
        assert check_settings({"roi_size": (good, "roi_size"), "patch_size": (12, "positive_ints")}) is True
    # a patch size per axis; a bad patch size is named on its own line, not against roi_size
    assert check_settings({"roi_size": ([24, 24, 8], "roi_size"), "patch_size": ([12, 12, 4], "positive_ints")})
    with pytest.raises(BundleSettingError, match=r"--roi_size: expected positive multiples of --patch_size \[12, 12, 4\]"):
        check_settings({"roi_size": ([24, 24, 6], "roi_size"), "patch_size": ([12, 12, 4], "positive_ints")})
    with pytest.raises(BundleSettingError) as e:
        check_settings({"roi_size": (24, "roi_size"), "patch_size": (0, "positive_ints")})
    assert "--patch_size" in str(e.value) and "--roi_size" not in str(e.value)


def test_roi_edge_and_roi_size_check():
    """``roi_edge`` (a cube's edge) takes one integer; :func:`roi_size_check` checks against a patch size that is
    not a setting of its own, or the form alone when that is not known up front."""
    assert check_settings({"roi_size": ("24", "roi_edge"), "patch_size": (12, "positive_ints")}) is True
    with pytest.raises(BundleSettingError, match=r"--roi_size: expected a positive integer, got \[24, 24, 24\]"):
        check_settings({"roi_size": ([24, 24, 24], "roi_edge"), "patch_size": (12, "positive_ints")})
    check = roi_size_check(16)
    assert check_settings({"roi_size": ([32, 48, 16], check)}) is True
    with pytest.raises(BundleSettingError, match=r"--roi_size: expected positive multiples of --encoder#patch_size 16, "
                                                 r"got \[8, 8, 8\]"):  # fmt: skip
        check_settings({"roi_size": ([8, 8, 8], check)})
    assert check_settings({"roi_size": ([8, 8, 8], roi_size_check(None))}) is True  # patch size unknown yet
    with pytest.raises(BundleSettingError, match=r"--roi_size: expected a positive integer or a list of 3, got \[8, 8\]"):
        check_settings({"roi_size": ([8, 8], roi_size_check(None))})


def test_settings_and_output_folders_are_named_in_one_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert check_settings({"n": (1, "positive_int")}, output_dirs={"output_dir": tmp_path / "new"}) is True
    with pytest.raises(BundleSettingError) as e:
        check_settings({"n": (-3, "positive_int")}, output_dirs={"output_dir": afile, "cache_dir": tmp_path / "c"})
    lines = str(e.value).splitlines()
    assert lines[0] == "1 bad setting and 1 unusable output folder, nothing was written:"
    assert lines[1:] == ["  --n: expected a positive integer, got '-3'",
                         f"  --output_dir '{afile}': {afile} is an existing file, not a folder"]  # fmt: skip
    with pytest.raises(BundleSettingError, match=r"^1 unusable output folder, nothing was written:\n  --output_dir"):
        check_settings({"n": (3, "positive_int")}, output_dirs={"output_dir": afile})
    assert not (tmp_path / "new").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("field, value", [("hu_window", (float("-inf"), 250.0)), ("hu_window", (-175.0, float("inf"))),
                                          ("hu_window", (float("nan"), 250.0)), ("intensity_range", (0.0, float("inf"))),
                                          ("intensity_range", (0.0, float("nan")))])  # fmt: skip
def test_the_spec_refuses_unbounded_and_nan_ranges(field, value):
    from medgmae.preprocessing import PreprocessingSpec

    with pytest.raises(ValueError, match="finite"):
        PreprocessingSpec(**{field: value})
    assert PreprocessingSpec(hu_window=(-1000.0, 3000.0), intensity_range=(1.0, 0.0)).hu_window == (-1000.0, 3000.0)


def test_the_hu_window_ends_are_each_named_for_their_own_problem():
    """A bad ``--a_min`` is named as ``--a_min`` (it was named ``--a_max``, whose check read both ends), and an
    ``--a_max`` not above it as ``--a_max``."""
    def problems(a_min, a_max):
        with pytest.raises(BundleSettingError) as e:
            check_settings({"a_min": (a_min, "finite_float"), "a_max": (a_max, "hu_window_max")})
        return str(e.value).splitlines()[1:]

    assert problems("abc", 250.0) == ["  --a_min: expected a finite number, got 'abc'"]
    assert problems("nan", 250.0) == ["  --a_min: expected a finite number, got 'nan'"]
    assert problems(-175.0, "inf") == ["  --a_max: expected a finite number, got 'inf'"]
    assert problems(300, 100) == ["  --a_max: expected a number above --a_min 300 (the HU window's lower end), got '100'"]
    assert problems(-175.0, -175.0)[0].startswith("  --a_max: expected a number above --a_min -175.0")
    assert check_settings({"a_min": (-1000, "finite_float"), "a_max": ("3000", "hu_window_max")}) is True


def test_optional_kinds_take_null_and_check_a_given_value():
    assert check_settings({"seed": (None, "optional_nonneg_int"), "val_fraction": (None, "optional_proper_fraction"),
                           "n": (3, "optional_nonneg_int"), "f": (0.5, "optional_proper_fraction")}) is True
    with pytest.raises(BundleSettingError) as e:
        check_settings({"seed": (-1, "optional_nonneg_int"), "val_fraction": (2, "optional_proper_fraction")})
    assert "--seed: expected a non-negative integer, got '-1'" in str(e.value)
    assert "--val_fraction: expected a number in [0, 1), got '2'" in str(e.value)


@pytest.mark.parametrize("encoder, said", [
    ({"hidden_size": 96, "num_heads": 4, "num_layers": 2}, None),
    ({"hidden_size": 96, "num_heads": 5}, "num_heads 5 must divide hidden_size 96"),
    ({"hidden_size": 100, "num_heads": 4}, "hidden_size 100 must be a multiple of 6"),
    ({"hidden_size": 96, "num_layers": 0}, "num_layers: expected a positive integer, got '0'"),
    ({"hidden_size": 96, "num_heads": 4, "mlp_ratio": -1}, "mlp_ratio: expected a positive"),
    ("tiny", "expected the encoder's settings"),
])
def test_encoder_check_agrees_with_the_vit_it_would_build(encoder, said):
    """The fine-tuning bundle's check of a scratch encoder refuses what the ViT itself refuses (the oracle: building
    one), naming the key."""
    from medgmae.networks.vit import MaskedViTEncoder as ViT
    from medgmae.setting_kinds import encoder_check

    if said is None:
        encoder_check(encoder)
        ViT(img_size=24, patch_size=12, **encoder)
        return
    with pytest.raises(ValueError, match=re.escape(said)):
        encoder_check(encoder)
    if isinstance(encoder, dict) and "mlp_ratio" not in encoder and encoder.get("num_layers", 1) > 0:
        with pytest.raises(ValueError):  # the ViT refuses it too
            ViT(img_size=24, patch_size=12, **encoder)
