"""Pre-training on a dataset larger than the memory it may use: a few hundred generated volumes, a run under an
address-space limit that holding the pre-processed data in RAM would exceed, and a resumed run that continues from
the disk cache without decoding a single raw file (they are overwritten with zeros before it starts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundles" / "medgmae_pretrain" / "configs" / "train.json")
NUM, SIDE, SPACING = 300, 64, 2.0  # 300 float32 volumes of 64^3 voxels: 300 MiB pre-processed
HEADROOM = 160 * 2**20  # address space allowed beyond what the imports took

# Sets RLIMIT_AS to (address space after importing the training stack) + HEADROOM, shows that the whole
# pre-processed dataset could not be allocated under it, then runs the bundle in this process.
LAUNCHER = """
import resource, runpy, sys
import torch, monai, ignite, nibabel, SimpleITK, medgmae.mae_training, medgmae.data  # noqa: F401  (the heavy imports)
import torch._dynamo  # noqa: F401  (code, not data: some torch versions import it lazily when the optimiser is built)
vm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize")][0]
limit = vm + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    blob = bytearray(int(sys.argv[2]))
    print("CACHE FITS", flush=True)
    del blob
except MemoryError:
    print("CACHE DOES NOT FIT", flush=True)
sys.argv = ["monai.bundle"] + sys.argv[3:]
runpy.run_module("monai.bundle", run_name="__main__")
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "volumes"
    root.mkdir()
    rng = np.random.default_rng(0)
    base = rng.normal(40.0, 120.0, (SIDE, SIDE, SIDE)).astype(np.float32)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    for i in range(NUM):
        nib.save(nib.Nifti1Image(np.roll(base, i, axis=i % 3), affine), str(root / f"ct_{i:04d}.nii"))
    return root


def _run(folder: Path, out: Path, *extra: str) -> str:
    cached_bytes = NUM * SIDE**3 * 4
    cmd = [sys.executable, "-c", LAUNCHER, str(HEADROOM), str(cached_bytes), "run", "training", "--config_file", TRAIN,
           "--dataset_dir", str(folder), "--output_dir", str(out), "--device", "cpu", "--model_size", "tiny",
           "--roi_size", "16", "--patch_size", "8", "--num_gaussians", "8", "--num_samples", "1", "--batch_size", "20",
           "--pixdim", str(SPACING), "--num_workers", "2", "--lr_schedule_epochs", "2", "--val_fraction", "0", *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "CACHE DOES NOT FIT" in log  # keeping the pre-processed data in RAM was impossible
    return log


def test_larger_than_memory_dataset_trains_and_resumes_from_the_disk_cache(folder, tmp_path):
    out = tmp_path / "run"
    log = _run(folder, out, "--max_epochs", "1")
    assert f"reading {NUM} of {NUM} items" in log  # the pre-check read every file once
    ckpt = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["engine"] == {"epoch": 1, "iteration": NUM // 20, "max_epochs": 1}
    (cache,) = [p for p in (out / "cache").iterdir() if p.is_dir()]
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    assert len(files) == NUM

    # every raw volume becomes zeros (unreadable as NIfTI) with its size and time kept: any decode would fail
    for path in folder.iterdir():
        st = path.stat()
        path.write_bytes(bytes(st.st_size))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    log = _run(folder, out, "--max_epochs", "2", "--resume", "true")
    assert "resumed from" in log and f"reading 0 of {NUM} items" in log
    ckpt = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert ckpt["engine"] == {"epoch": 2, "iteration": 2 * (NUM // 20), "max_epochs": 2}
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == files  # read back, none rewritten
