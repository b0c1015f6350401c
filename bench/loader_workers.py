"""What keeping the training loader's workers between epochs saves: a bundle run with ``persistent_workers`` (the
bundles' setting since the training loader carries each epoch's seed with its indices) against the same run
starting its workers every epoch (the setting before), side by side.

Each pair runs the same bundle command twice in new processes, one after the other (kept, then started each epoch),
with ``--num_workers`` workers on the small phantoms, and records each run's wall seconds and the seconds from the
end of its first epoch to the end of its last (``epoch N/M`` lines of the log: the epochs whose workers a kept
loader does not start again). The weights of the two runs of a pair are compared bit for bit (the setting changes
no draw).

    python bench/loader_workers.py --out /tmp/lw/results.json              # torch's threads: the CPUs
    python bench/loader_workers.py --threads 1 --out /tmp/lw/results1.json  # OMP_NUM_THREADS=1
    python bench/loader_workers.py --bundle unetr_finetune --epochs 20 --pairs 3
    python bench/loader_workers.py --latency --cache-gb 0.1 4 --workers-list 2 4  # the start of an epoch alone

``--latency`` times, in this process, what an epoch's start costs: a ``SeededDataLoader`` over a MONAI
``CacheDataset`` holding ``--cache-gb`` of volumes in memory (the process forks with it), one random crop an item,
the seconds from ``iter(loader)`` to the first batch, kept workers and started ones epoch by epoch in turn.

Prints a markdown table (copy it into bench/RESULTS.md with the date, device and command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

#: small runs of each bundle on its own phantoms (the test suite's sizes): the loader's start is what is timed
SETTINGS = {
    "medgmae_pretrain": ["--roi_size", "32", "--patch_size", "8", "--num_gaussians", "8", "--num_phantoms", "2",
                         "--phantom_shape", "[48,48,40]", "--phantom_spacing", "3.0", "--pixdim", "3.0",
                         "--num_samples", "1", "--batch_size", "1", "--warmup_steps", "3"],
    "unetr_finetune": ["--roi_size", "[24, 24, 24]", "--feature_size", "4", "--num_samples", "2"],
}  # fmt: skip
WEIGHTS = {"medgmae_pretrain": "encoder.pt", "unetr_finetune": "checkpoint_final.pt"}
EPOCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* epoch (\d+)/(\d+): train_loss", re.M)


def _epoch_span(log: str) -> float:
    """Seconds from the end of the first epoch to the end of the last (the log's timestamps)."""
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in EPOCH_LINE.finditer(log)]
    if len(stamps) < 2:
        raise SystemExit(f"fewer than two epoch lines in the run's log:\n{log[-3000:]}")
    return (stamps[-1] - stamps[0]).total_seconds()


def one_run(bundle: str, out: Path, epochs: int, workers: int, keep: bool, threads: int | None) -> dict:
    """One bundle run in a new process; its wall seconds, its epochs' span and its weights file."""
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               str(REPO / "bundles" / bundle / "configs" / "train.json"), *SETTINGS[bundle], "--device", "cpu",
               "--progress_bar", "false", "--output_dir", str(out), "--max_epochs", str(epochs),
               "--num_workers", str(workers), "--train#dataloader#persistent_workers", str(keep).lower()]  # fmt: skip
    if bundle == "unetr_finetune":
        command += ["--val_interval", str(epochs)]  # one validation, at the end: the training loader is timed
    t0 = time.perf_counter()
    env = dict(os.environ) if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the run failed (rc {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "epochs_span_s": _epoch_span(done.stdout + done.stderr), "weights": out / WEIGHTS[bundle]}


def epoch_starts(cache_gb: float, workers: int, epochs: int) -> dict:
    """Median seconds from ``iter(loader)`` to the first batch, kept workers against started ones (alternating)."""
    import numpy as np
    from monai.data import CacheDataset
    from monai.transforms import RandSpatialCropd

    from medgmae.engine.seeded_loader import SeededDataLoader

    side, count = 128, max(workers * 2, 8)
    volumes = max(count, int(cache_gb * 1e9 // (side**3 * 4)))
    data = [{"image": np.full((1, side, side, side), i, dtype=np.float32)} for i in range(volumes)]
    dataset = CacheDataset(data, transform=RandSpatialCropd("image", (32, 32, 32), random_size=False), progress=False)
    loaders = {keep: SeededDataLoader(dataset, batch_size=2, shuffle=True, num_workers=workers, persistent_workers=keep)
               for keep in (True, False)}  # fmt: skip
    seconds: dict = {True: [], False: []}
    for _ in range(epochs):
        for keep, loader in loaders.items():
            t0 = time.perf_counter()
            batches = iter(loader)
            next(batches)
            seconds[keep].append(time.perf_counter() - t0)
            for _ in batches:  # the rest of the epoch, not timed
                pass
    del loaders, dataset, data
    first = {k: v[0] for k, v in seconds.items()}
    later = {k: statistics.median(v[1:]) for k, v in seconds.items()}
    return {"cache_gb": round(volumes * side**3 * 4 / 1e9, 2), "workers": workers, "epochs": epochs,
            "first_epoch_start_s": {"kept": first[True], "started": first[False]},
            "later_epoch_start_s_median": {"kept": later[True], "started": later[False]}}  # fmt: skip


def _latency_main(args: argparse.Namespace) -> dict:
    rows = [epoch_starts(gb, w, args.epochs) for gb in args.cache_gb for w in args.workers_list]
    print("| cache in memory | workers | first epoch: to the first batch, kept / started | later epochs: median, kept / started |")
    print("|---|---|---|---|")
    for r in rows:
        f, l = r["first_epoch_start_s"], r["later_epoch_start_s_median"]
        print(f"| {r['cache_gb']} GB | {r['workers']} | {f['kept']:.3f} / {f['started']:.3f} s | {l['kept']:.3f} / {l['started']:.3f} s |")
    return {"latency": rows}


def _same_weights(a: Path, b: Path) -> bool:
    def tensors(path: Path) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict") or state.get("objects", {}).get("network") or state
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    x, y = tensors(a), tensors(b)
    return len(x) > 0 and x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", choices=sorted(SETTINGS), default="medgmae_pretrain")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the runs (default: the environment's; torch's default is the CPUs)")
    parser.add_argument("--latency", action="store_true", help="time the start of an epoch alone, in this process")
    parser.add_argument("--cache-gb", type=float, nargs="+", default=[0.1, 4.0], help="--latency: GB of volumes cached")
    parser.add_argument("--workers-list", type=int, nargs="+", default=[2, 4], help="--latency: worker counts")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the raw results")
    args = parser.parse_args()
    if args.latency:
        result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **_latency_main(args)}  # fmt: skip
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            runs = {keep: one_run(args.bundle, Path(tmp) / f"{pair}-{keep}", args.epochs, args.workers, keep, args.threads) for keep in (True, False)}
            same = _same_weights(runs[True]["weights"], runs[False]["weights"])
            rows.append({"pair": pair, "same_weights": same, **{f"{'kept' if k else 'started'}_{n}": r[n] for k, r in runs.items() for n in ("wall_s", "epochs_span_s")}})
    per_epoch = [(r["started_epochs_span_s"] - r["kept_epochs_span_s"]) / (args.epochs - 1) for r in rows]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bundle": args.bundle, "epochs": args.epochs,
              "workers": args.workers, "threads": args.threads or os.environ.get("OMP_NUM_THREADS"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
              "pairs": rows, "saved_per_epoch_s_median": statistics.median(per_epoch),
              "wall_ratio_median": statistics.median(r["started_wall_s"] / r["kept_wall_s"] for r in rows)}  # fmt: skip
    print(f"| pair | kept: wall s | started each epoch: wall s | kept: epochs 2-{args.epochs} s | started: epochs 2-{args.epochs} s | same weights |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['kept_wall_s']:.1f} | {r['started_wall_s']:.1f} | {r['kept_epochs_span_s']:.1f} | "
              f"{r['started_epochs_span_s']:.1f} | {r['same_weights']} |")
    print(f"\nmedian seconds saved an epoch: {result['saved_per_epoch_s_median']:.2f}; "
          f"median wall ratio started / kept: {result['wall_ratio_median']:.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
