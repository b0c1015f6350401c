"""Time the CT projector backends on the CPU or GPU: forward projection and its adjoint (autograd backward).

    python bench/projectors.py --geometry scan/geometry.json [--device cpu] [--backends torch astra]
    python bench/projectors.py --cone-matrix [--views 20 90] [--threads 1] [--size 32 64 64] [--voxel 6 4 4]
    python bench/projectors.py --adjoint-memory [--size 64 128 128] [--adjoint-views 40] [--repeats 2]

The second form compares, on the CPU, the PyTorch ray marcher with the same operator as a precomputed sparse
matrix (``RayMatrixProjector``) for cone beam on a volume of ``--size`` voxels of ``--voxel`` mm (default 32 x 64 x
64 of 6 x 4 x 4 mm): matrix build time, stored entries and memory, and forward+adjoint time of each (the matrix's as
the median of 5 calls); where ``recon.projectors.matrix_cache`` exists, also the size of the matrix file a run keeps
in its folder and the seconds to read it back into a projector (what ``reconstruct --resume`` does instead of the
build), "-" otherwise.

The third measures the PyTorch ray marcher's adjoint on the CPU (cone beam, ``CTGeometry.cone`` defaults, 1 mm
voxels, random projections): ``TorchProjector.adjoint_plain`` (one chunk of rays at a time) against the
vector-Jacobian product of the whole ``forward_plain`` (autograd keeps every chunk's sampling grid; the adjoint
before 2026-12-05), each round of each in a fresh process so that its peak resident memory (``ru_maxrss``) is its
own, the two alternating; it prints the median seconds, the largest peak of each and their largest difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# the repository root first: bench/recon.py would otherwise shadow the recon package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rss import peak_rss_mib  # noqa: E402
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


def _matrix_file(geom: CTGeometry, built: RayMatrixProjector) -> tuple[str, str]:
    """The size (MiB) of ``built``'s matrix file and the seconds to read it back into a projector, or "-" without
    the cache."""
    try:
        from recon.projectors.matrix_cache import MATRIX_FILE, cached_matrix_projector, save_matrix
    except ImportError:
        return "-", "-"
    with tempfile.TemporaryDirectory() as d:
        save_matrix(built, d)  # the matrix built above, not a second build
        t0 = time.perf_counter()
        _, note = cached_matrix_projector(geom, d)
        seconds = time.perf_counter() - t0
        assert note.startswith("read the matrix"), note
        return f"{(Path(d) / MATRIX_FILE).stat().st_size / 2**20:.0f}", f"{seconds:.3g}"


def cone_matrix(views: list, threads: int, size: list, voxel: list) -> None:
    """Ray marcher vs its sparse matrix, cone beam, ``size`` voxels of ``voxel`` mm, on the CPU."""
    torch.set_num_threads(threads)
    print(f"cone beam, volume {tuple(size)}, voxels {tuple(voxel)} mm, CPU, {threads} thread(s)")
    print("| views | detector | torch fwd+adj (s) | matrix build (s) | entries | matrix memory (MiB, A and A^T) | matrix fwd+adj (s) | max rel. diff | matrix file (MiB) | read back (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for nv in views:
        geom = CTGeometry.cone(tuple(size), tuple(voxel), num_angles=nv)
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
        nnz, mib = mp.a.nnz, mp.nbytes / 2**20
        del tp
        file_mib, read_s = _matrix_file(geom, mp)
        del mp
        print(f"| {nv} | {geom.det_shape} | {t_torch:.3g} | {t_build:.3g} | {nnz} | {mib:.0f} | {t_mat:.3g} | {diff:.1e} | {file_mib} | {read_s} |")


def _adjoint_once(size: list, views: int, variant: str) -> None:
    """One adjoint in this process; prints a JSON line: seconds, peak RSS (MiB), the result's sum."""
    torch.set_num_threads(2)
    geom = CTGeometry.cone(tuple(size), 1.0, num_angles=views)
    tp = TorchProjector(geom)
    y = torch.rand(1, geom.num_views, *geom.det_shape, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    if variant == "chunked":
        x = tp.adjoint_plain(y)
    else:
        v = torch.zeros(1, *geom.volume_shape, requires_grad=True)
        (x,) = torch.autograd.grad(tp.forward_plain(v), v, grad_outputs=y)
    sec = time.perf_counter() - t0
    peak = peak_rss_mib()
    print(json.dumps({"seconds": sec, "peak_mib": peak, "sum": float(x.double().sum()), "det": geom.det_shape}))


def adjoint_memory(size: list, views: int, repeats: int) -> None:
    """The chunked adjoint against autograd of the whole forward, each round in fresh processes (see the module doc)."""
    res: dict = {"chunked": [], "whole-forward autograd": []}
    for _ in range(repeats):
        for variant in res:
            cmd = [sys.executable, __file__, "--_adjoint-once", variant, "--size", *map(str, size), "--adjoint-views", str(views)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res[variant].append(json.loads(out))
    det = res["chunked"][0]["det"]
    print(f"cone beam, volume {tuple(size)} of 1 mm voxels, {views} views, detector {tuple(det)}, CPU, 2 threads, {repeats} rounds")
    print("| adjoint | seconds (median) | peak RSS (MiB, largest) |\n|---|---|---|")
    for variant, runs in res.items():
        print(f"| {variant} | {statistics.median(r['seconds'] for r in runs):.1f} | {max(r['peak_mib'] for r in runs):.0f} |")
    sums = [r["sum"] for runs in res.values() for r in runs]
    print(f"largest relative difference of the sums: {(max(sums) - min(sums)) / abs(max(sums)):.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", help="geometry.json (e.g. written by medgmae-recon simulate)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=["torch", "astra"])
    p.add_argument("--cone-matrix", action="store_true", help="the ray marcher vs its sparse matrix (CPU, cone beam)")
    p.add_argument("--views", type=int, nargs="+", default=[20, 90], help="view counts for --cone-matrix")
    p.add_argument("--threads", type=int, default=1, help="torch threads for --cone-matrix")
    p.add_argument("--voxel", type=float, nargs=3, default=[6.0, 4.0, 4.0], help="voxel size (z, y, x) mm for --cone-matrix")
    p.add_argument("--adjoint-memory", action="store_true", help="the ray marcher's chunked adjoint vs autograd (CPU)")
    p.add_argument("--size", type=int, nargs=3, default=None,
                   help="(D, H, W): for --adjoint-memory (default 64 128 128) and --cone-matrix (default 32 64 64)")
    p.add_argument("--adjoint-views", type=int, default=40, help="views for --adjoint-memory")
    p.add_argument("--repeats", type=int, default=2, help="rounds for --adjoint-memory")
    p.add_argument("--_adjoint-once", dest="adjoint_once", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.adjoint_once or args.adjoint_memory:
        size = args.size or [64, 128, 128]
        if args.adjoint_once:
            _adjoint_once(size, args.adjoint_views, args.adjoint_once)
        else:
            adjoint_memory(size, args.adjoint_views, args.repeats)
        return
    if args.cone_matrix:
        cone_matrix(args.views, args.threads, args.size or [32, 64, 64], args.voxel)
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
