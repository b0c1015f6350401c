"""What ``medgmae-recon reconstruct`` does: the initialisation it asks for, the optimisation, and its outputs
(``recon.nii.gz``, ``gaussians.ply``, ``metrics.json``, ``curve.png``, ``slices.png``, the resumable
``recon_state.pt``) written together, then the closing summary (:mod:`recon.reconstruct_summary`). Every input is
checked before anything is written."""

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
    resolve_cli_device,
    warn_about_scan,
)
from recon.geometry import CTGeometry
from recon.reconstruct_summary import print_summary, write_reconstruction
from recon.state import RECON_STATE

__all__ = ["RECON_STATE", "cmd_reconstruct"]


def _model_spec(model, spacing: float | None, checkpoint: str):
    """The model's recorded pre-processing, with ``--model-spacing`` as an override (warned about)."""
    from medgmae.preprocessing import model_preprocessing, spec_with_overrides

    # warns when the model records none (the default is then the base)
    model_preprocessing(model, checkpoint, "re-save it with its spec, or use --model-spacing for the spacing")
    return spec_with_overrides(model.preprocessing, spacing, source=checkpoint)


def _initialise(args, init_settings: dict, fbp_t: torch.Tensor, affine: np.ndarray, model):
    """The initial Gaussians and the intensity unit (``None``: the reconstructor's default)."""
    from recon.initialisation import calibrate_intensities, fbp_init, medgmae_init, random_init
    from recon.init_3dgr import init_3dgr_ct

    k = init_settings.get("num_gaussians", 0)
    if init_settings["init"] == "random":
        init = random_init(fbp_t, k, seed=args.seed)
    elif init_settings["init"] == "fbp":
        init = fbp_init(fbp_t, k, seed=args.seed)
        if init.num_gaussians < k:  # fbp_init places at most one Gaussian per voxel above 5 % of the FBP maximum
            print(f"warning: --init fbp placed {init.num_gaussians} of {k} Gaussians: only {init.num_gaussians} voxels "
                  "are above 5 % of the FBP's maximum, and it places one Gaussian per such voxel at most "
                  "(density control adds more as the run needs them)", flush=True)  # fmt: skip
    elif init_settings["init"] == "3dgr-ct":
        kw = {n: init_settings[n] for n in ("start", "air_threshold", "ini_intensity", "ini_sigma", "neighbour_kernel", "intensity_offset")}
        init = init_3dgr_ct(fbp_t, k, **kw)[0]
        _warn_if_sub_voxel_3dgr(init.scales, k)
        # its 0.25 x FBP intensities suit 3DGR-CT's sigmoid; the toolkit's linear intensities start, as every other
        # start of the toolkit preset, from one least-squares gain against the FBP
        if args.preset == "toolkit":
            init = calibrate_intensities(init, fbp_t)
    else:
        budget = init_settings.get("num_gaussians")  # 3DGR-CT's preset: the decoder's Gaussians subdivided to it
        spec = _model_spec(model, args.model_spacing, args.checkpoint)
        init = medgmae_init(fbp_t, affine, model, spec=spec, num_gaussians=budget, seed=args.seed)
        _warn_if_few(init.num_gaussians, budget or init_settings.get("grow_to"), spec, getattr(model, "total_gaussians", None))
        if budget is not None:
            print(f"zero-shot start: {init.num_gaussians} Gaussians, the decoder's subdivided toward --num-gaussians "
                  f"{budget} (kept as decoded when the budget is under twice their number)", flush=True)  # fmt: skip
    if args.preset == "3dgr-ct":  # sigmoid intensities in units of the FBP's maximum, as 3DGR-CT's normalised images
        return init, float(fbp_t.max().clamp_min(1e-12))
    return init, None


def _warn_if_sub_voxel_3dgr(scales: torch.Tensor, asked: int) -> None:
    """Warn when 3DGR-CT's initial Gaussians are mostly under half a voxel wide (``scales`` in voxels), and say
    when it placed fewer than ``asked``. Its widths are ``ini_sigma`` times the volume's side over the number of
    chosen neighbours: on a volume of a few dozen voxels it takes nearly every voxel of its half-resolution grid,
    and the Gaussians shrink to hundredths of a voxel. Those fall between the voxel centres the projector's volume
    is evaluated at, so their centres and widths get no gradient: the half-resolution stage stalls (its loss did
    not move) and the result stayed near 9 dB where FBP reached 27 dB (a 32 x 32 x 24 volume, 24 views)."""
    count = scales.shape[-2]
    median = float(scales.reshape(-1, 3).mean(dim=1).median()) if count else 0.0
    if count < asked:
        print(f"note: --init 3dgr-ct placed {count} of {asked} Gaussians: at most one per voxel of its "
              "half-resolution grid, after skipping the steepest", flush=True)  # fmt: skip
    if median < 0.5:
        print(f"warning: --init 3dgr-ct gives Gaussians of median width {median:.3g} voxels on this volume (3DGR-CT's "
              "widths are relative to the volume and its density, made for 256-voxel slices): under half a voxel they "
              "fall between the voxel centres the renderer evaluates, their centres and widths get no gradient, and "
              "the fit stalls far below FBP; --init fbp or --init medgmae start from Gaussians a voxel wide or more",
              flush=True)  # fmt: skip


#: A zero-shot start with fewer Gaussians than this is warned about: a handful of Gaussians cannot hold the scan's
#: structure (the decoder drops those outside the scan or near zero).
FEW_ZERO_SHOT = 32


def _warn_if_few(count: int, budget: int | None, spec, per_window: int | None = None) -> None:
    """Warn when the zero-shot start kept very few Gaussians; note one under 1 % of its budget, whose cause is the
    model's number of queries (``per_window``) rather than the scan: growth to the budget then takes many rounds."""
    if count < FEW_ZERO_SHOT:
        spacing = "x".join(f"{v:g}" for v in spec.spacing) if spec is not None else "its recorded"
        print(f"warning: the zero-shot start kept only {count} Gaussian{'s' if count != 1 else ''}"
              f"{f' (budget {budget})' if budget else ''}: the model sees the scan resampled to {spacing} mm, and a "
              "scan much smaller than its input window, or mostly air, leaves few of its Gaussians inside; --init fbp "
              "starts denser (a finer --model-spacing keeps more of the decoder's Gaussians, but shows the model data "
              "prepared otherwise than in its pre-training)", flush=True)  # fmt: skip
    elif budget and count < 0.01 * budget:
        queries = f" (the model decodes {per_window} per window)" if per_window else ""
        more = f"more than {per_window}" if per_window else "more"
        print(f"note: the zero-shot start has {count} Gaussians{queries}, under 1 % of the budget of {budget}: "
              "density control grows it toward the budget every 10 iterations, so a short run spends much of itself "
              f"growing (a model pre-trained with {more} queries, the pre-training bundle's --num_gaussians, starts "
              "denser; --init fbp starts at the budget; this command's --num-gaussians sets the budget)", flush=True)  # fmt: skip


def _init_settings(args, num_voxels: int | None = None) -> dict:
    """The initialisation's settings: the preset's, ``--init`` and ``--num-gaussians`` applied; the toolkit's
    default budget is :func:`recon.presets.toolkit_budget` of ``num_voxels`` (the scan's volume)."""
    from recon.presets import preset_init_settings

    settings = preset_init_settings(args.preset, num_voxels)
    if args.init is not None and args.init != settings["init"]:
        defaults = preset_init_settings("3dgr-ct" if args.init == "3dgr-ct" else "toolkit", num_voxels)
        settings = {**defaults, "init": args.init}
    if args.num_gaussians is not None:
        settings["num_gaussians"] = args.num_gaussians
    if settings["init"] == "medgmae":
        settings = {"init": "medgmae", "checkpoint": str(args.checkpoint), "model_spacing": args.model_spacing}
        if args.preset == "toolkit":  # the sparse start grows to a budget (recon.presets.sparse_start_growth)
            settings["grow_to"] = args.num_gaussians or preset_init_settings("toolkit", num_voxels)["num_gaussians"]
        elif args.num_gaussians is not None:  # 3DGR-CT's density control grows by gradient, not to a budget
            settings["num_gaussians"] = args.num_gaussians
    return settings


def _density_overrides(args, init_settings: dict, init) -> dict:
    """Density-control overrides of the toolkit preset: growth of the sparse zero-shot start to its budget, or a cap
    ten times a large start (:func:`recon.presets.toolkit_cap`); ``--split-rule``."""
    from recon.presets import sparse_start_growth, toolkit_cap

    rule = {} if args.split_rule is None else {"split_rule": args.split_rule}
    if "grow_to" in init_settings:
        return {**sparse_start_growth(init_settings["grow_to"]), **rule}
    return {**toolkit_cap(init.num_gaussians), **rule} if args.preset == "toolkit" else {}


def cmd_reconstruct(args) -> int:
    """``reconstruct``: check every input, initialise, optimise, write all outputs together, print the summary.

    Raises:
        Interrupted: on Ctrl-C, saying where the last saved state is (no other output is written).
    """
    state_path = Path(args.out) / RECON_STATE
    before = state_path.stat().st_mtime_ns if state_path.is_file() else None
    try:
        return _reconstruct(args)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_note(args, state_path, before)) from None


def _interrupted_note(args, state_path: Path, before: int | None) -> str:
    """What an interrupted run left: the state it saved (``before``: the state file's mtime at the start)."""
    from medgmae.files import load_torch_file

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
    return f"no state was saved yet (the first is saved {first}); no output was written"


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


def _read_inputs(args) -> _Inputs:
    """Check the flags and read the scan, volumes, model and resumable state (nothing is written)."""
    from recon.resume import load_resume_state, run_settings, scan_fingerprint

    _check_flags(args)
    geom, proj = load_scan(args.projections, args.geometry)
    init_settings = _init_settings(args, int(np.prod(geom.volume_shape)))
    _check_holdout_flags(args, geom)
    _check_views_per_iteration(args, geom)
    check = not args.no_unit_check
    reference = load_matching_volume(args.reference, geom, "reference", "--reference", check)[0] if args.reference else None
    fbp_vol, affine = load_matching_volume(args.fbp, geom, "FBP volume", "--fbp", check) if args.fbp else (None, geom.default_affine())
    model = _load_model(args) if init_settings["init"] == "medgmae" else None
    state_path = Path(args.out) / RECON_STATE
    run_info = {"scan": scan_fingerprint(proj, geom, args.projections, args.geometry), "settings": run_settings(args, init_settings)}
    state = load_resume_state(state_path, run_info, args.iterations) if args.resume else None
    if not args.resume and state_path.is_file():
        print(f"note: {args.out} holds an earlier run's {RECON_STATE}: this run replaces it when it saves its first "
              "state (stop now and add --resume to continue that run instead)", file=sys.stderr)  # fmt: skip
    device = resolve_cli_device(args.device)
    if model is not None:
        model = model.to(device).eval()
    return _Inputs(geom, proj, init_settings, reference, fbp_vol, affine, model, run_info, state, device)


def _reconstruct(args) -> int:
    """What :func:`cmd_reconstruct` does."""
    from recon.fbp import fbp
    from recon.gaussian_recon import GaussianReconstructor
    from recon.holdout import fitted_views_fbp
    from recon.metrics import evaluate

    x = _read_inputs(args)
    geom, init_settings, reference, affine, model, device = x.geom, x.init_settings, x.reference, x.affine, x.model, x.device
    out = Path(args.out)
    state_path = out / RECON_STATE
    torch.manual_seed(args.seed)
    projector, projector_seconds = _build_projector(geom, args.backend, device)
    proj_t = torch.from_numpy(x.proj).to(device)
    t0 = time.perf_counter()
    if x.fbp_vol is None:
        print(f"computing the {'FBP' if geom.kind == 'parallel' else 'FDK'} of {geom.num_views} views...", flush=True)
    fbp_t = fbp(proj_t, geom, args.filter) if x.fbp_vol is None else torch.from_numpy(x.fbp_vol).to(device)
    if x.fbp_vol is None:
        warn_about_scan(geom, x.proj)
    start_fbp = fitted_views_fbp(proj_t, geom, args.holdout_views, args.filter) if args.holdout_views else fbp_t  # unseen views stay unseen
    print(f"initialising the Gaussians (--init {init_settings['init']})...", flush=True)
    init, value_scale = _initialise(args, init_settings, start_fbp, affine, model)
    init_seconds = time.perf_counter() - t0
    cfg = _config(args, init_settings, init)
    ref_t = None if reference is None else torch.from_numpy(reference)
    rec = GaussianReconstructor(projector, proj_t, init, cfg, reference=ref_t, device=device, value_scale=value_scale)
    rec.run_info = x.run_info
    start_eval = rec.evaluate() or None  # the start's PSNR / SSIM (before a resumed state replaces it): iteration 0
    if x.state is not None:
        try:
            rec.load_state_dict(x.state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CLIError(f"cannot resume from {state_path}: {e}") from e
    progress = "lines" if args.no_progress else True  # --no-progress: no bar, the evaluations' lines still
    result = rec.run(checkpoint_path=state_path, progress=progress)
    holdout = _holdout_record(args, rec, result)
    if args.refit and result.best_iteration is not None:
        init_fn = lambda: _initialise(args, init_settings, fbp_t, affine, model)  # noqa: E731
        rec, result, start_eval, init = _refit(rec, init_fn, result.best_iteration, progress=progress)  # its value_scale is recorded
    metrics = _metrics(args, init_settings, cfg, rec, result, init, init_seconds, projector.name, device)
    metrics["holdout"], metrics["scan"], metrics["projector_seconds"] = holdout, x.run_info["scan"], projector_seconds
    metrics["start"] = start_eval
    if reference is not None:
        metrics["final"] = evaluate(result.volume.cpu().numpy(), reference)
        metrics["fbp"] = evaluate(fbp_t.cpu().numpy(), reference)
    write_reconstruction(out, geom, result, fbp_t.cpu().numpy(), reference, metrics)
    print_summary(metrics, out)
    return 0


def _build_projector(geom: CTGeometry, backend: str, device: torch.device):
    """The scan's projector, announced first (building a matrix backend takes a while on large scans).

    Returns:
        ``(projector, seconds taken)``.
    """
    from recon.projectors import describe_backend, make_projector, resolve_backend
    from recon.projectors.astra_proj import astra_cpu_problem, astra_installed

    chosen = resolve_backend(geom, backend, device)
    how = describe_backend(chosen, device) + (", chosen by --backend auto" if backend == "auto" else "")
    print(f"building the projector ({geom.kind} beam, {geom.num_views} views, {chosen} backend: {how}, {device})...", flush=True)
    problem = astra_cpu_problem(geom) if geom.kind == "parallel" and device.type == "cpu" else None
    if backend == "auto" and chosen == "torch" and problem and astra_installed():
        print(f"note: ASTRA's CPU projectors cannot take this scan ({problem}); the PyTorch ray marcher is much "
              "slower on the CPU (resample the volume to square in-plane voxels, one detector row per slice, for ASTRA)",
              file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.perf_counter()
    projector = make_projector(geom, chosen, device)
    return projector, time.perf_counter() - t0


def _config(args, init_settings: dict, init):
    """The run's :class:`~recon.presets.GaussianReconConfig`: the preset's settings with those the flags and the
    start (``init``, its density-control budget) change."""
    from recon.gaussian_recon import GaussianReconConfig

    return GaussianReconConfig.preset(
        args.preset, args.iterations, tv_weight=args.tv, views_per_iteration=args.views_per_iteration,
        eval_every=args.eval_every, checkpoint_every=max(0, args.checkpoint_every), seed=args.seed,
        holdout_views=args.holdout_views, holdout_patience=args.patience, **_density_overrides(args, init_settings, init),
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
    ``iteration``: the same settings and schedule without held-out views. Returns ``(reconstructor, result, its
    start's evaluation, its initial Gaussians)``."""
    from recon.gaussian_recon import GaussianReconstructor

    print(f"--refit: the held-out views chose iteration {iteration}; running again on every view to it, from the "
          "start of the every-view FBP...", flush=True)  # fmt: skip
    init, value_scale = init_fn()
    cfg = replace(rec.config, holdout_views=0, holdout_patience=0)
    full = GaussianReconstructor(rec.projector, rec.proj, init, cfg, reference=rec.reference, device=rec.device, value_scale=value_scale)
    start_eval = full.evaluate() or None
    return full, full.run(progress=progress, stop_at=iteration), start_eval, init


def _check_flags(args) -> None:
    """The flags that need no file checked against each other (the budget is settled once the scan is read), and
    that ``--out`` can be a folder."""
    check_out_folder(args.out)
    _check_holdout_flags(args)
    if args.split_rule is not None and args.preset != "toolkit":
        raise CLIError(f"--split-rule chooses the toolkit preset's density control; --preset {args.preset} uses its own")
    init_settings = _init_settings(args)
    if init_settings["init"] == "medgmae" and not args.checkpoint:
        raise CLIError("--init medgmae needs --checkpoint pointing to a pre-trained medgmae or medgmae-star model.pt")
    if args.checkpoint and init_settings["init"] != "medgmae":
        raise CLIError(f"--checkpoint is only used by --init medgmae (got --init {init_settings['init']})")
    if args.model_spacing is not None and init_settings["init"] != "medgmae":
        raise CLIError(f"--model-spacing is only used by --init medgmae (got --init {init_settings['init']})")
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


def _check_views_per_iteration(args, geom: CTGeometry) -> None:
    """``--views-per-iteration`` at most the views fitted (the scan's, less any held out)."""
    fitted = geom.num_views - args.holdout_views
    if args.views_per_iteration is not None and args.views_per_iteration > fitted:
        held = f" ({args.holdout_views} held out)" if args.holdout_views else ""
        raise CLIError(f"--views-per-iteration {args.views_per_iteration} is more than the {fitted} views fitted of the "
                       f"scan {args.projections}{held}")


def _metrics(args, init_settings: dict, cfg, rec, result, init, init_seconds: float, projector: str, device) -> dict:
    """What ``metrics.json`` records: the preset, every setting, the run and its history."""
    from dataclasses import asdict

    return {
        "preset": args.preset, "init": init_settings["init"], "iterations": result.iterations, "time_seconds": result.seconds,
        "init_seconds": init_seconds, "num_gaussians": result.gaussians.num_gaussians, "initial_gaussians": init.num_gaussians,
        "voxels_per_gaussian": result.volume.numel() / max(1, result.gaussians.num_gaussians),
        "device": str(device), "projector": projector, "value_scale": rec.value_scale, "settings": asdict(cfg),
        "init_settings": init_settings, "fbp_filter": None if args.fbp else args.filter,
        "arguments": {k: v for k, v in vars(args).items() if k != "command"},
        "iterations_to_psnr": result.iterations_to_psnr, "history": result.history, "density_rounds": result.density_rounds,
        "resumed": rec.resumed,
    }  # fmt: skip


def _load_model(args):
    from medgmae.networks.medgmae import MedGMAE

    if not Path(args.checkpoint).exists():  # a folder: load_checkpoint names it and the model.pt it holds
        raise CLIError(f"model checkpoint {args.checkpoint} does not exist")
    try:
        return MedGMAE.from_checkpoint(args.checkpoint, "cpu", needed_for="--init medgmae needs a medgmae or medgmae-star model.pt")
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise CLIError(f"cannot use {args.checkpoint} for --init medgmae: {e}") from e
