"""Parallel-beam backprojection: slice by slice against the 3D sampling grid, side by side in one run.

``recon.fbp.backproject`` backprojects a parallel beam slice by slice (rows interpolated to the voxels' z, then a 2D
backprojection per slice); ``per_slice=False`` samples the whole ``(views, D, H, W, 2)`` grid as for a cone beam,
the same values. This script times both on random filtered projections, in turns (``--repeats`` rounds, the two
alternating so that a drifting machine affects both alike), and prints the median seconds of each, the median of
the per-round ratios and the largest difference of their outputs.

``--cone`` measures the cone-beam (FDK) backprojection instead: its slices cut into slabs of at most
``recon.fbp.SAMPLES_PER_STEP`` sampling positions per step against the whole 3D grid per step (the budget raised to
the volume), each round in a fresh process so that its peak resident memory (``ru_maxrss``) is its own; it prints
the median seconds and the largest peak of each.

Usage::

    python bench/fbp_backprojection.py --size 64 256 256 --views 180 --repeats 3 [--json out.json]
    python bench/fbp_backprojection.py --cone --size 64 256 256 --views 90 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rss import peak_rss_mib  # noqa: E402
from medgmae.cli_types import positive_int  # noqa: E402
import recon.fbp as fbp_module  # noqa: E402
from recon.fbp import backproject  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=positive_int, nargs=3, default=[64, 256, 256], metavar=("D", "H", "W"),
                   help="volume (D, H, W) in voxels (default: 64 256 256)")
    p.add_argument("--voxel", type=float, nargs=3, default=[2.5, 1.4, 1.4], metavar=("SZ", "SY", "SX"),
                   help="voxel size in mm (default: 2.5 1.4 1.4)")
    p.add_argument("--views", type=positive_int, default=180, help="views over 180 degrees (--cone: over a full turn) (default: 180)")
    p.add_argument("--repeats", type=positive_int, default=3, help="rounds of the two, alternating (default: 3)")
    p.add_argument("--cone", action="store_true", help="the cone-beam backprojection: slabs against the whole grid")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--one-cone-run", choices=("slabs", "grid"), help=argparse.SUPPRESS)  # a child process's round
    return p


def geometry(size, voxel, views: int) -> CTGeometry:
    """A parallel beam whose detector covers the volume: rows of the slices' pitch, columns of the x pitch."""
    d, h, w = size
    cols = int(np.ceil(np.hypot(h * voxel[1], w * voxel[2]) / voxel[2])) + 2
    return CTGeometry(kind="parallel", volume_shape=(d, h, w), voxel_size=tuple(voxel), det_shape=(d, cols),
                      det_spacing=(voxel[0], voxel[2]), angles=np.linspace(0, np.pi, views, endpoint=False))  # fmt: skip


def cone_geometry(size, voxel, views: int) -> CTGeometry:
    """A full-turn cone beam with ``CTGeometry.cone``'s default source, magnification and detector."""
    return CTGeometry.cone(tuple(size), tuple(voxel), num_angles=views)


def one_cone_run(args) -> int:
    """One backprojection in this process; prints its seconds, peak RSS and a checksum as JSON."""
    g = cone_geometry(args.size, args.voxel, args.views)
    filtered = torch.from_numpy(np.random.default_rng(0).normal(size=(1, g.num_views, *g.det_shape)).astype(np.float32))
    if args.one_cone_run == "grid":  # the whole volume per step of views, as before slabs
        fbp_module.SAMPLES_PER_STEP = 4 * int(np.prod(args.size))
    t = time.perf_counter()
    out = backproject(filtered, g, chunk=4)
    seconds = time.perf_counter() - t
    peak_mib = peak_rss_mib()
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, "sum": float(out.double().sum()),
                      "max_abs": float(out.abs().max())}))
    return 0


def cone_main(args) -> int:
    """Rounds of the two cone-beam variants, alternating, each in its own process."""
    runs = {"slabs": [], "grid": []}
    base = [sys.executable, str(Path(__file__).resolve()), "--size", *map(str, args.size), "--voxel",
            *map(str, args.voxel), "--views", str(args.views)]  # fmt: skip
    for _ in range(args.repeats):
        for name in runs:
            done = subprocess.run([*base, "--one-cone-run", name], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    g = cone_geometry(args.size, args.voxel, args.views)
    result = {
        "kind": "cone", "volume": list(args.size), "voxel_mm": list(args.voxel), "views": g.num_views,
        "detector": list(g.det_shape), "repeats": args.repeats, "samples_per_step": fbp_module.SAMPLES_PER_STEP,
        "median_seconds": {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()},
        "peak_rss_mib": {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()},
        "relative_sum_difference": abs(runs["slabs"][0]["sum"] - runs["grid"][0]["sum"])
        / max(abs(runs["grid"][0]["sum"]), 1e-30),
        "max_abs_value": runs["grid"][0]["max_abs"],
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }  # fmt: skip
    print(f"cone-beam backprojection, {'x'.join(map(str, args.size))} voxels, {g.num_views} views, detector "
          f"{g.det_shape[0]}x{g.det_shape[1]}, {args.repeats} rounds, each in a fresh process:")
    for name, label in (("slabs", "slabs"), ("grid", "whole grid")):
        print(f"  {label}: {result['median_seconds'][name]:.2f} s, peak RSS {result['peak_rss_mib'][name]:.0f} MiB")
    print(f"  relative difference of the volumes' sums {result['relative_sum_difference']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.one_cone_run:
        return one_cone_run(args)
    if args.cone:
        return cone_main(args)
    g = geometry(args.size, args.voxel, args.views)
    filtered = torch.from_numpy(np.random.default_rng(0).normal(size=(1, g.num_views, *g.det_shape)).astype(np.float32))
    seconds = {"per_slice": [], "grid": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, per_slice in (("per_slice", True), ("grid", False)):
            t = time.perf_counter()
            outputs[name] = backproject(filtered, g, per_slice=per_slice)
            seconds[name].append(time.perf_counter() - t)
    ratios = [b / a for a, b in zip(seconds["per_slice"], seconds["grid"])]
    result = {
        "volume": list(args.size), "voxel_mm": list(args.voxel), "views": g.num_views, "detector": list(g.det_shape),
        "repeats": args.repeats, "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
        "median_ratio_grid_over_per_slice": statistics.median(ratios),
        "max_abs_difference": float((outputs["per_slice"] - outputs["grid"]).abs().max()),
        "max_abs_value": float(outputs["grid"].abs().max()),
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }  # fmt: skip
    print(f"parallel-beam backprojection, {'x'.join(map(str, args.size))} voxels, {g.num_views} views, "
          f"{args.repeats} rounds, {result['torch_threads']} torch threads:")
    print(f"  slice by slice {result['median_seconds']['per_slice']:.2f} s, 3D grid {result['median_seconds']['grid']:.2f} s "
          f"(median ratio {result['median_ratio_grid_over_per_slice']:.1f}x); largest difference "
          f"{result['max_abs_difference']:.2e} of values up to {result['max_abs_value']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
