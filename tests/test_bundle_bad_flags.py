"""Bundles run with bad flags or output folders stop first, naming every bad key, and write nothing."""

from __future__ import annotations

import re

import pytest
import torch
from bundle_helpers import run_bundle, setting_error_in_process, setting_error_text


@pytest.mark.parametrize("config", ["medgmae_pretrain/configs/train.json", "unetr_finetune/configs/train.json"])
def test_a_run_longer_than_its_learning_rate_schedule_stops_first(tmp_path, config):
    """--max_epochs 5 --lr_schedule_epochs 2 used to train its last epochs back at the full learning rate."""
    out = tmp_path / "run"
    proc = run_bundle("training", config, "--output_dir", str(out), "--max_epochs", "5", "--lr_schedule_epochs", "2")
    assert proc.returncode != 0
    assert "--lr_schedule_epochs: expected at least --max_epochs 5" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


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
    zero_shot = "medgmae_pretrain/configs/inference.json"  # the refusals below in this process, without a new Python
    said = setting_error_in_process("inference", zero_shot, "--model_path", str(tmp_path / "none.pt"), "--image",
                                    str(afile), "--inference_dir", str(afile))  # fmt: skip
    assert f"--inference_dir '{afile}': {afile} is an existing file" in said
    # a missing model and a missing scan are named together, up front; an overlap as wide as the model's window too
    log = setting_error_in_process("inference", zero_shot, "--model_path", str(tmp_path / "none.pt"),
                                   "--image", str(tmp_path / "none.nii.gz"), "--inference_dir", str(tmp_path / "zs"))
    assert f"  --model_path: model checkpoint not found: {tmp_path / 'none.pt'}" in log
    assert f"  --image: input volume not found: {tmp_path / 'none.nii.gz'}" in log
    from medgmae.torch_files import save_torch_atomic
    from medgmae.networks.medgmae import MedGMAE

    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    save_torch_atomic(model.model_checkpoint(), tmp_path / "model.pt")
    save_torch_atomic(model.encoder_checkpoint(), tmp_path / "encoder.pt")
    for path, overlap, line in ((tmp_path / "model.pt", "16", "--overlap: expected fewer voxels than the model's input window (16), got 16"),
                                (tmp_path / "encoder.pt", "4", "--model_path: encoder.pt is ")):  # fmt: skip
        log = setting_error_in_process("inference", zero_shot, "--model_path", str(path), "--image", str(afile),
                                       "--overlap", overlap, "--inference_dir", str(tmp_path / "zs"))  # fmt: skip
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
