"""Bundles check their settings and output folders first, naming the key, and write nothing when one is bad."""

from __future__ import annotations

import re

import pytest
import torch

from medgmae.bundle_checks import BundleSettingError, check_output_dirs, check_settings
from medgmae.setting_kinds import roi_size_check

from bundle_helpers import run_bundle, setting_error_text


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


@pytest.mark.parametrize("config", ["medgmae_pretrain/configs/train.json", "unetr_finetune/configs/train.json"])
def test_a_run_longer_than_its_learning_rate_schedule_stops_first(tmp_path, config):
    """--max_epochs 5 --lr_schedule_epochs 2 used to train its last epochs back at the full learning rate."""
    out = tmp_path / "run"
    proc = run_bundle("training", config, "--output_dir", str(out), "--max_epochs", "5", "--lr_schedule_epochs", "2")
    assert proc.returncode != 0
    assert "--lr_schedule_epochs: expected at least --max_epochs 5" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


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


def test_fine_tuning_refuses_one_phantom_case_a_long_warm_up_a_layer_decay_above_one_and_odd_heads(tmp_path):
    """Each passed the settings check: --phantom_cases 1 then stopped in a traceback about a num_validation the user
    never set, --warmup_epochs 5 (2 epochs) trained with a rate that only ramped up, --layer_decay 2 was refused
    with a hint that 2 % is 0.02 (a layer decay is no percentage). All three are named at once, nothing written."""
    out = tmp_path / "run"
    proc = run_bundle("training", "unetr_finetune/configs/train.json", "--output_dir", str(out), "--phantom_cases", "1",
                      "--warmup_epochs", "5", "--layer_decay", "2", "--encoder#num_heads", "5")
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not out.exists()
    assert "--phantom_cases: expected at least 2 (one case to train on and one to validate on), got 1" in said, said[-3000:]
    assert "--warmup_epochs: expected fewer than the schedule's 2 epochs" in said
    assert "--layer_decay: expected a number in (0, 1], got '2'" in said and "percentage" not in said
    # a scratch encoder's heads not dividing its width stopped in a traceback after the data pre-check
    assert "--encoder: num_heads 5 must divide hidden_size 96 (--encoder#num_heads, --encoder#hidden_size)" in said
    assert "Traceback" not in said


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


def test_pretraining_bad_flags_fail_first_and_write_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(out), "--max_epochs", "-3",
                      "--num_gaussians", "abc", "--model_kind", "foo", "--mask_ratio", "1.0", "--a_min", "300", "--a_max", "100",
                      "--orientation", "XYZ", "--pixdim", "[1.5,1.5]")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in ("--max_epochs: expected a positive integer, got '-3'", "--num_gaussians: expected a positive integer, "
                 "got 'abc'", "--model_kind: expected one of", "--mask_ratio: expected a number in [0, 1)",
                 "--a_max: expected a number above --a_min 300",
                 "--orientation: orientation must be three axis codes", "--pixdim: pixdim must be a number or 3 numbers (mm), got [1.5, 1.5]"):
        assert text in log, text
    assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(afile))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"--output_dir '{afile}': {afile} is an existing file" in log
    assert "pre-check" not in log


def test_zero_shot_and_finetune_flags_checked_first(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_bundle("inference", "medgmae_pretrain/configs/inference.json", "--model_path", str(tmp_path / "none.pt"),
                      "--image", str(afile), "--inference_dir", str(afile), "--overlap", "abc")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--overlap: expected a non-negative integer, got 'abc'" in log
    proc = run_bundle("inference", "medgmae_pretrain/configs/inference.json", "--model_path", str(tmp_path / "none.pt"),
                      "--image", str(afile), "--inference_dir", str(afile))
    assert proc.returncode != 0 and f"--inference_dir '{afile}': {afile} is an existing file" in proc.stdout + proc.stderr
    # a missing model and a missing scan are named together, up front; an overlap as wide as the model's window too
    log = run_bundle("inference", "medgmae_pretrain/configs/inference.json", "--model_path", str(tmp_path / "none.pt"),
                     "--image", str(tmp_path / "none.nii.gz"), "--inference_dir", str(tmp_path / "zs")).stderr
    assert f"  --model_path: model checkpoint not found: {tmp_path / 'none.pt'}" in log
    assert f"  --image: input volume not found: {tmp_path / 'none.nii.gz'}" in log
    from medgmae.torch_files import save_torch_atomic
    from medgmae.networks.medgmae import MedGMAE

    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    save_torch_atomic(model.model_checkpoint(), tmp_path / "model.pt")
    save_torch_atomic(model.encoder_checkpoint(), tmp_path / "encoder.pt")
    for path, overlap, line in ((tmp_path / "model.pt", "16", "--overlap: expected fewer voxels than the model's input window (16), got 16"),
                                (tmp_path / "encoder.pt", "4", "--model_path: encoder.pt is ")):  # fmt: skip
        log = run_bundle("inference", "medgmae_pretrain/configs/inference.json", "--model_path", str(path), "--image",
                         str(afile), "--overlap", overlap, "--inference_dir", str(tmp_path / "zs")).stderr
        assert line in log, log[-600:]
    assert not (tmp_path / "zs").exists()
    out = tmp_path / "ft"
    proc = run_bundle("training", "unetr_finetune/configs/train.json", "--output_dir", str(out), "--label_fraction", "2")
    assert proc.returncode != 0 and "--label_fraction: expected a number in (0, 1], got '2'" in proc.stdout + proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("config", ["train.json", "evaluate.json", "inference.json"])
def test_finetune_spacing_and_window_overrides_are_checked_first(tmp_path, config):
    """``--pixdim`` / ``--hu_range`` are bad settings like any other: named with the others, nothing written (they
    used to fail after the data pre-check, leaving its cache behind)."""
    out = tmp_path / "ft"
    proc = run_bundle("training" if config == "train.json" else "evaluating" if config == "evaluate.json" else "inferring",
                      f"unetr_finetune/configs/{config}", "--output_dir", str(out), "--pixdim", "[1.0, -1.0, 2.0]",
                      "--hu_range", "[300, -100]")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--pixdim: pixdim must be 3 positive finite numbers (mm), got [1.0, -1.0, 2.0]" in log, log[-2000:]
    assert "--hu_range: hu_range must be [a_min, a_max] with a_max above a_min, got [300, -100]" in log
    assert not out.exists()


@pytest.mark.parametrize("field, value", [("hu_window", (float("-inf"), 250.0)), ("hu_window", (-175.0, float("inf"))),
                                          ("hu_window", (float("nan"), 250.0)), ("intensity_range", (0.0, float("inf"))),
                                          ("intensity_range", (0.0, float("nan")))])  # fmt: skip
def test_the_spec_refuses_unbounded_and_nan_ranges(field, value):
    from medgmae.preprocessing import PreprocessingSpec

    with pytest.raises(ValueError, match="finite"):
        PreprocessingSpec(**{field: value})
    assert PreprocessingSpec(hu_window=(-1000.0, 3000.0), intensity_range=(1.0, 0.0)).hu_window == (-1000.0, 3000.0)


def test_an_unbounded_hu_window_is_refused_first_and_nothing_is_written(tmp_path):
    """A window bound of -inf or inf maps every voxel to one value or NaN: it was taken, and pre-training failed
    in its data loader after writing its cache, TensorBoard folder and an interrupted checkpoint."""
    out = tmp_path / "run"
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(out), "--a_min=-inf")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--a_min: expected a finite number, got '-inf'" in log, log[-2000:]
    assert "pre-check" not in log and not out.exists()
    proc = run_bundle("training", "unetr_finetune/configs/train.json", "--output_dir", str(out), "--hu_range", "[-175, inf]")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--hu_range: hu_range bounds must be finite numbers, got [-175, inf] (a_max is inf)" in log
    assert not out.exists()


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


@pytest.mark.parametrize("bundle", ["gmae2d_pretrain", "gvit_classification"])
def test_2d_bad_flags_fail_first_with_one_error_and_write_nothing(tmp_path, bundle):
    """A 2D bundle checks its settings as the 3D ones do: one error names every bad key before anything is built."""
    out = tmp_path / "run"
    proc = run_bundle("training", f"{bundle}/configs/train.json", "--output_dir", str(out), "--max_epochs", "-3",
                      "--image_size", "8", "--amp", "maybe")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    error = setting_error_text(log)
    assert re.match(r"BundleSettingError: \d+ bad settings, nothing was written", error), error
    for text in ("--max_epochs: expected a", "got '-3'", "--image_size: expected at least 11", "got '8'",
                 "--amp: expected true or false, got 'maybe'"):
        assert text in error, (text, error)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_bundle("training", f"{bundle}/configs/train.json", "--output_dir", str(afile))
    assert proc.returncode != 0 and f"--output_dir '{afile}': {afile} is an existing file" in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("config, run_id", [("train.json", "training"), ("evaluate.json", "evaluating")])
def test_gvit_settings_the_run_would_fail_on_are_refused_first(tmp_path, config, run_id):
    """gsplat renders on CUDA only: ``--render_backend gsplat`` with a CPU device is named with the other settings
    (it failed at the first training step, leaving an interrupted checkpoint); ``torch`` and ``auto`` are not. So
    are a negative ``--num_explanations`` other than -1 and fewer than 3 phantoms (the last 2 validate)."""
    from medgmae.twod.gsplat_backend import check_backend_setting

    out = tmp_path / "run"
    phantoms = ["--num_phantoms", "2"] if config == "train.json" else []
    proc = run_bundle(run_id, f"gvit_classification/configs/{config}", "--output_dir", str(out),
                      "--render_backend", "gsplat", "--device", "cpu", "--num_explanations", "-5", *phantoms)  # fmt: skip
    error = setting_error_text(proc.stdout + proc.stderr)
    if phantoms:
        assert "--num_phantoms: expected an integer of at least 3 (the last 2 phantoms are the validation split), got 2" in error
        from medgmae.twod.phantom_task import check_num_phantoms

        check_num_phantoms(2, "/data/classes")  # a dataset of one's own: the phantom count is not used
    assert proc.returncode != 0 and "--num_explanations: expected a non-negative integer or -1 (all), got '-5'" in error, error
    assert "--render_backend: gsplat renders on CUDA devices only and --device cpu runs on cpu: use --render_backend torch" in error
    assert not out.exists()
    for backend in ("torch", "auto"):
        check_backend_setting(backend, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device auto runs on cpu"):
            check_backend_setting("gsplat", "auto")


def test_optional_kinds_take_null_and_check_a_given_value():
    assert check_settings({"seed": (None, "optional_nonneg_int"), "val_fraction": (None, "optional_proper_fraction"),
                           "n": (3, "optional_nonneg_int"), "f": (0.5, "optional_proper_fraction")}) is True
    with pytest.raises(BundleSettingError) as e:
        check_settings({"seed": (-1, "optional_nonneg_int"), "val_fraction": (2, "optional_proper_fraction")})
    assert "--seed: expected a non-negative integer, got '-1'" in str(e.value)
    assert "--val_fraction: expected a number in [0, 1), got '2'" in str(e.value)


def test_gvit_evaluation_refuses_a_bad_seed_and_val_fraction_first(tmp_path):
    """As training does, before the model is read: the evaluation's data settings are named in the one error
    (a negative seed was taken; a val_fraction of 2 failed late, as a bare ValueError), with the missing model
    file, itself a bad --model_path setting."""
    out = tmp_path / "run"
    proc = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", "--output_dir", str(out),
                      "--device", "cpu", "--seed", "-1", "--val_fraction", "2")  # fmt: skip
    error = setting_error_text(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and "--seed: expected a non-negative integer, got '-1'" in error, error
    assert "--val_fraction: expected a number in [0, 1), got '2'" in error
    assert f"--model_path: {out / 'model.pt'}: no such file (the model.pt of a GViT training run)" in error
    assert not out.exists()


@pytest.mark.parametrize("config, roi_size, problem", [
    ("medgmae_pretrain/configs/train.json", "8", "--roi_size: expected positive multiples of --patch_size 12, got 8"),
    ("unetr_finetune/configs/train.json", "[8,8,8]",
     "--roi_size: expected positive multiples of --encoder#patch_size 12, got [8, 8, 8]"),
    ("unetr_finetune/configs/train.json", "[24,24]", "--roi_size: expected a positive integer or a list of 3"),
])  # fmt: skip
def test_3d_roi_size_is_checked_first_and_nothing_is_written(tmp_path, config, roi_size, problem):
    """A crop that is not a multiple of the patch size was refused only after phantom/ and cache/ were written."""
    out = tmp_path / "run"
    proc = run_bundle("training", config, "--output_dir", str(out), "--roi_size", roi_size, "--max_epochs", "0")
    error = setting_error_text(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and problem in error and "--max_epochs: expected a positive integer" in error, error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config", ["medgmae_pretrain/configs/train.json", "gmae2d_pretrain/configs/train.json"])
def test_bad_settings_and_output_folder_are_named_in_one_error(tmp_path, config):
    """A bad setting and an unusable output folder: one error names both, rather than one run each."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_bundle("training", config, "--output_dir", str(afile), "--max_epochs", "-3")
    error = setting_error_text(proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert re.search(r"1 bad setting and (1 unusable output folder|\d+ unusable output folders), nothing was written", error), error
    assert "--max_epochs: expected a positive integer, got '-3'" in error
    assert f"--output_dir '{afile}': {afile} is an existing file, not a folder" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text(encoding="utf-8") == "x"


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
