"""``medgmae-recon`` (also ``python -m recon``): simulate scans, FBP/FDK, Gaussian reconstruction, evaluation.

Subcommands::

    medgmae-recon simulate --volume ct.nii.gz --geometry parallel|cone --views N [--arc DEG] [--det-offset U V]
                  [--photons I0] --out DIR
    medgmae-recon fbp --projections P.npy --geometry G.json [--flat F.tif [--dark D.tif] | --i0 I0] [--filter hann]
                  --out runs/fbp.nii.gz
    medgmae-recon reconstruct --projections P.npy --geometry G.json [--flat F.tif [--dark D.tif] | --i0 I0]
                  [--fbp F.nii.gz] [--preset toolkit|3dgr-ct]
                  [--init random|fbp|medgmae|3dgr-ct] [--checkpoint model.pt] [--init-fit-iterations N]
                  [--iterations N] [--reference R.nii.gz] [--matrix-dir DIR] --out DIR
    medgmae-recon evaluate --recon R.nii.gz --reference R2.nii.gz
    medgmae-recon select --runs DIR DIR [DIR ...] [--json choice.json]
    medgmae-recon geometry --rtk geometry.xml (--projections P.mha | --det-shape ROWS COLS --det-spacing MM)
                  --volume-shape Z Y X --voxel-size MM --out geometry.json

Projection stacks are ``.npy`` arrays ``(views, rows, cols)`` or MetaImage / NRRD / NIfTI stacks indexed
(column, row, view), as RTK writes them (:func:`recon.scan_files.load_projections`): line integrals, or raw detector
images with ``--flat`` (or ``--i0``) and ``--dark``, converted with ``-log((I - D) / (F - D))``
(:mod:`recon.flat_field`).

Units: ``simulate`` reads a CT volume in HU and converts it to linear attenuation (1/mm) with
``mu = 0.0192 (1 + HU / 1000)``, clipped at 0 (water 0.0192 / mm, air 0); projections are line integrals of ``mu``
(dimensionless). With ``--photons I0`` they are turned into Poisson counts ``~ Poisson(I0 exp(-p))`` and back into
``-log(max(counts, 1) / I0)`` (:mod:`recon.noise`: so few photons that the projections fail the projection check
is refused, and so is more than 1e15 photons, more than 1 % of readings without a photon or an SNR below the Rose criterion's 5 warned about). All volumes written are attenuation volumes (1/mm) with the input's affine, and
``fbp``, ``reconstruct`` (``--reference``, ``--fbp``) and ``evaluate`` read attenuation volumes. A volume whose range
belongs to the other unit is refused (:func:`recon.unit_checks.check_units`: below -100 or above 10 is HU where 1/mm is
expected; every value within [-1, 1] is 1/mm where ``simulate`` expects HU); ``--no-unit-check`` reads it as given.

``reconstruct`` uses the settings of ``--preset`` (``toolkit``, the default, or ``3dgr-ct``, SigmaLDC/3DGR-CT's
published settings; see :mod:`recon.presets`), including its initialisation unless ``--init`` is given
(``toolkit``: ``fbp`` with one Gaussian per 8 voxels, at least 20,000; ``3dgr-ct``: its own with 50,000; under the
toolkit preset every start, ``--init 3dgr-ct`` included, gets one least-squares intensity gain against the FBP). It writes ``recon.nii.gz``,
``gaussians.ply`` (the Gaussians in world millimetres, RAS, the frame of ``recon.nii.gz``'s affine; its header
records ``frame world``, and ``recon.nii.gz``'s shape and affine in the NIfTI's ``(I, J, K)`` index order, as the
zero-shot inference PLYs), ``ellipsoids.vtk`` (the same Gaussians as a mesh 3D Slicer draws over ``recon.nii.gz``:
one ellipsoid per Gaussian at half maximum, coloured by intensity; :mod:`medgmae.ellipsoids`; up to 200,000
Gaussians, :data:`~medgmae.ellipsoids.MESH_LIMIT`: above it the summary gives the ``medgmae-ellipsoids`` command
that writes it from ``gaussians.ply``), ``metrics.json``
(the preset, every setting used, the history, the density-control rounds and PSNR/SSIM of the FBP, of the start
(the initial Gaussians) and of the result, and the software used),
``curve.png``, ``slices.png`` (sagittal, coronal and axial mid-slices drawn to scale and shown radiologically, one row
each for reference / FBP / reconstruction / error, or FBP / reconstruction without a reference) and the resumable ``recon_state.pt`` (saved every ``--checkpoint-every``
iterations and at the end), and prints a closing summary. With ``--holdout-views N`` it leaves ``N`` views,
spread over the scan, out of the fit and writes the Gaussians of the evaluation (every ``--eval-every`` iterations)
that predicts them best, optionally stopping after ``--patience`` evaluations without improvement
(:mod:`recon.holdout`); with ``--refit`` it then runs the same reconstruction on every view, stopped at the chosen
iteration (same settings and schedule), and writes that (``recon_state.pt`` keeps the held-out run).
``simulate`` and ``fbp`` print the files they wrote. ``evaluate`` prints ``{"psnr", "ssim", "data_range"}`` as JSON: PSNR and SSIM on the reference's range
``max - min`` (see :mod:`recon.metrics`). ``select`` ranks ``reconstruct --holdout-views N`` runs of one scan (other
settings, e.g. ``--tv``) by their held-out error and names the lowest: a choice without a reference
(:mod:`recon.select_command`).

Errors in the inputs (missing or unreadable files, projections that do not match the geometry, a model
checkpoint of the wrong kind, ``--init medgmae`` without ``--checkpoint``) print a message and exit with code 2
before any output is written; every output file is written atomically. Ctrl-C exits with code 130 and SIGTERM
with 143, each with one line (``reconstruct``: where the last state was saved, which ``--resume`` continues); no
partial outputs are left.
"""


from __future__ import annotations

import argparse
import signal
import sys
import threading
from importlib import import_module
from typing import Callable

from medgmae.bundle_errors import Terminated, catch_sigterm, on_sigint
from medgmae.cli_types import ToolParser, expand_home, finite_float, nonneg_float, nonneg_int, positive_float, positive_int
from medgmae.files import os_error_message
from medgmae.write_failures import OutputWriteError
from recon.cli_names import FILTERS, INIT_METHODS, PROJECTOR_BACKENDS, RECON_STATE, CLIError, Interrupted
from recon.presets import PRESETS, SPLIT_RULES

__all__ = ["main", "build_parser"]

PROJECTIONS_HELP = ("line integrals (raw detector images with --flat or --i0): .npy of shape (views, rows, cols), a "
                    "MetaImage (.mha/.mhd, as RTK writes), NRRD or NIfTI stack indexed (column, row, view), or a "
                    "multi-page TIFF (.tif/.tiff) of one page per view")


UNITS_EPILOG = """units: simulate reads a CT in HU and writes attenuation volumes in 1/mm (mu = 0.0192 (1 + HU / 1000),
clipped at 0); fbp, reconstruct and evaluate read and write attenuation in 1/mm (a --reference or --fbp is the
attenuation volume simulate wrote, e.g. runs/scan/reference.nii.gz)."""

UNIT_CHECK_EPILOG = """A volume whose range belongs to the other unit is refused (HU: below -100 or above 10 where 1/mm is
expected; 1/mm: every value within [-1, 1] where HU is expected); --no-unit-check skips that check."""

RAW_EPILOG = """raw detector images: with --flat (or --i0) and optionally --dark, --projections holds readings I, converted
to line integrals p = -log((I - D) / (F - D)) in float64, then float32. A flat or dark file is one image or a stack in
the projections' layout and (rows, cols), always averaged over its images (even as many as views: no per-view
correction); readings of I - D or F - D below 1e-6 of the median F - D are raised to that floor (one warning says
how many); a flat not above the dark in most pixels is refused. The converted projections are checked as line
integrals are; reconstruct records the files' SHA-256 (metrics.json's scan) and --resume refuses other ones."""

PLY_EPILOG = """
gaussians.ply (reconstruct): centres, scales and rotations in world millimetres (RAS, the frame of recon.nii.gz's
affine); its header records 'frame world', the volume shape and the voxel-to-world affine in the NIfTI's (I, J, K)
index order, the same as recon.nii.gz and the zero-shot inference PLYs.
ellipsoids.vtk (reconstruct): the same Gaussians as a mesh 3D Slicer draws over recon.nii.gz (it loads the .ply as
points it does not draw): one ellipsoid per Gaussian at half maximum, coloured by its intensity, marked SPACE=RAS.
Written up to 200,000 Gaussians (about 130 MB); above that the closing summary says so and gives the command that
writes it from gaussians.ply: medgmae-ellipsoids OUT/gaussians.ply --out OUT/ellipsoids.vtk."""

#: The epilog of each subcommand: only the notes that concern its inputs and outputs (``select`` reads the
#: reconstructions' metrics.json, in no unit); the top-level help has them all.
EPILOGS = {
    "simulate": (UNITS_EPILOG, UNIT_CHECK_EPILOG),
    "fbp": (UNITS_EPILOG, RAW_EPILOG),
    "reconstruct": (UNITS_EPILOG, UNIT_CHECK_EPILOG, RAW_EPILOG, PLY_EPILOG),
    "evaluate": (UNITS_EPILOG, UNIT_CHECK_EPILOG),
    "select": (),
    "geometry": (),
}
EPILOG = "\n".join([UNITS_EPILOG, UNIT_CHECK_EPILOG, RAW_EPILOG, PLY_EPILOG])


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The epilog as written, and ``(default: X)`` after every option's help that has a default and does not
    already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """One subcommand's parser, with the shared help layout and its epilog (:data:`EPILOGS`)."""
    epilog = "\n".join(EPILOGS[name]) or None
    return sub.add_parser(name, help=help_text, description=help_text, epilog=epilog, formatter_class=_HelpFormatter)


def _add_raw_fields(p: argparse.ArgumentParser) -> None:
    """``--flat``, ``--dark`` and ``--i0``: the options of every command that reads ``--projections``, for raw
    detector images (:mod:`recon.flat_field`)."""
    p.add_argument("--flat", default=None, metavar="FILE",
                   help="open-beam (flat) image, or a stack of them averaged into one, in the projections' layout: "
                        "--projections then holds raw detector readings I, converted with -log((I - D) / (F - D))")
    p.add_argument("--dark", default=None, metavar="FILE", help="dark image, or a stack averaged into one, subtracted from the "
                                                "readings and the open beam (default: 0; needs --flat or --i0)")
    p.add_argument("--i0", type=positive_float, default=None, metavar="VALUE",
                   help="the open-beam reading as one number, instead of --flat (a uniform flat)")


def _add_unit_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-unit-check", action="store_true",
                   help="read the volumes as given even when their range belongs to the other unit (HU vs 1/mm)")


def build_parser() -> argparse.ArgumentParser:
    """The ``medgmae-recon`` argument parser: one subparser per command, choices from the modules that define them."""
    p = ToolParser(prog="medgmae-recon", description="CT simulation, FBP/FDK and 3DGR-CT Gaussian reconstruction.",
                                epilog=EPILOG, formatter_class=_HelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_fbp(sub)
    _add_reconstruct(sub)
    e = _parser(sub, "evaluate", "PSNR/SSIM of a reconstruction, printed as JSON")
    e.add_argument("--recon", required=True, help="reconstructed attenuation volume, 1/mm (e.g. runs/rec/recon.nii.gz)")
    e.add_argument("--reference", required=True,
                   help="reference attenuation volume, 1/mm, on the same voxel grid (e.g. runs/scan/reference.nii.gz)")
    _add_unit_check(e)
    s = _parser(sub, "select", "rank reconstructions of one scan by held-out error (runs of reconstruct --holdout-views N)")
    s.add_argument("--runs", nargs="+", required=True, help="output folders of reconstruct, the same scan and --holdout-views")
    s.add_argument("--json", default=None, help="also write the ranking, the choice and the software (versions) here")
    _add_geometry(sub)
    return p


def _add_geometry(sub) -> None:
    g = _parser(sub, "geometry", "geometry.json from RTK's circular geometry XML (recon/rtk_geometry.py: the mapping)")
    g.add_argument("--rtk", required=True, metavar="XML",
                   help="RTK ThreeDCircularProjectionGeometry XML (rtksimulatedgeometry, rtkelektasynergygeometry, "
                        "rtkvarianobigeometry...): one SID and SDD for all views, no tilt or source offset; "
                        "ProjectionOffsetX/Y for all views or varying per view (a flexmap: a per-view det_offset)")
    g.add_argument("--projections", default=None,
                   help="the projection stack: its detector size (and a MetaImage / NRRD header's pitch and origin)")
    g.add_argument("--det-shape", type=positive_int, nargs=2, default=None, metavar=("ROWS", "COLS"),
                   help="detector pixels, without --projections")
    g.add_argument("--det-spacing", type=positive_float, nargs="+", default=None, metavar="MM",
                   help="detector pitch in mm, one value or (row, col) (default: the stack header's)")
    g.add_argument("--volume-shape", type=positive_int, nargs=3, required=True, metavar=("Z", "Y", "X"),
                   help="voxels of the volume to reconstruct, centred on the isocentre; z is the rotation axis "
                        "(RTK's y), y is RTK's -z")
    g.add_argument("--voxel-size", type=positive_float, nargs="+", required=True, metavar="MM",
                   help="voxel size in mm, one value or (z, y, x)")
    g.add_argument("--out", required=True, help="the geometry.json to write")


def _add_simulate(sub) -> None:
    s = _parser(sub, "simulate", "attenuation volume, projections, geometry and FBP from a CT volume in HU")
    s.add_argument("--volume", required=True, help="CT volume in HU (NIfTI, NRRD, MetaImage or a DICOM series folder)")
    s.add_argument("--geometry", required=True,
                   help="parallel, cone (a circular orbit around the volume), or a geometry.json such as "
                        "configs/geometry/*.json (its volume_shape and voxel_size must be the volume's)")
    s.add_argument("--views", type=positive_int, default=None, help="number of projection angles, at most 100,000: needed for --geometry parallel or cone (a geometry.json fixes its own)")
    s.add_argument("--arc", type=positive_float, default=None, help="scan arc in degrees (default 180 parallel, 360 cone)")
    s.add_argument("--det-offset", type=finite_float, nargs=2, default=None, metavar=("U", "V"),
                   help="detector offset in mm for --geometry parallel or cone: the detector centre sits U along its "
                        "columns and V along its rows from the central ray (the part of RTK's ProjectionOffsetX/Y; "
                        "the default detector widens to still cover the volume, up to an offset of its own width or "
                        "height; a geometry.json states its own det_offset)")
    s.add_argument("--photons", type=positive_float, default=None, help="incident photons per detector pixel: Poisson noise (default: none, noiseless projections)")
    s.add_argument("--filter", default="hann", choices=FILTERS, help="FBP/FDK filter for fbp.nii.gz")
    s.add_argument("--seed", type=nonneg_int, default=0, help="seed of the Poisson noise")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    _add_unit_check(s)
    s.add_argument("--out", required=True, help="output folder")


def _add_fbp(sub) -> None:
    f = _parser(sub, "fbp", "FBP (parallel) or FDK (cone) reconstruction, attenuation in 1/mm")
    f.add_argument("--projections", required=True, help=PROJECTIONS_HELP)
    f.add_argument("--geometry", required=True, help="geometry.json")
    _add_raw_fields(f)
    f.add_argument("--filter", default="hann", choices=FILTERS, help="ramp filter window")
    f.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    f.add_argument("--out", required=True, help="output NIfTI")


def _add_init_options(r: argparse.ArgumentParser) -> None:
    """``reconstruct``'s options of the initial Gaussians: the start, the zero-shot model's and the budget."""
    r.add_argument("--init", default=None, choices=(*INIT_METHODS, "3dgr-ct"), help="initialisation (default: the preset's)")
    r.add_argument("--checkpoint", default=None, help="pre-trained MedGMAE model.pt (for --init medgmae)")
    r.add_argument("--model-spacing", type=positive_float, nargs="+", default=None, metavar="MM",
                   help="override the voxel spacing (mm) recorded in the MedGMAE model.pt: one value (isotropic) or "
                        "three, in the order of pre-training's --pixdim (a warning names both)")
    r.add_argument("--init-fit-iterations", type=nonneg_int, default=0, metavar="N",
                   help="--init medgmae: after the common gain, fit each zero-shot Gaussian's intensity to the FBP "
                        "volume in N steps of non-negative least squares (default 0: the decoder's intensities; 20 "
                        "raised the start from 14.25 to 20.92 dB against the FDK on a 20-view cone scan, "
                        "bench/RESULTS.md)")
    r.add_argument("--num-gaussians", type=positive_int, default=None,
                   help="initial Gaussians for random/fbp/3dgr-ct, at most 8 per voxel of the volume (default: the preset's: toolkit one per 8 voxels, at "
                        "least 20000, fbp at most one per voxel above 5 %% of the FBP's maximum; 3dgr-ct 50000, at most one per voxel of "
                        "its half-resolution grid); for medgmae with the toolkit preset the budget its sparse start "
                        "grows to (the same default), with the 3dgr-ct preset (whose density control does not grow to "
                        "a budget) the number the decoder's Gaussians are subdivided to (default: as decoded)")


def _add_fbp_volume(r: argparse.ArgumentParser) -> None:
    """``reconstruct``'s ``--fbp`` and ``--no-fbp-check`` (:mod:`recon.fbp_check`)."""
    r.add_argument("--fbp", default=None, help="FBP volume (attenuation, 1/mm) for the initialisation (computed when absent), "
                   "in the scan's (z, y, x) index order as `medgmae-recon fbp` writes it: refused when one of its mirrors "
                   "predicts the projections clearly better")
    r.add_argument("--no-fbp-check", action="store_true",
                   help="read --fbp as given even when a mirror of it predicts the projections clearly better")


def _add_reconstruct(sub) -> None:
    r = _parser(sub, "reconstruct", "Gaussian (3DGR-CT) reconstruction")
    r.add_argument("--projections", required=True, help=PROJECTIONS_HELP)
    r.add_argument("--geometry", required=True, help="geometry.json")
    _add_raw_fields(r)
    _add_fbp_volume(r)
    r.add_argument("--preset", default="toolkit", choices=PRESETS, help="optimisation settings")
    _add_init_options(r)
    r.add_argument("--iterations", type=positive_int, default=1000,
                   help="optimisation iterations (at least 1; default 1000). The toolkit preset's density control adds "
                        "5 %% of the Gaussians after every 100th iteration of the first 60 %% of the run, compounding: "
                        "the count ends at up to 1.34x the start after 1,000 iterations, 3.2x after 4,000, and reaches "
                        "the cap (--max-gaussians) from about 8,000 on (--init medgmae: half of them every 10 "
                        "iterations, up to its budget), each iteration taking longer as it grows; the run's first lines "
                        "give the projected count and the time left follows it")
    r.add_argument("--reference", default=None, help="ground-truth attenuation volume (1/mm, e.g. runs/scan/reference.nii.gz) for PSNR/SSIM")
    r.add_argument("--views-per-iteration", type=positive_int, default=None,
                   help="project a random subset of this many views per iteration (default: all views)")
    r.add_argument("--tv", type=nonneg_float, default=0.0,
                   help="weight of the volume's total variation beside the relative projection MSE (default 0; 1e-3 was "
                        "best of 1e-4 / 1e-3 / 1e-2 on sparse, noisy phantom scans, bench/RESULTS.md)")
    r.add_argument("--split-rule", default=None, choices=SPLIT_RULES,
                   help="toolkit preset: how density control splits: 'sample' (default: clones, children drawn 1.6x "
                        "narrower) or 'moments' (halves along the largest axis, mass and covariance kept: no PSNR drop at "
                        "a round, better with a coarse --num-gaussians on many views; bench/RESULTS.md)")
    r.add_argument("--max-gaussians", type=positive_int, default=None, metavar="N",
                   help="the most Gaussians density control grows to, at least the start's --num-gaussians (equal: no "
                        "growth; pruning still removes). Default: the preset's: toolkit ten times the start, at least "
                        "200,000 (--init medgmae: its --num-gaussians budget, which this can only lower); 3dgr-ct its "
                        "published 300,000 (a round under the cap can up to double the count)")
    r.add_argument("--coarse-iterations", type=nonneg_int, default=None,
                   help="iterations of the coarse phase (default: the preset's: toolkit none, measured faster without "
                        "it in bench/RESULTS.md; 3dgr-ct its published first third at half resolution)")
    r.add_argument("--eval-every", type=positive_int, default=50,
                   help="iterations between evaluations (PSNR with --reference, held-out error with --holdout-views)")
    r.add_argument("--holdout-views", type=nonneg_int, default=0,
                   help="views left out of the fit, spread over the scan; the Gaussians of the evaluation that predicts "
                        "them best are written (the iteration chosen without a reference; default 0: off)")
    r.add_argument("--patience", type=nonneg_int, default=0,
                   help="with --holdout-views: stop after this many evaluations without a better held-out error (0: run on)")
    r.add_argument("--refit", action="store_true",
                   help="with --holdout-views: then run again on every view to the chosen iteration and write that (the "
                        "held-out views' information back in the fit; the same schedule, stopped there)")
    r.add_argument("--checkpoint-every", type=nonneg_int, default=500, help="iterations between resumable states (0: end only)")
    r.add_argument("--resume", action="store_true", help=f"continue from OUT/{RECON_STATE}")
    r.add_argument("--backend", default="auto", choices=PROJECTOR_BACKENDS, help="projector backend")
    r.add_argument("--matrix-dir", default=None, metavar="DIR",
                   help="folder shared by runs for the matrix backend's matrix (cone beam on the CPU), read from and "
                        "saved to DIR/projector_matrix-<16 hex digits of its key>.pt, so that the runs of select's "
                        "candidates, or of several scans, build each scan's matrix once (default: OUT/projector_matrix.pt, "
                        "the run's own); written atomically (runs that build at once each build it, the last one's "
                        "file stays) and never removed")
    r.add_argument("--filter", default="hann", choices=FILTERS, help="filter for the FBP when --fbp is absent")
    r.add_argument("--seed", type=nonneg_int, default=0, help="seed of the initialisation and of the views drawn")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar: one line per evaluation (--eval-every) instead, and one a minute between evaluations of a slow run")
    _add_unit_check(r)
    r.add_argument("--out", required=True, help="output folder")


#: Each subcommand's function and its module, imported once the arguments parse (torch: not for ``--help`` or a
#: refused flag).
COMMANDS = {"simulate": "recon.simulate_command:cmd_simulate", "fbp": "recon.commands:cmd_fbp",
            "reconstruct": "recon.reconstruct_command:cmd_reconstruct", "evaluate": "recon.commands:cmd_evaluate",
            "select": "recon.select_command:cmd_select", "geometry": "recon.geometry_command:cmd_geometry"}  # fmt: skip


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of the subcommand ``name`` (one of :data:`COMMANDS`), its module imported."""
    module, function = COMMANDS[name].split(":")
    return getattr(import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad input, 130 interrupted by Ctrl-C and 143 by SIGTERM:
    one line says what was left, no traceback)."""
    parser = build_parser()
    args = expand_home(parser.parse_args(argv))
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    # SIGTERM (``kill``, a batch system's time limit) stops the command as Ctrl-C does: the state saved so far is
    # named and nothing half-written is left
    previous = catch_sigterm() if main_thread else None
    try:  # the command's import too: Ctrl-C or SIGTERM while torch loads is answered as during its work
        return _command(args.command)(args)
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"medgmae-recon {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an input path too long to look up (outputs are checked up front), a write without room
        if (message := os_error_message(e)) is None:
            raise
        print(f"medgmae-recon {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(e, OutputWriteError) else 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated) or isinstance(e.__context__, Terminated)
        left = str(e) if isinstance(e, Interrupted) else "no output was written"
        print(f"medgmae-recon {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}: {left}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
            if signal.getsignal(signal.SIGINT) is on_sigint:  # Ctrl-C as it was (the tool run in-process)
                signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
