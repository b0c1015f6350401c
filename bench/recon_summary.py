"""Summarise the reconstruction study: the JSON files of ``bench/recon.py`` as one markdown table, plus one PNG
holding every case's PSNR curves (one panel per case, drawn by ``bench/recon_curves.py``).

    python bench/recon_summary.py runs/recon_study/*.json --png runs/recon_study/curves.png \
        --png-seconds runs/recon_study/curves_seconds.png

For each case: the best FBP/FDK PSNR, and per initialisation its preset, initial Gaussians, initial and final
PSNR, median seconds per iteration and the iterations to each PSNR target (``--relative`` dB from the best
FBP/FDK, read off the PSNR curves; ``-``: not reached in the run), with the seconds to them in brackets where the
run recorded them (``curve_seconds``: the start's time plus the measured optimisation steps and density control,
PSNR evaluations excluded). The last columns compare the iterations to the
highest target reached by both runs with ``3dgr-ct`` and ``toolkit`` (``--versus``: other starts; negative: fewer
iterations), and the highest target reached that the other start never reached. ``--at N ...``
adds the PSNR and the fitted loss (``loss_curve``, where recorded) at those iterations and the loss at the peak
and the end: a loss still falling while the PSNR falls is the optimiser fitting what the image cannot hold.
A scan simulated with another photon count (``bench/recon.py --photons``) is a case of its own.

With ``--name-by-model`` the MedGMAE starts are named by their model's file (``medgmae-grow (e150)`` for
``.../e150.pt``, the folder's name for a ``model.pt``), so runs of one case with different models sit side by
side; with ``--name-by-settings`` every start is named after the settings it ran with (``bench/recon.py --set``:
``toolkit [coarse_iterations=0]``; a 3DGR-CT start also after ``--ini-sigma-3dgr``: ``3dgr-ct-grow [ini_sigma=0.6]``),
so runs of one start with other settings do too. Where two files hold a
start of the same name for one case, the later file's run replaces the earlier one (a re-run), and the summary
says so on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: bench/recon.py must not hide `recon`

from recon_curves import on_own_grid, tile_curves  # noqa: E402


def _iters(run: dict, target: float):
    """First evaluated iteration whose PSNR reaches ``target`` (``None``: never)."""
    return next((it for it, p in run["curve"] if p >= target), None)


def _cell(run: dict, target: float) -> str:
    """Iterations to ``target`` and, where the run recorded them, the seconds to it (``-``: never)."""
    it = _iters(run, target)
    if it is None:
        return "-"
    secs = dict(zip((i for i, _ in run["curve"]), run.get("curve_seconds", [])))
    if it not in secs:
        return str(it)
    return f"{it} ({secs[it]:.1f} s)" if secs[it] < 10 else f"{it} ({secs[it]:.0f} s)"


def _versus(runs: dict, name: str, other: str, targets: list[float]) -> str:
    """Relative change in iterations of ``name`` against ``other`` at the highest target both reached, and the
    highest target ``name`` reached that ``other`` never did."""
    if name not in runs or other not in runs:
        return "n/a"
    for t in reversed(targets):
        a, b = _iters(runs[name], t), _iters(runs[other], t)
        if a is not None and b is not None and b > 0:
            cell = f"{100 * (a - b) / b:+.0f} % at {t:.1f} dB"
            beyond = [u for u in targets if u > t and _iters(runs[name], u) is not None]
            return cell + (f"; {other} never reached {beyond[-1]:.1f}" if beyond else "")
    reached = [t for t in targets if _iters(runs[name], t) is not None]
    if reached and _iters(runs[other], reached[0]) is None:
        return f"{other} reached none of {name}'s targets"
    return "no common target"


#: the starts the comparison columns are against unless ``--versus``
VERSUS = ("3dgr-ct", "toolkit")

#: incident photons per detector pixel of the study's scans (``bench/recon.py --photons``' default)
STUDY_PHOTONS = 1e5


def _at_columns(r: dict, at: list[int], peak_it: int) -> list[str]:
    """``PSNR (loss)`` of run ``r`` at each evaluated iteration of ``at`` (``-`` if not evaluated; the fitted loss
    where recorded), then ``loss at peak -> end``."""
    psnrs, losses = dict(r["curve"]), dict(r.get("loss_curve", []))
    cells = ["-" if i not in psnrs else f"{psnrs[i]:.2f}" + (f" ({losses[i]:.3g})" if i in losses else "") for i in at]
    last = r["curve"][-1][0]
    cells.append(f"{losses[peak_it]:.3g} -> {losses[last]:.3g}" if peak_it in losses and last in losses else "-")
    return cells


def case_table(result: dict, relative: list[float], at: list[int] = (), versus: tuple[str, ...] = VERSUS) -> str:
    """Markdown rows of one case (targets ``relative`` dB from the best FBP/FDK; PSNR and fitted loss at the
    iterations ``at``, and the loss at the peak and the end, where given; one comparison column per start of
    ``versus``)."""
    runs = result["runs"]
    targets = [round(result["best_fbp_psnr"] + d, 2) for d in sorted(relative)]
    extra = "".join(text for key, text in (("texture", ", textured phantom"), ("tv_weight", f", TV {result.get('tv_weight')}"),
                                           ("holdout_views", f", {result.get('holdout_views')} views held out")) if result.get(key))  # fmt: skip
    if on_own_grid(result):
        extra += ", simulated on the reconstruction grid (inverse crime)"
    if result.get("photons", STUDY_PHOTONS) != STUDY_PHOTONS:
        extra += ", no noise" if not result["photons"] else f", {result['photons']:g} photons per pixel"
    head = (f"**{result['geometry']}, {result['views']} views, phantom seed {result['phantom_seed']}{extra}**: "
            f"best FBP/FDK {result['best_fbp_psnr']:.2f} dB; {result.get('iterations', '?')} iterations\n\n")  # fmt: skip
    cols = ["init", "preset", "Gaussians (start -> end)", "PSNR start", "PSNR peak (it)", "PSNR end", "s/it"]
    cols += [f"PSNR (loss) at {i}" for i in at] + (["loss at peak -> end"] if at else [])
    cols += [f"it to {t:.1f} ({d:+g})" for t, d in zip(targets, sorted(relative))] + [f"vs {v}" for v in versus]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in runs.items():
        end = f"{r['final_psnr']:.2f}"
        if not r.get("complete", True):  # written by --partial-every before the run ended
            end += f" (at iteration {r['completed_iterations']}, run incomplete)"
        peak_it, peak = max(r["curve"], key=lambda c: c[1])
        row = [name, r["preset"], f"{r['initial_gaussians']} -> {r['final_gaussians']}", f"{r['initial_psnr']:.2f}",
               f"{peak:.2f} ({peak_it})", end, f"{r['seconds_per_iteration_median']:.3f}"]  # fmt: skip
        if at:
            row += _at_columns(r, at, peak_it)
        row += [_cell(r, t) for t in targets]
        row += ["" if name == v else _versus(runs, name, v, targets) for v in versus]
        lines.append("| " + " | ".join(row) + " |")
    return head + "\n".join(lines) + "\n"


def _named_by_model(result: dict) -> dict:
    """``result`` with its MedGMAE starts renamed ``<init> (<model file stem>)`` (its folder's name for a
    ``model.pt``; plus the window overlap where it was not bench/recon.py's default, 16)."""
    model = (result.get("medgmae_model") or {}).get("checkpoint")
    if model:
        stem = Path(model).stem if Path(model).stem != "model" else Path(model).parent.name
        if result["medgmae_model"].get("overlap", 16) != 16:
            stem += f", overlap {result['medgmae_model']['overlap']}"
        result["runs"] = {(f"{k} ({stem})" if k.startswith("medgmae") else k): v for k, v in result["runs"].items()}
    return result


def _named_by_settings(result: dict) -> dict:
    """``result`` with every start renamed ``<init> [key=value ...]`` after the reconstruction settings it ran with
    (``bench/recon.py --set``), and the 3DGR-CT starts also after a scale rule other than the published one
    (``--ini-sigma-3dgr``: ``ini_sigma=0.6``); unchanged where it ran with neither."""
    from recon.presets import THREEDGR_CT

    tag = " ".join(f"{k}={v}" for k, v in sorted((result.get("set") or {}).items()))
    sigma = result.get("ini_sigma_3dgr", THREEDGR_CT["ini_sigma"][0])
    sigma_tag = f"ini_sigma={sigma:g}" if sigma != THREEDGR_CT["ini_sigma"][0] else ""

    def renamed(name: str) -> str:
        tags = " ".join(t for t in (tag, sigma_tag if name.startswith("3dgr-ct") else "") if t)
        return f"{name} [{tags}]" if tags else name

    result["runs"] = {renamed(k): v for k, v in result["runs"].items()}
    return result


def load_cases(paths: list[str], name_by_model: bool = False, name_by_settings: bool = False) -> dict:
    """``bench/recon.py`` JSON files by case: the files of one case (same geometry, views, phantom, planned
    iterations, TV weight, texture, held-out views, simulation and photon count) merged into one result whose ``runs`` hold every
    start.
    A start found again in a later file replaces the earlier run (noted on stderr).
    """
    cases: dict = {}
    sources: dict = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        if name_by_model:
            result = _named_by_model(result)
        if name_by_settings:
            result = _named_by_settings(result)
        planned = re.search(r"--iterations (\d+)", result.get("command", ""))  # runs may be incomplete
        last = max((r["curve"][-1][0] for r in result["runs"].values()), default="?")
        result["iterations"] = int(planned.group(1)) if planned else last
        settings = tuple(result.get(k) or 0 for k in ("tv_weight", "texture", "holdout_views", "simulated_on"))  # runs of other settings stay apart
        settings += (result.get("photons", STUDY_PHOTONS),)
        key = (result["geometry"], result["views"], result["phantom_seed"], result["iterations"], settings)
        for name in result["runs"]:
            if (key, name) in sources:
                print(f"{path}: its start {name!r} replaces the one of {sources[key, name]}", file=sys.stderr)
            sources[key, name] = path
        if key in cases:
            cases[key]["runs"].update(result["runs"])
        else:
            cases[key] = result
    return cases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON files of bench/recon.py")
    p.add_argument("--png", default=None, help="write every case's curves here (one panel per case)")
    p.add_argument("--png-seconds", default=None, help="the same against the measured seconds (curve_seconds)")
    p.add_argument("--relative", type=float, nargs="+", default=[-9.0, -6.0, -3.0, -1.0, 0.0, 2.0],
                   help="PSNR targets in dB from the best FBP/FDK")
    p.add_argument("--name-by-model", action="store_true", help="name the MedGMAE starts by their model's file")
    p.add_argument("--name-by-settings", action="store_true",
                   help="name every start after the settings it ran with (bench/recon.py --set), e.g. 'toolkit [coarse_iterations=0]'")
    p.add_argument("--at", type=int, nargs="+", default=[], metavar="ITERATION",
                   help="also show the PSNR and the fitted loss (bench/recon.py loss_curve) at these iterations, "
                        "and the loss at the peak and the end")
    p.add_argument("--starts", nargs="+", default=None, metavar="NAME",
                   help="show only the starts whose names begin with one of these (e.g. toolkit medgmae-grow)")
    p.add_argument("--versus", nargs="+", default=list(VERSUS), metavar="NAME",
                   help=f"the starts of the comparison columns (default: {' '.join(VERSUS)})")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    cases = load_cases(args.results, args.name_by_model, args.name_by_settings)
    if args.starts:
        for result in cases.values():
            result["runs"] = {k: v for k, v in result["runs"].items() if k.startswith(tuple(args.starts))}
    for result in cases.values():
        print(case_table(result, args.relative, args.at, tuple(args.versus)))
    if args.png and cases:
        tile_curves(list(cases.values()), args.png)
    if args.png_seconds and cases:
        tile_curves(list(cases.values()), args.png_seconds, x_axis="seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
