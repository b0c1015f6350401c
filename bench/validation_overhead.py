"""What validation and pictures add to a pre-training epoch of the default bundle run.

Times, at the bundle's default sizes (tiny model, 96^3 crops, 12^3 patches, K = 256, batch 1 x 2 crops), one
training step (forward, backward, clipping, AdamW step), one validation (``MaskedValidationHandler.evaluate`` on
``--val-crops`` fixed crops with fixed masks: masked loss, PSNR, SSIM) and one reconstruction picture
(``ValidationPictureHandler.figure``). The default run validates every epoch (16 steps) and draws every 5 epochs,
so the overhead per epoch is ``validation + picture / 5`` against ``16 x step``.

    python bench/validation_overhead.py                 # CPU
    python bench/validation_overhead.py --device cuda   # GPU

Prints a markdown table (copy it into bench/RESULTS.md with the date, device and command).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable

import torch


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-gaussians", type=int, default=256)
    parser.add_argument("--roi", type=int, default=96, help="crop edge in voxels, a multiple of the 12-voxel patch")
    parser.add_argument("--val-crops", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=16)
    parser.add_argument("--picture-interval", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.roi < 12 or args.roi % 12:
        parser.error(f"--roi must be a positive multiple of the 12-voxel patch, got {args.roi}")

    from medgmae.engine import MetricHistory
    from medgmae.mae_training import MaskedValidationHandler, ValidationPictureHandler, build_model

    from medgmae.engine import resolve_device

    device = torch.device(args.device)
    try:
        device = resolve_device(device) if device.type == "cuda" else device  # one that exists
    except ValueError as e:
        parser.error(f"--device: {e}")
    torch.manual_seed(0)
    model = build_model("medgmae", "tiny", img_size=args.roi, patch_size=12, num_gaussians=args.num_gaussians).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4)
    x = torch.rand(2, 1, args.roi, args.roi, args.roi, device=device)

    def step() -> None:
        opt.zero_grad()
        out = model(x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    crops = [{"image": torch.rand(1, args.roi, args.roi, args.roi)} for _ in range(args.val_crops)]
    with tempfile.TemporaryDirectory() as tmp:
        val = MaskedValidationHandler(model, crops, MetricHistory(), tmp)
        pictures = ValidationPictureHandler(val, tmp)
        t_step = _median_seconds(step, args.repeats, device)
        t_val = _median_seconds(val.evaluate, args.repeats, device)
        t_pic = _median_seconds(lambda: pictures.figure(1), args.repeats, device)
    epoch = args.steps_per_epoch * t_step
    extra = t_val + t_pic / args.picture_interval
    print("| K | roi | training step s | validation s (%d crops) | picture s | epoch s | added per epoch |" % args.val_crops)
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.num_gaussians} | {args.roi} | {t_step:.3f} | {t_val:.3f} | {t_pic:.3f} | {epoch:.2f} | "
          f"{extra:.2f} s ({100 * extra / epoch:.1f} %) |")  # fmt: skip


if __name__ == "__main__":
    main()
