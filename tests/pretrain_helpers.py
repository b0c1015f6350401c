"""Running the medgmae_pretrain bundle in tests: its configs, small settings, environment and checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "medgmae_pretrain" / "configs"
TRAIN = str(CONFIGS / "train.json")
MULTI = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
SMALL = [
    "--roi_size", "32", "--patch_size", "8", "--num_gaussians", "8", "--num_phantoms", "2",
    "--phantom_shape", "[48,48,40]", "--phantom_spacing", "3.0", "--pixdim", "3.0", "--num_samples", "1",
    "--batch_size", "1", "--lr_schedule_epochs", "3", "--device", "cpu",
]  # fmt: skip


def bundle_env(threads: int | None = None) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # the bundles run from temporary folders: this checkout's package first on the path (not another installed copy)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if threads is not None or os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = str(threads or 1)
    return env


def bundle_process(*args: str, cwd: Path, threads: int | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", *args]
    return subprocess.run(cmd, cwd=cwd, env=bundle_env(threads), capture_output=True, encoding="utf-8", errors="replace", timeout=300)


def succeeded(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # every file the bundle writes is plain data


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]
