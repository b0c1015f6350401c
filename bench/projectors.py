"""Time the CT projector backends on the CPU or GPU: forward projection and its adjoint (autograd backward).

    python bench/projectors.py --geometry scan/geometry.json [--device cpu] [--backends torch astra]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# the repository root first: bench/recon.py would otherwise shadow the recon package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.geometry import CTGeometry  # noqa: E402
from recon.projectors import make_projector  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", required=True, help="geometry.json (e.g. written by medgmae-recon simulate)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=["torch", "astra"])
    args = p.parse_args()
    geom = CTGeometry.load(args.geometry)
    x = torch.rand(*geom.volume_shape, device=args.device)
    print(f"{geom.kind} beam, volume {geom.volume_shape}, detector {geom.det_shape}, {geom.num_views} views, {args.device}")
    print("| backend | forward (s) | adjoint (s) |\n|---|---|---|")
    for name in args.backends:
        try:
            proj = make_projector(geom, name, args.device)
        except ValueError as e:
            print(f"| {name} | unavailable: {e} | |")
            continue
        xx = x.clone().requires_grad_()
        _sync(args.device)
        t0 = time.perf_counter()
        y = proj.forward(xx)
        _sync(args.device)
        t1 = time.perf_counter()
        y.sum().backward()
        _sync(args.device)
        t2 = time.perf_counter()
        print(f"| {name} | {t1 - t0:.3g} | {t2 - t1:.3g} |")


if __name__ == "__main__":
    main()
