"""Pre-training speed and a short PSNR curve: MedGMAE against the voxel-MAE baseline in the same code.

Step timing (default mode): for each model size and K, the full training step (forward, masked loss, backward,
gradient clipping to 1.0, AdamW step; bf16 autocast on CUDA) of MedGMAE and of the voxel-MAE with the same encoder,
on random 96^3 volumes with 12^3 patches. The renderer's forward + backward is timed on its own with the Gaussians
the model predicts, giving its share of the MedGMAE step.

    python bench/pretrain.py                                  # CPU: tiny, batch 2, K = 128 and 512
    python bench/pretrain.py --sizes tiny base --batch 8 --num-gaussians 512 2048   # GPU

PSNR curve (``--psnr-curve``): trains tiny MedGMAE and voxel-MAE from the same initial encoder on the same
sequence of phantom crops, and reports the masked-voxel PSNR on fixed held-out crops and masks every few steps.

    python bench/pretrain.py --psnr-curve --steps 120 --eval-every 20

Results are printed as markdown tables (copy them into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from monai.optimizers import WarmupCosineSchedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from medgmae.engine import resolve_device  # noqa: E402
from medgmae.networks import MedGMAE, VoxelMAE  # noqa: E402
from medgmae.render import render_volume  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _train_step(model, opt, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One iteration of the shipped pre-training engine (:class:`MaskedAutoencoderTrainer`, as the bundle builds it:
    forward with the masked loss, backward, clipping to 1.0, optimiser step; bf16 autocast when ``bf16``)."""
    from medgmae.mae_training import MaskedAutoencoderTrainer

    batch = {"image": x}
    trainer = MaskedAutoencoderTrainer(device=x.device, max_epochs=1, train_data_loader=[batch], network=model,
                                       optimizer=opt, grad_clip=1.0, amp=bf16)  # fmt: skip

    def step() -> None:
        trainer._iteration(trainer, batch)

    return step


def bench_steps(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    bf16 = device.type == "cuda"
    for size in args.sizes:
        for k in args.num_gaussians + [None]:
            torch.manual_seed(0)
            if k is None:
                model = VoxelMAE(img_size=args.img, patch_size=args.patch, model_size=size)
            else:
                model = MedGMAE(img_size=args.img, patch_size=args.patch, model_size=size, num_gaussians=k)
            model = model.to(device).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.rand(args.batch, 1, args.img, args.img, args.img, device=device)
            step_s = _timed(_train_step(model, opt, x, bf16), device, args.warmup, args.iters)
            row = {"size": size, "model": "voxel-mae" if k is None else "medgmae", "K": k, "batch": args.batch,
                   "step_s": step_s, "volumes_per_s": args.batch / step_s}  # fmt: skip
            if k is not None:
                with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
                    g = model(x).gaussians.to_voxel(model.img_size)
                params = [t.detach().float().clone().requires_grad_(True) for t in g.tensors()]
                shape = model.img_size

                def render_fb() -> None:
                    vol = render_volume(*params, shape=shape, cutoff=model.cutoff)
                    vol.square().mean().backward()

                row["render_s"] = _timed(render_fb, device, args.warmup, args.iters)
                row["render_share"] = row["render_s"] / step_s
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model, opt
    # Gaussian vs voxel throughput ratio per size
    for row in rows:
        if row["model"] == "medgmae":
            ref = next(r for r in rows if r["size"] == row["size"] and r["model"] == "voxel-mae")
            row["vs_voxel_mae"] = row["volumes_per_s"] / ref["volumes_per_s"]
    return rows


def _phantom_crops(seeds: list[int], per_case: int, roi: int, rng: np.random.Generator) -> torch.Tensor:
    """Random ``roi^3`` crops of phantom CT scaled from HU [-175, 250] to [0, 1]."""
    from medgmae.data.phantom import generate_phantom

    crops = []
    for s in seeds:
        img = np.clip((generate_phantom(s).image + 175.0) / 425.0, 0.0, 1.0)
        for _ in range(per_case):
            lo = [int(rng.integers(0, n - roi + 1)) for n in img.shape]
            crops.append(img[lo[0] : lo[0] + roi, lo[1] : lo[1] + roi, lo[2] : lo[2] + roi])
    return torch.from_numpy(np.stack(crops)[:, None].astype(np.float32))


@torch.no_grad()
def _masked_psnr(model, x: torch.Tensor, seed: int) -> float:
    """The shipped masked-voxel PSNR (:func:`medgmae.mae_training.masked_psnr`) with fixed masks."""
    from medgmae.mae_training import masked_psnr

    model.eval()
    out = model(x, generator=torch.Generator(device=x.device).manual_seed(seed))
    model.train()
    return float(masked_psnr(out, x))


def psnr_curve(args: argparse.Namespace, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    train = _phantom_crops(list(range(100, 100 + args.train_cases)), args.crops_per_case, args.roi, rng).to(device)
    val = _phantom_crops([900, 901], 2, args.roi, rng).to(device)
    curves = {}
    for name in ("medgmae", "voxel-mae"):
        torch.manual_seed(0)
        common = dict(img_size=args.roi, patch_size=args.roi_patch, model_size="tiny")
        model = (MedGMAE(**common, num_gaussians=args.curve_k) if name == "medgmae" else VoxelMAE(**common)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
        sched = WarmupCosineSchedule(opt, warmup_steps=10, t_total=args.steps)  # the bundle's schedule
        order = torch.Generator().manual_seed(1)
        curve = [(0, _masked_psnr(model, val, 7))]
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, train.shape[0], (args.curve_batch,), generator=order)
            _train_step(model, opt, train[idx], device.type == "cuda")()
            sched.step()
            if step % args.eval_every == 0 or step == args.steps:
                curve.append((step, _masked_psnr(model, val, 7)))
                print(f"{name} step {step}: masked PSNR {curve[-1][1]:.2f} dB ({time.perf_counter() - t0:.0f} s)", flush=True)
        curves[name] = curve
    return curves


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", nargs="+", default=None, help="model sizes (default: tiny on CPU, tiny base on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 2 on CPU, 8 on CUDA)")
    p.add_argument("--num-gaussians", type=int, nargs="+", default=None, help="K (default 128 512 on CPU, 512 2048 on CUDA)")
    p.add_argument("--img", type=int, default=96)
    p.add_argument("--patch", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--psnr-curve", action="store_true", help="run the masked-voxel PSNR curve instead of timing")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--roi", type=int, default=48)
    p.add_argument("--roi-patch", type=int, default=8)
    p.add_argument("--curve-k", type=int, default=128)
    p.add_argument("--curve-batch", type=int, default=4)
    p.add_argument("--train-cases", type=int, default=6)
    p.add_argument("--crops-per-case", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.sizes = args.sizes or (["tiny", "base"] if cuda else ["tiny"])
    args.batch = args.batch or (8 if cuda else 2)
    args.num_gaussians = args.num_gaussians or ([512, 2048] if cuda else [128, 512])
    print(f"device: {_device_name(device)}; torch {torch.__version__}", flush=True)
    if args.psnr_curve:
        curves = psnr_curve(args, device)
        print("\n| step | MedGMAE masked PSNR (dB) | voxel-MAE masked PSNR (dB) |\n|---:|---:|---:|")
        for (s, a), (_, b) in zip(curves["medgmae"], curves["voxel-mae"]):
            print(f"| {s} | {a:.2f} | {b:.2f} |")
        return
    rows = bench_steps(args, device)
    print("\n| size | model | K | batch | step (s) | volumes/s | renderer fwd+bwd (s) | renderer share | vs voxel-MAE |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        k = r["K"] if r["K"] is not None else "-"
        rs = f"{r['render_s']:.4f}" if "render_s" in r else "-"
        share = f"{100 * r['render_share']:.1f} %" if "render_share" in r else "-"
        vs = f"{r['vs_voxel_mae']:.2f}x" if "vs_voxel_mae" in r else "-"
        print(f"| {r['size']} | {r['model']} | {k} | {r['batch']} | {r['step_s']:.4f} | {r['volumes_per_s']:.2f} | {rs} | {share} | {vs} |")


if __name__ == "__main__":
    main()
