"""Running the medgmae_pretrain bundle in tests: its configs, small settings, environment and checkpoints."""

from __future__ import annotations

import math
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
    "--batch_size", "1", "--lr_schedule_epochs", "3", "--warmup_steps", "3", "--device", "cpu",
]  # fmt: skip
#: the learning rate of each of the 4 steps of a 2-epoch SMALL run and the one its optimiser holds after them: 2
#: volumes make 2 steps per epoch, so a plan of 6 steps (--lr_schedule_epochs 3); a linear warm-up from 0 over 3 steps,
#: then the cosine over the other 3. A run stopped after epoch 1 (step 2) stops inside the warm-up and its resume
#: crosses into the cosine. Step i uses the factor of its i - 1 finished steps.
SMALL_RATES = [1.5e-4 * f for f in (0.0, 1 / 3, 2 / 3, 1.0, 0.5 * (1.0 + math.cos(math.pi * (4 - 3) / (6 - 3))))]


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


def two_nodes(bundle_args: list[str], cwd: Path, tries: int = 3) -> list[str]:
    """Run ``python -m monai.bundle *bundle_args`` as two torchrun nodes of one process each on localhost and
    return their logs (both must succeed). The port is free when chosen, but node 0 binds it only once torch has
    started, seconds later: another test's process may take it in between, so a launch refused for a port in use
    is tried again on another."""
    for attempt in range(tries):
        port = free_port()
        nodes = [
            subprocess.Popen(
                torchrun_command("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr",
                                 "127.0.0.1", "--master_port", str(port), "-m", "monai.bundle", *bundle_args),
                cwd=cwd, env=bundle_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                errors="replace",
            )  # fmt: skip
            for rank in (0, 1)
        ]
        try:
            logs = [p.communicate(timeout=300)[0] for p in nodes]
        finally:
            for p in nodes:
                p.kill()
        taken = any("address already in use" in log.lower() or "eaddrinuse" in log.lower() for log in logs)
        if all(p.returncode == 0 for p in nodes) or not taken or attempt == tries - 1:
            break
    assert all(p.returncode == 0 for p in nodes), "\n".join(log[-3000:] for log in logs)
    return logs


def torchrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def pretraining_runs(root: Path) -> dict:
    """In ``root``: one short run generating phantoms (then resumed to 2 epochs) and an uninterrupted 2-epoch run on
    the same phantoms; what the first run wrote (its encoder, model and scheduler state), before its resume, and the
    resume's log (conftest.py's
    ``pretrain_runs`` runs it once for the modules that read these runs)."""
    resumed, straight = root / "resumed", root / "straight"
    first = succeeded(bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--output_dir", str(resumed), "--max_epochs", "1", cwd=root))
    after_first = {
        "epoch_ckpt": sorted(p.name for p in resumed.glob("checkpoint_epoch=*.pt")),
        "encoder": read_checkpoint(resumed / "encoder.pt"),
        "model": read_checkpoint(resumed / "model.pt"),
        "scheduler": read_checkpoint(resumed / "checkpoint_epoch=1.pt")["objects"]["lr_scheduler"],
        "log": first.stdout + first.stderr,
    }
    dataset = resumed / "phantom" / "dataset.json"
    second = succeeded(
        bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--output_dir", str(resumed), "--max_epochs", "2",
                "--resume", "true", cwd=root)
    )  # fmt: skip
    # the default run id ("run") of the same config, from the same phantom data, without interruption (with the
    # loader workers of the phantom run: the default for a given dataset_dir is 4)
    succeeded(bundle_process("run", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(dataset), "--output_dir", str(straight),
                "--max_epochs", "2", "--num_workers", "0", cwd=root))  # fmt: skip
    return {"root": root, "resumed": resumed, "straight": straight, "dataset": dataset, "first": after_first,
            "resume_log": second.stdout + second.stderr}  # fmt: skip
