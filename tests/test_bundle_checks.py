"""Bundles check their settings and output folders first, naming the key, and write nothing when one is bad."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgmae.bundle_checks import BundleSettingError, check_output_dirs, check_settings
from medgmae.setting_kinds import roi_size_check

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


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
    assert lines[0] == "bad setting(s) and unusable output folder(s), nothing was written:"
    assert lines[1:] == ["  --n: expected a positive integer, got '-3'",
                         f"  --output_dir '{afile}': {afile} is an existing file, not a folder"]  # fmt: skip
    with pytest.raises(BundleSettingError, match=r"^unusable output folder\(s\), nothing was written:\n  --output_dir"):
        check_settings({"n": (3, "positive_int")}, output_dirs={"output_dir": afile})
    assert not (tmp_path / "new").exists() and not (tmp_path / "c").exists()


def run_bundle(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(BUNDLES / config), *overrides]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)


def test_pretraining_bad_flags_fail_first_and_write_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(out), "--max_epochs", "-3",
                      "--num_gaussians", "abc", "--model_kind", "foo", "--mask_ratio", "1.0", "--a_min", "300", "--a_max", "100",
                      "--orientation", "XYZ", "--pixdim", "[1.5,1.5]")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in ("--max_epochs: expected a positive integer, got '-3'", "--num_gaussians: expected a positive integer, "
                 "got 'abc'", "--model_kind: expected one of", "--mask_ratio: expected a number in [0, 1)",
                 "--a_max: hu_window must be (a_min, a_max) with a_max > a_min, got (300.0, 100.0)",
                 "--orientation: orientation must be three axis codes", "--pixdim: spacing must have three values"):
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
    from medgmae.files import save_torch_atomic
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
    assert proc.returncode != 0 and "--pixdim: spacing must be positive millimetres, got (1.0, -1.0, 2.0)" in log, log[-2000:]
    assert "--hu_range: hu_window must be (a_min, a_max) with a_max > a_min, got (300.0, -100.0)" in log
    assert not out.exists()


@pytest.mark.parametrize("bundle", ["gmae2d_pretrain", "gvit_classification"])
def test_2d_bad_flags_fail_first_with_one_error_and_write_nothing(tmp_path, bundle):
    """A 2D bundle checks its settings as the 3D ones do: one error names every bad key before anything is built."""
    out = tmp_path / "run"
    proc = run_bundle("training", f"{bundle}/configs/train.json", "--output_dir", str(out), "--max_epochs", "-3",
                      "--image_size", "8", "--amp", "maybe")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    error = _the_error(log)
    assert error.startswith("BundleSettingError: bad setting(s), nothing was written"), error
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
    error = _the_error(proc.stdout + proc.stderr)
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
    (a negative seed was taken; a val_fraction of 2 failed late, as a bare ValueError)."""
    out = tmp_path / "run"
    proc = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", "--output_dir", str(out),
                      "--device", "cpu", "--seed", "-1", "--val_fraction", "2")  # fmt: skip
    error = _the_error(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and "--seed: expected a non-negative integer, got '-1'" in error, error
    assert "--val_fraction: expected a number in [0, 1), got '2'" in error and "model.pt" not in error
    assert not out.exists()


def _the_error(log: str) -> str:
    """The one BundleSettingError's lines in a bundle's log: raised once, in the traceback, and repeated at the
    very end of the log by the error summary, which must be the same text."""
    assert log.count("\nerror: BundleSettingError: ") == 1, log[-3000:]
    traceback, summary = log.split("\nerror: BundleSettingError: ")
    assert traceback.count("BundleSettingError: ") == 1, log[-3000:]
    raised = traceback[traceback.index("BundleSettingError: ") :].split("\n\n")[0]
    assert raised == "BundleSettingError: " + summary.strip(), (raised, summary)
    return raised


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
    error = _the_error(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and problem in error and "--max_epochs: expected a positive integer" in error, error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config", ["medgmae_pretrain/configs/train.json", "gmae2d_pretrain/configs/train.json"])
def test_bad_settings_and_output_folder_are_named_in_one_error(tmp_path, config):
    """A bad setting and an unusable output folder: one error names both, rather than one run each."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_bundle("training", config, "--output_dir", str(afile), "--max_epochs", "-3")
    error = _the_error(proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert "bad setting(s) and unusable output folder(s), nothing was written" in error, error
    assert "--max_epochs: expected a positive integer, got '-3'" in error
    assert f"--output_dir '{afile}': {afile} is an existing file, not a folder" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "x"


def _under_the_hook(body: str, twice: bool = False, resumable: bool = False, rank: int | None = None, runner: bool = False):
    """Run ``body`` in a fresh Python with :func:`summarise_errors` installed (twice: installed twice; resumable:
    by a bundle with a ``resume`` setting; runner: in a process started as MONAI's bundle runner); returns the
    finished process and its non-blank stderr lines."""
    import subprocess
    import sys

    install = f"summarise_errors(resumable={resumable})"
    install = f"summarise_errors(); {install}" if twice else install
    argv = "import sys; sys.argv[0] = '/env/lib/python3/site-packages/monai/bundle/__main__.py'\n" if runner else ""
    code = f"{argv}from medgmae.bundle_errors import summarise_errors\n{install}\n{body}"
    env = {**os.environ, **({} if rank is None else {"RANK": str(rank), "WORLD_SIZE": "2"})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    return proc, [line for line in proc.stderr.splitlines() if line.strip()]


def test_rank_0_losing_another_process_says_so_and_how_to_resume():
    """Under torchrun, a process killed mid-epoch leaves rank 0 failing in a collective with gloo's "Connection
    reset by peer": after that reason, rank 0 says another process stopped first and how to continue; an error of
    its own (a bad file) gets no such line, nor does a bundle without a resume."""
    from medgmae.bundle_errors import LOST_PEER

    lost = ("try:\n    raise RuntimeError('[gloo/transport/tcp/pair.cc:534] Connection reset by peer [127.0.0.1]:5')\n"
            "except RuntimeError as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(lost, resumable=True, rank=0)
    assert lines[-2].startswith("error: RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection reset by peer")
    assert lines[-1] == LOST_PEER and proc.returncode == 1
    assert LOST_PEER not in _under_the_hook(lost, resumable=False, rank=0)[0].stderr
    own = "raise ValueError('/data/x.nii.gz: cannot read the volume')\n"
    assert LOST_PEER not in _under_the_hook(own, resumable=True, rank=0)[0].stderr
    piped = "raise BrokenPipeError(32, 'Broken pipe')\n"  # one process whose output went to `head`: no peer
    assert LOST_PEER in _under_the_hook(piped, resumable=True, rank=0)[0].stderr
    assert LOST_PEER not in _under_the_hook(piped, resumable=True)[0].stderr


def test_summarise_errors_ends_a_wrapped_failure_with_its_reason():
    """MONAI wraps a config expression's error (``RuntimeError: Failed to evaluate ...``): the hook keeps the whole
    traceback and repeats the reason as the last line; installed twice, it prints it once."""
    proc, lines = _under_the_hook(
        "try:\n"
        "    raise ValueError('--max_epochs: expected a positive whole number, got -3')\n"
        "except ValueError as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n",
        twice=True,
    )
    assert proc.returncode == 1
    assert lines[-1] == "error: ValueError: --max_epochs: expected a positive whole number, got -3"
    assert "RuntimeError: Failed to evaluate ConfigExpression" in proc.stderr  # the traceback is kept
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_a_transforms_failure_ends_with_the_file_it_could_not_read():
    """MONAI's ``apply_transform`` wraps a loader's error in ``RuntimeError: applying transform <object at 0x..>``
    (a 2D image folder holding a corrupt PNG): the last line is the loader's message naming the file."""
    proc, lines = _under_the_hook(
        "from monai.transforms import apply_transform\n"
        "def load(d):\n"
        "    raise ValueError('/data/pngs/bad.png: not a readable image')\n"
        "try:\n"
        "    apply_transform(load, {'image': '/data/pngs/bad.png'})\n"
        "except RuntimeError as e:\n"
        "    raise RuntimeError('Failed to instantiate component') from e\n",
    )
    assert proc.returncode == 1 and "applying transform" in proc.stderr, proc.stderr
    assert lines[-1] == "error: ValueError: /data/pngs/bad.png: not a readable image", lines[-3:]


def test_the_last_line_is_the_toolkits_message_not_the_library_error_under_it():
    """The toolkit's error names the file and wraps the library's (a private reader error, an EOFError, pickle's
    advice to load with weights_only=False): the last line is the toolkit's, however deep MONAI's wrappers go."""
    _, lines = _under_the_hook(
        "def wrapped():\n"
        "    try:\n"
        "        try:\n"
        "            raise EOFError('Compressed file ended before the end-of-stream marker was reached')\n"
        "        except EOFError as e:\n"
        "            raise ValueError('/data/ct.nii.gz: cannot read the volume (truncated?)') from e\n"
        "    except ValueError as e:\n"
        "        raise RuntimeError('Failed to instantiate component x') from e\n"
        "try:\n"
        "    wrapped()\n"
        "except RuntimeError as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    assert lines[-1] == "error: ValueError: /data/ct.nii.gz: cannot read the volume (truncated?)", lines[-3:]


def test_an_interrupted_bundle_ends_saying_how_to_resume():
    """Ctrl-C (a KeyboardInterrupt, wrapped by MONAI or not) ends with the resume command in a training bundle (one
    with a ``resume`` setting, even when a later install does not say so), with no such advice in the others
    (inference, evaluation), not a bare ``KeyboardInterrupt`` nor a traceback; the exit status stays the interrupt's."""
    import signal

    from medgmae.bundle_errors import INTERRUPTED, INTERRUPTED_NO_RESUME

    wrapped = (
        "try:\n"
        "    raise KeyboardInterrupt\n"
        "except KeyboardInterrupt as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    assert _under_the_hook(wrapped, resumable=True)[1][-1] == INTERRUPTED and "--resume true" in INTERRUPTED
    assert _under_the_hook("summarise_errors()\n" + wrapped, resumable=True)[1][-1] == INTERRUPTED
    proc, lines = _under_the_hook("raise KeyboardInterrupt\n")
    assert lines == [INTERRUPTED_NO_RESUME] and proc.returncode in (128 + signal.SIGINT, -signal.SIGINT)  # no traceback
    assert "--resume" not in INTERRUPTED_NO_RESUME


def test_ctrl_c_before_training_started_says_whether_there_is_a_checkpoint_to_resume(tmp_path, monkeypatch):
    """Ctrl-C where the checkpoint handler does not speak (a training bundle generating its phantoms, GViT between
    phases or in its closing evaluation, the closing steps after the last epoch) advised ``--resume true`` whatever
    the folder held. Now, from what the folder held at the start (no clock): none: say so, run again; this run's
    own (GViT's per-phase folders too) or a resumed run's: the resume line; only an earlier run's, in a fresh run:
    they are as they were; this run's checkpoint_final.pt (its last completion step): it ended, nothing to resume."""
    from medgmae.bundle_errors import INTERRUPTED

    out = tmp_path / "run"
    out.mkdir()
    body = lambda resume: (f"summarise_errors(resumable=True, output_dir={str(out)!r}, resume={resume})\n"  # noqa: E731
                           "import os; p = os.environ['WRITE']\nif p: open(p, 'w').write('this run')\n"
                           "raise KeyboardInterrupt\n")  # fmt: skip

    def line(resume, written: str = "") -> list:  # the run writes WRITE (a checkpoint of its own) before the interrupt
        monkeypatch.setenv("WRITE", written)
        return _under_the_hook(body(resume))[1]

    assert line(False) == [f"interrupted before training started: there is no checkpoint_epoch=N.pt in {out} to "
                           "continue from, so run the same command again (with or without --resume true) to start"]
    earlier = out / "checkpoints" / "warmup" / "checkpoint_epoch=3.pt"  # GViT's layout, an earlier run's
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"x")
    assert line(True) == [INTERRUPTED]
    assert line(False)[0].startswith(f"interrupted before this run saved a checkpoint: the earlier run's checkpoints in {out}")
    assert line(False, str(out / "checkpoint_epoch=1.pt")) == [INTERRUPTED]  # one saved by this run
    assert line(False, str(earlier)) == [INTERRUPTED]  # rewritten by this run (the same name, the same second)
    closing = line(False, str(out / "checkpoint_final.pt"))[0]
    assert closing.startswith("interrupted after the run ended (checkpoint_final.pt") and "nothing left to do" in closing


def test_sigterm_stops_a_bundle_as_ctrl_c_does_and_ends_by_sigterm():
    """SIGTERM (a batch system's time limit) killed a training run at once, its log ending mid-epoch with no word:
    it now stops as Ctrl-C does (a ``KeyboardInterrupt``, which the checkpoint handler saves on, wrapped by MONAI
    here), the last line says how to resume, and the process ends by SIGTERM (143 in a shell)."""
    import signal

    from medgmae.bundle_errors import INTERRUPTED, INTERRUPTED_NO_RESUME

    body = ("import os, signal, time\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "except KeyboardInterrupt as e:\n"
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(body, resumable=True, runner=True)
    assert lines == ["terminated (SIGTERM)" + INTERRUPTED[len("interrupted"):]], proc.stderr
    assert proc.returncode == -signal.SIGTERM
    proc, lines = _under_the_hook(body, runner=True)
    assert lines == ["terminated (SIGTERM)" + INTERRUPTED_NO_RESUME[len("interrupted"):]] and proc.returncode == -signal.SIGTERM
    proc, lines = _under_the_hook(body, resumable=True, rank=1, runner=True)  # under torchrun: rank 0 alone says it
    assert lines == [] and proc.returncode == -signal.SIGTERM
    # a handler the program set itself is kept; a bundle run in-process (a notebook, pytest) leaves SIGTERM alone
    proc, lines = _under_the_hook("import os, signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
                                  "summarise_errors()\nos.kill(os.getpid(), signal.SIGTERM)\n", runner=True)  # fmt: skip
    assert proc.returncode == 7 and lines == []
    proc, lines = _under_the_hook("import signal\nassert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n")
    assert proc.returncode == 0, proc.stderr
    # a second SIGTERM within the grace period (srun and torchrun both signal) lets the stop finish; a later one, the
    # stop swallowed or stuck, ends the process at once
    twice = ("import os, signal, sys, time\n"
             "import medgmae.bundle_errors as errors\n"
             "errors.SIGTERM_GRACE_SECONDS = float(sys.argv[1])\n"
             "try:\n"
             "    os.kill(os.getpid(), signal.SIGTERM)\n"
             "    time.sleep(30)\n"
             "except KeyboardInterrupt as e:\n"
             "    os.kill(os.getpid(), signal.SIGTERM)\n"
             "    time.sleep(0.5)\n"
             "    print('still running', flush=True)\n"
             "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    for grace, survives in (("10", True), ("0", False)):
        proc, lines = _under_the_hook(twice.replace("sys.argv[1]", grace), resumable=True, runner=True)
        assert proc.returncode == -signal.SIGTERM and ("still running" in proc.stdout) is survives, (grace, proc.stdout)
        assert lines == (["terminated (SIGTERM)" + INTERRUPTED[len("interrupted"):]] if survives else []), lines


def test_an_interrupt_without_an_epoch_checkpoint_ends_with_its_handlers_advice():
    """The checkpoint handler sets ``resume_advice`` on the interrupt when there is no epoch checkpoint to continue
    from: that line replaces "continue from the newest checkpoint_epoch=N.pt"."""
    body = ("e = KeyboardInterrupt()\n"
            "e.resume_advice = 'interrupted before the first epoch finished: there is no checkpoint_epoch=N.pt'\n"
            "try:\n"
            "    raise e\n"
            "except KeyboardInterrupt as k:\n"
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from k\n")  # fmt: skip
    _, lines = _under_the_hook(body, resumable=True)
    assert lines == ["interrupted before the first epoch finished: there is no checkpoint_epoch=N.pt"]


def test_under_torchrun_only_rank_0_prints_the_traceback_and_the_ctrl_c_line():
    """Every rank printed the Ctrl-C line, and a refusal's ~40-line traceback once per rank, burying the reason:
    a rank other than 0 (torchrun's RANK) prints one line naming the reason and nothing after Ctrl-C."""
    wrapped = ("try:\n"
               "    raise ValueError('checkpoint_epoch=2.pt was written by another kind of run\\nsecond line')\n"
               "except ValueError as e:\n"
               "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(wrapped, rank=1)
    assert lines == ["rank 1 stopped: ValueError: checkpoint_epoch=2.pt was written by another kind of run second line; see rank 0"]
    assert proc.returncode == 1
    _, lines = _under_the_hook(wrapped, rank=0)
    assert "Traceback (most recent call last):" in lines and lines[-1] == "second line"
    proc, lines = _under_the_hook("raise KeyboardInterrupt\n", resumable=True, rank=1)
    assert lines == [] and proc.returncode != 0
    _, lines = _under_the_hook("raise KeyboardInterrupt\n", resumable=True, rank=0)
    assert lines[-1].startswith("interrupted: run the same command with --resume true")


def test_unknown_keys_of_a_bundle_command_line(tmp_path, monkeypatch):
    """A misspelled key was added by MONAI as a new, unread setting: the run went on with the default."""
    from medgmae.bundle_checks import unknown_key_problems

    config = tmp_path / "train.json"
    config.write_text('{"max_epochs": 2, "batch_size": 1, "train": {"handlers": []}}')
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    argv = [runner, "run", "training", "--config_file", str(config), "--logging_file", "l.conf", "--max_epoch", "5",
            "--batch-size=2", "--train#handlers", "[]", "--nonsense"]  # fmt: skip
    assert unknown_key_problems(argv) == [
        "--max_epoch: not a setting of train.json (did you mean --max_epochs?)",
        "--nonsense: not a setting of train.json",
    ]
    # nested overrides, part by part: an argument the _target_ takes passes (listed or not), one it does not take, or
    # a key of a plain mapping, does not; a component taking **kwargs, or one that cannot be found, takes anything;
    # parts past a list or a reference are MONAI's to check; keys a later config file adds count (MONAI's merge)
    config.write_text('{"net": {"_target_": "torch.nn.Linear", "in_features": 8, "out_features": 1}, "opts": {"lr": 1},'
                      ' "kw": {"_target_": "medgmae.mae_training.build_model", "num_gaussians": 8},'
                      ' "odd": {"_target_": "x.Net"}, "broken": {"_target_": "broken_module_for_test.Net"},'
                      ' "train": {"handlers": [{"a": 1}]}, "model": "@net"}')  # fmt: skip
    (tmp_path / "broken_module_for_test.py").write_text("raise ImportError('an optional dependency is missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a component whose module fails to import: MONAI reports it
    extra = tmp_path / "extra.json"
    extra.write_text('{"net#note": null}')
    argv = [runner, "run", "--config_file", f"['{config}','{extra}']", "--net#in_featurs", "4", "--net#bias", "false",
            "--net#dropout", "0.1", "--opts#momentum", "0.9", "--train#handlers#0#b", "2", "--model#x", "1",
            "--kw#anything", "1", "--kw#num_gausians", "4", "--odd#whatever", "1", "--broken#whatever", "1",
            "--net#note", "x", "--net#out_features", "2"]  # fmt: skip
    assert unknown_key_problems(argv) == [
        "--net#in_featurs: 'in_featurs' is not a key of net (did you mean net#in_features?)",
        "--net#dropout: 'dropout' is not a key of net",
        "--opts#momentum: 'momentum' is not a key of opts",
        "--kw#num_gausians: 'num_gausians' is not a key of kw (did you mean kw#num_gaussians?)",  # **kwargs: a typo
    ]
    config.write_text('{"max_epochs": 2, "batch_size": 1, "train": {"handlers": []}}')
    listed = f"['{config}','{config}']"
    assert unknown_key_problems([runner, "run", "--config_file", listed, "--batch_size", "4"]) == []
    assert unknown_key_problems(["/usr/bin/pytest", "--max_epoch", "5"]) == []  # not the bundle runner: no opinion
    # other tools' names, too far from ours for a spelling match; an alias of a key the bundle lacks gets no hint
    config.write_text('{"learning_rate": 1e-4, "max_epochs": 2, "output_dir": "runs"}')
    assert unknown_key_problems([runner, "run", "--config_file", str(config), "--lr", "1e-3", "--epochs", "3", "--bs", "2"]) == [
        "--lr: not a setting of train.json (did you mean --learning_rate?)",
        "--epochs: not a setting of train.json (did you mean --max_epochs?)",
        "--bs: not a setting of train.json",
    ]
    # the phantom count is num_phantoms in three bundles, phantom_cases in fine-tuning: each is pointed to the other
    config.write_text('{"phantom_cases": 4, "phantom_shape": [64, 64, 64]}')
    assert unknown_key_problems([runner, "run", "--config_file", str(config), "--num_phantoms", "2"]) == [
        "--num_phantoms: not a setting of train.json (did you mean --phantom_cases?)"]


def test_a_misspelled_key_stops_the_bundle_first(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "gmae2d_pretrain/configs/train.json", "--output_dir", str(out), "--max_epoch", "5")
    error = _the_error(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and "--max_epoch: not a setting of train.json (did you mean --max_epochs?)" in error
    assert not out.exists()


def test_a_yaml_args_file_is_read(tmp_path):
    """MONAI reads ``--args_file overrides.yaml`` with PyYAML, a dependency of the toolkit: its values reach the
    settings check (a bad one is refused as from the command line, nothing written)."""
    args = tmp_path / "overrides.yaml"
    args.write_text(f"output_dir: {tmp_path / 'run'}\nmax_epochs: -3\n")
    proc = run_bundle("training", "gmae2d_pretrain/configs/train.json", "--args_file", str(args))
    assert proc.returncode != 0 and "--max_epochs: expected a positive integer, got '-3'" in proc.stdout + proc.stderr
    assert "No module named 'yaml'" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_config_started_the_wrong_way_is_refused(monkeypatch):
    """A one-process config under torchrun (each process would run the whole job and remove the others' outputs
    as an earlier run's) and a multi-process config without torchrun (no process group to join) are settings
    problems, named with the config to add or the launcher to use."""
    from medgmae.bundle_checks import process_problems

    for var in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert process_problems(False) == [] and check_settings({}) is True
    assert "is started by torchrun" in process_problems(True)[0]
    monkeypatch.setenv("WORLD_SIZE", "2")  # exported by a job environment, one process started: not refused
    assert process_problems(False) == []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert process_problems(False) == [] and process_problems(True) == []  # torchrun --nproc_per_node 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_problems(True) == []
    with pytest.raises(BundleSettingError) as e:
        check_settings({}, multi_gpu_config="bundles/x/configs/multi_gpu_train.json")
    assert "torchrun runs 2 processes (WORLD_SIZE=2) but this config runs in one" in str(e.value)
    assert f"list {REPO}/bundles/x/configs/multi_gpu_train.json after {REPO}/bundles/x/configs/train.json" in str(e.value)
    assert "without torchrun" in process_problems(False)[0]


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_the_multi_gpu_config_suggested_under_torchrun_is_the_given_configs_sibling(tmp_path, monkeypatch, bundle):
    """A one-process config started by torchrun from another folder is refused naming its multi-process sibling by
    a path that works from that folder (the one given, relative or absolute), in a command that can be pasted."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for var, value in (("TORCHELASTIC_RUN_ID", "none"), ("WORLD_SIZE", "2"), ("RANK", "0")):
        monkeypatch.setenv(var, value)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    configs = BUNDLES / bundle / "configs"
    for given in (os.path.relpath(configs / "train.json"), str(configs / "train.json")):
        multi = str(Path(given).parent / "multi_gpu_train.json")
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", given])
        with pytest.raises(BundleSettingError) as e:
            check_settings({}, multi_gpu_config=f"bundles/{bundle}/configs/multi_gpu_train.json")
        assert f"list {multi} after {given} in --config_file" in str(e.value), str(e.value)
        assert f"""--config_file "['{given}','{multi}']\"""" in str(e.value) and Path(multi).is_file()


def test_the_multi_gpu_config_named_first_is_refused_with_the_command_listing_it_after_train(tmp_path, monkeypatch):
    """Its ``initialize`` starts with :func:`check_base_config`: given alone or first, the config is refused in one
    line naming it and the command that lists it after its train.json; after train.json it passes."""
    from medgmae.bundle_checks import check_base_config

    monkeypatch.chdir(tmp_path)
    for var in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    configs = Path(os.path.relpath(BUNDLES / "unetr_finetune" / "configs"))
    one, multi = str(configs / "train.json"), str(configs / "multi_gpu_train.json")
    for files in (multi, f"['{multi}','{one}']"):
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", files])
        with pytest.raises(BundleSettingError) as e:
            check_base_config("train.json", "multi_gpu_train.json")
        assert len(str(e.value).splitlines()) == 1
        assert f"--config_file: {multi} adds multi-GPU training to train.json and does not run alone" in str(e.value)
        assert f"""--config_file "['{one}','{multi}']" ...`; nothing was written""" in str(e.value)
    monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", f"['{one}','{multi}']"])
    assert check_base_config("train.json", "multi_gpu_train.json") is True
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])  # not the bundle runner: nothing to check
    assert check_base_config() is True


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_a_multi_gpu_config_given_alone_under_torchrun_says_to_list_it_after_train(tmp_path, bundle):
    """``--config_file multi_gpu_train.json`` alone failed in MONAI's merge of its ``train#sampler`` key (a
    KeyError traceback on each rank): both ranks now stop on the one-line refusal, non-zero, nothing written."""
    out = tmp_path / "run"
    multi = BUNDLES / bundle / "configs" / "multi_gpu_train.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", str(multi), "--output_dir", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    line = (f"error: BundleSettingError: --config_file: {multi} adds multi-GPU training to train.json and does not "
            f"run alone: list it after {multi.with_name('train.json')} in --config_file, `torchrun --standalone "
            f"--nproc_per_node 2 -m monai.bundle run training --config_file \"['{multi.with_name('train.json')}',"
            f"'{multi}']\" ...`; nothing was written")  # fmt: skip
    assert line in proc.stderr.splitlines(), proc.stderr[-3000:]
    assert "rank 1 stopped: BundleSettingError: --config_file:" in proc.stderr
    assert "KeyError" not in proc.stderr and not out.exists()


def test_torchrun_of_a_one_process_bundle_writes_nothing(tmp_path):
    """Two processes started by torchrun on a bundle without multi-process training (2D GMAE) both stop at the
    settings check, with a non-zero exit, before either makes its output folder."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", str(BUNDLES / "gmae2d_pretrain" / "configs" / "train.json"),
           "--output_dir", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0
    assert "torchrun runs 2 processes (WORLD_SIZE=2) but this config runs in one" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


def test_a_bad_key_is_named_once_not_again_for_the_defaults_copying_it(tmp_path, monkeypatch):
    """``precheck_workers`` defaults to ``@num_workers`` and ``lr_schedule_epochs`` to ``@max_epochs``: a bad
    ``--num_workers -1`` is that key's problem alone; a key the command line sets itself is still named."""
    config = tmp_path / "train.json"
    config.write_text('{"num_workers": 0, "precheck_workers": "@num_workers", "max_epochs": 2, '
                      '"lr_schedule_epochs": "@max_epochs", "batch_size": 1}')
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    settings = {"num_workers": (-1, "nonneg_int"), "precheck_workers": (-1, "nonneg_int"),
                "max_epochs": (1.5, "positive_int"), "lr_schedule_epochs": (1.5, "positive_int")}

    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)

    def named(*flags: str) -> list[str]:
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", str(config), *flags])
        with pytest.raises(BundleSettingError) as e:
            check_settings(settings)
        return [line.split(":")[0].strip() for line in str(e.value).splitlines()[1:]]

    assert named("--num_workers", "-1", "--max_epochs", "1.5") == ["--num_workers", "--max_epochs"]
    assert named("--num_workers", "-1", "--precheck_workers", "-1", "--max_epochs", "1.5") == [
        "--num_workers", "--precheck_workers", "--max_epochs"]
    args = tmp_path / "args.json"  # MONAI's --args_file: its keys are set as the command line's are
    args.write_text('{"num_workers": -1, "precheck_workers": -1}')
    assert named("--args_file", str(args), "--max_epochs", "1.5") == ["--num_workers", "--precheck_workers", "--max_epochs"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])  # not the bundle runner: every bad key named
    with pytest.raises(BundleSettingError) as e:
        check_settings(settings)
    assert len(str(e.value).splitlines()) == 5


def test_phantom_settings_given_with_a_dataset_are_warned_about(tmp_path, monkeypatch, caplog):
    """``--num_phantoms 4`` beside ``--dataset_dir`` shapes nothing (the run reads the user's data): MONAI takes it
    silently, the settings check names it; one not given, or given for a phantom run, is not mentioned."""
    config = tmp_path / "train.json"
    config.write_text('{"num_phantoms": 8, "phantom_shape": null, "dataset_dir": ""}')
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", str(config), "--dataset_dir", "/d",
                                      "--num_phantoms", "4", "--phantom_shape", "[32,32,32]"])  # fmt: skip
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with caplog.at_level("WARNING", logger="medgmae"):
        assert check_settings({}, unused_phantom_keys=["num_phantoms", "phantom_shape", "phantom_spacing"]) is True
        assert check_settings({}, unused_phantom_keys=[]) is True
    said = [r.getMessage() for r in caplog.records]
    assert said == ["--num_phantoms, --phantom_shape: these shape the generated phantom data, which this run does not "
                    "use (it reads the data given): ignored"], said


@pytest.mark.parametrize("config_name", ["train.json", "multi_gpu_train.json"])
def test_gaussian_settings_of_a_voxel_mae_run_are_warned_about(tmp_path, monkeypatch, caplog, config_name):
    """``--model_kind voxel-mae --num_gaussians 64`` trained a voxel-MAE without a word about the Gaussians it does
    not have: the pre-training bundle's settings check (its own expression, evaluated by MONAI) names them."""
    from monai.bundle import ConfigParser

    base = Path(__file__).resolve().parents[1] / "bundles" / "medgmae_pretrain" / "configs"
    files = [str(base / "train.json")] + ([str(base / config_name)] if config_name != "train.json" else [])
    parser = ConfigParser()
    parser.read_config(files)
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    if config_name != "train.json":
        monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "1")
    step = next(i for i, e in enumerate(parser["initialize"]) if "check_settings(" in e)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    expected_voxel = ["--num_gaussians: a voxel-mae model has no Gaussians: ignored",
                      "--network_def#scale_cap: a voxel-mae model has no Gaussians: ignored"]  # a component's argument too
    for kind, expected in (("voxel-mae", expected_voxel), ("medgmae", [])):
        parser["model_kind"], parser["num_gaussians"], parser["output_dir"] = kind, 64, str(tmp_path / "run")
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", str(files), "--model_kind", kind,
                                          "--num_gaussians", "64", "--network_def#scale_cap", "0.3"])  # fmt: skip
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae"):
            assert parser.get_parsed_content(f"initialize#{step}", lazy=False) is True
        assert [r.getMessage() for r in caplog.records] == expected
    assert not (tmp_path / "run").exists()


def test_an_output_folder_with_an_unexpanded_tilde_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """``--output_dir "~/run"`` (quoted), ``--output_dir=~/run`` or an args file's ``~/run`` reach the bundle as
    written: its writers made a folder called ``~`` under the current one while nibabel wrote into the home folder,
    and the run failed after its work. Such an output folder is named with its expansion; inputs are expanded where
    they are read (``read_volume``, ``load_torch_file``, the datalist and 2D folder readers)."""
    from medgmae.files import load_torch_file

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleSettingError) as e:
        check_settings({}, output_dirs={"output_dir": "~/run", "eval_dir": str(tmp_path / "eval")})
    assert str(e.value).splitlines()[1:] == [
        f"  --output_dir '~/run': starts with '~', which was not expanded (quoted on the command line, or from an "
        f"args file): give the full path, {home / 'run'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, neither ./~ nor the home folder
    home.mkdir()
    torch.save({"x": torch.ones(2)}, home / "w.pt")
    assert torch.equal(load_torch_file("~/w.pt")["x"], torch.ones(2))
