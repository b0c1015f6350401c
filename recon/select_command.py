"""``medgmae-recon select``: choose among reconstructions of one scan by their held-out error, without a reference.

A real scan has no ground truth to compare settings with (a total-variation weight, a Gaussian budget, a split
rule, a start). Runs of ``reconstruct --holdout-views N`` on the same scan hold out the same views
(:func:`recon.holdout.holdout_split` depends only on the angles, ``N`` and whether the scan is a half-fan one) and record the lowest error with which
their Gaussians predicted them (``metrics.json``: ``holdout.best_error``, relative to the mean square of the fitted
views, which is the same for every run of the scan). That error is a cross-validation score: the run with the
lowest one predicts unseen views best, and ``select`` names it; when runners-up come within
:data:`SELECT_MARGIN` of it, it still names the lowest but says that the held-out error does not tell them apart. How often that is also the run closest to the
ground truth is measured in ``bench/RESULTS.md`` ("Choosing the TV weight by held-out views"): among TV weights 0,
1e-4, 1e-3 and 1e-2 it chose the best on all three 20-view scans of the five, and too little TV on the two
90-view scans (1.6 and 3.8 dB below the best), so trust it on sparse, noisy scans, not on full views.

Runs are of one scan when ``metrics.json`` records the same scan fingerprint (projection shape and content hash,
geometry content hash: :func:`recon.resume.scan_fingerprint`), wherever the files lay; for runs without one, when
their projection and geometry files resolve to the same absolute paths. Runs of different scans, with different
held-out views, or without held-out views are refused with a message naming the run; nothing is written but the optional ``--json`` summary (atomically:
the chosen run, the ranking, the margin, the runners-up within it and the ``software``,
:func:`medgmae.software.software_versions`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from recon.commands import CLIError, check_out_file
from recon.resume import SCAN_KEYS

__all__ = ["cmd_select", "load_run", "rank_runs", "within_margin", "SELECT_MARGIN", "SETTING_KEYS"]

#: Relative difference of held-out errors below which ``select`` says the runs are not told apart: of the pairs of
#: runs in ``bench/RESULTS.md`` ("Choosing the TV weight by held-out views", its five scans and the same-grid check)
#: whose held-out errors differed by 2.8-31.8 %, 6 of 12 were ranked against their PSNR; every pair 77 % or more
#: apart was ranked as the PSNR ranks it.
SELECT_MARGIN = 0.35

#: What the table shows of each run when it differs between the runs (top-level keys of ``metrics.json`` and keys
#: of its ``settings``).
SETTING_KEYS = ("preset", "init", "initial_gaussians", "tv_weight", "split_rule", "iterations", "views_per_iteration")


def load_run(run_dir: str | Path) -> dict:
    """The ``metrics.json`` of a ``reconstruct --holdout-views`` output folder.

    Args:
        run_dir: the folder ``reconstruct --out`` wrote.

    Returns:
        The parsed ``metrics.json``.

    Raises:
        CLIError: the folder has no readable ``metrics.json``, or the run held out no views.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise CLIError(f"{run_dir}: no metrics.json (not an output folder of medgmae-recon reconstruct)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"{path}: not readable as JSON ({e})") from e
    if not isinstance(metrics, dict) or "settings" not in metrics or "arguments" not in metrics:
        raise CLIError(f"{path}: not the metrics of a Gaussian reconstruction")
    h = metrics.get("holdout")
    if not h or not isinstance(h.get("best_error"), (int, float)) or not math.isfinite(h["best_error"]):
        raise CLIError(f"{run_dir}: reconstructed without --holdout-views (no held-out error to compare); run it again "
                       "with --holdout-views N, the same N for every run")  # fmt: skip
    return metrics


def _scan_of(metrics: dict) -> dict:
    """What identifies the run's scan: the fingerprint ``metrics.json`` records (:func:`recon.resume.scan_fingerprint`)
    and the absolute paths of the projections and geometry (for runs without one: the recorded paths, resolved
    here)."""
    scan = metrics.get("scan") if isinstance(metrics.get("scan"), dict) else {}
    a = metrics["arguments"]
    paths = {k: scan.get(k) or str(Path(a.get(k) or "").resolve()) for k in ("projections", "geometry")}
    fingerprint = {k: scan[k] for k in SCAN_KEYS if k in scan}
    used = [f"{flag} {scan[k]}" for flag, k in (("--flat", "flat"), ("--dark", "dark"), ("--i0", "i0")) if scan.get(k) is not None]
    return {**paths, "fingerprint": fingerprint if len(fingerprint) == len(SCAN_KEYS) else None,
            "conversion": "converted with " + ", ".join(used) if used else "read as line integrals (no --flat, --dark or --i0)"}


def _same_scan(a: dict, b: dict) -> bool:
    """Runs of one scan: the same fingerprint, or where a run has none, the same projection and geometry files."""
    if a["fingerprint"] is not None and b["fingerprint"] is not None:
        return a["fingerprint"] == b["fingerprint"]
    return (a["projections"], a["geometry"]) == (b["projections"], b["geometry"])


def _describe(scan: dict) -> str:
    f = scan["fingerprint"]
    return scan["projections"] + (f" (sha256 {f['projections_sha256'][:12]}, geometry sha256 {f['geometry_sha256'][:12]})" if f else "")


def rank_runs(runs: dict[str, dict]) -> list[dict]:
    """Check that the runs are comparable and rank them by held-out error.

    Args:
        runs: run name -> its ``metrics.json`` (:func:`load_run`).

    Returns:
        One row per run, lowest held-out error first: ``run``, ``held_out_error``, ``iteration`` (of that error),
        ``settings`` (the :data:`SETTING_KEYS` that differ between the runs) and ``psnr`` / ``ssim`` of the written
        volume where the run had a reference (``None`` otherwise).

    Raises:
        CLIError: fewer than two runs, runs of different scans, or different held-out views.
    """
    if len(runs) < 2:
        raise CLIError(f"select compares at least two runs, got {len(runs)}")
    first_name, first = next(iter(runs.items()))
    for name, m in runs.items():
        scan, first_scan = _scan_of(m), _scan_of(first)
        if not _same_scan(scan, first_scan) and scan["projections"] == first_scan["projections"] and scan["conversion"] != first_scan["conversion"]:
            raise CLIError(f"{name} and {first_name} both name the raw file {scan['projections']}, converted differently "
                           f"(so their line integrals have different hashes): {name} {scan['conversion']}, {first_name} "
                           f"{first_scan['conversion']}: select compares runs of one scan; reconstruct with the same "
                           "--flat / --dark / --i0")  # fmt: skip
        if not _same_scan(scan, first_scan):
            raise CLIError(f"{name} reconstructs {_describe(_scan_of(m))}, {first_name} {_describe(_scan_of(first))}: select "
                           "compares runs of one scan")  # fmt: skip
        if m["holdout"]["views"] != first["holdout"]["views"]:
            raise CLIError(f"{name} held out views {m['holdout']['views']}, {first_name} {first['holdout']['views']}: "
                           "use the same --holdout-views for every run")  # fmt: skip
    values = {name: {k: m["settings"][k] if k in m["settings"] else m.get(k) for k in SETTING_KEYS} for name, m in runs.items()}
    differ = [k for k in SETTING_KEYS if len({json.dumps(v[k]) for v in values.values()}) > 1]
    rows = [{"run": name, "held_out_error": float(m["holdout"]["best_error"]), "iteration": m["holdout"]["best_iteration"],
             "settings": {k: values[name][k] for k in differ}, "psnr": (m.get("final") or {}).get("psnr"),
             "ssim": (m.get("final") or {}).get("ssim"), "refit": bool(m["holdout"].get("refit"))}
            for name, m in runs.items()]  # fmt: skip
    return sorted(rows, key=lambda r: (r["held_out_error"], not r["refit"]))  # a tie: the run fitted to every view


def format_table(rows: list[dict]) -> str:
    """The ranking as a markdown table (the chosen run first)."""
    keys = list(rows[0]["settings"])
    head = ["run", *keys, "held-out error", "at iteration", "PSNR", "SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        psnr = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        ssim = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
        cells = [("**" + r["run"] + "** (chosen)") if i == 0 else r["run"], *(str(r["settings"][k]) for k in keys),
                 f"{r['held_out_error']:.5g}", str(r["iteration"]), psnr, ssim]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def within_margin(rows: list[dict], margin: float = SELECT_MARGIN) -> list[dict]:
    """The runners-up of a ranking (:func:`rank_runs`) whose held-out error exceeds the lowest by less than
    ``margin`` (relative), tied runs excluded (they have their own note).

    Args:
        rows: the ranking, lowest held-out error first.
        margin: the relative difference below which runs are not told apart (:data:`SELECT_MARGIN`).

    Returns:
        Those rows, in ranking order.
    """
    best = rows[0]["held_out_error"]
    return [r for r in rows[1:] if best < r["held_out_error"] < best * (1 + margin)]


def _margin_note(rows: list[dict], close: list[dict]) -> str:
    """The note naming the runners-up within :data:`SELECT_MARGIN` of the chosen run, with how much higher each is."""
    best = rows[0]["held_out_error"]
    named = ", ".join(f"{r['run']} ({r['held_out_error']:.5g}, {100 * (r['held_out_error'] / best - 1):.1f} % higher)" for r in close)
    return (f"note: within {100 * SELECT_MARGIN:.0f} % of the lowest held-out error: {named}; differences this small "
            "do not tell the runs apart (on the scans measured in bench/RESULTS.md, half of such pairs ranked against "
            "their accuracy): the lowest is named, not shown better")  # fmt: skip


def cmd_select(args) -> int:
    """``select``: rank ``--runs`` by held-out error, print the table and the chosen run (and ``--json``)."""
    from medgmae.files import save_json_atomic

    if args.json:
        check_out_file(args.json, "--json")
    names = [str(r) for r in args.runs]
    if len(set(names)) != len(names):
        raise CLIError(f"a run is named twice in --runs: {names}")
    rows = rank_runs({name: load_run(name) for name in names})
    print(format_table(rows))
    print(f"chosen: {rows[0]['run']} (lowest held-out error, {rows[0]['held_out_error']:.5g} at iteration {rows[0]['iteration']})")
    tied = [r for r in rows[1:] if r["held_out_error"] == rows[0]["held_out_error"]]
    if tied:
        why = "; of tied runs a --refit one, refitted to every view, is chosen" if rows[0]["refit"] else ""
        print(f"note: tied with {', '.join(r['run'] for r in tied)} (equal held-out errors: runs of the same settings "
              f"up to the chosen iteration{why})")  # fmt: skip
    close = within_margin(rows)
    if close:
        print(_margin_note(rows, close))
    if args.json:
        from medgmae.software import software_versions

        # select runs on no device: the software that ranked the runs (each run's own is in its metrics.json)
        save_json_atomic({"chosen": rows[0]["run"], "runs": rows, "margin": SELECT_MARGIN,
                          "within_margin": [r["run"] for r in close], "software": software_versions()}, args.json)  # fmt: skip
    return 0
