"""What ties a saved ``reconstruct`` state to its run: the scan's fingerprint and the settings that shaped the run,
recorded in ``recon_state.pt`` (and the fingerprint in ``metrics.json``), and the checks of ``--resume`` against them.

A state resumes only the run that wrote it: the same projections (shape and SHA-256 of their float32 bytes), the
same geometry (SHA-256 of its JSON content), the same conversion of raw detector images (SHA-256 of the ``--flat``
and ``--dark`` files' bytes, ``--i0``: :data:`RAW_KEYS`), the same settings (:func:`run_settings`) and the same content of the
files the start is rebuilt from (``--checkpoint``, ``--fbp``: SHA-256 of their bytes, :func:`input_fingerprints`;
pre-training rewrites ``model.pt`` in place every epoch). ``--iterations`` may
differ (not below the saved iteration): the learning-rate and density-control schedules then follow the new
length. States written before fingerprints were recorded still load, with a warning, after their preset is checked;
so do states written before the files' content was recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from medgmae.data.fingerprint import detached_data_file, file_sha256, path_fingerprint
from medgmae.settings_diff import settings_differences
from medgmae.words import plural
from recon.commands import CLIError
from recon.geometry import CTGeometry

__all__ = ["input_fingerprints", "load_resume_state", "run_settings", "scan_fingerprint", "RAW_KEYS", "SCAN_KEYS"]

#: The fingerprint entries that identify a scan (the paths are recorded too, but a moved scan is the same scan).
SCAN_KEYS = ("projections_shape", "projections_sha256", "geometry_sha256")
#: The way on from a saved state that cannot be resumed.
_NEW_RUN = "start a new run (without --resume, or another --out)"
#: The fingerprint entries of the conversion of raw detector images (:mod:`recon.flat_field`), ``None`` where not
#: used, each compared by ``--resume`` and named by its flag (the paths are recorded too, not compared).
RAW_KEYS = {"flat_sha256": "--flat (sha256 of the file)", "dark_sha256": "--dark (sha256 of the file)", "i0": "--i0"}

_INIT_FLAGS = {"init": "--init", "num_gaussians": "--num-gaussians", "grow_to": "--num-gaussians (growth budget)",
               "checkpoint": "--checkpoint", "model_spacing": "--model-spacing",
               "fit_iterations": "--init-fit-iterations"}  # fmt: skip


def scan_fingerprint(proj: np.ndarray, geom: CTGeometry, proj_path: str, geom_path: str, raw: dict | None = None) -> dict:
    """The scan's fingerprint: projection shape and SHA-256 of their float32 bytes (the line integrals, after any
    conversion of raw images), SHA-256 of the geometry's JSON content (keys sorted), the absolute paths of both
    files, and what converted raw images (:data:`RAW_KEYS`).

    Args:
        proj: the projections ``(views, rows, cols)`` as read.
        geom: the geometry as read.
        proj_path: the projection file given.
        geom_path: the geometry file given.
        raw: :func:`recon.flat_field.load_raw_projections`'s record ``{"flat", "dark", "i0"}`` (absolute paths,
            ``None`` where not given), or ``None`` for line integrals read as they are.

    Returns:
        ``{"projections_shape", "projections_sha256", "geometry_sha256", "projections", "geometry", "flat",
        "flat_sha256", "dark", "dark_sha256", "i0"}``: the last five ``None`` where not used.
    """
    data = np.ascontiguousarray(proj, dtype="<f4")
    geom_json = json.dumps(geom.to_dict(), sort_keys=True)
    raw = raw or {}
    record = {
        "projections_shape": list(proj.shape),
        "projections_sha256": hashlib.sha256(data.tobytes()).hexdigest(),
        "geometry_sha256": hashlib.sha256(geom_json.encode()).hexdigest(),
        "projections": str(Path(proj_path).resolve()),
        "geometry": str(Path(geom_path).resolve()),
    }
    for name in ("flat", "dark"):
        path = raw.get(name)
        record[name], record[f"{name}_sha256"] = path, file_sha256(path) if path else None
    return {**record, "i0": raw.get("i0")}


def input_fingerprints(args, missing_ok: bool = False) -> dict:
    """The content of the files a run's start is built from, which a resume rebuilds the start from again: for
    ``--checkpoint`` and ``--fbp`` when given, their :func:`path_fingerprint` ``{"path": absolute path, "sha256": ...}``
    (a single file's bytes; a DICOM folder's or a header's with its data file: of its files' SHA-256 lines;
    ``missing_ok``: files that are not there are left out, for their readers to name)."""
    given = (("--checkpoint", getattr(args, "checkpoint", None)), ("--fbp", getattr(args, "fbp", None)))
    return {flag: path_fingerprint(path) for flag, path in given if path and not (missing_ok and not Path(path).is_file())}


def changed_while_read(before: dict, after: dict) -> list[str]:
    """The flags of :func:`input_fingerprints` ``before`` the files were read whose content differs ``after``: a
    file rewritten while it was read (a pre-training run saving ``model.pt`` each epoch), so that the start may be
    built from other content than the fingerprint a resume compares."""
    return [flag for flag, mine in before.items() if after.get(flag, {}).get("sha256") != mine["sha256"]]


def _changed_files(saved: dict, now: dict, state_path: Path) -> list[str]:
    """One line per file of :func:`input_fingerprints` whose content differs from what the saved run read (a file
    at another path is a setting that differs, named by :func:`_differences`); a saved run that recorded no
    content (an older version) is warned about."""
    if "files" not in saved:
        if now.get("files"):
            print(f"warning: --resume: {state_path} records no fingerprint of the content of {', '.join(now['files'])} "
                  "(an older version wrote it): nothing checks that the files are those the run started from",
                  file=sys.stderr)  # fmt: skip
        return []
    out = []
    for flag, mine in (now.get("files") or {}).items():
        theirs = (saved["files"] or {}).get(flag)
        if theirs and theirs.get("path") == mine["path"] and not _same_content(theirs, mine):
            out.append(f"{flag} {mine['path']} changed since the saved run read it (sha256 saved {theirs['sha256'][:12]}, "
                       f"now {mine['sha256'][:12]}): the resumed start would be rebuilt from other content")  # fmt: skip
    return out


def _same_content(theirs: dict, mine: dict) -> bool:
    """Whether the saved run's fingerprint ``theirs`` names the content of this run's file ``mine``
    (:func:`medgmae.data.fingerprint.path_fingerprint`): the same SHA-256, or, for a detached header (``.mhd``,
    ``.nhdr``), the header's own, as releases before its data file was fingerprinted recorded it."""
    if theirs.get("sha256") == mine["sha256"]:
        return True
    path = Path(mine["path"])
    return detached_data_file(path) is not None and theirs.get("sha256") == file_sha256(path)


def run_settings(args, init_settings: dict) -> dict:
    """The settings that shape a run besides its length, keyed by their flags (``init`` holds the start's, with the
    model checkpoint's absolute path)."""
    if init_settings.get("checkpoint"):
        init_settings = {**init_settings, "checkpoint": str(Path(init_settings["checkpoint"]).resolve())}
    return {
        "--preset": args.preset, "--tv": float(args.tv), "--views-per-iteration": args.views_per_iteration,
        "--split-rule": args.split_rule, "--max-gaussians": args.max_gaussians, "--coarse-iterations": args.coarse_iterations,
        "--seed": args.seed,
        "--holdout-views": args.holdout_views, "--patience": args.patience,
        "start FBP": f"--fbp {Path(args.fbp).resolve()}" if args.fbp else f"--filter {args.filter}", "init": init_settings,
    }  # fmt: skip


def _follow_moved_files(saved: dict, now: dict) -> tuple[dict, list[str]]:
    """``saved`` with the paths of its ``--checkpoint`` / ``--fbp`` replaced by this run's where this run gives a file
    of the same content (SHA-256) at another path (a model folder moved or copied), and a note for each: the start
    is rebuilt from the same bytes, as a resume needs (a file at the saved path with other bytes is refused by
    :func:`_changed_files`; other bytes at another path are a setting that differs)."""
    settings, notes = dict(saved.get("settings") or {}), []
    for flag, mine in (now.get("files") or {}).items():
        theirs = (saved.get("files") or {}).get(flag)
        if not theirs or theirs.get("path") == mine["path"] or not _same_content(theirs, mine):
            continue
        if flag == "--checkpoint" and (settings.get("init") or {}).get("checkpoint") == theirs["path"]:
            settings["init"] = {**settings["init"], "checkpoint": mine["path"]}
        elif flag == "--fbp" and settings.get("start FBP") == f"--fbp {theirs['path']}":
            settings["start FBP"] = f"--fbp {mine['path']}"
        else:
            continue
        notes.append(f"note: --resume: {flag} {mine['path']} holds the same bytes as the saved run's {theirs['path']} "
                     "(moved or copied): resuming with it")  # fmt: skip
    return {**saved, "settings": settings}, notes


def _pick(record: dict, keys) -> dict:
    """The entries of ``record`` under ``keys`` that it holds, in the order of ``keys``."""
    return {k: record[k] for k in keys if k in record}


def _differences(saved: dict, now: dict) -> list[str]:
    """One line per recorded field that differs (:func:`medgmae.settings_diff.settings_differences`): the scan's
    fingerprint entries (those of a conversion of raw images by their flags), the settings by their flags, then the initialisation's settings (by the flag that sets
    them, or ``initialisation setting <name>``)."""
    old, new = saved.get("settings") or {}, now["settings"]
    out = settings_differences(_pick(saved.get("scan") or {}, SCAN_KEYS), _pick(now["scan"], SCAN_KEYS))
    out += settings_differences(_pick(saved.get("scan") or {}, RAW_KEYS), _pick(now["scan"], RAW_KEYS), RAW_KEYS)
    out += settings_differences(_pick(old, [k for k in old if k != "init"]), _pick(new, [k for k in new if k != "init"]))
    old_init, new_init = dict(old.get("init") or {}), dict(new["init"])
    if "fit_iterations" in old_init and "fit_iterations" in new_init:  # 0 (off) is recorded as None: shown as 0
        for init in (old_init, new_init):
            init["fit_iterations"] = init["fit_iterations"] or 0
    labels = {k: _INIT_FLAGS.get(k, "initialisation setting " + k) for k in {*old_init, *new_init}}
    return out + settings_differences(old_init, new_init, labels)


def _raw_advice(saved: dict, now: dict) -> str:
    """Where the conversion of raw images differs (:data:`RAW_KEYS`): the saved run's ``--flat`` / ``--dark`` /
    ``--i0`` (the paths metrics.json records) and what to give, else ``""``."""
    if _pick(saved, RAW_KEYS) == _pick(now, RAW_KEYS):
        return ""
    used = [f"{flag} {saved[key]}" for flag, key in (("--flat", "flat"), ("--dark", "dark"), ("--i0", "i0")) if saved.get(key) is not None]
    return (f". The interrupted run converted the raw images with {', '.join(used) or 'no --flat, --dark or --i0'} "
            "(metrics.json's scan): give the same --flat/--dark as the interrupted run (and its --i0)")


def _read_state(state_path: Path) -> dict:
    """The reconstruction state in ``state_path`` (an existing file), refused with the way on (a new run) when it
    does not load or is no reconstruction state, and with an update of the toolkit as the first way on when a newer
    release wrote it (:func:`recon.state.check_state`).

    Raises:
        CLIError: not a PyTorch file, not a reconstruction state, or one of a newer layout version; ``ValueError``
            when it is cut short.
    """
    from medgmae.torch_files import load_torch_file
    from recon.state import NewerStateError, check_state

    try:
        state = load_torch_file(state_path, what="reconstruction state", damaged_advice=f"{_NEW_RUN}: runs write their "
                                "state whole or not at all, so a copy or another program cut this one short")
    except ValueError as e:
        if _NEW_RUN in str(e):  # cut short: the loader said what to do
            raise
        raise CLIError(f"{e}{' If it is: ' if str(e).endswith('?') else '; '}{_NEW_RUN}") from e
    try:
        check_state(state, state_path)
    except NewerStateError as e:  # names the file; a new run is the other way on
        raise CLIError(f"--resume: {e}; or {_NEW_RUN}") from e
    except ValueError as e:
        raise CLIError(f"cannot resume from {state_path}: {e}; {_NEW_RUN}") from e
    return state


def load_resume_state(state_path: Path, run_info: dict, iterations: int) -> dict:
    """The saved state to ``--resume`` from, checked to belong to this scan and these settings.

    Args:
        state_path: ``OUT/recon_state.pt``.
        run_info: this run's ``{"scan": scan_fingerprint(...), "settings": run_settings(...), "files":
            input_fingerprints(...)}``.
        iterations: ``--iterations`` of this run.

    Returns:
        The state (for :meth:`recon.gaussian_recon.GaussianReconstructor.load_state_dict`).

    Raises:
        CLIError: no state; not a reconstruction state, or one a newer release wrote (:func:`recon.state.check_state`:
            refused as soon as it is read, before any work); a state of another scan or other settings (each differing field named, its saved value
            and this run's);
            a ``--checkpoint`` or ``--fbp`` file at the saved path whose content changed (each named);
            ``iterations`` below the saved iteration.
    """
    if not state_path.is_file():
        raise CLIError(f"--resume: no saved state {state_path} (a run stopped before its first save, or another "
                       "--out: run the command without --resume to start afresh)")
    state = _read_state(state_path)
    saved = state.get("run_info")
    if saved is None:  # written before the fingerprint was recorded: only the preset can be checked
        preset = state.get("config", {}).get("preset_name", "toolkit")
        if preset != run_info["settings"]["--preset"]:
            raise CLIError(f"--resume: {state_path} was written with --preset {preset}, not {run_info['settings']['--preset']}")
        print(f"warning: --resume: {state_path} records no scan fingerprint or settings (an older version wrote it): "
              "nothing checks that it belongs to these projections and settings", file=sys.stderr)  # fmt: skip
    else:
        saved, moved = _follow_moved_files(saved, run_info)
        diffs = _differences(saved, run_info)
        if diffs:
            raise CLIError(f"--resume: {state_path} was saved by a run of another scan or with other settings: "
                           + "; ".join(diffs) + _raw_advice(saved.get("scan") or {}, run_info["scan"]))  # fmt: skip
        changed = _changed_files(saved, run_info, state_path)
        if changed:
            raise CLIError(f"--resume: {state_path}: " + "; ".join(changed) + ". Restore the file the run started from, "
                           "or start a new run (another --out, or this one without --resume)")  # fmt: skip
        for note in moved:  # said once the resume is taken
            print(note, flush=True)
    done = int(state.get("iteration", 0))
    if iterations < done:
        raise CLIError(f"--resume: {state_path} is at iteration {done} but --iterations is {iterations}: give --iterations "
                       f"{done} or more (the schedules follow the new length; {done} writes the saved run's outputs again)")  # fmt: skip
    planned = state.get("config", {}).get("iterations")
    if planned is not None and planned != iterations:
        print(f"note: --resume: the saved run was planned for {plural(planned, 'iteration')}; the learning-rate and density-control "
              f"schedules now follow --iterations {iterations}", file=sys.stderr)  # fmt: skip
    return state
