"""Summarise the one-start studies: ``bench/recon_budget_study.sh`` (one start at several Gaussian budgets) and
``bench/recon_density_study.sh`` (one start under several density-control rules), one markdown table per scan and
the PSNR curves against iterations and against seconds (two panels per scan).

    python bench/recon_budget_summary.py runs/recon_budget_study/*.json --png runs/recon_budget_study/budget.png

A run is named by its initial budget and the settings it was given (``bench/recon.py --set``; "no density
control" for a ``densify_from`` past the end). Per run: Gaussians at the start and the end, voxels per initial
Gaussian, median seconds per iteration, the PSNR after ``--at-iterations`` iterations and after ``--at-seconds``
seconds of the run (the last evaluation at or before that time, ``curve_seconds``: start plus optimisation steps,
evaluations excluded; default: half and all of the fastest run's time), the peak and the iterations (seconds) to
the targets ``--relative`` dB from the best FBP.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: bench/recon.py must not hide `recon`

from recon_curves import tile_curves  # noqa: E402
from recon_summary import _cell  # noqa: E402


def run_label(run: dict, iterations: int, tv_weight: float = 0.0) -> str:
    """``"20000 Gaussians"``, plus the settings the run was given other than the density cap (``"no density
    control"`` for a ``densify_from`` past ``iterations``) and a TV weight (``"TV 0.001"``) if any."""
    extra = [f"TV {tv_weight:g}"] if tv_weight else []
    for key, value in run.get("preset_overrides", {}).items():
        if key == "max_gaussians":
            continue
        extra.append("no density control" if key == "densify_from" and value > iterations else f"{key}={value}")
    return ", ".join([f"{run['initial_gaussians']} Gaussians", *extra])


def load_scans(paths: list[str]) -> list[dict]:
    """The files grouped by scan (geometry, views, phantom, shape, photons; in the order first seen), each group as
    one result whose runs are named by :func:`run_label`, in budget order."""
    scans: dict = {}
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
            key = tuple(str(result.get(k)) for k in ("geometry", "views", "phantom_seed", "shape_zyx", "photons"))
            runs = {run_label(run, run["curve"][-1][0], result.get("tv_weight") or 0.0): run for run in result["runs"].values()}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a bench/recon.py result ({type(e).__name__}: {e})") from None
        merged = scans.setdefault(key, {**result, "runs": {}})["runs"]
        if set(runs) & set(merged):
            raise ValueError(f"{path}: a run named {sorted(set(runs) & set(merged))} of this scan is already in another file")
        merged.update(runs)
    for merged in scans.values():
        merged["runs"] = dict(sorted(merged["runs"].items(), key=lambda kv: (kv[1]["initial_gaussians"], kv[0])))
    return list(scans.values())


def _psnr_at(run: dict, x: float, axis: str) -> str:
    """PSNR of the last evaluation at or before iteration / second ``x`` (``-``: none; the run's end marked when
    it ended before ``x``)."""
    xs = [it for it, _ in run["curve"]] if axis == "iteration" else run.get("curve_seconds", [])
    seen = [p for xv, (_, p) in zip(xs, run["curve"]) if xv <= x]
    if not seen:
        return "-"
    return f"{seen[-1]:.2f}" + (" (ended)" if xs[len(seen) - 1] < x and len(seen) == len(xs) else "")


def budget_table(result: dict, at_iterations: list[int], at_seconds: list[float] | None, relative: list[float]) -> str:
    """The markdown table of one scan's runs."""
    runs = result["runs"]
    voxels = math.prod(int(n) for n in result["shape_zyx"])
    if not at_seconds:
        fastest = min(r["curve_seconds"][-1] for r in runs.values())
        at_seconds = [round(fastest / 2), round(fastest)]
    targets = [round(result["best_fbp_psnr"] + d, 2) for d in sorted(relative)]
    cols = ["run", "Gaussians (start -> end)", "voxels per Gaussian", "s/it"]
    cols += [f"PSNR at it {i}" for i in at_iterations] + [f"PSNR at {s:g} s" for s in at_seconds]
    cols += ["PSNR peak (it)"] + [f"it to {t:.1f} ({d:+g})" for t, d in zip(targets, sorted(relative))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in runs.items():
        peak_it, peak = max(r["curve"], key=lambda c: c[1])
        row = [name, f"{r['initial_gaussians']} -> {r['final_gaussians']}", f"{voxels / r['initial_gaussians']:.1f}",
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
    p.add_argument("results", nargs="+", help="JSON files of bench/recon_budget_study.sh or bench/recon_density_study.sh")
    p.add_argument("--at-iterations", type=int, nargs="+", default=[100, 200, 400])
    p.add_argument("--at-seconds", type=float, nargs="+", default=None)
    p.add_argument("--relative", type=float, nargs="+", default=[-3.0, -1.0, 0.0], help="PSNR targets from the best FBP (dB)")
    p.add_argument("--png", default=None, help="write the curves against iterations and seconds here")
    args = p.parse_args(argv)
    try:
        scans = load_scans(args.results)
    except (ValueError, OSError) as e:
        print(f"recon_budget_summary: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(budget_table(r, args.at_iterations, args.at_seconds, args.relative) for r in scans))
    if args.png:
        tile_curves([r for r in scans for _ in range(2)], args.png, x_axis=["iteration", "seconds"] * len(scans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
