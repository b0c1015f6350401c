"""``medgmae-recon`` (also ``python -m recon``): simulate scans, FBP/FDK, Gaussian reconstruction, evaluation.

Subcommands::

    medgmae-recon simulate --volume ct.nii.gz --geometry parallel|cone --views N [--arc DEG] [--photons I0] --out DIR
    medgmae-recon fbp --projections P.npy --geometry G.json [--filter hann] --out fbp.nii.gz
    medgmae-recon reconstruct --projections P.npy --geometry G.json [--fbp F.nii.gz] [--preset toolkit|3dgr-ct]
                  [--init random|fbp|medgmae|3dgr-ct] [--checkpoint model.pt] [--iterations N] [--reference R.nii.gz]
                  --out DIR
    medgmae-recon evaluate --recon R.nii.gz --reference R2.nii.gz

Units: ``simulate`` reads a CT volume in HU and converts it to linear attenuation (1/mm) with
``mu = 0.0192 (1 + HU / 1000)``, clipped at 0 (water 0.0192 / mm, air 0); projections are line integrals of ``mu``
(dimensionless). With ``--photons I0`` they are turned into Poisson counts ``~ Poisson(I0 exp(-p))`` and back into
``-log(max(counts, 1) / I0)``. All volumes written are attenuation volumes (1/mm) with the input's affine.

``reconstruct`` uses the settings of ``--preset`` (``toolkit``, the default, or ``3dgr-ct``, SigmaLDC/3DGR-CT's
published settings; see :mod:`recon.presets`), including its initialisation unless ``--init`` is given
(``toolkit``: ``fbp`` with 20,000 Gaussians; ``3dgr-ct``: its own with 50,000). It writes ``recon.nii.gz``,
``gaussians.ply``, ``metrics.json`` (the preset, every setting used, the history and PSNR/SSIM),
``curve.png``, ``slices.png`` (three orthogonal mid-slices of reference / FBP / reconstruction / error, or FBP /
reconstruction without a reference) and the resumable ``recon_state.pt`` (saved every ``--checkpoint-every``
iterations and at the end), and prints a closing summary.
``evaluate`` prints ``{"psnr", "ssim", "data_range"}`` as JSON: PSNR and SSIM on the reference's range
``max - min`` (see :mod:`recon.metrics`).

Errors in the inputs (missing or unreadable files, projections that do not match the geometry, a model
checkpoint of the wrong kind, ``--init medgmae`` without ``--checkpoint``) print a message and exit with code 2
before any output is written; every output file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medgmae.cli_types import positive_float, positive_int
from recon.geometry import CTGeometry

__all__ = ["main", "build_parser"]

RECON_STATE = "recon_state.pt"


class CLIError(ValueError):
    """A user-facing error: printed and turned into exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from recon.fbp import FILTERS
    from recon.initialisation import INIT_METHODS
    from recon.presets import PRESETS

    p = argparse.ArgumentParser(prog="medgmae-recon", description="CT simulation, FBP/FDK and 3DGR-CT Gaussian reconstruction.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="attenuation volume, projections, geometry and FBP from a CT volume in HU")
    s.add_argument("--volume", required=True, help="CT volume in HU (NIfTI)")
    s.add_argument("--geometry", required=True, choices=("parallel", "cone"))
    s.add_argument("--views", required=True, type=positive_int, help="number of projection angles")
    s.add_argument("--arc", type=positive_float, default=None, help="scan arc in degrees (default 180 parallel, 360 cone)")
    s.add_argument("--photons", type=positive_float, default=None, help="incident photons per detector pixel (Poisson noise)")
    s.add_argument("--filter", default="hann", choices=FILTERS, help="FBP/FDK filter for fbp.nii.gz")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True, help="output folder")

    f = sub.add_parser("fbp", help="FBP (parallel) or FDK (cone) reconstruction")
    f.add_argument("--projections", required=True, help=".npy of shape (views, rows, cols)")
    f.add_argument("--geometry", required=True, help="geometry.json")
    f.add_argument("--filter", default="hann", choices=FILTERS)
    f.add_argument("--device", default="auto")
    f.add_argument("--out", required=True, help="output NIfTI")

    r = sub.add_parser("reconstruct", help="Gaussian (3DGR-CT) reconstruction")
    r.add_argument("--projections", required=True)
    r.add_argument("--geometry", required=True)
    r.add_argument("--fbp", default=None, help="FBP volume for the initialisation (computed when absent)")
    r.add_argument("--preset", default="toolkit", choices=PRESETS, help="optimisation settings (default toolkit)")
    r.add_argument("--init", default=None, choices=(*INIT_METHODS, "3dgr-ct"), help="initialisation (default: the preset's)")
    r.add_argument("--checkpoint", default=None, help="pre-trained MedGMAE model.pt (for --init medgmae)")
    r.add_argument("--model-spacing", type=positive_float, default=None,
                   help="override the voxel spacing (mm) recorded in the MedGMAE model.pt (a warning names both)")
    r.add_argument("--iterations", type=int, default=1000)
    r.add_argument("--num-gaussians", type=positive_int, default=None, help="initial Gaussians for random/fbp/3dgr-ct (default: the preset's, 20000 or 50000)")
    r.add_argument("--reference", default=None, help="ground-truth attenuation volume for PSNR/SSIM")
    r.add_argument("--views-per-iteration", type=positive_int, default=None)
    r.add_argument("--tv", type=float, default=0.0, help="TV weight")
    r.add_argument("--eval-every", type=positive_int, default=50)
    r.add_argument("--checkpoint-every", type=int, default=500, help="iterations between resumable states (0: end only)")
    r.add_argument("--resume", action="store_true", help=f"continue from OUT/{RECON_STATE}")
    r.add_argument("--backend", default="auto", choices=("auto", "torch", "astra", "matrix"), help="projector backend (matrix: the PyTorch projector precomputed as a CPU sparse matrix)")
    r.add_argument("--filter", default="hann", choices=FILTERS, help="filter for the FBP when --fbp is absent")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--out", required=True, help="output folder")

    e = sub.add_parser("evaluate", help="PSNR/SSIM of a reconstruction, printed as JSON")
    e.add_argument("--recon", required=True)
    e.add_argument("--reference", required=True)
    return p


# ---------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    from medgmae.engine import resolve_device

    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from e


def _geometry_and_projections(proj_path: str, geom_path: str) -> tuple[CTGeometry, np.ndarray]:
    from recon.scan_files import load_projections

    geom = CTGeometry.load(geom_path)
    proj = load_projections(proj_path)
    try:
        geom.check_projections(proj.shape, f"projections {proj_path}")
    except ValueError as e:
        raise CLIError(f"{e} (geometry {geom_path})") from e
    return geom, proj


def _volume_matching(path: str, geom: CTGeometry, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume ``(z, y, x)`` of the geometry's shape, and its affine (checked against ``geometry.json``'s)."""
    from recon.scan_files import load_volume

    vol, affine, _ = load_volume(path)
    if vol.shape != geom.volume_shape:
        raise CLIError(f"{what} {path} has shape {vol.shape[::-1]} (x, y, z) but the geometry's volume is {geom.volume_shape[::-1]}")
    if geom.affine is not None and not np.allclose(affine, geom.default_affine(), atol=1e-4):
        raise CLIError(f"{what} {path} has another voxel-to-world affine than the geometry:\n{affine}\nvs\n{geom.default_affine()}")
    return vol, affine


class _Staging:
    """Write outputs into a hidden folder beside ``out`` and move them in only when all succeeded."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=self.out.parent))

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for f in sorted(self.dir.iterdir()):
            os.replace(f, self.out / f.name)
        self.dir.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _zyx_affine(geom: CTGeometry) -> np.ndarray:
    """Voxel-to-world affine for ``(z, y, x)`` voxel indices (the Gaussians' voxel frame)."""
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    return geom.default_affine() @ perm


# ---------------------------------------------------------------------- commands
def cmd_simulate(args) -> int:
    from recon.fbp import fbp
    from recon.initialisation import hu_to_mu
    from recon.scan_files import load_volume, save_nifti, save_projections
    from recon.projectors import make_projector

    out = Path(args.out)
    hu, affine, voxel = load_volume(args.volume)
    device = _device(args.device)
    mu = hu_to_mu(hu).astype(np.float32)
    if args.geometry == "parallel":
        geom = CTGeometry.parallel(mu.shape, voxel, num_angles=args.views, arc_deg=args.arc or 180.0, affine=affine)
    else:
        geom = CTGeometry.cone(mu.shape, voxel, num_angles=args.views, arc_deg=args.arc or 360.0, affine=affine)
    # one projection: on the CPU, building the cone-beam matrix would cost more than the ray marcher's single pass
    backend = "torch" if geom.kind == "cone" and device.type == "cpu" else "auto"
    proj_op = make_projector(geom, backend, device)
    with torch.no_grad():
        proj = proj_op.forward(torch.from_numpy(mu).to(device)).cpu()
    if args.photons is not None:
        gen = torch.Generator().manual_seed(args.seed)
        counts = torch.poisson(args.photons * torch.exp(-proj.double()), generator=gen)
        proj = (-torch.log(counts.clamp_min(1.0) / args.photons)).float()
    rec = fbp(proj.to(device), geom, args.filter).cpu().numpy()
    stage = _Staging(out)
    try:
        save_projections(stage.path("projections.npy"), proj.numpy())
        geom.save(stage.path("geometry.json"))
        save_nifti(stage.path("fbp.nii.gz"), rec, geom.default_affine())
        save_nifti(stage.path("reference.nii.gz"), mu, geom.default_affine())
        stage.commit()
    except BaseException:
        stage.discard()
        raise
    print(json.dumps({"out": str(out), "projections": list(proj.shape), "geometry": geom.kind, "views": geom.num_views}))
    return 0


def cmd_fbp(args) -> int:
    from recon.fbp import fbp
    from recon.scan_files import save_nifti

    geom, proj = _geometry_and_projections(args.projections, args.geometry)
    device = _device(args.device)
    rec = fbp(torch.from_numpy(proj).to(device), geom, args.filter).cpu().numpy()
    save_nifti(args.out, rec, geom.default_affine())
    return 0


def _model_spec(model, spacing: float | None, checkpoint: str):
    """The model's recorded pre-processing, with ``--model-spacing`` as an override (warned about)."""
    from medgmae.preprocessing import spec_with_overrides

    return spec_with_overrides(model.preprocessing, spacing, source=checkpoint)


def _initialise(args, init_settings: dict, fbp_t: torch.Tensor, affine: np.ndarray, model):
    """The initial Gaussians and the intensity unit (``None``: the reconstructor's default)."""
    from recon.initialisation import fbp_init, medgmae_init, random_init
    from recon.init_3dgr import init_3dgr_ct

    k = init_settings.get("num_gaussians", 0)
    if init_settings["init"] == "random":
        init = random_init(fbp_t, k, seed=args.seed)
    elif init_settings["init"] == "fbp":
        init = fbp_init(fbp_t, k, seed=args.seed)
    elif init_settings["init"] == "3dgr-ct":
        kw = {n: init_settings[n] for n in ("start", "air_threshold", "ini_intensity", "ini_sigma", "neighbour_kernel", "intensity_offset")}
        return init_3dgr_ct(fbp_t, k, **kw)
    else:
        init = medgmae_init(fbp_t, affine, model, spec=_model_spec(model, args.model_spacing, args.checkpoint))
    if args.preset == "3dgr-ct":  # sigmoid intensities in units of the FBP's maximum, as 3DGR-CT's normalised images
        return init, float(fbp_t.max().clamp_min(1e-12))
    return init, None


def _init_settings(args) -> dict:
    from recon.presets import preset_init_settings

    settings = preset_init_settings(args.preset)
    if args.init is not None and args.init != settings["init"]:
        defaults = preset_init_settings("3dgr-ct" if args.init == "3dgr-ct" else "toolkit")
        settings = {**defaults, "init": args.init}
    if args.num_gaussians is not None:
        settings["num_gaussians"] = args.num_gaussians
    if settings["init"] == "medgmae":
        settings = {"init": "medgmae", "checkpoint": str(args.checkpoint), "model_spacing": args.model_spacing}
    return settings


def _print_summary(metrics: dict, out: Path) -> None:
    lines = [f"reconstruction finished: preset {metrics['preset']}, init {metrics['init']}, {metrics['iterations']} iterations "
             f"in {metrics['time_seconds']:.1f} s (+{metrics['init_seconds']:.1f} s FBP and initialisation), "
             f"{metrics['num_gaussians']} Gaussians"]  # fmt: skip
    if "final" in metrics:
        for name, key in (("FBP", "fbp"), ("Gaussians", "final")):
            lines.append(f"  {name:<9}  PSNR {metrics[key]['psnr']:.2f} dB  SSIM {metrics[key]['ssim']:.4f}")
    else:
        lines.append("  no --reference: PSNR/SSIM not computed")
    lines.append(f"outputs in {out}:")
    for name, what in OUTPUTS.items():
        lines.append(f"  {out / name}  ({what})")
    print("\n".join(lines))


OUTPUTS = {
    "recon.nii.gz": "reconstructed attenuation volume, 1/mm",
    "gaussians.ply": "the Gaussians, world frame",
    "metrics.json": "preset, every setting, history, PSNR/SSIM",
    "curve.png": "loss and PSNR per iteration",
    "slices.png": "orthogonal mid-slices: reference / FBP / reconstruction / error",
    RECON_STATE: "resumable state (--resume)",
}


def cmd_reconstruct(args) -> int:
    from recon.fbp import fbp
    from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
    from medgmae.files import load_torch_file
    from recon.metrics import evaluate
    from recon.projectors import make_projector

    # ---- validate everything before writing anything
    if args.iterations < 0:
        raise CLIError(f"--iterations must be >= 0, got {args.iterations}")
    init_settings = _init_settings(args)
    if init_settings["init"] == "medgmae" and not args.checkpoint:
        raise CLIError("--init medgmae needs --checkpoint pointing to a pre-trained MedGMAE model.pt")
    if args.checkpoint and init_settings["init"] != "medgmae":
        raise CLIError(f"--checkpoint is only used by --init medgmae (got --init {init_settings['init']})")
    geom, proj = _geometry_and_projections(args.projections, args.geometry)
    reference = _volume_matching(args.reference, geom, "reference")[0] if args.reference else None
    fbp_vol, affine = _volume_matching(args.fbp, geom, "FBP volume") if args.fbp else (None, geom.default_affine())
    model = _load_model(args) if init_settings["init"] == "medgmae" else None
    out = Path(args.out)
    state_path = out / RECON_STATE
    state = None
    if args.resume:
        if not state_path.is_file():
            raise CLIError(f"--resume: no saved state {state_path}")
        state = load_torch_file(state_path, what="reconstruction state")
        saved = state.get("config", {}).get("preset_name", "toolkit") if isinstance(state, dict) else None
        if saved != args.preset:
            raise CLIError(f"--resume: {state_path} was written with --preset {saved}, not {args.preset}")
    device = _device(args.device)
    if model is not None:
        model = model.to(device).eval()

    # ---- compute
    torch.manual_seed(args.seed)
    projector = make_projector(geom, args.backend, device)
    proj_t = torch.from_numpy(proj).to(device)
    t0 = time.perf_counter()
    fbp_t = fbp(proj_t, geom, args.filter) if fbp_vol is None else torch.from_numpy(fbp_vol).to(device)
    init, value_scale = _initialise(args, init_settings, fbp_t, affine, model)
    init_seconds = time.perf_counter() - t0
    cfg = GaussianReconConfig.preset(
        args.preset, args.iterations, tv_weight=args.tv, views_per_iteration=args.views_per_iteration,
        eval_every=args.eval_every, checkpoint_every=max(0, args.checkpoint_every), seed=args.seed,
    )  # fmt: skip
    ref_t = None if reference is None else torch.from_numpy(reference)
    rec = GaussianReconstructor(projector, proj_t, init, cfg, reference=ref_t, device=device, value_scale=value_scale)
    if state is not None:
        try:
            rec.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CLIError(f"cannot resume from {state_path}: {e}") from e
    result = rec.run(checkpoint_path=state_path, progress=not args.no_progress)
    metrics = _metrics(args, init_settings, cfg, rec, result, init, init_seconds, projector.name, device)
    if reference is not None:
        metrics["final"] = evaluate(result.volume.cpu().numpy(), reference)
        metrics["fbp"] = evaluate(fbp_t.cpu().numpy(), reference)
    _write_reconstruction(out, geom, result, fbp_t.cpu().numpy(), reference, metrics)
    _print_summary(metrics, out)
    return 0


def _metrics(args, init_settings: dict, cfg, rec, result, init, init_seconds: float, projector: str, device) -> dict:
    """What ``metrics.json`` records: the preset, every setting, the run and its history."""
    from dataclasses import asdict

    return {
        "preset": args.preset, "init": init_settings["init"], "iterations": result.iterations, "time_seconds": result.seconds,
        "init_seconds": init_seconds, "num_gaussians": result.gaussians.num_gaussians, "initial_gaussians": init.num_gaussians,
        "device": str(device), "projector": projector, "value_scale": rec.value_scale, "settings": asdict(cfg),
        "init_settings": init_settings, "fbp_filter": None if args.fbp else args.filter,
        "arguments": {k: v for k, v in vars(args).items() if k != "command"},
        "iterations_to_psnr": result.iterations_to_psnr, "history": result.history,
    }  # fmt: skip


def _load_model(args):
    from medgmae.networks.medgmae import MedGMAE

    if not Path(args.checkpoint).is_file():
        raise CLIError(f"model checkpoint {args.checkpoint} does not exist")
    try:
        return MedGMAE.from_checkpoint(args.checkpoint, "cpu", needed_for="--init medgmae needs a medgmae model.pt")
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise CLIError(f"cannot use {args.checkpoint} for --init medgmae: {e}") from e


def _write_reconstruction(out: Path, geom: CTGeometry, result, fbp_np: np.ndarray, reference, metrics: dict) -> None:
    """Stage every output and move them into ``out`` together."""
    from medgmae.files import save_json_atomic
    from medgmae.ply import save_ply
    from recon.scan_files import save_nifti
    from recon.plot import draw_curve, draw_slices

    volume = result.volume.cpu().numpy()
    stage = _Staging(out)
    try:
        save_nifti(stage.path("recon.nii.gz"), volume, geom.default_affine())
        save_ply(stage.path("gaussians.ply"), result.gaussians.to("cpu"), frame="voxel", shape=geom.volume_shape, affine=_zyx_affine(geom))
        save_json_atomic(metrics, stage.path("metrics.json"))
        draw_curve(result.history, stage.path("curve.png"))
        draw_slices({"FBP": fbp_np, "Gaussians": volume}, stage.path("slices.png"), reference=reference)
        stage.commit()
    except BaseException:
        stage.discard()
        raise


def cmd_evaluate(args) -> int:
    from recon.scan_files import load_volume
    from recon.metrics import evaluate

    rec, _, _ = load_volume(args.recon)
    ref, _, _ = load_volume(args.reference)
    if rec.shape != ref.shape:
        raise CLIError(f"{args.recon} has shape {rec.shape[::-1]} but {args.reference} has {ref.shape[::-1]}")
    print(json.dumps(evaluate(rec, ref)))
    return 0


COMMANDS = {"simulate": cmd_simulate, "fbp": cmd_fbp, "reconstruct": cmd_reconstruct, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"medgmae-recon {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
