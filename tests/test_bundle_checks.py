"""Bundles check their settings and output folders first, naming the key, and write nothing when one is bad."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medgmae.bundle_checks import BundleSettingError, check_output_dirs, check_settings

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


def test_check_output_dirs(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert check_output_dirs(output_dir=tmp_path / "new" / "run", seg_dir=tmp_path) is True
    with pytest.raises(BundleSettingError, match=r"--output_dir .*afile is an existing file, not a folder"):
        check_output_dirs(output_dir=afile)
    with pytest.raises(BundleSettingError, match=r"--seg_dir .*afile \(above .*\) is an existing file, not a folder"):
        check_output_dirs(seg_dir=afile / "sub")
    assert not (tmp_path / "new").exists()  # nothing created


def run_bundle(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(BUNDLES / config), *overrides]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)


def test_pretraining_bad_flags_fail_first_and_write_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(out), "--max_epochs", "-3",
                      "--num_gaussians", "abc", "--model_kind", "foo", "--mask_ratio", "1.0")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in ("--max_epochs: expected a positive integer, got '-3'", "--num_gaussians: expected a positive integer, "
                 "got 'abc'", "--model_kind: expected one of", "--mask_ratio: expected a number in [0, 1)"):
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
    out = tmp_path / "ft"
    proc = run_bundle("training", "unetr_finetune/configs/train.json", "--output_dir", str(out), "--label_fraction", "2")
    assert proc.returncode != 0 and "--label_fraction: expected a number in (0, 1], got '2'" in proc.stdout + proc.stderr
    assert not out.exists()
