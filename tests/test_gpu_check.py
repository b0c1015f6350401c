"""The GPU check (bench/gpu_check.py) in its dry run: every part runs on the CPU at tiny sizes and none fails.

The dry run goes through the same part functions, the pytest run, the table and the JSON as the GPU run; this keeps
the script from rotting between the rare occasions a GPU is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _module():
    return load_bench("gpu_check")


@pytest.mark.triton_interpreter  # the dry run renders with the Triton backend through the interpreter
def test_dry_run_reports_every_part(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, encoding="utf-8", errors="replace", timeout=900)  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8"))
    rows = data["rows"]
    mod = _module()
    assert {r["part"] for r in rows} == set(mod.PARTS)
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    assert not bad, bad
    # every measurement ran (the only skip is ASTRA's CUDA projector, absent on the CPU)
    assert [r["item"] for r in rows if r["status"] == "skipped"] == [
        next(r["item"] for r in rows if r["part"] == "recon" and r["item"].startswith("astra"))
    ]
    # the README's main job, run and resumed (the dry run's CPU stands in for CUDA)
    bundle = [r["item"] for r in rows if r["part"] == "bundle"]
    assert len(bundle) == 2 and bundle[1].endswith("epoch 2, resumed"), bundle
    render = [r for r in rows if r["part"] == "render" and not r["item"].startswith("launch")]
    assert len(render) == 2 and all("(part)" != r["item"] for r in rows)
    # the triton backend agrees with the torch one even through the interpreter
    for r in render:
        assert r["fwd_rel_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-3
    # the launch-shape sweep ran: the chosen shapes and one other, the same volume and gradients
    launch = [r for r in rows if r["item"].startswith("launch fwd")]
    assert len(launch) == 2 and launch[0]["launch_row"]["fwd+bwd / chosen"] == 1.0
    table = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert "| part | item | status | result |" in table and data["info"]["dry_run"] is True
    assert all(f"| {p} |" in table for p in mod.PARTS)
    assert table.strip() in res.stdout


def test_part_over_its_budget_is_reported_not_fatal(tmp_path, monkeypatch):
    """A part whose process outlives its budget is killed and reported as a failed row."""
    mod = _module()
    # the part's process is a stand-in that sleeps 30 s: killed after 0.1 s, it can never finish first (a real dry-run
    # part with a spent budget skips its items and sometimes exited within 0.1 s)
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(mod.sys, "executable", str(sleeper))
    rows = mod.run_part("render", budget=-19.9, dry=True, work=tmp_path)
    assert rows[-1]["status"] == "failed" and "killed at its time budget" in rows[-1]["result"]


def test_gpu_test_files_find_the_gpu_tests():
    mod = _module()
    files = mod.gpu_test_files()
    assert "tests/test_render_triton.py" in files and "tests/test_gpu_check.py" not in files
    assert mod.gpu_test_files("gsplat") and set(mod.gpu_test_files("gsplat")) <= set(files)


def test_without_a_gpu_it_stops_at_once_unless_a_dry_run():
    """On a machine without CUDA the real check would run every part only to fail each: it stops up front, exit 2."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", "/nonexistent/never"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and "--dry-run" in proc.stderr, proc.stderr
    assert not Path("/nonexistent/never").exists()
