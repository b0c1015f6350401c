"""What ``medgmae-recon reconstruct`` does: the initialisation it asks for, the optimisation, and its outputs
(``recon.nii.gz``, ``gaussians.ply``, ``ellipsoids.vtk``, ``metrics.json``, ``curve.png``, ``slices.png``, the
resumable ``recon_state.pt``) written together, then the closing summary (:mod:`recon.reconstruct_summary`). Every
input is checked before anything is written."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from recon.commands import (
    CLIError,
    Interrupted,
    check_out_folder,
    load_matching_volume,
    load_scan,
    placed_geometry,
    resolve_cli_device,
    warn_about_scan,
)
from medgmae.files import path_length_problem
from medgmae.folder_lock import folder_held
from recon.geometry import CTGeometry
from recon.growth import growth_note
from recon import reconstruct_start as start
from recon.reconstruct_summary import print_summary, write_reconstruction
from recon.state import RECON_STATE

__all__ = ["RECON_STATE", "cmd_reconstruct"]


def cmd_reconstruct(args) -> int:
    """``reconstruct``: check every input, initialise, optimise, write all outputs together, print the summary.

    Raises:
        Interrupted: on Ctrl-C, saying where the last saved state is (no other output is written; the projector's
            matrix stays for the next run). Any other failure of a run that created its output folder, before its
            first saved state, removes the matrix it saved there; the folders the run created (``--out`` and its
            parents) are removed when they are left empty. A matrix in ``--matrix-dir`` is never removed.
    """
    out = Path(args.out)
    if problem := path_length_problem(out):  # before the lookups below, which fail on such a path
        raise CLIError(f"--out {args.out}: {problem}")
    with folder_held(out) as created:  # one run at a time in the folder: another's is refused before anything here
        state_path = out / RECON_STATE
        before = state_path.stat().st_mtime_ns if state_path.is_file() else None
        matrix: list[Path] = []  # the projector's matrix file, once the run knows it (named by the Ctrl-C line)
        try:
            return _reconstruct(args, matrix)
        except KeyboardInterrupt:
            raise Interrupted(_interrupted_note(args, state_path, before, matrix)) from None
        except Exception:
            if created is not None and not state_path.is_file():  # nothing to resume: the matrix is hundreds of MiB
                _remove_matrix(out)
            raise


def _remove_matrix(out: Path) -> None:
    """Delete the projector's matrix in ``out`` (the run's own :data:`MATRIX_FILE`, never a ``--matrix-dir`` one);
    :func:`~medgmae.folder_lock.folder_held` then removes ``out``, and the parents it created, when that leaves them
    empty."""
    from recon.projectors.matrix_cache import MATRIX_FILE

    if out.is_dir():  # else never made (a refused --out below a file)
        (out / MATRIX_FILE).unlink(missing_ok=True)


def _interrupted_note(args, state_path: Path, before: int | None, matrix: list[Path]) -> str:
    """What an interrupted run left: the state it saved (``before``: the state file's mtime at the start) or, without
    one, the projector's matrix file (``matrix``: its path, when the run got that far) kept for the next run."""
    from medgmae.torch_files import load_torch_file

    if state_path.is_file() and state_path.stat().st_mtime_ns != before:
        try:
            at = f" (iteration {int(load_torch_file(state_path, what='reconstruction state')['iteration'])})"
        except (ValueError, KeyError, TypeError, OSError):
            at = ""
        if args.refit:  # _refit runs without a state file: the state is always the held-out run's
            return (f"the last state{at} of the run with {args.holdout_views} views held out is saved in {state_path} "
                    "(the --refit run on every view saves no state: it runs again after that run); the same command "
                    "with --resume continues it")  # fmt: skip
        return f"the last state{at} is saved in {state_path}; the same command with --resume continues it"
    if args.resume and state_path.is_file():
        return f"no newer state was saved; {state_path}, the state resumed from, is unchanged (--resume continues it)"
    every, n = args.checkpoint_every, args.iterations
    early = " or where --patience stops it" if args.patience else ""
    first = f"at iteration {every}{early}" if 0 < every < n else f"at the end of the run, iteration {n}{early}"
    kept = f" (the projector's matrix {matrix[0]} stays for the next run to read)" if matrix and matrix[0].is_file() else ""
    return f"no state was saved yet (the first is saved {first}); no output was written{kept}"


class _Inputs(NamedTuple):
    """Everything :func:`_reconstruct` reads, each checked, before anything is written."""

    geom: CTGeometry
    proj: np.ndarray
    init_settings: dict
    reference: np.ndarray | None
    fbp_vol: np.ndarray | None
    affine: np.ndarray
    model: Any
    run_info: dict
    state: dict | None
    device: torch.device
    model_spec: tuple | None  # --init medgmae: (the spec, its record), start.model_start_spec
    open_beam_floor: float  # raw images: the level no pixel reads below (recon.flat_field.open_beam_floor), else 0


def _read_inputs(args) -> _Inputs:
    """Check the flags and read the scan, volumes, model and resumable state (nothing is written)."""
    from recon.resume import changed_while_read, input_fingerprints, load_resume_state, run_settings, scan_fingerprint

    _check_flags(args)
    files = input_fingerprints(args, missing_ok=True)  # before they are read: compared with after, below
    geom, proj, raw, floor = load_scan(args.projections, args.geometry, args.flat, args.dark, args.i0)
    init_settings = start.init_settings(args, int(np.prod(geom.volume_shape)))
    _check_holdout_flags(args, geom)
    _check_views_per_iteration(args, geom)
    check = not args.no_unit_check
    reference, ref_affine = load_matching_volume(args.reference, geom, args.geometry, "reference", "--reference", check) if args.reference else (None, None)
    fbp_vol, fbp_affine = load_matching_volume(args.fbp, geom, args.geometry, "FBP volume", "--fbp", check) if args.fbp else (None, None)
    model = _load_model(args) if init_settings["init"] == "medgmae" else None
    model_spec = start.model_start_spec(model, args.model_spacing, args.checkpoint) if model is not None else None
    state_path = Path(args.out) / RECON_STATE
    files, read = input_fingerprints(args), files
    if changed := changed_while_read(read, files):
        named = ", ".join(f"{flag} {files[flag]['path']}" for flag in changed)
        raise CLIError(f"{named} changed while it was read (is "
                       "a run writing it, e.g. a pre-training saving model.pt each epoch?): run again once it is written")
    run_info = {"scan": scan_fingerprint(proj, geom, args.projections, args.geometry, raw), "settings": run_settings(args, init_settings),
                "files": files}  # fmt: skip
    state = load_resume_state(state_path, run_info, args.iterations) if args.resume else None
    if not args.resume and state_path.is_file():
        print(f"note: {args.out} holds an earlier run's {RECON_STATE}: this run replaces it when it saves its first "
              "state (stop now and add --resume to continue that run instead)", file=sys.stderr)  # fmt: skip
    geom = placed_geometry(geom, args, fbp_affine, ref_affine)  # after the fingerprint: the scan as geometry.json states it
    affine = fbp_affine if fbp_affine is not None else geom.default_affine()
    device = resolve_cli_device(args.device)
    if args.backend == "astra":
        from recon.projectors.astra_proj import astra_problem

        if problem := astra_problem(geom, device):
            raise CLIError(f"--backend astra cannot take this {geom.kind}-beam scan on {device}: {problem}; use "
                           "--backend auto, which picks one that can (matrix or torch)")  # fmt: skip
    if model is not None:
        model = model.to(device).eval()
    return _Inputs(geom, proj, init_settings, reference, fbp_vol, affine, model, run_info, state, device, model_spec, floor)


def _reconstruct(args, matrix: list[Path]) -> int:
    """What :func:`cmd_reconstruct` does (``matrix`` receives the projector's matrix file, for a matrix backend)."""
    from recon.gaussian_recon import GaussianReconstructor
    from recon.holdout import fitted_views_fbp
    from medgmae.software import software_versions
    from recon.metrics import evaluate

    x = _read_inputs(args)
    geom, init_settings, reference, affine, model, device = x.geom, x.init_settings, x.reference, x.affine, x.model, x.device
    out = Path(args.out)
    state_path = out / RECON_STATE
    torch.manual_seed(args.seed)
    projector, projector_seconds = _build_projector(geom, args.backend, device, out, args.matrix_dir, matrix)
    proj_t = torch.from_numpy(x.proj).to(device)
    t0 = time.perf_counter()
    fbp_t = _start_volume(args, x, projector, proj_t)
    warn_about_scan(geom, x.proj, fbp=x.fbp_vol is None, open_beam_floor=x.open_beam_floor,
                    source=f"projections {args.projections}")  # with --fbp, the axis and degrees: they spoil the fit as well
    start_fbp = fitted_views_fbp(proj_t, geom, args.holdout_views, args.filter) if args.holdout_views else fbp_t  # unseen views stay unseen
    if x.state is None:
        print(f"initialising the Gaussians (--init {init_settings['init']})...", flush=True)
    else:  # the start is still built: its shapes receive the state, its PSNR / SSIM are iteration 0's record
        print(f"resuming from {state_path} at iteration {int(x.state.get('iteration', 0))} (rebuilding the --init "
              f"{init_settings['init']} start it replaces)...", flush=True)  # fmt: skip
    spec = x.model_spec[0] if x.model_spec else None
    init, value_scale = start.initialise(args, init_settings, start_fbp, affine, model, spec)
    init_seconds = time.perf_counter() - t0
    cfg = _config(args, init_settings, init)
    ref_t = None if reference is None else torch.from_numpy(reference)
    rec = GaussianReconstructor(projector, proj_t, init, cfg, reference=ref_t, device=device, value_scale=value_scale,
                                unit_check=False)  # --reference's file checked by load_matching_volume
    software = software_versions(device)  # this session's; the state keeps the first session's (None: not recorded)
    first_software = software if x.state is None else (x.state.get("run_info") or {}).get("software")
    rec.run_info = {**x.run_info, "software": first_software}  # saved with the state
    start_eval = rec.evaluate() or None  # the start's PSNR / SSIM (before a resumed state replaces it): iteration 0
    if x.state is not None:
        _resume(rec, x.state, state_path, software)
    print(growth_note(cfg, rec.iteration, rec.num_gaussians), flush=True)  # how the count and the iterations' cost grow
    progress = "lines" if args.no_progress else True  # --no-progress: no bar, the evaluations' lines still
    result = rec.run(checkpoint_path=state_path, progress=progress)
    holdout = _holdout_record(args, rec, result)
    if args.refit and result.best_iteration is not None:
        init_fn = lambda: start.initialise(args, init_settings, fbp_t, affine, model, spec)  # noqa: E731
        holdout["init_seconds"] = init_seconds  # the held-out run's start; the record's own is the refit's
        rec, result, start_eval, init, init_seconds = _refit(rec, init_fn, result.best_iteration, progress=progress)
    metrics = _metrics(args, init_settings, cfg, rec, result, init, init_seconds, projector.name, device, software)
    metrics["holdout"], metrics["scan"], metrics["projector_seconds"] = holdout, x.run_info["scan"], projector_seconds
    metrics["inputs"] = x.run_info["files"]  # the --checkpoint / --fbp content the start was built from (SHA-256)
    metrics["start"], metrics["first_session_software"] = start_eval, first_software
    if x.model_spec:  # the zero-shot start's pre-processing, read from the model (--model-spacing applied)
        metrics["init_settings"] = {**init_settings, "preprocessing": x.model_spec[1]}
    if reference is not None:
        metrics["final"] = evaluate(result.volume.cpu().numpy(), reference)
        metrics["fbp"] = evaluate(fbp_t.cpu().numpy(), reference)
    write_reconstruction(out, geom, result, fbp_t.cpu().numpy(), reference, metrics)
    print_summary(metrics, out)
    return 0


def _start_volume(args, x: _Inputs, projector, proj_t: torch.Tensor) -> torch.Tensor:
    """The FBP/FDK of the scan, or the ``--fbp`` volume once its orientation is checked (:mod:`recon.fbp_check`)."""
    from recon.fbp import fbp
    from recon.fbp_check import check_fbp_orientation

    if x.fbp_vol is None:
        print(f"computing the {'FBP' if x.geom.kind == 'parallel' else 'FDK'} of {x.geom.num_views} views...", flush=True)
        return fbp(proj_t, x.geom, args.filter)
    fbp_t = torch.from_numpy(x.fbp_vol).to(x.device)
    if not args.no_fbp_check:
        check_fbp_orientation(projector, proj_t, fbp_t, args.fbp)
    return fbp_t


def _build_projector(geom: CTGeometry, backend: str, device: torch.device, out: Path, matrix_dir: str | None, matrix: list[Path]):
    """The scan's projector, announced first (building a matrix backend takes a while on large scans: its matrix is
    kept in ``out``, or in ``matrix_dir`` shared by runs, and read from there by a later run on the same scan,
    :mod:`recon.projectors.matrix_cache`).

    Args:
        geom: the scan.
        backend: ``--backend``.
        device: the device the run computes on.
        out: the run's output folder.
        matrix_dir: ``--matrix-dir``, the folder shared by runs for the matrix (``None``: ``out``).
        matrix: receives the matrix's file (:func:`~recon.projectors.matrix_cache.matrix_path`) before the build.

    Returns:
        ``(projector, seconds taken)``.
    """
    from recon.projectors import describe_backend, make_projector, resolve_backend

    chosen = resolve_backend(geom, backend, device)
    how = describe_backend(chosen, device) + (", chosen by --backend auto" if backend == "auto" else "")
    print(f"building the projector ({geom.kind} beam, {geom.num_views} views, {chosen} backend: {how}, {device})...", flush=True)
    t0 = time.perf_counter()
    if chosen != "matrix":
        if matrix_dir is not None:  # only auto gets here (_check_flags refuses it with --backend torch or astra)
            print(f"note: --matrix-dir {matrix_dir} is not used: --backend auto chose the {chosen} backend, which "
                  "builds no matrix", file=sys.stderr, flush=True)  # fmt: skip
        # the request, not the choice: "auto" that falls back to the ray marcher on the CPU logs why, as from Python
        return make_projector(geom, backend, device), time.perf_counter() - t0
    from recon.projectors.matrix_cache import cached_matrix_projector, matrix_key, matrix_path

    matrix.append(matrix_path(matrix_dir or out, matrix_key(geom), shared=matrix_dir is not None))
    projector, note = cached_matrix_projector(geom, matrix_dir or out, shared=matrix_dir is not None)
    print(f"{note} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return projector, time.perf_counter() - t0


def _config(args, init_settings: dict, init):
    """The run's :class:`~recon.presets.GaussianReconConfig`: the preset's settings with those the flags and the
    start (``init``, its density-control budget) change."""
    from recon.gaussian_recon import GaussianReconConfig

    return GaussianReconConfig.preset(
        args.preset, args.iterations, tv_weight=args.tv, views_per_iteration=args.views_per_iteration,
        eval_every=args.eval_every, checkpoint_every=max(0, args.checkpoint_every), seed=args.seed,
        holdout_views=args.holdout_views, holdout_patience=args.patience, **start.density_overrides(args, init_settings, init),
        **({} if args.coarse_iterations is None else {"coarse_iterations": args.coarse_iterations}),
    )  # fmt: skip


def _holdout_record(args, rec, result) -> dict | None:
    """metrics.json's ``holdout``: the held-out views' summary and errors of the run on the fitted views (before a
    ``--refit``); ``None`` without held-out views."""
    if rec.holdout is None:
        return None
    return {**rec.holdout.summary(), "refit": bool(args.refit), "run_iterations": result.iterations,
            "run_seconds": result.seconds, "errors": [(r["iteration"], r["holdout_error"]) for r in result.history]}  # fmt: skip


def _refit(rec, init_fn, iteration: int, progress: bool | str):
    """The run of ``rec`` on every view (``init_fn()``: the start from the every-view FBP), stopped at
    ``iteration``: the same settings and schedule without held-out views, its projected growth printed first (to
    ``iteration``: :func:`recon.growth.growth_note`). Returns ``(reconstructor, result, its start's evaluation, its
    initial Gaussians, the seconds they took)``; its ``value_scale`` is its own start's."""
    from recon.gaussian_recon import GaussianReconstructor

    print(f"--refit: the held-out views chose iteration {iteration}; running again on every view to it, from the "
          "start of the every-view FBP...", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    init, value_scale = init_fn()
    init_seconds = time.perf_counter() - t0
    cfg = replace(rec.config, holdout_views=0, holdout_patience=0)
    full = GaussianReconstructor(rec.projector, rec.proj, init, cfg, reference=rec.reference, device=rec.device,
                                 value_scale=value_scale, unit_check=False)  # the reference checked (or not) before
    start_eval = full.evaluate() or None
    print(growth_note(cfg, 0, full.num_gaussians, stop=iteration), flush=True)  # as the first run's, to its stop
    return full, full.run(progress=progress, stop_at=iteration), start_eval, init, init_seconds


def _check_flags(args) -> None:
    """The flags that need no file checked against each other (the budget is settled once the scan is read), and
    that ``--out`` and ``--matrix-dir`` can be folders."""
    check_out_folder(args.out)
    if args.matrix_dir is not None:
        check_out_folder(args.matrix_dir, "--matrix-dir", output=False)
        if args.backend not in ("auto", "matrix"):
            raise CLIError(f"--matrix-dir keeps the matrix backend's matrix; --backend {args.backend} builds none")
    _check_holdout_flags(args)
    if args.split_rule is not None and args.preset != "toolkit":
        raise CLIError(f"--split-rule chooses the toolkit preset's density control; --preset {args.preset} uses its own")
    init_settings = start.init_settings(args)
    if init_settings["init"] == "medgmae" and not args.checkpoint:
        raise CLIError("--init medgmae needs --checkpoint pointing to a pre-trained medgmae or medgmae-star model.pt")
    if args.checkpoint and init_settings["init"] != "medgmae":
        raise CLIError(f"--checkpoint is only used by --init medgmae (got --init {init_settings['init']})")
    if args.model_spacing is not None and init_settings["init"] != "medgmae":
        raise CLIError(f"--model-spacing is only used by --init medgmae (got --init {init_settings['init']})")
    if args.model_spacing is not None:
        if len(args.model_spacing) not in (1, 3):
            raise CLIError(f"--model-spacing takes one value (isotropic) or three, got {len(args.model_spacing)}")
        # one value as it was recorded before three were taken (resumes compare it)
        args.model_spacing = args.model_spacing[0] if len(args.model_spacing) == 1 else list(args.model_spacing)
    if args.init_fit_iterations and init_settings["init"] != "medgmae":
        raise CLIError(f"--init-fit-iterations fits the zero-shot Gaussians' intensities: it is only used by --init "
                       f"medgmae (got --init {init_settings['init']}; the toolkit's other starts end with one gain)")
    if args.coarse_iterations is not None and args.coarse_iterations > args.iterations:
        raise CLIError(f"--coarse-iterations {args.coarse_iterations} is more than --iterations {args.iterations}: "
                       "the coarse phase is the start of the run")


def _check_holdout_flags(args, geom: CTGeometry | None = None) -> None:
    """``--holdout-views`` and ``--patience`` make sense together and (with ``geom``) for this scan."""
    if args.patience and not args.holdout_views:
        raise CLIError("--patience counts evaluations of held-out views: it needs --holdout-views")
    if args.refit and not args.holdout_views:
        raise CLIError("--refit runs again to the iteration the held-out views chose: it needs --holdout-views")
    if args.holdout_views and args.fbp:
        raise CLIError(f"--fbp {args.fbp} with --holdout-views: that FBP has seen the held-out views; leave out --fbp "
                       "(the initialisation then uses the FBP of the fitted views)")  # fmt: skip
    if geom is not None and args.holdout_views and not 1 <= args.holdout_views <= geom.num_views // 2:
        raise CLIError(f"--holdout-views {args.holdout_views}: the scan {args.projections} has {geom.num_views} views; "
                       f"hold out between 1 and {geom.num_views // 2}")  # fmt: skip


def _resume(rec, state: dict, state_path: Path, software: dict) -> None:
    """Restore ``state`` into ``rec``; the resume's entry (``rec.resumed``, the last of ``rec.resumes``) records
    this session's ``software``."""
    try:
        rec.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CLIError(f"cannot resume from {state_path}: {e}") from e
    rec.resumed["software"] = software


def _check_views_per_iteration(args, geom: CTGeometry) -> None:
    """``--views-per-iteration`` at most the views fitted (the scan's, less any held out)."""
    fitted = geom.num_views - args.holdout_views
    if args.views_per_iteration is not None and args.views_per_iteration > fitted:
        held = f" ({args.holdout_views} held out)" if args.holdout_views else ""
        raise CLIError(f"--views-per-iteration {args.views_per_iteration} is more than the {fitted} views fitted of the "
                       f"scan {args.projections}{held}")


def _metrics(args, init_settings: dict, cfg, rec, result, init, init_seconds: float, projector: str, device,
             software: dict) -> dict:  # fmt: skip
    """What ``metrics.json`` records: the preset, every setting, the run and its history (``software``: this
    session's)."""
    from dataclasses import asdict

    return {
        "preset": args.preset, "init": init_settings["init"], "iterations": result.iterations, "time_seconds": result.seconds,
        "init_seconds": init_seconds, "num_gaussians": result.gaussians.num_gaussians, "initial_gaussians": init.num_gaussians,
        "voxels_per_gaussian": result.volume.numel() / max(1, result.gaussians.num_gaussians),
        "device": str(device), "projector": projector, "value_scale": rec.value_scale, "settings": asdict(cfg),
        "init_settings": init_settings, "fbp_filter": None if args.fbp else args.filter,
        "arguments": {k: v for k, v in vars(args).items() if k != "command"},
        "iterations_to_psnr": result.iterations_to_psnr, "history": result.history, "density_rounds": result.density_rounds,
        "resumed": rec.resumed, "resumes": rec.resumes, "software": software,
    }  # fmt: skip


def _load_model(args):
    from medgmae.networks.medgmae import MedGMAE

    if not Path(args.checkpoint).exists():  # a folder: load_checkpoint names it and the model.pt it holds
        raise CLIError(f"model checkpoint {args.checkpoint} does not exist")
    try:
        return MedGMAE.from_checkpoint(args.checkpoint, "cpu", needed_for="--init medgmae needs a medgmae or medgmae-star model.pt")
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise CLIError(f"cannot use {args.checkpoint} for --init medgmae: {e}") from e
