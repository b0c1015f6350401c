"""Fine-tuning's validation under torchrun: the cases shared out among the processes against every process
validating all of them (as before ``shard_sampler``).

Writes ``--cases`` oblique, anisotropic random scans with a labelled box each (plus two training cases), then runs
one epoch of ``train.json`` + ``multi_gpu_train.json`` under ``torchrun --nproc_per_node --processes`` twice per
round, side by side: ``shared`` as the bundle runs it, ``all`` with ``--validate#dataloader#sampler '$None'`` (every
rank validates every case). Reads rank 0's ``validation: N cases in S s`` line and the run's
``validation/metrics.json``, and prints a markdown table: cases per process, seconds of the validation pass, the
ratio, and whether both runs scored the same mean Dice (the weights stay at their start: learning rate 1e-12).

Usage::

    python bench/sharded_validation.py --cases 6 --processes 2 --size 96 96 64 --rounds 2 [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medgmae.cli_types import positive_int  # noqa: E402

CONFIGS = REPO / "bundles" / "unetr_finetune" / "configs"
LINE = re.compile(r"validation: (\d+) cases? in ([0-9.]+) s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=positive_int, default=6, help="validation cases (default: 6)")
    p.add_argument("--processes", type=positive_int, default=2, help="torchrun processes (default: 2)")
    p.add_argument("--size", type=positive_int, nargs=3, default=[96, 96, 64], metavar=("I", "J", "K"),
                   help="each scan in voxels (default: 96 96 64, 1 x 1 x 2.5 mm)")  # fmt: skip
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds of the two runs (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (one GPU per process, NCCL)")
    return p


def write_cases(folder: Path, count: int, size: list[int]) -> Path:
    """``count + 2`` scans (random HU, a box labelled 1 or 2, an oblique affine) and their datalist."""
    import nibabel as nib

    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    affine = np.array([[c, -s, 0, 10], [s, c, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    cases = []
    for n in range(count + 2):
        rng = np.random.default_rng(n)
        image = rng.normal(40.0, 150.0, size=size).astype(np.float32)
        label = np.zeros(size, np.uint8)
        lo = [d // 4 + n % 3 for d in size]
        label[lo[0] : lo[0] + size[0] // 3, lo[1] : lo[1] + size[1] // 3, lo[2] : lo[2] + size[2] // 3] = 1 + n % 2
        paths = {k: folder / f"case{n}_{k}.nii.gz" for k in ("image", "label")}
        nib.save(nib.Nifti1Image(image, affine), paths["image"])
        nib.save(nib.Nifti1Image(label, affine), paths["label"])
        cases.append({k: str(v) for k, v in paths.items()})
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"}, "training": cases[:2],
                                    "validation": cases[2:]}))  # fmt: skip
    return datalist


def run(args, datalist: Path, out: Path, shared: bool) -> tuple[int, float, float]:
    """One epoch under torchrun: (rank 0's validation cases, their seconds, the mean Dice of all cases)."""
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes),
           "-m", "monai.bundle", "run", "training", "--config_file", configs, "--logging_file",
           str(CONFIGS / "logging.conf"), "--datalist", str(datalist), "--output_dir", str(out), "--device", args.device,
           "--max_epochs", "1", "--learning_rate", "1e-12", "--num_samples", "1", "--num_workers", "0",
           "--progress_bar", "false"] + ([] if shared else ["--validate#dataloader#sampler", "$None"])  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // args.processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", env=env)
    if proc.returncode != 0:  # the bundle's own "error:" lines say why; torchrun's summary comes after them
        said = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "rank "))]
        sys.exit(f"the {'shared' if shared else 'all'} run failed:\n" + ("\n".join(said[-5:]) if said else
                 f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"))  # fmt: skip
    found = LINE.findall(proc.stdout + proc.stderr)
    if not found:
        sys.exit(f"no validation line in the log of {out}")
    metrics = json.loads((out / "validation" / "metrics.json").read_text(encoding="utf-8"))
    return int(found[-1][0]), float(found[-1][1]), float(metrics["mean_dice"])


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < args.processes:
            parser.error(f"--device {args.device}: one GPU per process, {args.processes} processes, "
                         f"{torch.cuda.device_count()} GPUs here")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        datalist = write_cases(Path(tmp), args.cases, args.size)
        print(f"{args.cases} validation cases of {args.size[0]}x{args.size[1]}x{args.size[2]}, {args.processes} "
              f"processes, device {args.device}\n")  # fmt: skip
        print("| round | run | cases on rank 0 | validation s | shared / all | mean Dice equal |\n|---|---|---|---|---|---|")
        for r in range(1, args.rounds + 1):
            shared = run(args, datalist, Path(tmp, f"shared{r}"), True)
            every = run(args, datalist, Path(tmp, f"all{r}"), False)
            same = abs(shared[2] - every[2]) < 1e-5
            print(f"| {r} | shared | {shared[0]} | {shared[1]:.1f} | {shared[1] / every[1]:.2f} | {same} |")
            print(f"| {r} | all | {every[0]} | {every[1]:.1f} | | |")


if __name__ == "__main__":
    main()
