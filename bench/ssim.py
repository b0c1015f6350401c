"""Validation's masked SSIM: banded matrix products against MONAI's separable filtering.

``medgmae.mae_training.masked_ssim`` filters the five local means of the SSIM (x, y, x^2, y^2, xy) together, one
axis at a time, as matrix products with a banded Gaussian matrix that gives only the region where the window fits.
``monai`` below is the way it did before, kept here as the baseline: MONAI's ``separable_filtering`` on each map
(1-voxel-wide 3D convolutions over the zero-padded volume), then the same region cut out. Both run side by side
in one process on the same random crop and mask, in turns; the script prints the median seconds of each (wall and
process CPU time), their ratio and the two SSIM values.

Usage::

    python bench/ssim.py --size 96 --repeats 5 [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgmae.cli_types import positive_int  # noqa: E402
from medgmae.mae_training import masked_ssim  # noqa: E402


def monai_masked_ssim(pred: Tensor, target: Tensor, mask: Tensor, kernel_size: int = 11, sigma: float = 1.5) -> Tensor:
    """The masked SSIM as computed before: each local mean through MONAI's ``separable_filtering``, then cropped.

    Args:
        pred: ``(B, C, D, H, W)``.
        target: same shape.
        mask: ``(B, 1, D, H, W)`` of 0/1.
        kernel_size: window edge (odd).
        sigma: window standard deviation.

    Returns:
        ``(B,)`` float32.
    """
    from monai.networks.layers import separable_filtering

    x, y = pred.float(), target.float()
    dist = torch.arange((1 - kernel_size) / 2, (1 + kernel_size) / 2, 1.0, device=x.device)
    window = torch.exp(-((dist / sigma) ** 2) / 2)
    window = window / window.sum()
    r = kernel_size // 2
    inner = (slice(None), slice(None)) + (slice(r, -r),) * 3
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = (separable_filtering(t, [window] * 3)[inner] for t in (x, y, x * x, y * y, x * y))
    c1, c2 = 0.01**2, 0.03**2
    sigma_x, sigma_y, sigma_xy = mu_xx - mu_x * mu_x, mu_yy - mu_y * mu_y, mu_xy - mu_x * mu_y
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    weight = mask.float()[inner].expand_as(ssim_map).flatten(1)
    weight = torch.where(weight.sum(1, keepdim=True) > 0, weight, torch.ones_like(weight))
    return (ssim_map.flatten(1) * weight).sum(1) / weight.sum(1)


def _timed(fn, device: torch.device) -> tuple[float, float, float]:
    """``(wall s, process CPU s, value)`` of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    value = float(fn()[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=positive_int, default=96, help="crop edge in voxels, at least 11 (default: 96)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds after a warm-up (default: 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = parser.parse_args()
    if args.size < 11:
        parser.error(f"--size must be at least the 11-voxel window, got {args.size}")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (1, 1) + (args.size,) * 3
    target = torch.rand(shape, generator=g)
    pred = (target + 0.1 * torch.randn(shape, generator=g)).to(device)
    mask = (torch.rand(shape, generator=g) < 0.75).float().to(device)
    target = target.to(device)
    ways = {"banded matrix products (now)": masked_ssim, "MONAI separable_filtering (before)": monai_masked_ssim}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for round_ in range(args.repeats + 1):
        for name, fn in ways.items():
            result = _timed(lambda: fn(pred, target, mask), device)
            if round_:  # round 0 warms up
                runs[name].append(result)
    setting = f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}"
    print(f"masked SSIM of a {args.size}^3 crop on {device}, {setting}\n")
    print("| way | wall s | CPU s | SSIM |\n|---|---|---|---|")
    medians = {}
    for name, rows in runs.items():
        medians[name] = [statistics.median(r[i] for r in rows) for i in range(2)]
        print(f"| {name} | {medians[name][0]:.4f} | {medians[name][1]:.4f} | {rows[-1][2]:.6f} |")
    before, now = medians[list(ways)[1]], medians[list(ways)[0]]
    print(f"\nbefore / now: {before[0] / now[0]:.1f}x wall, {before[1] / now[1]:.1f}x CPU")


if __name__ == "__main__":
    main()
