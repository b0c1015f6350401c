"""The rotation-axis check (``recon.axis_check``): the time and error of its estimate, and what an axis error it
lets pass costs FBP/FDK.

1. Estimate: ``recon.axis_check.estimate_offset_u`` on ``--stack`` V x rows x cols stacks (default 360 x 256 x
   256) of exact line integrals of random balls (a body ball about the axis and ``--balls`` smaller ones, computed
   analytically per ray: no voxel grid, no projector), with Poisson noise at ``--photons`` incident photons per
   pixel, for a parallel beam over a full turn and over a half turn and a cone beam over a full turn, with the
   detector offset by each of ``--offsets`` columns, for each of ``--seeds``. It prints the error of the estimate in
   columns against the simulated offset (median and largest absolute error over offsets and seeds, and the stacks
   with no estimate) and the seconds of one estimate: the median of ``--repeats`` runs after one warm-up, on the
   first stack of each geometry (numpy float32 array; the check reads only a band of central rows).
2. Cost: FBP (parallel, ``CTGeometry.parallel`` defaults: 180 degrees) and FDK (cone, ``CTGeometry.cone``
   defaults: a full turn) of the phantom (generator seed ``--phantom-seed``, ``--phantom-size`` D H W of
   ``--phantom-voxel`` mm, ``--views`` views, noiseless), simulated with the detector offset by each of ``--errors``
   columns and reconstructed twice: with that ``det_offset`` (right) and with none (the axis error ignored). PSNR
   against the reference on the reconstruction grid (``recon.metrics.psnr``); the cost is the difference. No inverse
   crime by default: as ``bench/recon.py``, the scan is simulated from the phantom generated at twice the
   resolution (PyTorch projector on the fine grid) and the reference is its 2 x 2 x 2 mean
   (``bench/recon_simulation.py``); ``--simulate-grid same`` projects the reconstruction grid itself (a diagnostic).
   It also prints the estimate's error on these scans.

Usage::

    python bench/axis_check.py [--only estimate|cost] [--json out.json]
    python bench/axis_check.py --only cost --simulate-grid same
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this folder must not hide `recon`

from medgmae.cli_types import nonneg_int, positive_float, positive_int  # noqa: E402
from recon.axis_check import AXIS_TOLERANCE_COLUMNS, estimate_offset_u  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.noise import poisson_line_integrals  # noqa: E402
from recon_simulation import SIMULATED_ON, simulate  # noqa: E402

#: The estimate's scans: (name, kind, arc in degrees).
SCANS = (("parallel, full turn", "parallel", 360.0), ("parallel, half turn", "parallel", 180.0),
         ("cone, full turn", "cone", 360.0))  # fmt: skip


def ball_volume(rows: int, cols: int) -> tuple[int, int, int]:
    """The balls' volume (z, y, x) in 1 mm voxels for a detector of ``rows`` x ``cols``: 3/4 of the rows high, 5/8 of
    the columns wide (192 x 160 x 160 for 256 x 256), which detectors of 1 mm (parallel) and 1.5 mm (cone beam, the
    default magnification) pitch cover."""
    return (int(0.75 * rows), int(0.625 * cols), int(0.625 * cols))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("estimate", "cost"), default=None, help="run one part only (default: both)")
    p.add_argument("--stack", type=positive_int, nargs=3, default=[360, 256, 256], metavar=("V", "ROWS", "COLS"),
                   help="the estimate's stacks: views, detector rows, columns (default: 360 256 256)")
    p.add_argument("--offsets", type=float, nargs="+", default=[0.0, 0.5, -1.0, 1.37, -2.6],
                   help="simulated detector offsets in columns (default: 0 0.5 -1 1.37 -2.6)")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=[0, 1, 2], help="balls' seeds (default: 0 1 2)")
    p.add_argument("--balls", type=positive_int, default=12, help="balls besides the body (default: 12)")
    p.add_argument("--photons", type=positive_float, default=1e4, help="incident photons per pixel (default: 1e4)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed estimates after a warm-up (default: 7)")
    p.add_argument("--phantom-size", type=positive_int, nargs=3, default=[32, 64, 64], metavar=("D", "H", "W"),
                   help="the cost's phantom (z, y, x) in voxels (default: 32 64 64)")
    p.add_argument("--phantom-voxel", type=positive_float, default=1.0, help="its voxel size in mm (default: 1)")
    p.add_argument("--phantom-seed", type=int, default=1, help="its generator seed (default: 1)")
    p.add_argument("--views", type=positive_int, default=120, help="the cost's views (default: 120)")
    p.add_argument("--errors", type=float, nargs="+", default=[0.5, 1.0],
                   help="axis errors in columns ignored by the reconstruction (default: 0.5 1)")
    p.add_argument("--simulate-grid", choices=sorted(SIMULATED_ON), default="finer",
                   help="the cost's scan simulated on a 2x finer grid (default) or the reconstruction grid")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p


def random_balls(seed: int, count: int, radius_mm: float, half_height_mm: float) -> np.ndarray:
    """``(count + 1, 5)`` balls ``(x, y, z, radius, mu)`` in mm and 1/mm: a body ball of 0.8 ``radius_mm`` on the
    rotation axis (mu 0.02) and ``count`` smaller ones inside it (mu +-0.002 to 0.01), half of them crossing the
    mid-plane ``z = 0``, the others anywhere up to ``half_height_mm``."""
    rng = np.random.default_rng(seed)
    body = 0.8 * radius_mm
    out = [(0.0, 0.0, 0.0, body, 0.02)]
    for i in range(count):
        r = rng.uniform(0.05, 0.2) * body
        rho, phi = rng.uniform(0, body - r), rng.uniform(0, 2 * math.pi)
        z = rng.uniform(-0.5, 0.5) * r if i % 2 == 0 else rng.uniform(-1, 1) * max(half_height_mm - r, 0.0)
        out.append((rho * math.cos(phi), rho * math.sin(phi), z, r, rng.choice([-1, 1]) * rng.uniform(0.002, 0.01)))
    return np.asarray(out, dtype=np.float64)


def ball_projections(geometry: CTGeometry, balls: np.ndarray, views_per_step: int = 16) -> torch.Tensor:
    """Exact line integrals ``(V, rows, cols)`` float32 of ``balls`` (:func:`random_balls`) through the centre of
    each detector pixel of ``geometry`` (its ``vectors``, offset included): ``sum mu * chord``, the chord of a ray
    at distance ``d`` from a ball's centre being ``2 sqrt(r^2 - d^2)``. The volume's centre is the origin.

    Parallel beam: the detector's column and row axes are orthogonal to the rays, so ``d^2`` is the squared distance
    on the detector from the pixel to the centre's shadow, ``a_col^2 + b_row^2``. Cone beam: with ``w`` from the
    source to the centre and ``q`` from the source to the pixel, ``d^2 = |w|^2 - (w . q)^2 / |q|^2``, where
    ``w . q`` is a sum of a per-view term, a per-row term and a per-column term. Each ball is evaluated only on the
    rows its shadow can reach (:func:`_shadow_rows`)."""
    vec = torch.from_numpy(geometry.vectors())
    rows, cols = geometry.det_shape
    sc = torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2
    sr = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
    out = torch.empty(geometry.proj_shape, dtype=torch.float32)
    cone = geometry.kind == "cone"
    for lo in range(0, geometry.num_views, views_per_step):
        v = vec[lo : lo + views_per_step]
        src, det, u, w = v[:, 0:3], v[:, 3:6], v[:, 6:9], v[:, 9:12]  # parallel: src holds the ray direction
        acc = torch.zeros((len(v), rows, cols), dtype=torch.float64)
        if cone:
            to_det = det - src
            q2 = ((to_det * to_det).sum(-1)[:, None, None] + sr[None, :, None] ** 2 * (w * w).sum(-1)[:, None, None]
                  + sc[None, None, :] ** 2 * (u * u).sum(-1)[:, None, None]
                  + 2 * sr[None, :, None] * (to_det * w).sum(-1)[:, None, None]
                  + 2 * sc[None, None, :] * (to_det * u).sum(-1)[:, None, None])  # fmt: skip  (u, w orthogonal)
        for x, y, z, r, mu in balls:
            centre = torch.tensor([x, y, z], dtype=torch.float64)
            r0, r1 = _shadow_rows(centre, float(r), src, det, u, w, cone, rows)
            if r0 >= r1:
                continue
            band = sr[r0:r1]
            if not cone:
                rel = centre - det
                du, dv = u.norm(dim=-1)[:, None], w.norm(dim=-1)[:, None]
                a = (rel * u).sum(-1)[:, None] / du - sc[None, :] * du  # along the columns, from the pixel
                b = (rel * w).sum(-1)[:, None] / dv - band[None, :] * dv  # along the rows
                d2 = a[:, None, :] ** 2 + b[:, :, None] ** 2
            else:
                rel = centre - src
                dot = ((rel * to_det).sum(-1)[:, None, None] + band[None, :, None] * (rel * w).sum(-1)[:, None, None]
                       + sc[None, None, :] * (rel * u).sum(-1)[:, None, None])  # fmt: skip
                d2 = (rel * rel).sum(-1)[:, None, None] - dot * dot / q2[:, r0:r1]
            acc[:, r0:r1] += mu * 2 * torch.sqrt((r * r - d2).clamp_min(0.0))
        out[lo : lo + views_per_step] = acc.float()
    return out


def _shadow_rows(centre, r: float, src, det, u, w, cone: bool, rows: int) -> tuple[int, int]:
    """The detector rows ``[r0, r1)`` that the shadow of a ball (``centre``, radius ``r``) can reach in the views
    ``src, det, u, w`` (rows of :meth:`CTGeometry.vectors`). A point's row depends only on its components along the
    detector's normal ``n`` and row axis ``w``, monotonically in each, so the corners ``centre +- r n +- r w`` of the
    rectangle that holds the ball bound it."""
    n = torch.linalg.cross(u, w)
    n, wn = n / n.norm(dim=-1, keepdim=True), w / w.norm(dim=-1, keepdim=True)
    found = []
    for sn in (-r, r):
        for sw in (-r, r):
            point = centre + sn * n + sw * wn
            if cone:  # where the ray from the source through the point meets the detector plane
                t = ((det - src) * n).sum(-1) / ((point - src) * n).sum(-1)
                point = src + (point - src) * t[:, None]
            found.append(((point - det) * w).sum(-1) / (w * w).sum(-1) + (rows - 1) / 2)
    found = torch.stack(found)
    return max(0, int(math.floor(float(found.min()))) - 1), min(rows, int(math.ceil(float(found.max()))) + 2)


def estimate_geometry(kind: str, arc: float, stack, offset_cols: float) -> CTGeometry:
    """The estimate's scan: ``stack`` = (views, rows, cols) over ``arc`` degrees, :func:`ball_volume` in 1 mm
    voxels, detector pitch 1 mm (parallel) or the cone default's 1.5 mm, offset by ``offset_cols`` columns."""
    views, rows, cols = stack
    volume = ball_volume(rows, cols)
    if kind == "parallel":
        return CTGeometry.parallel(volume, 1.0, det_shape=(rows, cols), det_spacing=1.0, num_angles=views,
                                   arc_deg=arc, det_offset=(offset_cols * 1.0, 0.0))  # fmt: skip
    return CTGeometry.cone(volume, 1.0, det_shape=(rows, cols), det_spacing=1.5, num_angles=views, arc_deg=arc,
                           det_offset=(offset_cols * 1.5, 0.0))  # fmt: skip


def measure_estimate(args) -> dict:
    """Part 1: per scan, the estimate's error in columns over offsets and seeds, and its seconds."""
    result = {}
    for name, kind, arc in SCANS:
        errors, missing, seconds = [], [], None
        for seed in args.seeds:
            for offset in args.offsets:
                g = estimate_geometry(kind, arc, args.stack, offset)
                depth, side, _ = g.volume_shape
                clean = ball_projections(g, random_balls(seed, args.balls, 0.5 * side, 0.4 * depth))
                noisy = poisson_line_integrals(clean, args.photons, torch.Generator().manual_seed(seed))[0].numpy()
                if seconds is None:  # the first stack of the scan: one warm-up, then the timed runs
                    estimate_offset_u(noisy, g)
                    seconds = []
                    for _ in range(args.repeats):
                        t = time.perf_counter()
                        estimate_offset_u(noisy, g)
                        seconds.append(time.perf_counter() - t)
                est = estimate_offset_u(noisy, g)
                if est is None:
                    missing.append([seed, offset])
                else:
                    errors.append(est / g.det_spacing[1] - offset)
        abs_err = [abs(e) for e in errors]
        result[name] = {
            "kind": kind, "arc_deg": arc, "stack": list(args.stack), "estimates": len(errors), "no_estimate": missing,
            "errors_columns": errors, "median_abs_error_columns": statistics.median(abs_err) if abs_err else None,
            "max_abs_error_columns": max(abs_err) if abs_err else None, "seconds": seconds,
            "median_seconds": statistics.median(seconds),
        }  # fmt: skip
        r = result[name]
        print(f"  {name}: {r['estimates']} estimates, |error| median {_f(r['median_abs_error_columns'], 3)} "
              f"max {_f(r['max_abs_error_columns'], 3)} column, {r['median_seconds']:.4f} s", flush=True)  # fmt: skip
    return result


def _f(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def measure_cost(args) -> dict:
    """Part 2: per beam and axis error, PSNR of FBP/FDK with the right ``det_offset`` and with none."""
    shape, voxel = tuple(args.phantom_size), args.phantom_voxel
    result = {}
    for kind in ("parallel", "cone"):
        make = CTGeometry.parallel if kind == "parallel" else CTGeometry.cone
        du = make(shape, voxel, num_angles=args.views).det_spacing[1]
        rows = []
        for error in args.errors:
            g = make(shape, voxel, num_angles=args.views, det_offset=(error * du, 0.0))
            proj, reference = simulate(args.phantom_seed, g, None, "cpu", grid=args.simulate_grid)
            ignored = CTGeometry.from_dict({**g.to_dict(), "det_offset": [0.0, 0.0]})
            with torch.no_grad():
                right, wrong = psnr(fbp(proj, g), reference), psnr(fbp(proj, ignored), reference)
            est = estimate_offset_u(proj.numpy(), g)
            rows.append({"axis_error_columns": error, "det_shape": list(g.det_shape), "psnr_right": right,
                         "psnr_ignored": wrong, "cost_db": right - wrong,
                         "estimate_error_columns": None if est is None else est / du - error})  # fmt: skip
            print(f"  {kind}, {error:g} column: {right:.2f} -> {wrong:.2f} dB", flush=True)
        result[kind] = {"arc_deg": 180.0 if kind == "parallel" else 360.0, "views": args.views, "rows": rows}
    return result


def print_tables(result: dict) -> None:
    """The results as markdown tables."""
    if "estimate" in result:
        e = result["estimate"]
        first = next(iter(e.values()))
        offsets, seeds = ", ".join(f"{o:g}" for o in result["offsets"]), ", ".join(map(str, result["seeds"]))
        print(f"\nEstimate on {' x '.join(map(str, first['stack']))} stacks (views x rows x columns) of exact line "
              f"integrals of random balls, Poisson noise at {result['photons']:g} photons per pixel, offsets {offsets} "
              f"columns, seeds {seeds}; seconds: median of {result['repeats']} after a warm-up, on the first stack:\n")  # fmt: skip
        print("| scan | estimates | no estimate | abs. error median (columns) | abs. error max (columns) "
              "| seconds (median) | seconds (min-max) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for name, r in e.items():
            print(f"| {name} | {r['estimates']} | {len(r['no_estimate'])} | {_f(r['median_abs_error_columns'], 3)} | "
                  f"{_f(r['max_abs_error_columns'], 3)} | {r['median_seconds']:.4f} | {min(r['seconds']):.4f}-"
                  f"{max(r['seconds']):.4f} |")  # fmt: skip
    if "cost" in result:
        c = result["cost"]
        size = " x ".join(map(str, result["phantom_size"][::-1]))
        finer = result["simulate_grid"] == "finer"
        print(f"\nAxis error ignored: phantom seed {result['phantom_seed']}, {size} voxels (x y z) of "
              f"{result['phantom_voxel']:g} mm, {result['views']} views, noiseless, simulated on "
              f"{SIMULATED_ON[result['simulate_grid']]}; PSNR against "
              f"{'the fine phantom' + chr(39) + 's 2 x 2 x 2 mean' if finer else 'the phantom'}; "
              f"reconstructed with the simulated det_offset (right) and with none (ignored):\n")  # fmt: skip
        print("| reconstruction | axis error (columns) | PSNR right (dB) | PSNR ignored (dB) | cost (dB) "
              "| estimate's error (columns) |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for kind, r in c.items():
            label = f"{'FBP, parallel' if kind == 'parallel' else 'FDK, cone'}, {r['arc_deg']:g} degrees"
            for row in r["rows"]:
                print(f"| {label} | {row['axis_error_columns']:g} | {row['psnr_right']:.2f} | "
                      f"{row['psnr_ignored']:.2f} | {row['cost_db']:.2f} | {_f(row['estimate_error_columns'], 3)} |")  # fmt: skip
        print(f"\n(the check warns beyond {AXIS_TOLERANCE_COLUMNS:g} column)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "photons": args.photons, "offsets": args.offsets, "seeds": args.seeds, "repeats": args.repeats,
              "phantom_size": args.phantom_size, "phantom_voxel": args.phantom_voxel,
              "phantom_seed": args.phantom_seed, "views": args.views, "simulate_grid": args.simulate_grid}  # fmt: skip
    started = time.perf_counter()
    if args.only in (None, "estimate"):
        print("estimate:", flush=True)
        result["estimate"] = measure_estimate(args)
    if args.only in (None, "cost"):
        print("cost of an ignored axis error:", flush=True)
        result["cost"] = measure_cost(args)
    result["total_seconds"] = time.perf_counter() - started
    print_tables(result)
    print(f"\n{result['total_seconds']:.0f} s in all, {result['threads']} torch threads")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
