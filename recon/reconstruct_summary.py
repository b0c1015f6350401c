"""What ``medgmae-recon reconstruct`` leaves: its outputs (:func:`write_reconstruction`: the volume, the Gaussians
in world mm and their ellipsoids (up to :data:`medgmae.ellipsoids.MESH_LIMIT` Gaussians), metrics and pictures,
staged) and its closing summary (the times, the Gaussians and their budget, the density-control rounds, the held-out
choice, PSNR/SSIM, and the outputs written with what each holds; above that limit, the command that writes the
ellipsoids)."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import torch

from recon.commands import output_lines
from recon.geometry import CTGeometry
from recon.state import RECON_STATE

__all__ = ["MESH", "SPARSE_BUDGET", "outputs", "print_summary", "world_gaussians", "write_reconstruction"]


#: The mesh of the Gaussians 3D Slicer draws (:mod:`medgmae.ellipsoids`), beside ``gaussians.ply``.
MESH = "ellipsoids.vtk"
#: Voxels per Gaussian above which the summary says a given ``--num-gaussians`` is too small (the default budget has
#: 8, ``recon.presets.toolkit_budget``). On a 112 x 128 x 160 phantom (60 noisy parallel views) 20,000 Gaussians
#: (115 voxels each) ended 5.3 dB below one per 8 voxels after 400 iterations, 60,000 (38 each) 3.1 dB below
#: (``bench/recon_budget_study.sh``, bench/RESULTS.md).
SPARSE_BUDGET = 32.0


def print_summary(metrics: dict, out: Path) -> None:
    """The closing summary of a run from its ``metrics`` (what metrics.json holds), naming the outputs in ``out``."""
    lines = [f"reconstruction finished: preset {metrics['preset']}, init {metrics['init']}, {metrics['iterations']} iterations "
             f"in {metrics['time_seconds']:.1f} s{_time_note(metrics.get('resumed'))} ({_other_times(metrics)}), "
             f"{metrics['num_gaussians']} Gaussians"]  # fmt: skip
    per = metrics.get("voxels_per_gaussian", 0.0)
    if per > SPARSE_BUDGET:
        lines.append(f"  note: one Gaussian per {per:.0f} voxels is too few for this volume's detail (the study in "
                     f"bench/RESULTS.md used about one per 7); {_what_limits_growth(metrics)}")  # fmt: skip
    rounds = metrics.get("density_rounds") or []
    if rounds:
        total = {k: sum(r[k] for r in rounds) for k in ("cloned", "split", "pruned")}
        when = f"1 round (iteration {rounds[0]['iteration']})" if len(rounds) == 1 else \
            f"{len(rounds)} rounds (iterations {rounds[0]['iteration']}-{rounds[-1]['iteration']})"
        lines.append(f"  density control: {when}: {total['cloned']} cloned, {total['split']} split, {total['pruned']} pruned")
    if metrics.get("holdout"):
        h = metrics["holdout"]
        how = "stopped early" if h["stopped_early"] else "ran to the end"
        what = "the run on every view stopped at" if h["refit"] else "the Gaussians of"
        lines.append(f"  held-out views {h['views']}: lowest held-out error {h['best_error']:.4g} at iteration {h['best_iteration']} "
                     f"(the run {how} at iteration {h['run_iterations']}); written: {what} iteration {h['best_iteration']}")  # fmt: skip
        lines.append(f"  (runs of this scan with the same --holdout-views and other settings: medgmae-recon select --runs {shlex.quote(str(out))} ...)")
    if "final" in metrics:
        rows = (("FBP", "fbp"), ("start", "start"), ("Gaussians", "final")) if metrics.get("start") else (("FBP", "fbp"), ("Gaussians", "final"))
        for name, key in rows:  # start: the initial Gaussians, before the first iteration
            lines.append(f"  {name:<9}  PSNR {metrics[key]['psnr']:.2f} dB  SSIM {metrics[key]['ssim']:.4f}")
    else:
        lines.append("  no --reference: PSNR/SSIM not computed")
    lines += output_lines(out, outputs(metrics))
    if _without_mesh(metrics):
        from medgmae.ellipsoids import skipped_mesh_message

        lines.append(f"  {skipped_mesh_message(metrics['num_gaussians'], out / 'gaussians.ply', out / MESH)}")
    print("\n".join(lines))


def _without_mesh(metrics: dict) -> bool:
    """Whether the run left out ``ellipsoids.vtk``: more Gaussians than :data:`medgmae.ellipsoids.MESH_LIMIT`."""
    from medgmae.ellipsoids import over_mesh_limit

    return over_mesh_limit(metrics.get("num_gaussians", 0))


def _other_times(metrics: dict) -> str:
    """The times besides the optimisation's: the projector's set-up (built, or its matrix read from a file), the
    FBP and initialisation and, after ``--refit``, the held-out run before it."""
    projector = f"the {metrics['projector']} projector" if metrics.get("projector") else "the projector"
    h = metrics.get("holdout") or {}
    first = h.get("init_seconds", metrics["init_seconds"])  # a refit's record holds the held-out run's start there
    text = f"+{metrics.get('projector_seconds', 0.0):.1f} s setting up {projector}, {first:.1f} s FBP and initialisation"
    if h.get("refit"):
        text += f", {h['run_seconds']:.1f} s the held-out run before the refit ({h['run_iterations']} iterations)"
        if "init_seconds" in h:  # the refit's own start, from the every-view FBP
            text += f", {metrics['init_seconds']:.1f} s the refit's start"
    return text


def _time_note(resumed: dict | None) -> str:
    """What the optimisation time covers after ``--resume`` (``resumed``: the reconstructor's record of the resume,
    :func:`recon.state.restore_reconstructor`, which metrics.json holds as it is)."""
    if not resumed:
        return ""
    if resumed["seconds_before"] is None:
        return f" since the resume at iteration {resumed['iteration']} (the state saved no earlier time)"
    return f" in all ({resumed['seconds_before']:.1f} s before the resume at iteration {resumed['iteration']})"


def _what_limits_growth(metrics: dict) -> str:
    """The advice of the sparse-budget note: a sparse start that stopped growing below its budget
    (:func:`recon.presets.sparse_start_growth`) is limited by when density control ends, not by the budget; one
    that reached a budget ``--max-gaussians`` lowered (the settings' ``max_gaussians``) by that cap."""
    settings = metrics.get("settings") or {}
    grow_to, until = (metrics.get("init_settings") or {}).get("grow_to"), settings.get("densify_until")
    budget = grow_to if grow_to is None else min(grow_to, settings.get("max_gaussians") or grow_to)
    if metrics["init"] == "medgmae" and metrics["preset"] == "3dgr-ct":
        return ("raise --num-gaussians (the decoder's Gaussians are subdivided to it; 3DGR-CT's density control adds "
                "Gaussians by gradient, not up to a budget)")  # fmt: skip
    if metrics["init"] == "3dgr-ct":  # a budget it cannot place: one Gaussian per half-resolution voxel at most
        return ("--init 3dgr-ct places at most one Gaussian per voxel of its half-resolution grid, whatever "
                "--num-gaussians asks: --init fbp, or --init medgmae, keeps a budget")  # fmt: skip
    if metrics["init"] == "fbp" and metrics.get("initial_gaussians", 0) < (metrics.get("init_settings") or {}).get("num_gaussians", 0):
        return ("--init fbp placed one Gaussian per voxel above 5 % of the FBP's maximum, fewer than --num-gaussians: "
                "more iterations let density control add Gaussians where the run needs them")  # fmt: skip
    grown = max([metrics["num_gaussians"]] + [r.get("num_gaussians", 0) for r in metrics.get("density_rounds") or []])
    if grow_to is not None and grown >= budget and budget < grow_to:
        return f"raise --max-gaussians (its {budget} capped the sparse start's budget of {grow_to})"
    if grow_to is None or until is None or grown >= budget:
        return "raise --num-gaussians (and the iterations)"
    written = "" if grown == metrics["num_gaussians"] else f" (the {metrics['num_gaussians']} written are those of the held-out choice)"
    rounds = [r["iteration"] for r in metrics.get("density_rounds") or [] if "iteration" in r]
    last = f"its last density-control round was at iteration {rounds[-1]}" if rounds else "density control ran no round"
    ends = f"rounds run until iteration {until}"
    if rounds and rounds[-1] > until and metrics.get("resumed"):  # a shorter --iterations: that round was on the
        # longer schedule of the run resumed (rounds end at a share of --iterations)
        last = (f"its last density-control round, at iteration {rounds[-1]}, came from the longer --iterations of the "
                "run it resumed")  # fmt: skip
        ends = f"this run's --iterations {settings.get('iterations', metrics['iterations'])} end rounds at iteration {until}"
    share = until / max(1, settings.get("iterations", 1))
    share = f" (growth runs to {share:.0%} of them)" if until > 0 else ""  # a run too short for any round: no 0 %
    budget_words = f"{budget}" + (f" (--max-gaussians; --num-gaussians asked {grow_to})" if budget < grow_to else "")
    return (f"the sparse start grew to at most {grown}{written} of its budget of {budget_words}: {last}, and {ends}; "
            f"raise --iterations{share}, or start from --init fbp with that budget")  # fmt: skip


def outputs(metrics: dict) -> dict[str, str]:
    """The files a run wrote and what each holds, as its ``metrics`` (:func:`_metrics`) say: PSNR and the
    reference / error columns only with ``--reference``, the held-out error only with ``--holdout-views``,
    ``ellipsoids.vtk`` only up to :data:`medgmae.ellipsoids.MESH_LIMIT` Gaussians."""
    with_ref = "final" in metrics
    curves = ["loss", *(["held-out error"] if metrics.get("holdout") else []),
              *(["PSNR (from the start's, at iteration 0)" if metrics.get("start") else "PSNR"] if with_ref else [])]
    columns = "rows reference / FBP / reconstruction / error" if with_ref else "rows FBP / reconstruction"
    mesh = {} if _without_mesh(metrics) else \
        {MESH: "the same Gaussians as ellipsoids at half maximum, coloured by intensity: what 3D Slicer draws"}
    return {
        "recon.nii.gz": "reconstructed attenuation volume, 1/mm",
        "gaussians.ply": "the Gaussians in world mm, RAS, recon.nii.gz's frame; header: recon.nii.gz's shape and affine",
        **mesh,
        "metrics.json": "preset, every setting, history, density-control rounds" + (", PSNR/SSIM" if with_ref else "") + ", software",
        "curve.png": f"{' and '.join([', '.join(curves[:-1]), curves[-1]] if len(curves) > 1 else curves)} "
                     f"{_evaluations((metrics.get('settings') or {}).get('eval_every'), metrics.get('iterations'))}",
        "slices.png": f"orthogonal mid-slices: {columns}",
        RECON_STATE: "resumable state, for --resume",
    }


def _evaluations(every: int | None, iterations: int | None = None) -> str:
    """When the history (and so ``curve.png``) has a point: every ``--eval-every`` iterations and at the last."""
    if every is None:
        return "at each evaluation"
    if iterations is not None and every >= iterations:
        return "at the last iteration only"
    return "at every iteration" if every == 1 else f"every {every} iterations and at the last"


def world_gaussians(gaussians, geom: CTGeometry):
    """The reconstruction's Gaussians (voxel frame of the ``(z, y, x)`` grid) in world millimetres (RAS+, the frame
    of ``recon.nii.gz``'s affine, as the zero-shot PLY): centres, scales and rotations mapped by the scan's affine."""
    from recon.initialisation import zyx_affine

    a = torch.from_numpy(zyx_affine(geom.default_affine()))
    return gaussians.to("cpu").transformed(a[:3, :3], a[:3, 3])


def write_reconstruction(out: Path, geom: CTGeometry, result, fbp_np: np.ndarray, reference, metrics: dict) -> None:
    """Stage every output and move them into ``out`` when all were written (what ``out`` holds besides, such as
    ``recon_state.pt``, stays); ``ellipsoids.vtk`` only up to :data:`medgmae.ellipsoids.MESH_LIMIT` Gaussians (above
    it the summary says how to write it). An earlier run's ``ellipsoids.vtk`` and ``metrics.json`` are removed once
    every output is staged, before any moves in, and this run's move in last (the mesh, then the metrics): a stop
    at any point leaves neither beside outputs of another run, where they would pass for their mesh and record; a
    folder with a ``metrics.json`` holds one run's outputs, whole."""
    from medgmae.ellipsoids import over_mesh_limit, save_ellipsoids
    from medgmae.files import save_json_atomic, staged_outputs
    from medgmae.ply import save_ply
    from recon.plot import draw_curve, draw_slices
    from recon.scan_files import save_nifti

    volume, world = result.volume.cpu().numpy(), world_gaussians(result.gaussians, geom)
    without_mesh = over_mesh_limit(world.num_gaussians)
    with staged_outputs(out, last=(MESH, "metrics.json")) as stage:
        save_nifti(stage / "recon.nii.gz", volume, geom.default_affine())
        # the header in the NIfTI's (I, J, K) = (x, y, z) order: recon.nii.gz's shape and affine, as zero-shot PLYs
        save_ply(stage / "gaussians.ply", world, frame="world", shape=tuple(geom.volume_shape[::-1]),
                 affine=geom.default_affine(), cutoff=metrics["settings"]["cutoff"])
        if not without_mesh:
            save_ellipsoids(stage / MESH, world)  # the same world Gaussians, which 3D Slicer draws
        save_json_atomic(metrics, stage / "metrics.json")
        draw_curve(result.history, stage / "curve.png", (metrics.get("holdout") or {}).get("errors"),
                   (metrics.get("fbp") or {}).get("psnr"), (metrics.get("start") or {}).get("psnr"))
        draw_slices({"FBP": fbp_np, "Gaussians": volume}, stage / "slices.png", geom.default_affine(), reference)
        for earlier in (MESH, "metrics.json"):  # the earlier run's, first: the staged outputs move in next
            (out / earlier).unlink(missing_ok=True)
