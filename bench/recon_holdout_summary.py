"""Summarise held-out-view runs of ``bench/recon.py`` against the same starts fitted to every view.

    HOLDOUT=2 INITS="toolkit medgmae-grow" bash bench/recon_study.sh MODEL OUT 600 parallel:20:1000 ...
    python bench/recon_holdout_summary.py OUT/*.json --full bench/results_recon_study/current/*.json \
        --patience 3 5 10 --png OUT/holdout.png

Per case and start: where the held-out error chose (the iteration and PSNR of what ``reconstruct --holdout-views``
writes without ``--patience``), the peak and last PSNR of that run, the peak and last PSNR of the same start fitted
to every view (``--full``: the study's files) with its PSNR at the chosen iteration (what a second run on every
view stopped there would give, if the learning-rate schedule did not depend on the run's length), and for each ``--patience`` the iteration the run would stop at and
the PSNR of what it would return (the recorded held-out errors replayed through :class:`recon.holdout.HeldOutViews`,
the class the reconstruction uses). The PNG draws both PSNR curves per start and case, the choice marked.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.holdout import HeldOutViews  # noqa: E402

COLOURS = {"toolkit": (30, 90, 200), "medgmae-grow": (150, 0, 150)}


def _key(result: dict) -> tuple:
    return result["geometry"], result["views"], result["phantom_seed"]


def _load(paths: list[str]) -> dict:
    """Case key (geometry, views, phantom) -> result, the files of one case merged by ``bench/recon_summary.py``'s
    :func:`load_cases` (loaded by path: ``bench/`` is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_recon_summary", Path(__file__).with_name("recon_summary.py"))
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    return {_key(result): result for result in summary.load_cases(paths).values()}


def replay(run: dict, views: int, patience: int) -> tuple[int, int]:
    """``(stopped at, chosen iteration)`` of ``run``'s held-out errors under ``patience`` (0: never stops)."""
    plain = [math.pi * i / views for i in range(views)]  # the split does not matter here, only the bookkeeping
    h = HeldOutViews(plain, len(run["holdout"]["views"]), patience)
    last = 0
    for it, err in run["holdout_curve"]:
        last = it
        h.update(it, err, {})
        if h.stopped:
            break
    return last, h.best_iteration


def _peak(run: dict) -> tuple[float, int]:
    it, p = max(run["curve"], key=lambda c: c[1])
    return p, it


def case_table(held: dict, full: dict | None, patiences: list[int]) -> str:
    """Markdown rows of one case."""
    g, v, seed = _key(held)
    head = (f"**{g}, {v} views, phantom seed {seed}** ({held['holdout_views']} views held out: "
            f"{next(iter(held['runs'].values()))['holdout']['views']}); best FBP/FDK (every view) {held['best_fbp_psnr']:.2f} dB\n\n")  # fmt: skip
    cols = ["start", "every view: peak (it)", "every view: last", "held out: peak (it)", "held out: last"]
    cols += ["held out, to the end: chosen it (PSNR)", "+ --refit"]
    cols += [f"patience {p}: stop, chosen it (PSNR), --refit, iterations" for p in patiences]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in held["runs"].items():
        psnr_at = dict(r["curve"])
        other = (full or {}).get("runs", {}).get(name)
        every = dict(other["curve"]) if other else {}
        refit = lambda it: f"{every[it]:.2f}" if it in every else "n/a"  # noqa: E731
        row = [name] + (["%.2f (%d)" % _peak(other), f"{other['curve'][-1][1]:.2f}"] if other else ["n/a", "n/a"])
        row += ["%.2f (%d)" % _peak(r), f"{r['curve'][-1][1]:.2f}"]
        row += [f"{r['chosen']['iteration']} ({r['chosen']['psnr']:.2f})", refit(r["chosen"]["iteration"])]
        for p in patiences:
            stop, chosen = replay(r, v, p)
            row.append(f"{stop}, {chosen} ({psnr_at[chosen]:.2f}), {refit(chosen)}, {stop + chosen}")
        lines.append("| " + " | ".join(row) + " |")
    return head + "\n".join(lines) + "\n"


def plot(cases: list[tuple[dict, dict | None]], path: str) -> None:
    """One panel per case: PSNR against iteration, every view (thin) and held-out (thick), the choice as a dot."""
    from PIL import Image, ImageDraw

    from medgmae.files import atomic_write

    w, h, m, cols = 480, 320, 40, 2
    rows = (len(cases) + cols - 1) // cols
    img = Image.new("RGB", (w * cols, h * rows), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for n, (held, full) in enumerate(cases):
        ox, oy = (n % cols) * w, (n // cols) * h
        runs = [(name, r, 3) for name, r in held["runs"].items()]
        runs += [(name, r, 1) for name, r in (full or {}).get("runs", {}).items() if name in held["runs"]]
        pts = [pt for _, r, _ in runs for pt in r["curve"]]
        x1 = max(it for it, _ in pts)
        y0, y1 = min(p for _, p in pts) - 0.5, max(p for _, p in pts) + 0.5
        y0 = max(y0, held["best_fbp_psnr"] - 8)
        sx = lambda it: ox + m + it / x1 * (w - 2 * m)  # noqa: E731
        sy = lambda p: oy + h - m - (min(max(p, y0), y1) - y0) / (y1 - y0) * (h - 2 * m)  # noqa: E731
        d.rectangle((ox + m, oy + m, ox + w - m, oy + h - m), outline=(0, 0, 0))
        d.line([(ox + m, sy(held["best_fbp_psnr"])), (ox + w - m, sy(held["best_fbp_psnr"]))], fill=(0, 0, 0))
        for name, r, width in runs:
            d.line([(sx(i), sy(p)) for i, p in r["curve"]], fill=COLOURS.get(name, (120, 120, 120)), width=width)
            if width == 3:
                c = r["chosen"]
                d.ellipse((sx(c["iteration"]) - 5, sy(c["psnr"]) - 5, sx(c["iteration"]) + 5, sy(c["psnr"]) + 5), outline=(0, 0, 0), width=2)
        g, v, seed = _key(held)
        d.text((ox + m, oy + 8), f"{g}, {v} views (seed {seed}): thick = {held['holdout_views']} held out (circle: chosen), thin = every view", fill=(0, 0, 0))
        for k, name in enumerate(held["runs"]):
            d.text((ox + m + 110 * k, oy + 22), name, fill=COLOURS.get(name, (120, 120, 120)))
        d.text((ox + 2, oy + m), f"{y1:.1f}", fill=(0, 0, 0))
        d.text((ox + 2, oy + h - m - 10), f"{y0:.1f}", fill=(0, 0, 0))
        d.text((ox + w - m - 40, oy + h - m + 6), f"it {x1}", fill=(0, 0, 0))
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON files of bench/recon.py run with --holdout-views")
    p.add_argument("--full", nargs="*", default=[], help="JSON files of the same cases fitted to every view")
    p.add_argument("--patience", type=int, nargs="*", default=[3, 5, 10], help="patiences to replay (evaluations)")
    p.add_argument("--png", default=None, help="write the PSNR curves here")
    args = p.parse_args(argv)
    held, full = _load(args.results), _load(args.full)
    missing = [k for k, r in held.items() if not r.get("holdout_views")]
    if missing:
        p.error(f"these cases were run without held-out views: {missing}")
    for key, result in held.items():
        print(case_table(result, full.get(key), args.patience))
    if args.png and held:
        plot([(r, full.get(k)) for k, r in held.items()], args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
