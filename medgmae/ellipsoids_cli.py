"""``medgmae-ellipsoids``: the Gaussians of a toolkit .ply as the mesh of ellipsoids 3D Slicer draws (a legacy .vtk).

Zero-shot inference and ``medgmae-recon reconstruct`` write that mesh beside their ``.ply`` only up to
:data:`medgmae.ellipsoids.MESH_LIMIT` Gaussians; above it they give this command, which writes it from the
``.ply``. It also draws a ``.ply`` at another radius (``--radius``) or sphere resolution (``--level``).

The ``.ply`` is read with :func:`medgmae.ply.load_ply` and placed by the frame its header records: ``frame world``
(world millimetres, RAS: what zero-shot inference and ``reconstruct`` write) is drawn as it is; ``frame voxel``
with an ``affine`` (the voxel-to-world matrix of the file's own voxel coordinates, as :func:`medgmae.ply.save_ply`
records it; earlier releases wrote reconstructions' ``gaussians.ply`` so) is mapped by that affine first, exactly as
the runs map theirs (centres ``A x + t``, covariances ``A Sigma A^T``:
:meth:`~medgmae.gaussians.Gaussians3D.transformed`). Anything else is refused, as 3D Slicer places a model in world
millimetres: voxel coordinates without an affine (a file without a ``frame`` comment, such as a 3DGS tool's, is read
as voxel) and the normalised frame (the header does not record how it maps to the world).

The output is ``--out``, else beside the input: a file name ending in ``gaussians.ply`` gets ``ellipsoids.vtk``
in its place (``gaussians.ply`` -> ``ellipsoids.vtk``, ``ct_gaussians.ply`` -> ``ct_ellipsoids.vtk``: the names
the runs give the mesh), any other ``<stem>.ply`` (or another ending) ``<stem>_ellipsoids.vtk``. An existing file
is replaced only with ``--force``, as ``medgmae-datalist`` does; the file is written whole or not at all
(:func:`medgmae.ellipsoids.save_ellipsoids`), a part at a time, so that a fine ``--level`` takes no more memory; a
mesh that would not fit in the free room of the output's file system (``--level 6``: 2.46 MB a Gaussian) and points
beyond the file's float32 (``--radius 1e308``) are refused before anything is written. Exit status 0, or 2 with one
line naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["PROG", "MeshRefused", "build_parser", "default_out", "world_gaussians", "main"]

PROG = "medgmae-ellipsoids"
#: The finest icosphere level asked for (:func:`medgmae.ellipsoids.icosphere`: 40,962 points a Gaussian).
_FINEST = 6


class MeshRefused(ValueError):
    """An input or output this command cannot use; the message names the file and why."""


def _level(text: str) -> int:
    """``--level``: a whole number from 0 to :data:`_FINEST`."""
    from medgmae.cli_types import nonneg_int

    try:
        level = nonneg_int(text)
    except argparse.ArgumentTypeError:
        level = None
    if level is None or level > _FINEST:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {_FINEST}, got {text!r}")
    return level


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from medgmae.cli_types import ToolParser, positive_float

    p = ToolParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""),
                   epilog="A world-frame .ply (the toolkit's runs write them) is drawn as it is; a voxel-frame one "
                   "only with the voxel-to-world affine in its header; other frames are refused: 3D Slicer places a "
                   "model in world millimetres (RAS).")  # fmt: skip
    p.add_argument("ply", metavar="GAUSSIANS.ply", help="a .ply of Gaussians the toolkit wrote (medgmae.ply)")
    p.add_argument("--out", default=None, metavar="FILE.vtk",
                   help="the mesh to write (default: beside the input, gaussians.ply -> ellipsoids.vtk, "
                   "<name>_gaussians.ply -> <name>_ellipsoids.vtk, <stem>.ply -> <stem>_ellipsoids.vtk)")  # fmt: skip
    p.add_argument("--radius", type=positive_float, default=None, metavar="R",
                   help="the Mahalanobis distance of each ellipsoid's surface (default sqrt(2 ln 2) = 1.1774: the "
                   "half maximum; 1: one standard deviation; 3: the renderer's cutoff)")  # fmt: skip
    p.add_argument("--level", type=_level, default=None, metavar="L",
                   help="the sphere's resolution, 0 (12 points a Gaussian) to 6 (40,962): 10 * 4^L + 2 points, "
                   "20 * 4^L triangles (default: the finest up to 2 whose ellipsoids stay within 2 million "
                   "triangles)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing FILE.vtk")
    return p


def default_out(ply: Path) -> Path:
    """The mesh file beside ``ply`` (module docstring: ``gaussians.ply`` -> ``ellipsoids.vtk``, ``ct_gaussians.ply``
    -> ``ct_ellipsoids.vtk``, ``scene.ply`` -> ``scene_ellipsoids.vtk``)."""
    stem = ply.stem
    if stem.endswith("gaussians"):
        return ply.with_name(stem[: -len("gaussians")] + "ellipsoids.vtk")
    return ply.with_name(f"{stem}_ellipsoids.vtk")


def _out_problem(out: Path, ply: Path, force: bool, given: bool) -> str | None:
    """Why the mesh cannot be written to ``out``, else ``None`` (checked before the ``.ply`` is read)."""
    from medgmae.files import absolute_path, output_dir_problem

    where = f"--out {out}" if given else f"the default output {out}"
    if out.is_dir():
        return f"{where} is a folder: give the .vtk file to write"
    if out.suffix.lower() != ".vtk":
        return f"{where}: the mesh is a legacy VTK file, which 3D Slicer reads by its .vtk ending"
    if absolute_path(out) == absolute_path(ply) or (out.exists() and ply.exists() and out.samefile(ply)):
        return f"{where} is the input itself"
    if out.exists() and not force:
        return f"{out} exists: give --force to replace it, or --out another file"
    blocking = next((q for q in out.parents if q.exists() and not q.is_dir()), None)
    if blocking is not None:
        return f"{where}: {blocking} is a file, not a folder"
    if problem := output_dir_problem(out.parent):
        return f"{where}: {problem}" + ("" if given else "; give --out a .vtk file in a folder you can write")
    return None


def _input_problem(ply: Path) -> str | None:
    """Why ``ply`` is no file to read, else ``None`` (checked first)."""
    from medgmae.missing_paths import missing_path_message

    if ply.is_dir():
        return f"{ply} is a folder: give the .ply file of Gaussians"
    if not ply.exists():
        return missing_path_message(ply, f"{ply}: no such file")
    return None


def world_gaussians(ply: Path):
    """The Gaussians of ``ply`` in world millimetres, and how they were placed (module docstring).

    Args:
        ply: the ``.ply`` file.

    Returns:
        ``(gaussians, how)``: a :class:`~medgmae.gaussians.Gaussians3D` in world mm and ``"world frame"`` or
        ``"voxel frame mapped to world mm by the header's affine"``.

    Raises:
        MeshRefused: a missing or unreadable file, one that is not a toolkit ``.ply``, or one in another frame.
    """
    import numpy as np
    import torch

    from medgmae.ply import load_ply

    if problem := _input_problem(ply):
        raise MeshRefused(problem)
    try:
        gaussians, meta = load_ply(ply)
    except IndexError:  # a header line without its words
        raise MeshRefused(f"{ply}: not a PLY file of Gaussians (a line of its header is cut short)") from None
    except (ValueError, FileNotFoundError) as e:  # the reader's messages name the file
        raise MeshRefused(str(e) if str(ply) in str(e) else f"{ply}: {e}") from None
    frame, affine = meta["frame"], meta["affine"]
    if frame == "world":
        return gaussians, "world frame"
    why = "3D Slicer places a model in world millimetres (RAS)"
    if frame != "voxel":
        raise MeshRefused(f"{ply}: its header records frame {frame!r}, not world millimetres, and no map from it to "
                          f"the world: {why}; write the Gaussians in the world frame (medgmae.ply.save_ply(..., "
                          f"frame='world'))")  # fmt: skip
    if affine is None:
        raise MeshRefused(f"{ply}: its Gaussians are in voxel coordinates (its header records frame voxel, or no "
                          f"frame, which is read as voxel) and the header has no voxel-to-world affine to map them: "
                          f"{why}")  # fmt: skip
    if not (np.isfinite(affine).all() and np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0])):
        raise MeshRefused(f"{ply}: the header's affine is not a finite voxel-to-world affine (last row "
                          f"{affine[3].tolist()}, expected [0, 0, 0, 1])")  # fmt: skip
    try:
        mapped = gaussians.transformed(torch.from_numpy(affine[:3, :3]), torch.from_numpy(affine[:3, 3]))
    except ValueError as e:  # a singular matrix
        raise MeshRefused(f"{ply}: the header's affine cannot map its voxel coordinates to the world: {e}") from None
    return mapped, "voxel frame mapped to world mm by the header's affine"


def _write(args: argparse.Namespace) -> str:
    """Write the mesh ``args`` ask for; the line that says what was written."""
    from medgmae.ellipsoids import HALF_MAXIMUM_RADIUS, mesh_bytes, save_ellipsoids, sphere_level
    from medgmae.words import byte_size

    ply = Path(args.ply)
    if problem := _input_problem(ply):
        raise MeshRefused(problem)
    out = Path(args.out) if args.out is not None else default_out(ply)
    if problem := _out_problem(out, ply, args.force, given=args.out is not None):
        raise MeshRefused(problem)
    gaussians, how = world_gaussians(ply)
    k = gaussians.num_gaussians
    level = sphere_level(k) if args.level is None else args.level
    radius = HALF_MAXIMUM_RADIUS if args.radius is None else args.radius
    try:
        save_ellipsoids(out, gaussians, radius, level)
    except ValueError as e:  # values that cannot be drawn (NaN, a zero scale), or too many points for the format
        raise MeshRefused(f"{ply}: {e}") from None
    return (f"wrote {out}: {k:,} Gaussians ({how}) as ellipsoids of {10 * 4**level + 2} points and {20 * 4**level} "
            f"triangles at Mahalanobis radius {radius:.4g}, {byte_size(mesh_bytes(k, level))}")


def main(argv: Sequence[str] | None = None) -> int:
    """``medgmae-ellipsoids`` entry point: 0 when the mesh was written; 2 with one line naming the problem (a bad
    flag: argparse's usage and message)."""
    from medgmae.cli_types import expand_home
    from medgmae.files import os_error_message

    args = expand_home(build_parser().parse_args(argv))
    try:
        said = _write(args)
    except MeshRefused as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read, a write without room
        said = os_error_message(e) or f"{e.filename or args.ply}: {e.strerror or e}"
        print(f"{PROG}: error: {said}", file=sys.stderr)
        return 2
    print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
