"""What ``medgmae-recon fbp`` and ``evaluate`` do, and the input checks that every subcommand shares
(``simulate`` is in :mod:`recon.simulate_command`, ``reconstruct`` in :mod:`recon.reconstruct_command`, ``select``
in :mod:`recon.select_command`, ``geometry`` in :mod:`recon.geometry_command`; the options in :mod:`recon.cli`). A command's output folder
is written through :func:`medgmae.files.staged_outputs`: its files move in only when all were written, merged with
what the folder already holds (a ``reconstruct`` run's saved state stays beside them). The check of an output
removes what killed runs left of it (a temporary file, a staging folder), a live run's excepted."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from medgmae.files import output_dir_problem, path_length_problem
from medgmae.folder_lock import folder_made
from medgmae.temp_names import remove_dead_writes_of
from recon.cli_names import CLIError, Interrupted
from recon.geometry import CTGeometry
from recon.unit_checks import check_units

__all__ = ["CLIError", "Interrupted", "check_out_file", "check_out_folder", "check_same_grid",
           "cmd_evaluate", "cmd_fbp", "load_matching_volume", "load_scan", "output_lines", "placed_geometry",
           "resolve_cli_device", "Scan"]


def resolve_cli_device(name: str) -> torch.device:
    """The ``--device`` as a torch device (``auto``: CUDA when available); a bad name is a :class:`CLIError`."""
    from medgmae.engine import resolve_device

    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from e


class Scan(NamedTuple):
    """A scan as :func:`load_scan` reads it."""

    geom: CTGeometry
    proj: np.ndarray  # float32 (views, rows, cols) line integrals
    raw: dict | None  # what converted raw images and their floor (recon.flat_field.load_raw_projections), None for line integrals
    open_beam_floor: float = 0.0  # raw images: the level no pixel reads below (raw's, recon.flat_field.open_beam_floor), else 0


def load_scan(proj_path: str, geom_path: str, flat: str | None = None, dark: str | None = None, i0: float | None = None) -> Scan:
    """``geometry.json`` and the projection stack, checked against each other (a mismatch is a :class:`CLIError`).

    Args:
        proj_path: the projection file: line integrals, or raw detector images with ``flat`` or ``i0``.
        geom_path: the geometry file.
        flat, dark, i0: ``--flat`` (open-beam image file), ``--dark``, ``--i0`` (:mod:`recon.flat_field`).

    Returns:
        The :class:`Scan`: the stack as float32 ``(views, rows, cols)`` line integrals, the geometry's ``proj_shape``
        (layouts: :func:`recon.scan_files.load_projections`; raw images: :func:`recon.flat_field.load_raw_projections`).
    """
    from recon.flat_field import load_raw_projections
    from recon.scan_files import TIFF_SUFFIXES, load_projections
    from recon.stack_header import check_projection_header, with_header_offset

    geom = CTGeometry.load(geom_path)
    raw = flat is not None or dark is not None or i0 is not None  # --dark alone: refused there
    early = raw and Path(proj_path).is_file()  # a refused header before the conversion's note
    if early:
        try:
            offset = check_projection_header(proj_path, geom.det_spacing, geom.det_shape)
        except ValueError as e:
            raise CLIError(f"{e} (geometry {geom_path})") from e
    proj, record = load_raw_projections(proj_path, flat, dark, i0) if raw else (load_projections(proj_path), None)
    array = str(proj_path).lower().endswith((".npy", *TIFF_SUFFIXES))  # read as stored: (views, rows, cols)
    image = not array  # an ITK / NIfTI image file's (x, y, z) are (cols, rows, views)
    name = f"projections {proj_path}" + (f" (the image's {tuple(proj.shape[::-1])} voxels read as (views, rows, cols))" if image else "")
    try:
        geom.check_projections(proj.shape, name)
        if not early:
            offset = check_projection_header(proj_path, geom.det_spacing, geom.det_shape)
        geom = with_header_offset(geom, offset, proj_path)
    except ValueError as e:
        hint = _image_axis_hint(proj.shape, geom.proj_shape) if image else _axis_order_hint(proj.shape, geom.proj_shape)
        raise CLIError(f"{e} (geometry {geom_path}){hint}") from e
    return Scan(geom, proj, record, record["open_beam_floor"] if record else 0.0)


def _axis_order_hint(shape: tuple, expected: tuple) -> str:
    """Where a stack read as stored (``.npy``, TIFF pages) has the geometry's ``(views, rows, cols)`` in another axis
    order, one way only (a stack saved views last, say), the transpose that puts them in order; else ``""``."""
    orders = [o for o in itertools.permutations(range(3)) if tuple(shape[i] for i in o) == tuple(expected)]
    if len(shape) != 3 or len(orders) != 1 or orders[0] == (0, 1, 2):
        return ""
    return (f": its axes hold the views, rows and columns in another order (the views on axis {orders[0][0]}); "
            f"numpy.transpose(stack, {orders[0]}) gives (views, rows, cols), to be saved as the stack")


def _image_axis_hint(shape: tuple, expected: tuple) -> str:
    """Where an image file (MetaImage, NRRD, NIfTI: its ``x, y, z`` read as ``(cols, rows, views)``) holds the
    geometry's columns, rows and views along other axes, one way only, what each of its axes holds and the
    reordering that fixes it; else ``""``.

    Args:
        shape: the stack as read, ``(z, y, x)`` of the image.
        expected: the geometry's ``(views, rows, cols)``.

    Returns:
        ``": its x, y, z run over (...); save it with ..."`` (SimpleITK's ``PermuteAxes`` permutes the direction
        too, which must stay the identity: :func:`recon.stack_header.check_projection_header`) or ``""``.
    """
    image, wanted = tuple(shape[::-1]), tuple(expected[::-1])  # (x, y, z) against (cols, rows, views)
    orders = [o for o in itertools.permutations(range(3)) if tuple(image[i] for i in o) == wanted]
    if len(shape) != 3 or len(orders) != 1 or orders[0] == (0, 1, 2):
        return ""
    held = ["", "", ""]
    for what, axis in zip(("cols", "rows", "views"), orders[0]):
        held[axis] = what
    return (f": its x, y, z run over ({', '.join(held)}); save it with x the column, y the row and z the view "
            f"(RTK's layout), e.g. SimpleITK.PermuteAxes(image, {list(orders[0])}) and then the identity direction "
            "(image.SetDirection(numpy.eye(3).ravel()))")


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


def placed_geometry(geom: CTGeometry, args, fbp_affine: np.ndarray | None, ref_affine: np.ndarray | None) -> CTGeometry:
    """``geom`` given the affine of ``--fbp`` (else ``--reference``) where ``geometry.json`` has none, so that
    ``reconstruct``'s ``recon.nii.gz`` and ``gaussians.ply`` overlay the volumes given rather than sit in the
    geometry's centred default frame; both given, their grids must agree.

    Args:
        geom: the scan as ``geometry.json`` gives it.
        args: ``reconstruct``'s arguments (``--fbp``, ``--reference`` and ``--geometry``, as messages name them).
        fbp_affine: the ``--fbp`` volume's affine (``None``: not given).
        ref_affine: the ``--reference`` volume's affine (``None``: not given).

    Returns:
        ``geom``, or a copy with that affine.

    Raises:
        CLIError: the two volumes' grids differ. (An affine that does not fit the geometry's voxel size, such as
            NIfTI's identity of a volume saved without one, is not taken: a note says so.)
    """
    given = [(f"--fbp {args.fbp}", fbp_affine), (f"--reference {args.reference}", ref_affine)]
    given = [(name, a) for name, a in given if a is not None]
    if geom.affine is not None or not given:
        return geom
    shape = tuple(geom.volume_shape[::-1])
    for name, other in given[1:]:
        check_same_grid(name, shape, other, given[0][0], shape, given[0][1])
    try:
        placed = CTGeometry.from_dict({**geom.to_dict(), "affine": np.asarray(given[0][1]).tolist()})
    except ValueError as e:  # e.g. a volume saved with NIfTI's identity affine: its shape fits, its frame does not
        print(f"note: the geometry {args.geometry} has no affine, and that of {given[0][0]} does not fit it ({e}): "
              "recon.nii.gz and gaussians.ply are centred on the origin", flush=True)  # fmt: skip
        return geom
    print(f"note: the geometry {args.geometry} has no affine: recon.nii.gz and gaussians.ply take that of "
          f"{given[0][0]}, so that they overlay it", flush=True)  # fmt: skip
    return placed


def load_matching_volume(
    path: str, geom: CTGeometry, geom_path: str, what: str, flag: str, unit_check: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume ``(z, y, x)`` in attenuation (1/mm, :func:`check_units` unless ``unit_check`` is off) on the
    geometry's voxel grid (its shape, and its affine when ``geometry.json`` has one), and the volume's affine; a
    refusal names the volume and the geometry file ``geom_path``."""
    from recon.scan_files import load_volume

    vol, affine, _ = load_volume(path)
    if unit_check:
        check_units(vol, path, flag, "attenuation")
    expected = geom.default_affine() if geom.affine is not None else None
    check_same_grid(f"{what} {path}", vol.shape[::-1], None if expected is None else affine,
                    f"the geometry {geom_path}", geom.volume_shape[::-1], expected)  # fmt: skip
    return vol, affine


def output_lines(out: Path, files: dict[str, str]) -> list[str]:
    """The closing lines that name a command's outputs: ``outputs in OUT:`` then one ``  OUT/name  (what)`` each.

    Args:
        out: the output folder.
        files: file name in ``out`` -> what it holds.
    """
    return [f"outputs in {out}:", *(f"  {Path(out) / name}  ({what})" for name, what in files.items())]


def check_out_folder(path: str, flag: str = "--out", output: bool = True) -> Path:
    """Check, before any work, that ``path`` can become an output folder; remove what killed runs left of it.

    Args:
        path: the folder given.
        flag: the option, as the message names it.
        output: whether ``path`` is the command's output, whose leftovers are removed here (a cache folder such as
            ``--matrix-dir`` removes its own as it is read).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CLIError: ``path`` cannot become a folder (:func:`medgmae.files.output_dir_problem`: an existing file, below
            one, or not writable).
    """
    problem = output_dir_problem(path)
    if problem:
        raise CLIError(f"{flag} {path}: {problem}")
    if output:
        _remove_dead_writes(Path(path), folder=True)
    return Path(path)


def check_out_file(path: str, flag: str = "--out", endings: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``path`` can become an output file; remove what killed runs left beside it.

    Args:
        path: the file given.
        flag: the option, as the message names it.
        endings: the endings the name must have (case-insensitive; empty: any).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CLIError: a name without one of ``endings``, a path ending with a separator or naming an existing folder,
            one below an existing file, or one too long to create (:func:`medgmae.files.path_length_problem`).
    """
    p = Path(path)
    if problem := path_length_problem(p):  # before any lookup, which fails on such a path
        raise CLIError(f"{flag} {path}: {problem}")
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise CLIError(f"{flag} {path} is a folder: give a file name" + (f" ending with {' or '.join(endings)}" if endings else ""))
    if endings and not p.name.lower().endswith(endings):
        raise CLIError(f"{flag} {path} must end with {' or '.join(endings)}")
    problem = output_dir_problem(p.parent)
    if problem:
        raise CLIError(f"{flag} {path}: {problem}")
    _remove_dead_writes(p, folder=False)
    return p


def _remove_dead_writes(out: Path, folder: bool) -> None:
    """Remove what killed runs' writes left of the output ``out`` (a temporary file, a staging folder: SIGKILL, the
    OOM killer) and say so in one line (:func:`medgmae.temp_names.remove_dead_writes_of`); a live run's stay."""
    if note := remove_dead_writes_of(out, folder):
        print(f"note: {note}", flush=True)


def warn_about_scan(geom: CTGeometry, proj, axis: bool = True, fbp: bool = True, open_beam_floor: float = 0.0,
                    source: str = "the projections") -> None:  # fmt: skip
    """Print a warning for each thing of the scan that biases FBP/FDK: the views' arc
    (:func:`recon.fbp.arc_weighting_note`, which asks whether angles going round many times are degrees),
    projections truncated at the detector's sides (:func:`recon.fbp.truncation_note`), a rotation axis elsewhere
    than the geometry's detector offset puts it (:func:`recon.axis_check.axis_offset_note`) and views that look
    transposed, their rows and columns swapped (:func:`recon.transpose_check.transposed_note`); the last two spoil
    any reconstruction.

    ``fbp`` and ``reconstruct`` both call this after :func:`load_scan` (whose own warnings, on raw images converted
    and values that look like intensities, both give as well), so that the two say the same of a scan;
    ``reconstruct``'s other warnings are about its start and ``--resume`` (:mod:`recon.reconstruct_start`,
    :mod:`recon.resume`), which FBP has not.

    Args:
        geom: the scan's geometry.
        proj: ``(V, rows, cols)`` line integrals.
        axis: check the rotation axis and whether the views look transposed (``simulate`` does not: its projections
            follow the geometry by construction).
        fbp: give the notes about FBP/FDK's arc and truncation (``reconstruct --fbp`` computes no FBP: it only asks
            whether the angles are degrees, :func:`recon.angle_checks.degrees_question`, which misleads its fit too).
        open_beam_floor: for raw images converted with ``--flat`` or ``--i0``, the level no pixel reads below (the
            :class:`Scan`'s ``open_beam_floor``): truncation and the rotation axis are judged above it where it is raised
            (:data:`recon.flat_field.OPEN_BEAM_ABOVE`; a flat brighter than the projections' open beam, which the
            conversion warned of).
        source: the stack as the transposed views' warning names it (``"projections <file>"``).
    """
    from recon.angle_checks import degrees_question
    from recon.axis_check import axis_offset_note
    from recon.fbp import arc_weighting_note, truncation_note
    from recon.flat_field import OPEN_BEAM_ABOVE
    from recon.transpose_check import transposed_note

    floor = open_beam_floor if open_beam_floor > OPEN_BEAM_ABOVE else 0.0
    notes = (arc_weighting_note(geom), truncation_note(proj, geom, floor=floor)) if fbp else (degrees_question(geom.angles),)
    checks = (axis_offset_note(proj, geom, floor=floor), transposed_note(proj, geom, source)) if axis else ()
    for note in (*notes, *checks):
        if note:
            print(f"warning: {note}", flush=True)


def cmd_fbp(args) -> int:
    """``fbp``: FBP (parallel beam) or FDK (cone beam) of a projection stack, written as NIfTI; a write that fails
    removes the folders it created for the file (:func:`medgmae.folder_lock.folder_made`)."""
    from recon.fbp import fbp
    from recon.scan_files import save_nifti

    out = check_out_file(args.out, "--out", (".nii", ".nii.gz"))
    for flag, what in (("--projections", "projection stack"), ("--flat", "flat"), ("--dark", "dark")):
        given = getattr(args, flag[2:])
        if given and out.exists() and Path(given).exists() and os.path.samefile(out, given):  # links too
            raise CLIError(f"--out {args.out} is the {what} given as {flag}: give another file name")
    geom, proj, _, floor = load_scan(args.projections, args.geometry, args.flat, args.dark, args.i0)
    device = resolve_cli_device(args.device)
    what = "FBP" if geom.kind == "parallel" else "FDK"
    print(f"{what} of {geom.num_views} views onto {'x'.join(map(str, geom.volume_shape))} voxels ({device})...", flush=True)
    rec = fbp(torch.from_numpy(proj).to(device), geom, args.filter).cpu().numpy()
    warn_about_scan(geom, proj, open_beam_floor=floor, source=f"projections {args.projections}")
    replaced = " (it replaced the file of that name)" if out.exists() else ""
    with folder_made(out.parent):  # a write that fails (a full disk) leaves no folder it made
        save_nifti(args.out, rec, geom.default_affine())
    print(f"wrote {args.out} ({what}, {args.filter} filter, attenuation 1/mm, shape (I, J, K) = {rec.shape[::-1]}){replaced}")
    return 0


def _centred_hint(rec: np.ndarray, rec_affine: np.ndarray, ref_affine: np.ndarray) -> str:
    """What a reconstruction of the reference's shape and voxel size, centred on the origin, is (the frame of a
    ``geometry.json`` without an affine, e.g. from ``geometry --rtk``) and how to place it; ``""`` otherwise."""
    spacing = np.linalg.norm(np.asarray(ref_affine)[:3, :3], axis=0)[::-1]  # (z, y, x) as the geometry's voxel_size
    centred = CTGeometry.parallel(rec.shape, tuple(spacing)).default_affine()
    if not np.allclose(rec_affine, centred, atol=1e-3) or np.allclose(ref_affine, centred, atol=1e-3):
        return ""
    return ("; --recon is centred on the origin, as a reconstruction from a geometry.json without an affine (from "
            "geometry --rtk, or hand-written) is placed: reconstruct it with --reference (or --fbp) to place it on "
            "their grid, or add the reference's affine to geometry.json")


def cmd_evaluate(args) -> int:
    """``evaluate``: PSNR and SSIM of a reconstruction against a reference, printed as JSON."""
    from recon.scan_files import load_volume
    from recon.metrics import evaluate

    rec, rec_affine, _ = load_volume(args.recon)
    ref, ref_affine, _ = load_volume(args.reference)
    if not args.no_unit_check:
        check_units(rec, args.recon, "--recon", "attenuation")
        check_units(ref, args.reference, "--reference", "attenuation")
    try:
        check_same_grid(f"--recon {args.recon}", rec.shape[::-1], rec_affine, f"--reference {args.reference}", ref.shape[::-1], ref_affine)
    except CLIError as e:
        raise CLIError(str(e) + _centred_hint(rec, rec_affine, ref_affine)) from None
    metrics = evaluate(rec, ref)  # identical volumes: PSNR is infinite, which strict JSON cannot hold: null
    print(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()}))
    return 0
