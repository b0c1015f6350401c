"""``medgmae-2d``: zero-shot layering, figure-ground segmentation and edges from a pre-trained 2D GMAE.

Usage::

    medgmae-2d layers  --checkpoint model.pt --image slice.png --out DIR [--num-layers 16]
    medgmae-2d segment --checkpoint model.pt --image ct.nii.gz --out DIR [--reference mask.nii.gz]
    medgmae-2d edges   --checkpoint model.pt --image img.dcm --out DIR [--granularities 4 8 16]

The image (PNG/JPEG/BMP/TIFF, a NIfTI slice or a DICOM file) is converted to the model's channels and size
(a NIfTI/DICOM image windowed by ``--window``, else by the window recorded in the checkpoint at training), fully
encoded (no mask), decoded to Gaussians and rendered with depth layers. The command's JSON (``layers.json``,
``segment.json``, ``edges.json``) and a line on stdout record the image: for NIfTI/DICOM the slice
(``axis``, ``index`` of ``count``) and the window ``[low, high]`` with where it came from (``--window``, the
checkpoint, the DICOM file, or the 0.5/99.5 percentiles). Every output file is written atomically, and only
after all results are computed; ``--out`` is held meanwhile (:mod:`medgmae.folder_lock`: another command or run
writing into it is refused, naming it). Exit status: 0 on success, 2 on bad input (missing or
unreadable files, a blank image or slice: every pixel one value, wrong checkpoint kind, nonsense options), 1 on
other failures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from medgmae import launch
from medgmae.cli_types import ToolParser, expand_home, nonneg_int, positive_int, proper_fraction
from medgmae.twod.layering_defaults import DEFAULT_GRANULARITIES, DEFAULT_NUM_LAYERS

__all__ = ["main", "build_parser"]

#: The default smallest K of ``layers``' partial renders (the paper's), or the model's Gaussians when it has fewer.
FIRST_COUNT = 32

#: The longer edge of the default render: an image larger than this renders at its aspect ratio at this size (the
#: model sees its square input size only; a 2048 x 2048 render costs 16x a 512 x 512 one for no more detail).
MAX_RENDER_EDGE = 512


#: The longest edge ``--render-size`` accepts (the model sees a square input of a few hundred pixels at most).
MAX_EXPLICIT_RENDER_EDGE = 4096



def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="medgmae-2d", description=__doc__.split("\n\n")[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    common = ToolParser(add_help=False)
    common.add_argument("--checkpoint", required=True, type=Path, help="model.pt (kind gmae2d) or a training checkpoint")
    common.add_argument("--image", required=True, type=Path, help="PNG/JPEG/BMP/TIFF, NIfTI or DICOM image")
    common.add_argument("--out", required=True, type=Path, help="output folder (created)")
    common.add_argument("--slice", type=nonneg_int, default=None, help="slice of a NIfTI volume / frame of a DICOM (default: middle)")
    common.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="intensity window for NIfTI/DICOM (e.g. HU), mapped to 0..1; default: the window recorded "
                             "in the checkpoint at training, else each image's DICOM window or 0.5/99.5 percentiles; "
                             "refused for picture files (PNG/JPEG/BMP/TIFF)")  # fmt: skip
    common.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N "
                        "(default: %(default)s)")
    common.add_argument("--backend", default="auto", choices=("auto", "torch", "gsplat"),
                        help="renderer backend (default: %(default)s)")
    common.add_argument("--render-size", type=positive_int, nargs=2, default=None, metavar=("H", "W"), help=f"render at this size, at most {MAX_EXPLICIT_RENDER_EDGE} on an edge (default: the image's own, so that the outputs overlay it; at most 512 on the longer edge, the aspect ratio kept)")

    p = sub.add_parser("layers", parents=[common], help="layer stack and partial renders as PNG grids",
                       description="Render the image's Gaussians in L equal depth groups, nearest first. Writes "
                       "layer_stack.png (one labelled tile per layer with its number of Gaussians), partial_renders.png "
                       "(the input, then the K nearest Gaussians for K = --first-count, doubled up to all), "
                       "input.png, reconstruction.png and layers.json.")  # fmt: skip
    p.add_argument("--num-layers", type=positive_int, default=None, help=f"L equal depth groups (default: {DEFAULT_NUM_LAYERS}, or the model's number of Gaussians when it has fewer)")
    p.add_argument("--first-count", type=positive_int, default=None, help=f"smallest K of the partial renders, then doubled, at most the model's number of Gaussians (default: {FIRST_COUNT}, or the model's number of Gaussians when it has fewer)")

    p = sub.add_parser("segment", parents=[common], help="zero-shot figure-ground mask",
                       description="Zero-shot figure-ground segmentation: each pixel is assigned the last depth layer "
                       "that changes it by more than --threshold; layers from --split on are foreground. Writes "
                       "assignment.png, foreground.png and segment.json (with the IoU against --reference).")  # fmt: skip
    p.add_argument("--num-layers", type=positive_int, default=None, help=f"L equal depth groups (default: {DEFAULT_NUM_LAYERS}, or the model's number of Gaussians when it has fewer)")
    p.add_argument("--split", type=int, default=None, help="first foreground layer (default: L // 2)")
    _add_threshold(p)
    p.add_argument("--reference", type=Path, default=None, help="reference mask for IoU (non-zero stored values = foreground, before any DICOM/NIfTI rescale), on the image's pixels (a NIfTI on its voxel grid); a volume is read at the same --slice. A PNG/JPEG mask of a NIfTI/DICOM image is read in the displayed orientation, as input.png shows the image (radiological), not as the array is stored: give the mask as NIfTI/DICOM where you can")

    p = sub.add_parser("edges", parents=[common], help="zero-shot edges at several granularities",
                       description="Zero-shot edges: the boundaries of the layer assignment with l@L depth layers, "
                       "for each L of --granularities. Writes edges_l<L>.png and edges.json.")  # fmt: skip
    p.add_argument("--granularities", type=positive_int, nargs="+", default=None,
                   help=f"numbers of layers, l@L (default: {' '.join(map(str, DEFAULT_GRANULARITIES))}, those up to the model's number of Gaussians)")
    _add_threshold(p)
    return parser


def _add_threshold(p: argparse.ArgumentParser) -> None:
    """``--threshold``, of the commands that assign pixels to layers (``segment``, ``edges``; not ``layers``)."""
    p.add_argument("--threshold", type=proper_fraction, default=0.05,
                   help="pixel change that assigns a pixel to a layer, in [0, 1): images are read on a 0-1 scale, so a "
                        "change of 1 or more never happens (default: %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medgmae-2d``: parse the flags (``--help`` and nonsense flags are answered before torch
    loads), then run the subcommand (:mod:`medgmae.twod.zero_shot_command`, imported by :func:`medgmae.launch.run`:
    Ctrl-C or SIGTERM while torch loads or during the work ends with one line).

    Args:
        argv: the command's arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status (2: an input refused, ``--out`` held by another run included; 1: a failure while running or
        writing; 130: Ctrl-C; 143: SIGTERM, each with one line on stderr).
    """
    args = expand_home(build_parser().parse_args(argv))  # exits with status 2 on nonsense flags
    return launch.run("medgmae-2d", "medgmae.twod.zero_shot_command", args)


if __name__ == "__main__":
    sys.exit(main())
