"""Benchmark of the Gaussian CT reconstruction and of the zero-shot MedGMAE initialisation.

1. Speed: seconds per iteration and total time for a configurable volume / scan (``--size``, ``--views``,
   ``--iterations``); ``--gpu-case`` selects a 256 x 256 x 80 volume, 120 cone-beam views, 15k iterations.
2. Convergence: iterations and seconds to reach PSNR targets relative to the best FBP/FDK over the filters
   ram-lak, shepp-logan, cosine and hann (``--relative-targets``, default -3, -1, 0, +2, +4 dB; plus any absolute
   ``--targets``) on a held-out phantom (generator seed ``--seed``, default 1000; the bundle's phantoms use
   SeedSequence-derived 32-bit seeds of dataset seed 0), from these starts (optimiser preset in brackets):

   * ``random``, ``toolkit`` (FBP-gradient) [toolkit], the toolkit preset's budget (``--num-gaussians``; 20k on the study's volumes);
     ``toolkit-fit``, the toolkit start with each Gaussian's intensity fitted to the FBP (``--fit-iterations`` steps of
     ``recon.initialisation.fit_intensities``) [toolkit], only when ``--only`` names it (as the other ``*-fit`` starts);
   * ``3dgr-ct``: 3DGR-CT's own initialisation [3dgr-ct], at its published density (50k Gaussians per
     80 x 256 x 256 voxels) unless ``--num-gaussians-3dgr`` (``--ini-sigma-3dgr``: its scale rule);
     ``3dgr-ct-grow``, the same Gaussians (one least-squares intensity gain, as every toolkit start) grown like
     ``medgmae-grow`` below [toolkit], only when ``--only`` names it (the two sparse starts under one optimiser);
   * with ``--compare-medgmae``: ``medgmae``, the zero-shot Gaussians as decoded [toolkit]; ``medgmae-dense``, the
     same subdivided to that budget (``recon.initialisation.subdivide_gaussians``) [toolkit];
     ``medgmae-grow``, the sparse start grown by fast density control (every 10 iterations, half of the Gaussians,
     up to the budget) [toolkit]; ``medgmae-fit``, the same with each Gaussian's intensity fitted to the FBP first
     (as ``toolkit-fit``) [toolkit], and ``medgmae-fit-3dgr`` under 3DGR-CT's optimiser; ``medgmae-3dgr``, the
     zero-shot start under 3DGR-CT's optimiser [3dgr-ct] (the paper's "MedGMAE init" against "3DGR (original)").

No inverse crime: the measurements are simulated from the phantom generated at twice the resolution (2x finer
voxels, same detector and angles, the PyTorch projector on the fine grid), with Poisson noise at ``--photons``
incident photons per detector pixel; the reconstruction uses the coarse grid (and, on the CPU for parallel beam,
ASTRA's strip projector). The reference is the fine phantom averaged over 2 x 2 x 2 blocks.

The MedGMAE model must come from the pre-training bundle (``--checkpoint``, e.g. from
``bench/pretrain_for_recon.sh``); its orientation, spacing and HU window are read from the checkpoint.

Examples::

    python bench/recon.py --size 32 64 64 --voxel 6 4 4 --geometry parallel --views 30 --iterations 300 \
        --compare-medgmae --checkpoint runs/recon_bench_model/model.pt --json out.json --png out.png
    python bench/recon.py --gpu-case --device cuda --checkpoint model.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this file must not hide `recon`

from medgmae.cli_types import nonneg_float, nonneg_int, positive_float, positive_int  # noqa: E402
from recon.fbp import FILTERS, fbp  # noqa: E402
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.holdout import fitted_views_fbp  # noqa: E402
from recon.initialisation import calibrate_intensities, fbp_init, fit_intensities, medgmae_init, random_init  # noqa: E402
from recon.metrics import psnr, ssim  # noqa: E402
from recon.presets import THREEDGR_CT, sparse_start_growth, toolkit_budget, toolkit_cap  # noqa: E402
from recon.projectors import PROJECTOR_BACKENDS, make_projector  # noqa: E402
from recon_curves import plot_curves  # noqa: E402
from recon_simulation import SIMULATED_ON, simulate  # noqa: E402


def fbp_baselines(proj, geom: CTGeometry, vol, args) -> tuple[torch.Tensor, dict]:
    """The Hann FBP/FDK the starts are made from, and the case's FBP/FDK records: every filter's PSNR / SSIM, the
    best PSNR and the PSNR targets relative to it."""
    t = time.perf_counter()
    rec_fbp = fbp(proj, geom, "hann")
    out = {"fbp_seconds": time.perf_counter() - t, "fbp_input_hann": {"psnr": psnr(rec_fbp, vol), "ssim": ssim(rec_fbp, vol)}}
    out["fbp_filters"] = {}
    for name in FILTERS:  # FBP / FDK with every filter; targets are relative to the best of them
        r = rec_fbp if name == "hann" else fbp(proj, geom, name)
        out["fbp_filters"][name] = {"psnr": psnr(r, vol), "ssim": ssim(r, vol)}
    out["best_fbp_psnr"] = max(v["psnr"] for v in out["fbp_filters"].values())
    out["targets"] = sorted({round(out["best_fbp_psnr"] + d, 2) for d in args.relative_targets} | set(args.targets))
    return rec_fbp, out


#: starts run only when ``--only`` names them (bench/RESULTS.md: the intensity-fit experiment, the grown 3DGR-CT start)
ON_REQUEST = ("toolkit-fit", "medgmae-fit", "medgmae-fit-3dgr", "3dgr-ct-grow")
#: every start :func:`starts` makes, in its order: without a model, and with ``--compare-medgmae``
PLAIN_STARTS = ("random", "toolkit", "3dgr-ct", "toolkit-fit", "3dgr-ct-grow")
MEDGMAE_STARTS = ("medgmae", "medgmae-dense", "medgmae-grow", "medgmae-fit", "medgmae-fit-3dgr", "medgmae-3dgr")


def only_error(only, compare_medgmae: bool) -> str | None:
    """What is wrong with the ``--only`` names (``None``: nothing): an unknown start, or a zero-shot start without
    ``--compare-medgmae``."""
    unknown = [n for n in only or () if n not in PLAIN_STARTS + MEDGMAE_STARTS]
    if unknown:
        return f"--only: unknown start(s) {', '.join(unknown)}; the starts are {', '.join(PLAIN_STARTS + MEDGMAE_STARTS)}"
    zero_shot = [n for n in only or () if n in MEDGMAE_STARTS]
    if zero_shot and not compare_medgmae:
        return f"--only {' '.join(zero_shot)}: the MedGMAE starts need --compare-medgmae (and --checkpoint)"
    return None


def starts(args, rec_fbp, geom: CTGeometry, device, out: dict) -> tuple[dict, dict]:
    """``(inits, overrides)``: name -> (initialisation returning ``(Gaussians, value_scale or None)``, optimiser
    preset), and the preset overrides by name; records the 3DGR-CT count and the MedGMAE model in ``out``."""
    from recon.init_3dgr import init_3dgr_ct

    # 3DGR-CT places 50k Gaussians in an 80 x 256 x 256 volume; "published-density" keeps that fraction of voxels
    k_3dgr = args.num_gaussians_3dgr
    if k_3dgr is None:
        k_3dgr = max(100, round(THREEDGR_CT["num_gaussian"][0] * math.prod(geom.volume_shape) / (80 * 256 * 256)))
    out["num_gaussians_3dgr"], out["ini_sigma_3dgr"] = k_3dgr, args.ini_sigma_3dgr
    overrides: dict[str, dict] = {"random": toolkit_cap(args.num_gaussians), "toolkit": toolkit_cap(args.num_gaussians)}
    inits = {
        "random": (lambda: (random_init(rec_fbp, args.num_gaussians, seed=args.seed), None), "toolkit"),
        "toolkit": (lambda: (fbp_init(rec_fbp, args.num_gaussians, seed=args.seed), None), "toolkit"),
        "3dgr-ct": (lambda: init_3dgr_ct(rec_fbp, k_3dgr, ini_sigma=args.ini_sigma_3dgr), "3dgr-ct"),
        # the toolkit start with each Gaussian's intensity fitted to the FBP (the control of medgmae-fit)
        "toolkit-fit": (
            lambda: (fit_intensities(fbp_init(rec_fbp, args.num_gaussians, seed=args.seed), rec_fbp, args.fit_iterations), None),
            "toolkit",
        ),
    }
    overrides["toolkit-fit"] = toolkit_cap(args.num_gaussians)
    # 3DGR-CT's start under the toolkit optimiser, grown like the zero-shot start (medgmae-grow): the two sparse
    # starts compared under one optimiser, where both reach the FBP level. Its intensities get the least-squares
    # gain against the FBP that every start of the toolkit optimiser gets (3DGR-CT's 0.25 x FBP suits its sigmoid)
    inits["3dgr-ct-grow"] = (
        lambda: (calibrate_intensities(init_3dgr_ct(rec_fbp, k_3dgr, ini_sigma=args.ini_sigma_3dgr)[0], rec_fbp), None),
        "toolkit",
    )
    overrides["3dgr-ct-grow"] = sparse_start_growth(args.num_gaussians)
    if not args.compare_medgmae:
        return inits, overrides
    from medgmae.networks.medgmae import MedGMAE

    model = MedGMAE.from_checkpoint(args.checkpoint, needed_for="bench/recon.py needs a medgmae model.pt").to(device).eval()
    out["medgmae_model"] = {"checkpoint": args.checkpoint, "overlap": args.overlap,
                            "preprocessing": model.preprocessing.to_dict() if model.preprocessing else None}
    affine = geom.default_affine()
    # each start decodes the zero-shot Gaussians itself, so its init_seconds include the decoding
    inits["medgmae"] = (lambda: (medgmae_init(rec_fbp, affine, model, overlap=args.overlap), None), "toolkit")
    # the same zero-shot Gaussians subdivided to the budget of the random and toolkit starts
    inits["medgmae-dense"] = (
        lambda: (medgmae_init(rec_fbp, affine, model, overlap=args.overlap, num_gaussians=args.num_gaussians, seed=args.seed), None),
        "toolkit",
    )
    overrides["medgmae-dense"] = toolkit_cap(args.num_gaussians)  # as the random and toolkit starts of that budget
    # the sparse zero-shot Gaussians grown quickly by the optimiser instead: density control every 10 iterations
    # from iteration 10, half of the Gaussians cloned or split each round, up to the same budget
    inits["medgmae-grow"] = (inits["medgmae"][0], "toolkit")
    overrides["medgmae-grow"] = sparse_start_growth(args.num_gaussians)
    # the grown start with each Gaussian's intensity fitted to the FBP first (recon.initialisation.fit_intensities)
    inits["medgmae-fit"] = (
        lambda: (medgmae_init(rec_fbp, affine, model, overlap=args.overlap, fit_iterations=args.fit_iterations), None),
        "toolkit",
    )
    overrides["medgmae-fit"] = sparse_start_growth(args.num_gaussians)
    inits["medgmae-fit-3dgr"] = (lambda: (inits["medgmae-fit"][0]()[0], float(rec_fbp.max())), "3dgr-ct")
    # the paper's comparison: the zero-shot start under 3DGR-CT's own optimiser (intensities in FBP-maximum units)
    inits["medgmae-3dgr"] = (lambda: (inits["medgmae"][0]()[0], float(rec_fbp.max())), "3dgr-ct")
    return inits, overrides


def run_case(args, device, save=lambda out: None) -> dict:
    """One scan: simulate it, the FBP/FDK baselines, then every start (``--only``: those) optimised to the end."""
    shape, voxel = tuple(args.size), tuple(args.voxel)
    if args.geometry == "cone":
        geom = CTGeometry.cone(shape, voxel, num_angles=args.views)
    else:
        geom = CTGeometry.parallel(shape, voxel, num_angles=args.views)
    proj, vol = simulate(args.seed, geom, args.photons, device, args.texture, args.simulate_grid)
    proj_op = make_projector(geom, args.backend, device)
    rec_fbp, baselines = fbp_baselines(proj, geom, vol, args)
    if args.holdout_views:  # the starts come from the FBP of the fitted views; the baselines use every view
        rec_fbp = fitted_views_fbp(proj, geom, args.holdout_views, "hann")
    out = {
        "shape_zyx": list(shape), "voxel_mm": list(voxel), "geometry": geom.kind, "views": geom.num_views,
        "photons": args.photons, "phantom_seed": args.seed, "simulated_on": SIMULATED_ON[args.simulate_grid],
        "projector": proj_op.name, **baselines, "runs": {},
    }  # fmt: skip
    out["holdout_views"], out["tv_weight"], out["texture"], out["set"] = args.holdout_views, args.tv, args.texture, dict(args.settings)
    inits, overrides = starts(args, rec_fbp, geom, device, out)
    for name, (make, preset) in inits.items():
        if (name not in args.only) if args.only else name in ON_REQUEST:
            continue
        t = time.perf_counter()
        init, value_scale = make()
        init_seconds = time.perf_counter() - t
        run_overrides = {**overrides.get(name, {}), **dict(args.settings)}
        cfg = GaussianReconConfig.preset(preset, args.iterations, eval_every=args.eval_every,
                                         views_per_iteration=args.views_per_iteration, seed=args.seed,
                                         holdout_views=args.holdout_views, tv_weight=args.tv, **run_overrides)  # fmt: skip
        rec = GaussianReconstructor(proj_op, proj, init, cfg, reference=vol.cpu(), device=device, value_scale=value_scale)
        q = torch.quantile(init.scales.flatten().float().cpu(), torch.tensor([0.1, 0.5, 0.9])).tolist()
        meta = {"preset": preset, "preset_overrides": run_overrides, "init_seconds": init_seconds,
                "initial_gaussians": init.num_gaussians, "initial_scale_voxels_p10_p50_p90": q}  # fmt: skip

        def partial(entry, name=name):
            save({**out, "runs": {**out["runs"], name: entry}})

        out["runs"][name] = run_one(rec, args, device, vol, out["targets"], meta, partial)
    return out


def run_one(rec, args, device, vol, targets, meta: dict, save_partial) -> dict:
    """Optimise ``rec`` to the end; its entry of the results: curve, final PSNR / SSIM, iterations and seconds to
    each target. With ``--partial-every N`` the run goes in segments of ``N`` iterations (``stop_at``: the same
    run as without them) and ``save_partial`` gets the entry so far after each, marked ``"complete": false``."""
    start = rec.evaluate()
    iter_times, orig_step = [], rec.step

    def timed_step():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = orig_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        iter_times.append(time.perf_counter() - t)
        return loss

    def timed_densify():  # density control runs after a step: its time counts to that iteration
        t = time.perf_counter()
        stats = orig_densify()
        iter_times[-1] += time.perf_counter() - t
        return stats

    orig_densify = rec.densify_and_prune
    rec.step, rec.densify_and_prune = timed_step, timed_densify
    end = rec.config.iterations
    segment = args.partial_every or end
    t0 = time.perf_counter()
    while True:
        res = rec.run(progress=args.progress, ssim_every_eval=False, stop_at=min(rec.iteration + segment, end))
        per_iter = statistics.median(iter_times) if iter_times else float("nan")
        # seconds to an iteration: the start's plus the measured optimiser steps up to it (evaluations excluded)
        elapsed = [meta["init_seconds"] + s for s in itertools.accumulate(iter_times, initial=0.0)]
        reached = {}
        for thr in targets:
            hits = [h["iteration"] for h in res.history if h.get("psnr", -math.inf) >= thr]
            reached[f"{thr:.2f}"] = {"iteration": hits[0], "seconds": elapsed[hits[0]]} if hits else None
        entry = {
            **meta, "initial_psnr": start.get("psnr"), "complete": rec.iteration >= end, "completed_iterations": rec.iteration,
            "seconds_per_iteration_median": per_iter if iter_times else None, "total_seconds": time.perf_counter() - t0,
            "final_psnr": res.history[-1].get("psnr") if res.history else None, "final_ssim": ssim(res.volume, vol),
            "final_gaussians": res.gaussians.num_gaussians, "iterations_to_psnr": reached, "density_rounds": res.density_rounds,
            "curve": [(0, round(start.get("psnr", float("nan")), 3))]
            + [(h["iteration"], round(h.get("psnr", float("nan")), 3)) for h in res.history],
            "curve_seconds": [round(elapsed[0], 3)] + [round(elapsed[h["iteration"]], 3) for h in res.history],
            "loss_curve": [(h["iteration"], float(f"{h['loss']:.6g}")) for h in res.history],  # the fitted loss
        }  # fmt: skip
        if rec.holdout is not None:
            entry.update(holdout_entry(rec, res, vol))
        if entry["complete"]:
            return entry
        save_partial(entry)


def holdout_entry(rec, res, vol) -> dict:
    """With held-out views: the choice (iteration, PSNR and SSIM of the returned Gaussians), the held-out error per
    evaluation, and the SSIM of the last iteration (``final_ssim`` is then the chosen one's)."""
    with torch.no_grad():
        last = rec.render().detach() * rec.value_scale
    chosen = {"iteration": res.best_iteration, "psnr": psnr(res.volume, vol), "ssim": ssim(res.volume, vol)}
    return {"holdout": rec.holdout.summary(), "chosen": chosen, "last_ssim": ssim(last, vol),
            "holdout_curve": [(h["iteration"], h["holdout_error"]) for h in res.history]}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (also how ``bench/gpu_check_parts.py`` builds its reconstruction case)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=positive_int, nargs=3, default=[32, 32, 32], metavar=("D", "H", "W"))
    p.add_argument("--voxel", type=positive_float, nargs=3, default=[6.0, 6.0, 6.0], metavar=("SZ", "SY", "SX"))
    p.add_argument("--geometry", choices=("parallel", "cone"), default="cone")
    p.add_argument("--views", type=positive_int, default=60)
    p.add_argument("--iterations", type=nonneg_int, default=400)
    p.add_argument("--num-gaussians", type=positive_int, default=None,
                   help="Gaussians of the random and toolkit (fbp) inits and the zero-shot budget (default: the toolkit "
                        "preset's, recon.presets.toolkit_budget: 20000 for volumes up to 160k voxels)")
    p.add_argument("--num-gaussians-3dgr", type=positive_int, default=None,
                   help="Gaussians of the 3DGR-CT init (default: its published density, 50k per 80 x 256 x 256 voxels)")
    p.add_argument("--ini-sigma-3dgr", type=positive_float, default=THREEDGR_CT["ini_sigma"][0],
                   help="scale numerator of the 3DGR-CT init in its normalised frame (default: the published 0.15; "
                        "0.15 x 256 / the largest volume side gives its initial Gaussians the size in voxels they "
                        "have on 3DGR-CT's 256-voxel slices)")
    p.add_argument("--only", nargs="*", default=None, metavar="START",
                   help=f"run only these initialisations (of {', '.join(PLAIN_STARTS)}; with --compare-medgmae also "
                        f"{', '.join(MEDGMAE_STARTS)})")
    p.add_argument("--views-per-iteration", type=positive_int, default=None)
    p.add_argument("--eval-every", type=positive_int, default=10)
    p.add_argument("--texture", action="store_true", help="phantom with the generator's correlated 10-15 HU texture")
    p.add_argument("--tv", type=nonneg_float, default=0.0, help="TV weight of every start (the presets' tv_weight)")
    p.add_argument("--holdout-views", type=nonneg_int, default=0,
                   help="views left out of the fit (recon.holdout); the starts use the FBP of the others")
    p.add_argument("--targets", type=float, nargs="*", default=[], help="absolute PSNR targets (dB)")
    p.add_argument("--relative-targets", type=float, nargs="*", default=[-3.0, -1.0, 0.0, 2.0, 4.0],
                   help="PSNR targets relative to the best FBP / FDK (dB)")
    p.add_argument("--simulate-grid", choices=sorted(SIMULATED_ON), default="finer",
                   help="measure a 2x finer phantom (default) or, as a diagnostic only, the reconstruction grid's")
    p.add_argument("--photons", type=nonneg_float, default=1e5, help="incident photons per detector pixel (0: no noise)")
    p.add_argument("--png", default=None, help="write the PSNR curves of every initialisation here")
    p.add_argument("--overlap", type=nonneg_int, default=16, help="sliding-window overlap of the zero-shot initialisation")
    p.add_argument("--fit-iterations", type=nonneg_int, default=20, help="intensity-fit steps of the *-fit starts")
    p.add_argument("--gpu-case", action="store_true", help="256 x 256 x 80, 120 cone views, 15k iterations")
    p.add_argument("--compare-medgmae", action="store_true", help="also run the zero-shot MedGMAE initialisation")
    p.add_argument("--checkpoint", default=None, help="MedGMAE model.pt from the pre-training bundle")
    p.add_argument("--backend", default="auto", choices=PROJECTOR_BACKENDS)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=1000, help="phantom generator seed (held out from pre-training)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--partial-every", type=nonneg_int, default=0,
                   help="write --json every N iterations of a run, marked incomplete (for long runs; 0: at the end)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--set", nargs="+", default=[], type=parse_setting, metavar="KEY=VALUE", dest="settings",
                   help="reconstruction settings (GaussianReconConfig fields) for every start, over the presets' own "
                        "(e.g. split_rule=sample, densify_from=1000000 for no density control); recorded per run")
    return p


#: settings with a flag of their own (``--set`` refuses them)
_FLAGGED_SETTINGS = {"iterations": "--iterations", "eval_every": "--eval-every", "seed": "--seed", "tv_weight": "--tv",
                     "views_per_iteration": "--views-per-iteration", "holdout_views": "--holdout-views"}


def parse_setting(pair: str) -> tuple[str, object]:
    """``"key=value"`` -> ``(key, value)``: a JSON value (number, ``null``, ...) or a plain string. Raises
    ``argparse.ArgumentTypeError`` for a malformed pair, a key that is not a :class:`GaussianReconConfig` field and
    one that has its own flag."""
    key, sep, text = pair.partition("=")
    known = {f.name for f in dataclasses.fields(GaussianReconConfig)}
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"takes KEY=VALUE, got {pair!r}")
    if key in _FLAGGED_SETTINGS:
        raise argparse.ArgumentTypeError(f"{key}: use {_FLAGGED_SETTINGS[key]}")
    if key not in known:
        raise argparse.ArgumentTypeError(f"{key} is not a reconstruction setting (one of {sorted(known)})")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.compare_medgmae and not args.checkpoint:
        p.error("--compare-medgmae needs --checkpoint (a model.pt from the pre-training bundle)")
    if args.partial_every < 0:
        p.error("--partial-every must be >= 0")
    if (problem := only_error(args.only, args.compare_medgmae)) is not None:
        p.error(problem)
    if args.gpu_case:
        args.size, args.voxel, args.geometry, args.views, args.iterations = [80, 256, 256], [2.5, 1.5, 1.5], "cone", 120, 15000
        args.num_gaussians, args.eval_every = args.num_gaussians or 50000, 250
    if args.num_gaussians is None:
        args.num_gaussians = toolkit_budget(math.prod(args.size))
    if args.num_gaussians < 1:
        p.error(f"--num-gaussians must be >= 1, got {args.num_gaussians}")
    try:  # a bad --set value fails here, before the scan is simulated
        GaussianReconConfig.preset("toolkit", args.iterations, **dict(args.settings))
    except (TypeError, ValueError) as e:
        p.error(f"--set: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from medgmae.engine import resolve_device

    device = resolve_device(args.device)
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "command": " ".join(["python", "bench/recon.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip

    def save(partial: dict) -> None:
        """Write the results so far (``partial`` over the header) to ``--json``, atomically."""
        if args.json:
            from medgmae.files import save_json_atomic

            save_json_atomic({**result, **partial}, args.json)

    result.update(run_case(args, device, save))
    text = json.dumps(result, indent=2)
    print(text)
    if args.png:
        plot_curves(result, args.png)
    save({})
    return 0


if __name__ == "__main__":
    sys.exit(main())
