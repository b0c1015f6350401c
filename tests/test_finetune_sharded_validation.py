"""Fine-tuning under torchrun validates each case once: the validation cases are shared out among the processes,
and the report, the key metric and the best model hold all of them, as one process's run does."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import torch

from finetune_helpers import CONFIGS, REPO, make_case, run_bundle

SETTINGS = ["--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4", "--num_samples", "1",
            "--encoder", "{'patch_size': 12, 'hidden_size': 48, 'num_layers': 1, 'num_heads': 4, 'mlp_ratio': 2.0}",
            "--max_epochs", "1", "--learning_rate", "1e-12", "--num_workers", "0", "--progress_bar", "false"]  # fmt: skip


def _torchrun(*overrides: str) -> subprocess.CompletedProcess:
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", configs, "--logging_file", str(CONFIGS / "logging.conf"), *overrides]  # fmt: skip
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _report(out) -> tuple[list[list[str]], dict]:
    with open(out / "validation" / "per_case_dice.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    return rows, json.loads((out / "validation" / "metrics.json").read_text(encoding="utf-8"))


def _datalist(tmp_path, validation: int):
    """Two training cases and ``validation`` unlike ones (shapes and labelled boxes differ, so their Dice do)."""
    shapes = [(12, 12, 8), (14, 12, 8), (12, 14, 8), (16, 12, 8), (12, 12, 10), (14, 14, 8), (12, 16, 8)]
    cases = [make_case(tmp_path / "data", f"case{i}", shape=s, max_label=1 + i % 2) for i, s in enumerate(shapes)]
    dl = tmp_path / f"dl{validation}.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:2],
                              "validation": cases[2:2 + validation]}))  # fmt: skip
    return dl


def test_torchrun_validation_shares_out_the_cases_and_reports_every_one_in_order(tmp_path):
    """5 validation cases on 2 processes: rank 0 validates cases 0, 2, 4 and rank 1 cases 1, 3; the CSV lists all
    five in the datalist's order with the Dice one process gives them (the weights stay at their initial values:
    learning rate 1e-12), and metrics.json's mean is MONAI's all-gathered key metric, which best_model.pt records."""
    dl = _datalist(tmp_path, 5)
    run_bundle("training", "train.json", "--datalist", str(dl), "--output_dir", str(tmp_path / "one"), *SETTINGS)
    proc = _torchrun("--datalist", str(dl), "--output_dir", str(tmp_path / "two"), *SETTINGS)
    (one, one_metrics), (two, two_metrics) = _report(tmp_path / "one"), _report(tmp_path / "two")
    assert [r[0] for r in two] == [f"case{i}_img" for i in range(2, 7)] == [r[0] for r in one]
    dice = lambda rows: np.array([[float(x or "nan") for x in r[2:5]] for r in rows])  # noqa: E731
    assert np.allclose(dice(one), dice(two), atol=1e-5, equal_nan=True), (one, two)
    assert two_metrics["num_cases"] == 5 and abs(two_metrics["mean_dice"] - one_metrics["mean_dice"]) < 1e-5
    best = torch.load(tmp_path / "two" / "best_model.pt", weights_only=True)
    assert abs(best["extra"]["metric"] - two_metrics["mean_dice"]) < 1e-6
    log = proc.stdout + proc.stderr
    assert "validation: 3 cases in" in log and "(this process's share of 5 over 2 processes)" in log, log[-3000:]


def test_torchrun_with_fewer_validation_cases_than_processes_validates_them_on_every_process(tmp_path):
    """One validation case on 2 processes: a process without a case would never join the metric's all-gather (the
    other waiting for ever); both validate it, and the report holds it once."""
    dl = _datalist(tmp_path, 1)
    proc = _torchrun("--datalist", str(dl), "--output_dir", str(tmp_path / "two"), *SETTINGS)
    rows, metrics = _report(tmp_path / "two")
    assert [r[0] for r in rows] == ["case2_img"] and metrics["num_cases"] == 1
    assert "share of" not in proc.stdout + proc.stderr
