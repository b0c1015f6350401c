"""Scratch vs voxel-MAE vs MedGMAE initialisation for UNETR segmentation, at several label fractions.

One command pre-trains both encoders briefly on unlabelled phantoms (``bundles/medgmae_pretrain``, a different
phantom seed from the segmentation data) unless encoder files are given, then fine-tunes UNETR with the
``bundles/unetr_finetune`` bundle from each initialisation at each label fraction with the same budget of optimiser
steps, and writes a markdown table of the validation mean Dice (foreground classes, MONAI ``MeanDice``) after the
last step. With several ``--seeds`` each seed is a whole repetition in ``OUT/seed_S`` (its own labelled phantoms,
pre-training and fine-tuning seeds) and the table gives each cell's mean, standard deviation and range across
seeds; a run whose ``result.json`` records the same command and encoder file (size and modification time) is not
run again, so an interrupted study resumes where it stopped.

    python bench/finetune_compare.py --out runs/finetune_compare --device cpu --seeds 0 1 2

Every run is a plain bundle command (printed), so any cell of the table can be reproduced or extended on its own.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "bundles" / "medgmae_pretrain" / "configs"
FINETUNE = REPO / "bundles" / "unetr_finetune" / "configs"
INITS = ("scratch", "voxel-mae", "medgmae")


def run(cmd: list[str], log: Path) -> float:
    """Run a command, log its output, raise with the log's tail on failure; returns seconds."""
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - t0


def bundle(config_dir: Path, *overrides: str, config: str = "train.json") -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config_dir / config),
            "--logging_file", str(config_dir / "logging.conf"), *overrides]  # fmt: skip


def pretrain(kind: str, args: argparse.Namespace) -> Path:
    out = args.out / f"pretrain_{kind}"
    encoder = out / "encoder.pt"
    if encoder.is_file() and not args.force:
        return encoder
    out.mkdir(parents=True, exist_ok=True)
    cmd = bundle(
        PRETRAIN, "--output_dir", str(out), "--model_kind", kind, "--model_size", args.model_size,
        "--roi_size", str(args.roi), "--patch_size", str(args.patch), "--num_gaussians", str(args.num_gaussians),
        "--max_epochs", str(args.pretrain_epochs), "--num_phantoms", str(args.pretrain_phantoms),
        "--phantom_shape", json.dumps(args.phantom_shape), "--seed", str(args.seed + 1), "--device", args.device,
        "--amp", "false",
    )  # fmt: skip
    seconds = run(cmd, out / "log.txt")
    print(f"pre-trained {kind} in {seconds:.0f} s -> {encoder}", flush=True)
    return encoder


def finetune(init: str, fraction: float, encoder: Path | None, datalist: Path, n_train: int, args: argparse.Namespace) -> dict:
    out = args.out / f"finetune_{init}_{fraction:g}"
    from medgmae.finetune.data import select_label_fraction

    n_cases = len(select_label_fraction([{}] * n_train, fraction))  # the bundle's count (half up), not round()'s
    # a fixed budget of optimiser steps: one step per training case per epoch (batch of one volume)
    epochs = max(1, math.ceil(args.steps / n_cases))
    out.mkdir(parents=True, exist_ok=True)
    cmd = bundle(
        FINETUNE, "--output_dir", str(out), "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
        "--pretrained", str(encoder) if encoder else "", "--label_fraction", str(fraction), "--seed", str(args.seed),
        "--max_epochs", str(epochs), "--val_interval", str(epochs), "--roi_size", json.dumps([args.roi] * 3),
        "--feature_size", str(args.feature_size), "--num_samples", str(args.num_samples),
        "--learning_rate", str(args.lr), "--device", args.device,
        "--encoder", json.dumps(dict(patch_size=args.patch, **ENCODER_SIZES[args.model_size])),
        *([] if encoder else args.scratch_preprocessing),
    )  # fmt: skip
    from medgmae.data.fingerprint import file_fingerprint

    # a run is reused only when its encoder is the same file as when it ran (--force pre-trains anew into the path)
    done, made_from = out / "result.json", list(file_fingerprint(encoder)) if encoder else None
    earlier = json.loads(done.read_text()) if done.is_file() else {}
    if (earlier.get("command"), earlier.get("encoder_file")) == (cmd, made_from):
        return earlier
    seconds = run(cmd, out / "log.txt")
    metrics = json.loads((out / "validation" / "metrics.json").read_text())
    row = {"init": init, "fraction": fraction, "seed": args.seed, "train_cases": n_cases, "epochs": epochs,
           "steps": epochs * n_cases, "mean_dice": metrics["mean_dice"], "seconds": seconds, "command": cmd,
           "encoder_file": made_from}  # fmt: skip
    done.write_text(json.dumps(row, indent=2))
    return row


def scratch_preprocessing(encoder: Path, roi_size: int) -> list[str]:
    """``--pixdim`` and ``--hu_range`` of the pre-processing ``encoder`` records, for the scratch runs: a pre-trained
    run takes them from its file, a scratch run would otherwise take the bundle's defaults (1.5 x 1.5 x 2.0 mm,
    not the pre-training's 1.5 mm), and its crops and validation grid would differ from the others'."""
    from medgmae.finetune.spec import finetune_spec

    spec = finetune_spec(str(encoder), roi_size=roi_size)
    return ["--pixdim", json.dumps(list(spec.spacing)), "--hu_range", json.dumps(list(spec.hu_window))]


#: scratch encoders match the pre-training presets (medgmae.networks.vit.VIT_PRESETS)
ENCODER_SIZES = {
    "tiny": dict(hidden_size=96, num_layers=2, num_heads=4, mlp_ratio=2.0),
    "small": dict(hidden_size=384, num_layers=6, num_heads=6, mlp_ratio=4.0),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_ratio=4.0),
}


def dice_cell(values: list[float | None]) -> str:
    """One table cell: the value for one seed; mean +- sample standard deviation [min, max] for several."""
    if any(v is None for v in values):
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def table(rows: list[dict], fractions: list[float], seeds: list[int]) -> str:
    """Markdown: mean Dice per initialisation and fraction across ``seeds``, then one line per run."""
    lines = [f"Seeds: {', '.join(map(str, seeds))}" + (" (mean +- standard deviation [min, max])" if len(seeds) > 1 else ""),
             "", "| initialisation | " + " | ".join(f"mean Dice @ {f:g} labels" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]  # fmt: skip
    for init in INITS:
        cells = [dice_cell([r["mean_dice"] for r in rows if r["init"] == init and r["fraction"] == f]) for f in fractions]
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | initialisation | fraction | training cases | epochs | steps | mean Dice | seconds |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        dice = "n/a" if r["mean_dice"] is None else f"{r['mean_dice']:.4f}"
        lines.append(f"| {r['seed']} | {r['init']} | {r['fraction']:g} | {r['train_cases']} | {r['epochs']} "
                     f"| {r['steps']} | {dice} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def repetition(args: argparse.Namespace) -> list[dict]:
    """Every run of one seed (``args.seed``, ``args.out``): labelled phantoms, both pre-trainings, the fine-tunings."""
    from medgmae.data import phantom_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    datalist = Path(phantom_dataset(args.out / "phantom_labelled", args.cases + args.val_cases, args.val_cases,
                                    seed=args.seed, shape=args.phantom_shape, spacing=(1.5, 1.5, 2.0)))  # fmt: skip
    encoders = {
        "scratch": None,
        "voxel-mae": args.voxel_mae_encoder or pretrain("voxel-mae", args),
        "medgmae": args.medgmae_encoder or pretrain("medgmae", args),
    }
    for name, path in encoders.items():
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"{name} encoder not found: {path}")
    args.scratch_preprocessing = scratch_preprocessing(encoders["medgmae"], args.roi)
    return [finetune(init, f, encoders[init], datalist, args.cases, args) for f in args.fractions for init in INITS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/finetune_compare"), help="working folder")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0], help="label fractions")
    p.add_argument("--medgmae-encoder", type=Path, help="encoder.pt from MedGMAE pre-training (skips pre-training)")
    p.add_argument("--voxel-mae-encoder", type=Path, help="encoder.pt from voxel-MAE pre-training (skips pre-training)")
    p.add_argument("--model-size", default="tiny", choices=sorted(ENCODER_SIZES), help="encoder preset")
    p.add_argument("--roi", type=int, default=48, help="crop edge (pre-training img_size = fine-tuning roi_size)")
    p.add_argument("--patch", type=int, default=12, help="patch edge")
    p.add_argument("--num-gaussians", type=int, default=64, help="MedGMAE Gaussians")
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument("--pretrain-phantoms", type=int, default=6, help="unlabelled phantoms for pre-training")
    p.add_argument("--cases", type=int, default=10, help="labelled phantom training cases")
    p.add_argument("--val-cases", type=int, default=3, help="labelled phantom validation cases")
    p.add_argument("--phantom-shape", type=int, nargs=3, default=[64, 64, 48])
    p.add_argument("--steps", type=int, default=40, help="fine-tuning optimiser steps per run (the fixed budget)")
    p.add_argument("--num-samples", type=int, default=2, help="crops per step")
    p.add_argument("--feature-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one repetition of the study per seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="pre-train again even when encoder.pt exists")
    p.add_argument("--table", type=Path, help="markdown output (default OUT/table.md)")
    args = p.parse_args(argv)
    for name in ("fractions",):
        if any(not 0 < f <= 1 for f in getattr(args, name)):
            p.error("fractions must be in (0, 1]")
    if args.roi % args.patch:
        p.error(f"--patch {args.patch} must divide --roi {args.roi}")
    if args.steps < 1 or args.cases < 1 or args.val_cases < 1:
        p.error("--steps, --cases and --val-cases must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must differ")
    root, rows = args.out, []
    for seed in args.seeds:
        args.seed, args.out = seed, (root / f"seed_{seed}" if len(args.seeds) > 1 else root)
        rows += repetition(args)
    text = table(rows, args.fractions, args.seeds)
    out = args.table or root / "table.md"
    from medgmae.files import atomic_write

    with atomic_write(out) as tmp:
        Path(tmp).write_text(text)
    (root / "rows.json").write_text(json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
