"""``medgmae-recon simulate``: a CT volume's attenuation, its projections along a built-in orbit or a geometry file's
(with Poisson noise if asked), the geometry and their FBP / FDK, written together into ``--out`` with
``simulate.json``, the record of how the scan was made (:func:`simulation_record`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medgmae.files import save_json_atomic, staged_outputs
from medgmae.folder_lock import folder_held
from recon.commands import (
    CLIError,
    check_out_folder,
    check_same_grid,
    output_lines,
    resolve_cli_device,
    warn_about_scan,
)
from recon.geometry import NO_OFFSET, CTGeometry
from recon.unit_checks import check_units

__all__ = ["MAX_VIEWS", "cmd_simulate", "simulation_record"]

#: The most projection angles ``simulate --views`` takes: ten times a micro-CT's usual count.
MAX_VIEWS = 100_000


def _planned_geometry(args) -> CTGeometry | None:
    """The geometry file ``simulate --geometry`` names, read and checked before the volume (``None`` for the
    built-in ``parallel`` / ``cone`` orbits, which need ``--views``)."""
    if args.geometry in ("parallel", "cone"):
        if args.views is None:
            raise CLIError(f"--geometry {args.geometry} needs --views (the number of projection angles)")
        if args.views > MAX_VIEWS:  # its angle list alone would fill the memory before a projection is made
            raise CLIError(f"--views {args.views}: more than {MAX_VIEWS:,} projection angles (a clinical scanner "
                           "takes about 1,000 per turn, a micro-CT up to about 10,000)")  # fmt: skip
        if args.views == 1:
            print("warning: --views 1: one view holds no depth; its FBP and any reconstruction from it smear the "
                  "volume along the rays", flush=True)  # fmt: skip
        return None
    if not Path(args.geometry).is_file():
        raise CLIError(f"--geometry {args.geometry}: neither parallel, cone nor an existing geometry.json file")
    if args.views is not None or args.arc is not None:
        raise CLIError(f"--geometry {args.geometry} is a geometry file: its angles fix the views, so --views and --arc "
                       "cannot be given with it")  # fmt: skip
    if args.det_offset is not None:
        raise CLIError(f"--geometry {args.geometry} is a geometry file: its det_offset fixes the detector offset, so "
                       "--det-offset cannot be given with it")  # fmt: skip
    try:
        return CTGeometry.load(args.geometry)
    except ValueError as e:
        raise CLIError(f"--geometry: {e} (give parallel, cone or a geometry.json)") from e


def _simulation_geometry(args, planned: CTGeometry | None, shape, voxel, affine: np.ndarray) -> CTGeometry:
    """The scan ``simulate`` projects: a built-in orbit around the volume, or ``planned`` (a geometry file) with
    the volume's affine, after checking that the file's voxel grid is the volume's.

    Args:
        args: the parsed ``simulate`` arguments.
        planned: what :func:`_planned_geometry` returned.
        shape: the volume's ``(z, y, x)`` shape.
        voxel: its voxel size ``(sz, sy, sx)`` in mm.
        affine: its NIfTI affine (array order ``(x, y, z)``).
    """
    if planned is None:
        make = CTGeometry.parallel if args.geometry == "parallel" else CTGeometry.cone
        arc = args.arc or (180.0 if args.geometry == "parallel" else 360.0)
        offset = tuple(args.det_offset) if args.det_offset is not None else NO_OFFSET
        plain = make(shape, voxel, num_angles=args.views, arc_deg=arc, affine=affine)
        _check_offset_size(offset, plain)
        try:
            geom = make(shape, voxel, num_angles=args.views, arc_deg=arc, affine=affine, det_offset=offset)
        except ValueError as e:
            if offset == NO_OFFSET:
                raise
            raise CLIError(f"--det-offset {offset[0]:g} {offset[1]:g}: {e}") from e
        centred = plain.det_shape
        if tuple(geom.det_shape) != tuple(centred):
            print(f"note: --det-offset {offset[0]:g} {offset[1]:g}: the default detector widened from (rows, cols) = "
                  f"{tuple(centred)} to {tuple(geom.det_shape)} to still cover the volume", flush=True)  # fmt: skip
        return geom
    grid = f"{tuple(shape)} voxels of {tuple(round(float(v), 4) for v in voxel)} mm (z, y, x)"
    if tuple(planned.volume_shape) != tuple(shape) or not np.allclose(planned.voxel_size, voxel, rtol=1e-3):
        raise CLIError(f"--geometry {args.geometry} is made for {planned.volume_shape} voxels of {planned.voxel_size} mm "
                       f"(z, y, x), but --volume {args.volume} has {grid}: resample the volume to the geometry's grid "
                       "or use --geometry parallel / cone, which fit any volume")  # fmt: skip
    if planned.affine is not None:
        check_same_grid(f"--volume {args.volume}", shape[::-1], affine, f"--geometry {args.geometry}",
                        planned.volume_shape[::-1], planned.default_affine())  # fmt: skip
    return CTGeometry.from_dict({**planned.to_dict(), "affine": np.asarray(affine).tolist()})


def _check_offset_size(offset: tuple[float, float], centred: CTGeometry) -> None:
    """Refuse a ``--det-offset`` beyond the default centred detector's width (``u``) or height (``v``): the detector,
    widened by twice the offset to still cover the volume, would be more than three times as large and mostly
    see nothing (``1e9`` asked for 666 million columns); such an offset is likely in other units than mm."""
    (rows, cols), (row_mm, col_mm) = centred.det_shape, centred.det_spacing
    size = (cols * col_mm, rows * row_mm)
    for value, extent, axis, what in zip(offset, size, "uv", ("width", "height")):
        if abs(value) > extent:
            raise CLIError(f"--det-offset {offset[0]:g} {offset[1]:g}: {axis} = {value:g} mm is more than the default "
                           f"detector's {what}, {extent:.4g} mm, so the detector widened to still cover the volume "
                           "would mostly see nothing; give the offset in mm (at most the detector's size), or a "
                           "geometry.json with its own detector")  # fmt: skip


#: What ``simulate`` writes into its ``--out`` folder.
_SCAN_FILES = ("projections.npy", "geometry.json", "reference.nii.gz", "fbp.nii.gz", "simulate.json")
#: What ``reconstruct`` writes that belongs to the scan it was made from (a new scan beside it would not).
_RUN_FILES = ("recon.nii.gz", "gaussians.ply", "recon_state.pt")


def simulation_record(args, volume: dict, device) -> dict:
    """What ``simulate.json`` records of how a scan was made: every argument as given (the seed of the noise, the
    photons, the filter...), the volume read (its path and SHA-256) and the software
    (:func:`medgmae.software.software_versions`): the same record, volume and software make the same scan.

    Args:
        args: the parsed ``simulate`` arguments.
        volume: the volume's :func:`medgmae.data.fingerprint.path_fingerprint`.
        device: the torch device the scan was projected on.

    Returns:
        ``{"arguments", "volume": {"path", "sha256"}, "software"}``; JSON-ready.
    """
    from medgmae.software import software_versions

    return {"arguments": {k: v for k, v in vars(args).items() if k != "command"}, "volume": dict(volume),
            "software": software_versions(device)}  # fmt: skip


def _note_rotation_axis(affine: np.ndarray, path) -> None:
    """Say when the scan's rotation axis, the volume's third array axis (the geometry's z), does not run head to
    foot in world space: the simulated orbit is then not an axial CT's (a volume stored in another axis order)."""
    k = np.asarray(affine, float)[:3, 2]
    world = ("R-L", "A-P", "I-S")[int(np.argmax(np.abs(k)))]
    if world != "I-S":
        print(f"note: the scan rotates about {path}'s third array axis, which runs {world} in world space, so this "
              "orbit is not an axial CT's; reorient the volume (third axis I-S, e.g. nibabel's as_closest_canonical) "
              "for one", flush=True)  # fmt: skip


def _warn_if_sheared(affine: np.ndarray, shape, voxel, path) -> None:
    """Warn when the volume's affine is sheared (a gantry-tilted scan not resampled): the projectors know an
    orthogonal grid of the affine's column lengths only, so the object is simulated unsheared, and along the tilted
    axis stretched by the column length over the slice spacing (1 / cos of the tilt)."""
    from medgmae.data.grid import shear_offset_mm
    from medgmae.files import FRAME_TOLERANCE_MM

    apart = shear_offset_mm(shape[::-1], affine)
    if apart > FRAME_TOLERANCE_MM:
        sizes = " x ".join(f"{v:.4g}" for v in voxel)
        print(f"warning: {path}: the volume's affine is sheared (a gantry tilt not resampled; voxels up to {apart:.3g} mm "
              f"from the nearest orthogonal grid): it is simulated as an orthogonal grid of voxel sizes (z, y, x) "
              f"{sizes} mm, the object unsheared and stretched along its tilted axis; resample the tilt onto an "
              "orthogonal grid first for a faithful scan", flush=True)  # fmt: skip


def cmd_simulate(args) -> int:
    """``simulate``: attenuation volume, projections (with Poisson noise if asked), geometry and FBP of a CT volume;
    one run at a time in its ``--out`` (:mod:`medgmae.folder_lock`)."""
    with folder_held(args.out):
        return _simulate(args)


def _simulate(args) -> int:
    """:func:`cmd_simulate` in its held folder."""
    from recon.fbp import fbp
    from recon.initialisation import hu_to_mu
    from recon.noise import noise_warnings, photons_problem, poisson_line_integrals, simulated_scan_problem
    from recon.scan_files import load_volume
    from recon.projectors import make_projector, simulation_backend
    from medgmae.data.fingerprint import path_fingerprint

    if args.photons is not None and (problem := photons_problem(args.photons)):
        raise CLIError(problem)
    out = check_out_folder(args.out)
    run = [n for n in _RUN_FILES if (out / n).is_file()]
    if run:
        raise CLIError(f"--out {out} holds a reconstruction ({', '.join(run)}): a new scan written there would sit "
                       "beside a reconstruction of another scan; give simulate another --out")
    planned = _planned_geometry(args)
    hu, affine, voxel = load_volume(args.volume)
    volume = path_fingerprint(args.volume)  # of what was read: the record of the scan names it
    earlier = [n for n in _SCAN_FILES if (out / n).is_file()]
    if earlier:  # reconstructions of that scan (and their --resume: the scan's fingerprint) no longer fit it
        print(f"note: {out} holds an earlier scan ({', '.join(earlier)}): this simulation replaces it", flush=True)
    if not args.no_unit_check:
        check_units(hu, args.volume, "--volume", "hu")
    device = resolve_cli_device(args.device)
    mu = hu_to_mu(hu).astype(np.float32)
    geom = _simulation_geometry(args, planned, mu.shape, voxel, affine)
    _note_rotation_axis(affine, args.volume)
    _warn_if_sheared(affine, mu.shape, voxel, args.volume)
    proj_op = make_projector(geom, simulation_backend(geom, device), device)  # one projection: no cone-beam matrix on the CPU
    proj_op.lines = True  # one projection of the whole scan: minutes at clinical sizes
    print(f"simulating {geom.num_views} {geom.kind}-beam views of {'x'.join(map(str, geom.volume_shape))} voxels "
          f"({proj_op.name} projector, {device}), then their {'FBP' if geom.kind == 'parallel' else 'FDK'}...", flush=True)
    with torch.no_grad():
        proj = proj_op.forward(torch.from_numpy(mu).to(device)).cpu()
    clean, zero_share = proj, 0.0
    problem = simulated_scan_problem(clean, args.volume, None)  # a volume that attenuates nothing, whatever --photons
    if args.photons is not None and problem is None:
        proj, zero_share = poisson_line_integrals(proj, args.photons, torch.Generator().manual_seed(args.seed))
        problem = simulated_scan_problem(proj, args.volume, args.photons, zero_share)  # as fbp and reconstruct check
    if problem:
        raise CLIError(problem)
    notes = [] if args.photons is None else noise_warnings(clean, proj, args.photons, zero_share)
    rec = fbp(proj.to(device), geom, args.filter).cpu().numpy()
    warn_about_scan(geom, proj, axis=False)
    for note in notes:
        print(f"warning: {note}", flush=True)
    _write_scan(out, proj, geom, rec, mu, simulation_record(args, volume, device))
    noise = "noiseless" if args.photons is None else f"Poisson noise at {args.photons:g} photons per pixel"
    print("\n".join([f"simulated a {geom.kind}-beam scan: {geom.num_views} views, {noise}", *output_lines(out, {
        "projections.npy": f"line integrals (views, rows, cols) = {tuple(proj.shape)}",
        "geometry.json": "the scan geometry (--geometry of fbp and reconstruct)",
        "reference.nii.gz": "the input as linear attenuation, 1/mm: the --reference of reconstruct and evaluate",
        "fbp.nii.gz": f"{'FBP' if geom.kind == 'parallel' else 'FDK'} ({args.filter} filter), attenuation 1/mm",
        "simulate.json": "how the scan was made: every argument, the volume's SHA-256, the software",
    })]))  # fmt: skip
    return 0


def _write_scan(out: Path, proj: torch.Tensor, geom: CTGeometry, rec: np.ndarray, mu: np.ndarray, record: dict) -> None:
    """Write the scan into ``out`` together (staged, :func:`medgmae.files.staged_outputs`): the projections
    ``(views, rows, cols)``, the geometry, the FBP / FDK ``rec`` and the attenuation ``mu`` (``(z, y, x)``, 1/mm), and
    ``simulate.json`` (``record``, :func:`simulation_record`)."""
    from recon.scan_files import save_nifti, save_projections

    with staged_outputs(out) as stage:
        save_projections(stage / "projections.npy", proj.numpy())
        geom.save(stage / "geometry.json")
        save_nifti(stage / "fbp.nii.gz", rec, geom.default_affine())
        save_nifti(stage / "reference.nii.gz", mu, geom.default_affine())
        save_json_atomic(record, stage / "simulate.json")
