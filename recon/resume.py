"""What ties a saved ``reconstruct`` state to its run: the scan's fingerprint and the settings that shaped the run,
recorded in ``recon_state.pt`` (and the fingerprint in ``metrics.json``), and the checks of ``--resume`` against them.

A state resumes only the run that wrote it: the same projections (shape and SHA-256 of their float32 bytes), the
same geometry (SHA-256 of its JSON content) and the same settings (:func:`run_settings`). ``--iterations`` may
differ (not below the saved iteration): the learning-rate and density-control schedules then follow the new
length. States written before fingerprints were recorded still load, with a warning, after their preset is checked.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from medgmae.settings_diff import settings_differences
from recon.commands import CLIError
from recon.geometry import CTGeometry

__all__ = ["load_resume_state", "run_settings", "scan_fingerprint", "SCAN_KEYS"]

#: The fingerprint entries that identify a scan (the paths are recorded too, but a moved scan is the same scan).
SCAN_KEYS = ("projections_shape", "projections_sha256", "geometry_sha256")

_INIT_FLAGS = {"init": "--init", "num_gaussians": "--num-gaussians", "grow_to": "--num-gaussians (growth budget)",
               "checkpoint": "--checkpoint", "model_spacing": "--model-spacing"}  # fmt: skip


def scan_fingerprint(proj: np.ndarray, geom: CTGeometry, proj_path: str, geom_path: str) -> dict:
    """The scan's fingerprint: projection shape and SHA-256 of their float32 bytes, SHA-256 of the geometry's JSON
    content (keys sorted), and the absolute paths of both files.

    Args:
        proj: the projections ``(views, rows, cols)`` as read.
        geom: the geometry as read.
        proj_path: the projection file given.
        geom_path: the geometry file given.

    Returns:
        ``{"projections_shape", "projections_sha256", "geometry_sha256", "projections", "geometry"}``.
    """
    data = np.ascontiguousarray(proj, dtype="<f4")
    geom_json = json.dumps(geom.to_dict(), sort_keys=True)
    return {
        "projections_shape": list(proj.shape),
        "projections_sha256": hashlib.sha256(data.tobytes()).hexdigest(),
        "geometry_sha256": hashlib.sha256(geom_json.encode()).hexdigest(),
        "projections": str(Path(proj_path).resolve()),
        "geometry": str(Path(geom_path).resolve()),
    }


def run_settings(args, init_settings: dict) -> dict:
    """The settings that shape a run besides its length, keyed by their flags (``init`` holds the start's, with the
    model checkpoint's absolute path)."""
    if init_settings.get("checkpoint"):
        init_settings = {**init_settings, "checkpoint": str(Path(init_settings["checkpoint"]).resolve())}
    return {
        "--preset": args.preset, "--tv": float(args.tv), "--views-per-iteration": args.views_per_iteration,
        "--split-rule": args.split_rule, "--coarse-iterations": args.coarse_iterations, "--seed": args.seed,
        "--holdout-views": args.holdout_views, "--patience": args.patience,
        "start FBP": f"--fbp {Path(args.fbp).resolve()}" if args.fbp else f"--filter {args.filter}", "init": init_settings,
    }  # fmt: skip


def _pick(record: dict, keys) -> dict:
    """The entries of ``record`` under ``keys`` that it holds, in the order of ``keys``."""
    return {k: record[k] for k in keys if k in record}


def _differences(saved: dict, now: dict) -> list[str]:
    """One line per recorded field that differs (:func:`medgmae.settings_diff.settings_differences`): the scan's
    fingerprint entries, the settings by their flags, then the initialisation's settings (by the flag that sets
    them, or ``initialisation setting <name>``)."""
    old, new = saved.get("settings") or {}, now["settings"]
    out = settings_differences(_pick(saved.get("scan") or {}, SCAN_KEYS), _pick(now["scan"], SCAN_KEYS))
    out += settings_differences(_pick(old, [k for k in old if k != "init"]), _pick(new, [k for k in new if k != "init"]))
    old_init, new_init = old.get("init") or {}, new["init"]
    labels = {k: _INIT_FLAGS.get(k, "initialisation setting " + k) for k in {*old_init, *new_init}}
    return out + settings_differences(old_init, new_init, labels)


def load_resume_state(state_path: Path, run_info: dict, iterations: int) -> dict:
    """The saved state to ``--resume`` from, checked to belong to this scan and these settings.

    Args:
        state_path: ``OUT/recon_state.pt``.
        run_info: this run's ``{"scan": scan_fingerprint(...), "settings": run_settings(...)}``.
        iterations: ``--iterations`` of this run.

    Returns:
        The state (for :meth:`recon.gaussian_recon.GaussianReconstructor.load_state_dict`).

    Raises:
        CLIError: no state; not a reconstruction state (:func:`recon.state.check_state`: refused as soon as it is
            read, before any work); a state of another scan or other settings (each differing field named, its saved value
            and this run's);
            ``iterations`` below the saved iteration.
    """
    from medgmae.files import load_torch_file
    from recon.state import check_state

    if not state_path.is_file():
        raise CLIError(f"--resume: no saved state {state_path}")
    state = load_torch_file(state_path, what="reconstruction state")
    try:
        check_state(state)
    except ValueError as e:
        raise CLIError(f"cannot resume from {state_path}: {e}") from e
    saved = state.get("run_info")
    if saved is None:  # written before the fingerprint was recorded: only the preset can be checked
        preset = state.get("config", {}).get("preset_name", "toolkit")
        if preset != run_info["settings"]["--preset"]:
            raise CLIError(f"--resume: {state_path} was written with --preset {preset}, not {run_info['settings']['--preset']}")
        print(f"warning: --resume: {state_path} records no scan fingerprint or settings (an older version wrote it): "
              "nothing checks that it belongs to these projections and settings", file=sys.stderr)  # fmt: skip
    else:
        diffs = _differences(saved, run_info)
        if diffs:
            raise CLIError(f"--resume: {state_path} was saved by a run of another scan or with other settings: " + "; ".join(diffs))
    done = int(state.get("iteration", 0))
    if iterations < done:
        raise CLIError(f"--resume: {state_path} is at iteration {done} but --iterations is {iterations}: give --iterations "
                       f"{done} or more (the schedules follow the new length; {done} writes the saved run's outputs again)")  # fmt: skip
    planned = state.get("config", {}).get("iterations")
    if planned is not None and planned != iterations:
        print(f"note: --resume: the saved run was planned for {planned} iterations; the learning-rate and density-control "
              f"schedules now follow --iterations {iterations}", file=sys.stderr)  # fmt: skip
    return state
