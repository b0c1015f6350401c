"""How well the held-out error chooses a setting: runs of ``bench/recon.py --holdout-views N`` that differ in one
setting (the TV weight, or a ``--set`` key), compared per scan and start with the ground truth the runs carry.

    for w in 0 1e-4 1e-3 1e-2; do
        HOLDOUT=2 TV=$w INITS=toolkit bash bench/recon_study.sh none runs/recon_select/tv$w 600 parallel:20:1000 ...
    done
    python bench/recon_select_summary.py runs/recon_select/tv*/*.json

What ``medgmae-recon select`` does on real scans is choose the run with the lowest held-out error
(:mod:`recon.select_command`); here each run also knows the PSNR of the Gaussians it returns (those of its
lowest held-out error, as ``reconstruct --holdout-views`` writes them), so the table shows, per scan and start,
each setting's held-out error and PSNR, which setting the held-out error chooses, which one the PSNR would have
chosen, and the PSNR the choice gives away (0 when they agree). A last table gathers the choices.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: bench/recon.py must not hide `recon`

from recon_curves import on_own_grid  # noqa: E402


def _label(result: dict) -> str:
    """The setting a run differs in: its TV weight and its ``--set`` settings."""
    extra = " ".join(f"{k}={v}" for k, v in sorted((result.get("set") or {}).items()))
    return f"tv {result.get('tv_weight', 0.0):g}" + (f", {extra}" if extra else "")


def load(paths: list[str]) -> dict:
    """(geometry, views, phantom seed, start, views held out, simulation) -> {setting label: row}; files without
    held-out views are refused."""
    cases: dict = {}
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not readable as a bench/recon.py result ({e})")
        if not isinstance(result, dict) or "runs" not in result:
            raise SystemExit(f"{path}: not a bench/recon.py result (no 'runs')")
        for start, run in result["runs"].items():
            if "holdout" not in run or "chosen" not in run:
                raise SystemExit(f"{path}: run {start!r} held out no views (bench/recon.py --holdout-views N)")
            simulated = ", simulated on its own grid" if on_own_grid(result) else ""
            key = (result["geometry"], result["views"], result["phantom_seed"], start, len(run["holdout"]["views"]), simulated)
            label = _label(result)
            if label in cases.get(key, {}):
                raise SystemExit(f"{path}: a second run of {key} with {label}")
            cases.setdefault(key, {})[label] = {
                "error": run["holdout"]["best_error"], "iteration": run["chosen"]["iteration"], "psnr": run["chosen"]["psnr"],
                "peak": max(p for _, p in run["curve"]), "last": run["final_psnr"] if run["complete"] else None,
                "views": run["holdout"]["views"], "best_fbp": result["best_fbp_psnr"],
            }  # fmt: skip
    return cases


def choice(rows: dict) -> dict:
    """The setting the held-out error chooses, the one the PSNR would, what the choice gives away (dB), and whether
    the held-out error orders all the settings as the PSNR does."""
    if len({json.dumps(r["views"]) for r in rows.values()}) > 1:
        raise SystemExit(f"runs held out different views: {[r['views'] for r in rows.values()]}")
    by_error = sorted(rows, key=lambda k: rows[k]["error"])
    by_psnr = sorted(rows, key=lambda k: -rows[k]["psnr"])
    return {"chosen": by_error[0], "best": by_psnr[0], "given_away": rows[by_psnr[0]]["psnr"] - rows[by_error[0]]["psnr"],
            "same_order": by_error == by_psnr}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="bench/recon.py JSON results with --holdout-views")
    args = p.parse_args(argv)
    cases = load(args.files)
    gathered = []
    for (geom, views, seed, start, held, simulated), rows in sorted(cases.items()):
        c = choice(rows)
        first = next(iter(rows.values()))
        print(f"\n**{geom}, {views} views, phantom seed {seed}, start {start}, {held} held out{simulated}**: "
              f"best FBP/FDK {first['best_fbp']:.2f} dB\n")
        print("| setting | held-out error (lowest) | at iteration | PSNR there | PSNR peak | PSNR last |")
        print("|---|---|---|---|---|---|")
        for label, r in sorted(rows.items(), key=lambda kv: kv[1]["error"]):
            mark = " (chosen)" if label == c["chosen"] else ""
            last = "-" if r["last"] is None else f"{r['last']:.2f}"
            print(f"| {label}{mark} | {r['error']:.5g} | {r['iteration']} | {r['psnr']:.2f} | {r['peak']:.2f} | {last} |")
        gathered.append((f"{geom} {views}, seed {seed}, {start}, {held} held out{simulated}", c, rows))
    print("\n| scan, start | chosen by held-out error | PSNR | best by PSNR | PSNR | given away (dB) | all in PSNR order |")
    print("|---|---|---|---|---|---|---|")
    for name, c, rows in gathered:
        print(f"| {name} | {c['chosen']} | {rows[c['chosen']]['psnr']:.2f} | {c['best']} | {rows[c['best']]['psnr']:.2f} | "
              f"{c['given_away']:.2f} | {'yes' if c['same_order'] else 'no'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
