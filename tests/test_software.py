"""The software record every results file carries (``medgmae.software``)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medgmae import software

ROOT = Path(__file__).resolve().parents[1]


def test_the_record_names_the_versions_the_libraries_report():
    """The versions are those the imported libraries give themselves (not only their metadata's), JSON-ready."""
    record = json.loads(json.dumps(software.software_versions("cpu")))
    packages = record["packages"]
    assert packages["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert packages["numpy"] == np.__version__
    assert record["python"] == platform.python_version()
    assert record["torch_cuda"] == torch.version.cuda
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert software.software_versions("cpu")["torch_threads"] == threads + 1  # read at each call, not cached
    finally:
        torch.set_num_threads(threads)
    assert "gpu" not in record  # a CPU run names no GPU


def test_a_cuda_device_adds_the_gpu(monkeypatch):
    """A CUDA run's record names its GPU and compute capability (torch's answers, mocked on a CPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    assert software.software_versions("cuda:1")["gpu"] == {"name": "GPU 1", "capability": "9.0"}
    assert "gpu" not in software.software_versions(None)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_a_checkout_records_its_commit(tmp_path, monkeypatch):
    """Run from a git checkout, the record names the checkout's commit (``+dirty`` when tracked files differ), also
    where the environment names another repository (``GIT_DIR``, as a caller's hook or script may set)."""
    head = subprocess.run(["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True)  # fmt: skip
    if head.returncode != 0:
        pytest.skip("git cannot read the checkout")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    software.checkout_commit.cache_clear()
    try:
        commit = software.software_versions()["commit"]
    finally:
        software.checkout_commit.cache_clear()
    assert commit.removesuffix("+dirty") == head.stdout.strip()
