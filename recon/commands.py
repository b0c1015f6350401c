"""What ``medgmae-recon simulate``, ``fbp`` and ``evaluate`` do, and the input checks and staged output folder that
every subcommand shares (``reconstruct`` is in :mod:`recon.reconstruct_command`; the options in :mod:`recon.cli`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from recon.geometry import CTGeometry

__all__ = [
    "CLIError",
    "StagedOutputs",
    "cmd_evaluate",
    "cmd_fbp",
    "cmd_simulate",
    "load_matching_volume",
    "load_scan",
    "resolve_cli_device",
]


class CLIError(ValueError):
    """A user-facing error: printed and turned into exit code 2."""


def resolve_cli_device(name: str) -> torch.device:
    """The ``--device`` as a torch device (``auto``: CUDA when available); a bad name is a :class:`CLIError`."""
    from medgmae.engine import resolve_device

    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from e


def load_scan(proj_path: str, geom_path: str) -> tuple[CTGeometry, np.ndarray]:
    """``geometry.json`` and the projection stack, checked against each other (a mismatch is a :class:`CLIError`)."""
    from recon.scan_files import load_projections

    geom = CTGeometry.load(geom_path)
    proj = load_projections(proj_path)
    try:
        geom.check_projections(proj.shape, f"projections {proj_path}")
    except ValueError as e:
        raise CLIError(f"{e} (geometry {geom_path})") from e
    return geom, proj


def load_matching_volume(path: str, geom: CTGeometry, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume ``(z, y, x)`` of the geometry's shape, and its affine (checked against ``geometry.json``'s)."""
    from recon.scan_files import load_volume

    vol, affine, _ = load_volume(path)
    if vol.shape != geom.volume_shape:
        raise CLIError(f"{what} {path} has shape {vol.shape[::-1]} (x, y, z) but the geometry's volume is {geom.volume_shape[::-1]}")
    if geom.affine is not None and not np.allclose(affine, geom.default_affine(), atol=1e-4):
        raise CLIError(f"{what} {path} has another voxel-to-world affine than the geometry:\n{affine}\nvs\n{geom.default_affine()}")
    return vol, affine


class StagedOutputs:
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


def cmd_simulate(args) -> int:
    """``simulate``: attenuation volume, projections (with Poisson noise if asked), geometry and FBP of a CT volume."""
    from recon.fbp import fbp
    from recon.initialisation import hu_to_mu
    from recon.scan_files import load_volume, save_nifti, save_projections
    from recon.projectors import make_projector

    out = Path(args.out)
    hu, affine, voxel = load_volume(args.volume)
    device = resolve_cli_device(args.device)
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
    stage = StagedOutputs(out)
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
    """``fbp``: FBP (parallel beam) or FDK (cone beam) of a projection stack, written as NIfTI."""
    from recon.fbp import fbp
    from recon.scan_files import save_nifti

    geom, proj = load_scan(args.projections, args.geometry)
    device = resolve_cli_device(args.device)
    rec = fbp(torch.from_numpy(proj).to(device), geom, args.filter).cpu().numpy()
    save_nifti(args.out, rec, geom.default_affine())
    return 0


def cmd_evaluate(args) -> int:
    """``evaluate``: PSNR and SSIM of a reconstruction against a reference, printed as JSON."""
    from recon.scan_files import load_volume
    from recon.metrics import evaluate

    rec, _, _ = load_volume(args.recon)
    ref, _, _ = load_volume(args.reference)
    if rec.shape != ref.shape:
        raise CLIError(f"{args.recon} has shape {rec.shape[::-1]} but {args.reference} has {ref.shape[::-1]}")
    print(json.dumps(evaluate(rec, ref)))
    return 0
