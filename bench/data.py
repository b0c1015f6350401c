"""Loader throughput of the pre-training bundle, per worker, beside what a base-model step consumes on one GPU.

The pipeline timed is the bundle's own (``bundles/medgmae_pretrain/configs/train.json`` parsed with MONAI's
``ConfigParser``): the pre-check, then the dataset the trainer iterates (disk cache keyed by the pre-processing,
random crops after it). Items are drawn in this process, i.e. as one loader worker draws them:

* epoch 1 from the raw files (decode, orient, resample, window, foreground crop, cache write, random crops);
* epochs 2.. from the disk cache (load the cached array, random crops), each timed four ways side by side: the
  cache files read memory-mapped (as the bundle reads them) and read whole (as before), each with the files in the
  page cache ("warm") and evicted from it before the epoch ("cold": ``posix_fadvise(DONTNEED)``, as a cache on a
  shared or spinning disk larger than RAM reads); and the warm memory-mapped read once more through the bundle's
  per-item seeding (``SeededItems``: a generator seeded for each item), to show what that costs.

The GPU side is an ESTIMATE (no GPU measurement of the pre-training step exists yet): the floating-point work and
the number of kernels of one base-model training step (forward + backward + AdamW) are counted on the CPU with
``torch.utils.flop_counter.FlopCounterMode`` and a dispatch counter, and turned into a step time on an H100 as
``max(FLOPs / (efficiency * peak), kernels * launch_cost)``; the assumptions are printed with the result.

Usage::

    python bench/data.py                                   # 6 CT-sized phantoms (512x512x160 at 0.75x0.75x2.5 mm)
    python bench/data.py --num 4 --shape 256 256 96 --out bench/results_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H100_BF16_PEAK = 989e12  # FLOP/s, dense bf16, H100 SXM datasheet
EFFICIENCY = 0.4  # sustained fraction of peak assumed for a ViT training step
LAUNCH_COST = 5e-6  # s per kernel launch (CUDA launch + framework overhead), assumed


def loader_throughput(folder: Path, work: Path, epochs: int, pixdim: float) -> dict:
    """Volumes per second of the bundle's dataset drawn in one process, epoch by epoch."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "medgmae_pretrain" / "configs" / "train.json"))
    parser.update({"dataset_dir": str(folder), "output_dir": str(work), "num_workers": 0, "pixdim": pixdim,
                   "device": "cpu"})  # fmt: skip
    from medgmae.engine.seeded_loader import SeededItems
    from medgmae.mae_training import check_pretrain_split

    items = parser.get_parsed_content("train_cases")
    t0 = time.perf_counter()
    split = check_pretrain_split(parser.get_parsed_content("split"), 0, None)  # the bundle's pre-check, no ledger
    precheck_s = time.perf_counter() - t0
    checked = len(split["training"]) + len(split["validation"])  # the validation volumes are checked too
    dataset = parser.get_parsed_content("train#dataset")
    out = {"num_volumes": len(items), "precheck_s_per_volume": precheck_s / checked, "epochs": []}
    cached: list[Path] = []
    for epoch in range(1, epochs + 1):
        modes = [("raw files", True, False, False)] if epoch == 1 else [
            (f"disk cache, {'mmap' if m else 'whole read'}, {'cold' if c else 'warm'}", m, c, False)
            for c in (False, True) for m in (True, False)] + [("disk cache, mmap, warm, item seeds", True, False, True)]
        for source, mmap, cold, seeded in modes:
            dataset.mmap = mmap
            if cold:
                _evict(cached)
            items_of = SeededItems(dataset) if seeded else dataset  # the bundle's loader re-seeds each item
            if seeded:
                items_of.epoch_seed = epoch
            t0 = time.perf_counter()
            for i in range(len(dataset)):
                items_of[i]
            dt = time.perf_counter() - t0
            out["epochs"].append({"epoch": epoch, "source": source, "s_per_volume": dt / len(items),
                                  "volumes_per_s": len(items) / dt})  # fmt: skip
            print(f"epoch {epoch} ({source}): {len(items) / dt:.2f} volumes/s per worker", flush=True)
        cached = [p for p in (work / "cache").rglob("*.pt")]
    out["cache_mb_per_volume"] = sum(p.stat().st_size for p in cached) / max(1, len(cached)) / 2**20
    return out


def _evict(files: list[Path]) -> None:
    """Drop ``files`` from the page cache (written back first), so that the next read comes from the disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class _KernelCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def gpu_step_estimate(model_size: str, num_gaussians: int, roi: int, patch: int, crops: int, volumes: int) -> dict:
    """Estimated seconds per training step on one H100 and the volumes/s it consumes (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    from medgmae.mae_training import build_model

    torch.manual_seed(0)
    model = build_model("medgmae", model_size, img_size=roi, patch_size=patch, num_gaussians=num_gaussians)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(1, 1, roi, roi, roi)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).loss.backward()
        opt.step()

    step()  # allocate the optimiser state
    flops = FlopCounterMode(display=False)
    with flops:
        step()
    kernels = _KernelCounter()
    with kernels:
        step()
    flop = flops.get_total_flops() * crops  # matmul work scales with the crops per step
    t_compute = flop / (EFFICIENCY * H100_BF16_PEAK)
    t_launch = kernels.count * LAUNCH_COST  # the kernel count does not grow with the batch
    t_step = max(t_compute, t_launch)
    return {"model_size": model_size, "num_gaussians": num_gaussians, "roi": roi, "crops_per_step": crops,
            "volumes_per_step": volumes, "gflop_per_step": flop / 1e9, "kernels_per_step": kernels.count,
            "t_compute_s": t_compute, "t_launch_s": t_launch, "t_step_s": t_step, "volumes_per_s": volumes / t_step,
            "assumptions": f"H100 SXM bf16 peak {H100_BF16_PEAK / 1e12:.0f} TFLOP/s at {EFFICIENCY:.0%} efficiency, "
                           f"{LAUNCH_COST * 1e6:.0f} us per kernel launch"}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=6, help="volumes")
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160], help="raw volume shape (voxels)")
    p.add_argument("--spacing", type=float, nargs=3, default=[0.75, 0.75, 2.5], help="raw voxel size (mm)")
    p.add_argument("--pixdim", type=float, default=1.5, help="pre-training spacing (mm)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model-size", default="base")
    p.add_argument("--num-gaussians", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="volumes per GPU step (the estimate's batch)")
    p.add_argument("--num-samples", type=int, default=2, help="crops per volume")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = p.parse_args()

    from medgmae.data.phantom import write_phantom_dataset

    torch.set_num_threads(1)  # one worker: one thread
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        src = write_phantom_dataset(Path(tmp) / "raw", args.num, seed=0, shape=tuple(args.shape),
                                    spacing=tuple(args.spacing), num_validation=0)  # fmt: skip
        print(f"wrote {args.num} phantoms {args.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
        loader = loader_throughput(src, Path(tmp) / "run", args.epochs, args.pixdim)
        loader["raw_mb_per_volume"] = sum(f.stat().st_size for f in (src.parent / "imagesTr").iterdir()) / args.num / 2**20
    torch.set_num_threads(os.cpu_count() or 1)
    gpu = gpu_step_estimate(args.model_size, args.num_gaussians, 96, 12, args.batch_size * args.num_samples, args.batch_size)
    mapped = [e["volumes_per_s"] for e in loader["epochs"] if e["source"].startswith("disk cache, mmap")]
    cached_rate = min(mapped) if mapped else None
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}",
        "command": "python " + " ".join(sys.argv),
        "raw": {"shape": args.shape, "spacing": args.spacing}, "pixdim": args.pixdim,
        "loader_per_worker": loader, "gpu_step_ESTIMATE": gpu,
        "workers_per_gpu_ESTIMATE": {"from_disk_cache": None if not cached_rate else gpu["volumes_per_s"] / cached_rate,
                                     "from_raw_files": gpu["volumes_per_s"] / loader["epochs"][0]["volumes_per_s"]},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
