"""The ``reconstruct`` command's start: the initialisation settings its preset and flags ask for
(:func:`init_settings`), the initial Gaussians (:func:`initialise`: random, FBP, 3DGR-CT's or the pre-trained
model's zero-shot start), the warnings about a start that cannot work well, and the density-control overrides that
follow from the start (:func:`density_overrides`)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FEW_ZERO_SHOT", "MAX_GAUSSIANS_PER_VOXEL", "density_overrides", "init_settings", "initialise", "model_start_spec"]


def _model_spec(model, spacing: float | list[float] | None, checkpoint: str):
    """The model's recorded pre-processing, with ``--model-spacing`` as an override (warned about)."""
    from medgmae.preprocessing import RECORD_ADVICE, model_preprocessing, spec_with_overrides

    # warns when the model records none (the default, at the model's own window, is then the base)
    base = model_preprocessing(model, checkpoint, f"{RECORD_ADVICE}, or use --model-spacing for the spacing")
    return spec_with_overrides(model.preprocessing, spacing, source=checkpoint, default=base)


def model_start_spec(model, spacing: float | list[float] | None, checkpoint: str):
    """The zero-shot start's pre-processing (:func:`_model_spec`), said in one line as fine-tuning says its own
    (:func:`medgmae.preprocessing.describe_preprocessing`), each part's source named.

    Returns:
        ``(spec, record)``: the record, for metrics.json, is the spec's entries and ``"from"``: where the
        orientation, spacing and HU window came from.
    """
    from medgmae.preprocessing import describe_preprocessing

    spec = _model_spec(model, spacing, checkpoint)
    from pathlib import Path

    recorded = f"recorded in {Path(checkpoint).resolve()}" if getattr(model, "preprocessing", None) is not None else "default"
    origins = {"orientation": recorded, "spacing": recorded if spacing is None else "given by --model-spacing", "hu_window": recorded}
    print(f"--init medgmae {describe_preprocessing(spec, origins, 'window')}", flush=True)
    return spec, {**spec.to_dict(), "from": origins}


def initialise(args, init_settings: dict, fbp_t: torch.Tensor, affine: np.ndarray, model, spec=None):
    """The initial Gaussians and the intensity unit (``None``: the reconstructor's default); ``spec``: the zero-shot
    start's pre-processing (:func:`model_start_spec`; ``None``: read from ``model``)."""
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
        spec = spec or _model_spec(model, args.model_spacing, args.checkpoint)
        fit = init_settings.get("fit_iterations") or 0  # --init-fit-iterations: intensities fitted to the FBP
        init = medgmae_init(fbp_t, affine, model, spec=spec, num_gaussians=budget, seed=args.seed, fit_iterations=fit,
                            overrides_warned=True)  # --model-spacing's override: warned of naming the file (_model_spec)
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


#: ``--num-gaussians`` beyond this many per voxel of the scan's volume is refused: no start or density control
#: needs them, and --init random allocated them all (12 GB at 10^9) before any check.
MAX_GAUSSIANS_PER_VOXEL = 8


def _check_budget(asked: int | None, num_voxels: int, default: int | None, start: str) -> None:
    """Refuse ``--num-gaussians`` over :data:`MAX_GAUSSIANS_PER_VOXEL` per voxel of the volume, or over the
    start's own default (``start``: its flag) where that is more (3DGR-CT's 50,000 and the toolkit's floor of
    20,000 on small scans)."""
    bound = max(MAX_GAUSSIANS_PER_VOXEL * num_voxels, default or 0)
    if asked is not None and asked > bound:
        from recon.commands import CLIError

        raise CLIError(f"--num-gaussians {asked}: more than {MAX_GAUSSIANS_PER_VOXEL} per voxel of the {num_voxels:,}-voxel "
                       f"volume ({bound:,}); {start}'s default here is {default or 0:,}")  # fmt: skip


def _check_cap(cap: int | None, settings: dict, given: bool, preset: str) -> None:
    """Refuse ``--max-gaussians`` below the start's ``--num-gaussians`` (``given``: by the flag, else the default
    for the volume): density control stops adding at the cap but removes none to meet it. The zero-shot start
    (``--init medgmae``) is the decoder's Gaussians: under the toolkit preset they grow toward the budget, which the
    cap only lowers, under 3DGR-CT's they are subdivided to ``--num-gaussians`` when it is given."""
    start = settings.get("num_gaussians")
    decoded = settings["init"] == "medgmae" and (preset == "toolkit" or not given)
    if cap is None or start is None or decoded or cap >= start:
        return
    from recon.commands import CLIError

    source = "--num-gaussians" if given else f"the default of --init {settings['init']} for this volume"
    raise CLIError(f"--max-gaussians {cap:,} is below the start's {start:,} Gaussians ({source}): density control "
                   f"stops adding Gaussians at the cap but removes none to meet it; give --max-gaussians {start} (no "
                   "growth) or more, or a smaller --num-gaussians")  # fmt: skip


def init_settings(args, num_voxels: int | None = None) -> dict:
    """The initialisation's settings: the preset's, ``--init``, ``--num-gaussians`` and (``--init medgmae``)
    ``--init-fit-iterations`` applied; the toolkit's default budget is :func:`recon.presets.toolkit_budget` of
    ``num_voxels`` (the scan's volume), and ``--num-gaussians`` over :data:`MAX_GAUSSIANS_PER_VOXEL` per voxel of
    it (or over the default of the start ``--init`` chooses, where that is more) is refused (``CLIError``), except on ``--resume``,
    and so is a ``--max-gaussians`` below the start's count (:func:`_check_cap`)."""
    from recon.presets import preset_init_settings

    settings = preset_init_settings(args.preset, num_voxels)
    if args.init is not None and args.init != settings["init"]:
        defaults = preset_init_settings("3dgr-ct" if args.init == "3dgr-ct" else "toolkit", num_voxels)
        settings = {**defaults, "init": args.init}
    if num_voxels and not getattr(args, "resume", False):  # a resumed run keeps what it started with
        _check_budget(args.num_gaussians, num_voxels, settings.get("num_gaussians"), f"--init {settings['init']}")
    if args.num_gaussians is not None:
        settings["num_gaussians"] = args.num_gaussians
    if num_voxels or args.num_gaussians is not None:  # the default budget follows the volume
        _check_cap(args.max_gaussians, settings, args.num_gaussians is not None, args.preset)
    if settings["init"] == "medgmae":
        # fit_iterations: None when off, as in states saved before the setting existed (they resume)
        fit = getattr(args, "init_fit_iterations", 0) or None
        settings = {"init": "medgmae", "checkpoint": str(args.checkpoint), "model_spacing": args.model_spacing,
                    "fit_iterations": fit}
        if args.preset == "toolkit":  # the sparse start grows to a budget (recon.presets.sparse_start_growth)
            settings["grow_to"] = args.num_gaussians or preset_init_settings("toolkit", num_voxels)["num_gaussians"]
        elif args.num_gaussians is not None:  # 3DGR-CT's density control grows by gradient, not to a budget
            settings["num_gaussians"] = args.num_gaussians
    return settings


def density_overrides(args, init_settings: dict, init) -> dict:
    """Density-control overrides: under the toolkit preset, growth of the sparse zero-shot start to its budget (at
    most ``--max-gaussians``), or a cap ten times a large start (:func:`recon.presets.toolkit_cap`), and
    ``--split-rule``; ``--max-gaussians`` as the cap of either preset."""
    from recon.presets import sparse_start_growth, toolkit_cap

    cap = {} if args.max_gaussians is None else {"max_gaussians": args.max_gaussians}
    rule = {} if args.split_rule is None else {"split_rule": args.split_rule}
    if "grow_to" in init_settings:
        return {**sparse_start_growth(min(init_settings["grow_to"], args.max_gaussians or init_settings["grow_to"])), **rule}
    return {**toolkit_cap(init.num_gaussians), **rule, **cap} if args.preset == "toolkit" else cap
