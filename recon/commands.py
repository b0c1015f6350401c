"""What ``medgmae-recon simulate``, ``fbp`` and ``evaluate`` do, and the input checks that every subcommand shares
(``reconstruct`` is in :mod:`recon.reconstruct_command`; the options in :mod:`recon.cli`). A command's output folder
is written through :func:`medgmae.files.staged_outputs`: its files move in only when all were written, merged with
what the folder already holds (a ``reconstruct`` run's saved state stays beside them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from medgmae.files import output_dir_problem, staged_outputs
from recon.geometry import CTGeometry

__all__ = [
    "CLIError",
    "Interrupted",
    "check_out_file",
    "check_out_folder",
    "check_same_grid",
    "cmd_evaluate",
    "cmd_fbp",
    "cmd_simulate",
    "load_matching_volume",
    "load_scan",
    "resolve_cli_device",
]


class CLIError(ValueError):
    """A user-facing error: printed and turned into exit code 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command, with what it left (the message): printed on one line, exit code 130."""


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


def check_same_grid(
    what: str, shape: tuple, affine: np.ndarray | None, other: str, other_shape: tuple, other_affine: np.ndarray | None
) -> None:
    """Refuse a volume that is not on the voxel grid of ``other``: another shape, or an affine that puts some voxel
    elsewhere (:func:`medgmae.data.grid.same_grid_problem`: its tolerance, its message).

    Args:
        what: the volume, as the message names it (flag and file).
        shape: its shape in its affine's index order ``(x, y, z)``: a ``(z, y, x)`` array's shape reversed.
        affine: its 4x4 voxel-to-world affine (``None``: only the shapes are compared).
        other: what it must match, as the message names it.
        other_shape: that grid's shape ``(x, y, z)``.
        other_affine: that grid's affine (``None``: only the shapes are compared).

    Raises:
        CLIError: the grids differ.
    """
    # imported here: medgmae.data's package imports MONAI, which recon.resume (through CLIError) stays free of
    from medgmae.data.grid import same_grid_problem

    problem = same_grid_problem(what, shape, affine, other, other_shape, other_affine)
    if problem:
        raise CLIError(problem)


def load_matching_volume(path: str, geom: CTGeometry, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume ``(z, y, x)`` on the geometry's voxel grid (its shape, and its affine when ``geometry.json``
    has one), and the volume's affine."""
    from recon.scan_files import load_volume

    vol, affine, _ = load_volume(path)
    expected = geom.default_affine() if geom.affine is not None else None
    check_same_grid(f"{what} {path}", vol.shape[::-1], None if expected is None else affine,
                    "the geometry", geom.volume_shape[::-1], expected)  # fmt: skip
    return vol, affine


def check_out_folder(path: str, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` can become an output folder.

    Args:
        path: the folder given.
        flag: the option, as the message names it.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CLIError: ``path`` cannot become a folder (:func:`medgmae.files.output_dir_problem`: an existing file, below
            one, or not writable).
    """
    problem = output_dir_problem(path)
    if problem:
        raise CLIError(f"{flag} {path}: {problem}")
    return Path(path)


def check_out_file(path: str, flag: str = "--out", endings: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``path`` can become an output file.

    Args:
        path: the file given.
        flag: the option, as the message names it.
        endings: the endings the name must have (case-insensitive; empty: any).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CLIError: a name without one of ``endings``, a path ending with a separator or naming an existing folder,
            or one below an existing file.
    """
    p = Path(path)
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise CLIError(f"{flag} {path} is a folder: give a file name" + (f" ending with {' or '.join(endings)}" if endings else ""))
    if endings and not p.name.lower().endswith(endings):
        raise CLIError(f"{flag} {path} must end with {' or '.join(endings)}")
    problem = output_dir_problem(p.parent)
    if problem:
        raise CLIError(f"{flag} {path}: {problem}")
    return p


def cmd_simulate(args) -> int:
    """``simulate``: attenuation volume, projections (with Poisson noise if asked), geometry and FBP of a CT volume."""
    from recon.fbp import fbp
    from recon.initialisation import hu_to_mu
    from recon.scan_files import load_volume, save_nifti, save_projections
    from recon.projectors import make_projector

    out = check_out_folder(args.out)
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
    with staged_outputs(out) as stage:
        save_projections(stage / "projections.npy", proj.numpy())
        geom.save(stage / "geometry.json")
        save_nifti(stage / "fbp.nii.gz", rec, geom.default_affine())
        save_nifti(stage / "reference.nii.gz", mu, geom.default_affine())
    print(json.dumps({"out": str(out), "projections": list(proj.shape), "geometry": geom.kind, "views": geom.num_views}))
    return 0


def cmd_fbp(args) -> int:
    """``fbp``: FBP (parallel beam) or FDK (cone beam) of a projection stack, written as NIfTI."""
    from recon.fbp import fbp
    from recon.scan_files import save_nifti

    check_out_file(args.out, "--out", (".nii", ".nii.gz"))
    geom, proj = load_scan(args.projections, args.geometry)
    device = resolve_cli_device(args.device)
    rec = fbp(torch.from_numpy(proj).to(device), geom, args.filter).cpu().numpy()
    save_nifti(args.out, rec, geom.default_affine())
    return 0


def cmd_evaluate(args) -> int:
    """``evaluate``: PSNR and SSIM of a reconstruction against a reference, printed as JSON."""
    from recon.scan_files import load_volume
    from recon.metrics import evaluate

    rec, rec_affine, _ = load_volume(args.recon)
    ref, ref_affine, _ = load_volume(args.reference)
    check_same_grid(f"--recon {args.recon}", rec.shape[::-1], rec_affine, f"--reference {args.reference}", ref.shape[::-1], ref_affine)
    print(json.dumps(evaluate(rec, ref)))
    return 0
