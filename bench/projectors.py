"""Time the CT projector backends on the CPU or GPU: forward projection and its adjoint (autograd backward).

    python bench/projectors.py --geometry scan/geometry.json [--device cpu] [--backends torch astra]
    python bench/projectors.py --cone-matrix [--views 20 90] [--threads 1]

The second form compares, on the CPU, the PyTorch ray marcher with the same operator as a precomputed sparse
matrix (``RayMatrixProjector``) for cone beam on a 32 x 64 x 64 volume of 6 x 4 x 4 mm voxels: matrix build time,
stored entries and memory, and forward+adjoint time of each (the matrix's as the median of 5 calls).
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
from recon.projectors import RayMatrixProjector, TorchProjector, make_projector  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fwd_adj(proj, x: torch.Tensor) -> float:
    """Seconds for one forward projection and its adjoint (autograd backward)."""
    xx = x.clone().requires_grad_()
    t0 = time.perf_counter()
    proj.forward(xx).sum().backward()
    return time.perf_counter() - t0


def cone_matrix(views: list, threads: int) -> None:
    """Ray marcher vs its sparse matrix, cone beam, 32 x 64 x 64 voxels of 6 x 4 x 4 mm, on the CPU."""
    torch.set_num_threads(threads)
    print(f"cone beam, volume (32, 64, 64), voxels (6, 4, 4) mm, CPU, {threads} thread(s)")
    print("| views | detector | torch fwd+adj (s) | matrix build (s) | entries | matrix memory (MiB, A and A^T) | matrix fwd+adj (s) | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for nv in views:
        geom = CTGeometry.cone((32, 64, 64), (6, 4, 4), num_angles=nv)
        x = torch.rand(1, *geom.volume_shape, generator=torch.Generator().manual_seed(0))
        tp = TorchProjector(geom)
        t_torch = _fwd_adj(tp, x)
        t0 = time.perf_counter()
        mp = RayMatrixProjector(geom)
        t_build = time.perf_counter() - t0
        t_mat = sorted(_fwd_adj(mp, x) for _ in range(5))[2]
        with torch.no_grad():
            ref = tp(x)
            diff = float((mp(x) - ref).abs().max() / ref.abs().max())
        print(f"| {nv} | {geom.det_shape} | {t_torch:.3g} | {t_build:.3g} | {mp.a.nnz} | {mp.nbytes / 2**20:.0f} | {t_mat:.3g} | {diff:.1e} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", help="geometry.json (e.g. written by medgmae-recon simulate)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=["torch", "astra"])
    p.add_argument("--cone-matrix", action="store_true", help="the ray marcher vs its sparse matrix (CPU, cone beam)")
    p.add_argument("--views", type=int, nargs="+", default=[20, 90], help="view counts for --cone-matrix")
    p.add_argument("--threads", type=int, default=1, help="torch threads for --cone-matrix")
    args = p.parse_args()
    if args.cone_matrix:
        cone_matrix(args.views, args.threads)
        return
    if args.geometry is None:
        p.error("--geometry is required (unless --cone-matrix)")
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
