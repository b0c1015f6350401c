"""Summarise ``bench/recon_budget_study.sh``: one start at several Gaussian budgets on one scan, as a markdown table
and the PSNR curves against iterations and against seconds.

    python bench/recon_budget_summary.py runs/recon_budget_study/*.json --png runs/recon_budget_study/budget.png

Per budget: Gaussians at the start and the end, voxels per initial Gaussian, median seconds per iteration, the PSNR
after ``--at-iterations`` iterations and after ``--at-seconds`` seconds of the run (the last evaluation at or before
that time, ``curve_seconds``: start plus optimisation steps, evaluations excluded; default: half and all of the
fastest run's time), the peak and the iterations (seconds) to the targets ``--relative`` dB from the best FBP.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: bench/recon.py must not hide `recon`

from recon_summary import _cell, tile_curves  # noqa: E402


def load_budgets(paths: list[str]) -> dict:
    """The files as one result whose runs are named by their initial budget (``"20000 Gaussians"``), in budget order;
    the files must be of one scan (geometry, views, phantom, shape) and one start."""
    merged: dict = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        scan = tuple(str(result.get(k)) for k in ("geometry", "views", "phantom_seed", "shape_zyx", "photons"))
        if not merged:
            merged, first = {**result, "runs": {}}, scan
        elif scan != first:
            raise ValueError(f"{path}: another scan ({scan}) than the first file's ({first})")
        for run in result["runs"].values():
            merged["runs"][f"{run['initial_gaussians']} Gaussians"] = run
    merged["runs"] = dict(sorted(merged["runs"].items(), key=lambda kv: kv[1]["initial_gaussians"]))
    return merged


def _psnr_at(run: dict, x: float, axis: str) -> str:
    """PSNR of the last evaluation at or before iteration / second ``x`` (``-``: none; the run's end marked when
    it ended before ``x``)."""
    xs = [it for it, _ in run["curve"]] if axis == "iteration" else run.get("curve_seconds", [])
    seen = [p for xv, (_, p) in zip(xs, run["curve"]) if xv <= x]
    if not seen:
        return "-"
    return f"{seen[-1]:.2f}" + (" (ended)" if xs[len(seen) - 1] < x and len(seen) == len(xs) else "")


def budget_table(result: dict, at_iterations: list[int], at_seconds: list[float] | None, relative: list[float]) -> str:
    """The markdown table of one budget study."""
    runs = result["runs"]
    voxels = math.prod(int(n) for n in result["shape_zyx"])
    if not at_seconds:
        fastest = min(r["curve_seconds"][-1] for r in runs.values())
        at_seconds = [round(fastest / 2), round(fastest)]
    targets = [round(result["best_fbp_psnr"] + d, 2) for d in sorted(relative)]
    cols = ["Gaussians (start -> end)", "voxels per Gaussian", "s/it"]
    cols += [f"PSNR at it {i}" for i in at_iterations] + [f"PSNR at {s:g} s" for s in at_seconds]
    cols += ["PSNR peak (it)"] + [f"it to {t:.1f} ({d:+g})" for t, d in zip(targets, sorted(relative))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in runs.values():
        peak_it, peak = max(r["curve"], key=lambda c: c[1])
        row = [f"{r['initial_gaussians']} -> {r['final_gaussians']}", f"{voxels / r['initial_gaussians']:.1f}",
               f"{r['seconds_per_iteration_median']:.2f}"]  # fmt: skip
        row += [_psnr_at(r, i, "iteration") for i in at_iterations] + [_psnr_at(r, s, "seconds") for s in at_seconds]
        row += [f"{peak:.2f} ({peak_it})"] + [_cell(r, t) for t in targets]
        lines.append("| " + " | ".join(row) + " |")
    shape = " x ".join(str(n) for n in result["shape_zyx"])
    head = (f"**{result['geometry']}, {result['views']} views, {result['photons']:g} photons, phantom seed "
            f"{result['phantom_seed']}, {shape} voxels ({voxels / 1e6:.2f} M)**: best FBP/FDK "
            f"{result['best_fbp_psnr']:.2f} dB\n\n")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON files of bench/recon_budget_study.sh (one scan)")
    p.add_argument("--at-iterations", type=int, nargs="+", default=[100, 200, 400])
    p.add_argument("--at-seconds", type=float, nargs="+", default=None)
    p.add_argument("--relative", type=float, nargs="+", default=[-3.0, -1.0, 0.0], help="PSNR targets from the best FBP (dB)")
    p.add_argument("--png", default=None, help="write the curves against iterations and seconds here")
    args = p.parse_args(argv)
    try:
        result = load_budgets(args.results)
    except (ValueError, KeyError, OSError) as e:
        print(f"recon_budget_summary: error: {e}", file=sys.stderr)
        return 2
    print(budget_table(result, args.at_iterations, args.at_seconds, args.relative))
    if args.png:
        tile_curves([result, result], args.png, x_axis=["iteration", "seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
