"""Half-fan (offset-detector) cone-beam scans: what FDK's redundancy weights and the Gaussian reconstruction give on
a detector that sees the volume from one side of the axis only, against a centred detector wide enough for it.

The phantom (``--phantom-seed``, ``--size`` D H W voxels of ``--voxel`` mm) is scanned over a full turn of
``--views`` cone-beam views (``CTGeometry.cone`` defaults: source at 4 volume half-diagonals, magnification 1.5)
three ways, each simulated without the inverse crime (``bench/recon_simulation.py``: the phantom generated at twice
the resolution, projected by the PyTorch projector on that finer grid, Poisson noise at ``--photons``; the reference
is the fine phantom's 2 x 2 x 2 mean):

* ``full``: the default centred detector;
* ``half-fan``: a detector ``--fraction`` as wide (same pixel pitch), offset so that its wide side reaches as far as
  the full detector's edge: it sees the volume's inscribed cylinder on one side of the central ray only;
* ``half-fan, unweighted``: the same projections through FDK with the redundancy weights (and the padding that comes
  with them) switched off, as FDK without half-fan support reconstructs them.

For each: FDK (Hann filter) PSNR against the reference (``recon.metrics.psnr``), and, for the first two, the Gaussian
reconstruction (``--preset toolkit``, the FDK-based start ``--init fbp`` of ``--num-gaussians``, ``--iterations``
iterations) PSNR at its end and peak. One markdown table; ``--json`` writes it too.

    python bench/half_fan.py [--iterations 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this folder must not hide `recon`

import recon.fbp as fbp_module  # noqa: E402
from medgmae.cli_types import positive_float, positive_int  # noqa: E402
from medgmae.files import save_json_atomic  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon_simulation import SIMULATED_ON, fbp_started_reconstruction, simulate  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phantom-seed", type=int, default=1000, help="phantom generator seed (also the noise's)")
    p.add_argument("--size", type=positive_int, nargs=3, default=[32, 64, 64], metavar=("D", "H", "W"))
    p.add_argument("--voxel", type=positive_float, nargs=3, default=[6.0, 4.0, 4.0], metavar=("SZ", "SY", "SX"))
    p.add_argument("--views", type=positive_int, default=120)
    p.add_argument("--photons", type=positive_float, default=1e5)
    p.add_argument("--fraction", type=positive_float, default=0.6,
                   help="the half-fan detector's width over the full one's (more than 0.5, less than 1)")
    p.add_argument("--iterations", type=int, default=300, help="Gaussian reconstruction iterations (0: FDK only)")
    p.add_argument("--num-gaussians", type=positive_int, default=20000)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--json", type=Path, default=None)
    return p


def scans(args) -> dict[str, CTGeometry]:
    """The centred detector and the half-fan one (same pitch, ``--fraction`` of the columns, offset so that its wide
    side ends where the centred one's does)."""
    full = CTGeometry.cone(tuple(args.size), tuple(args.voxel), num_angles=args.views, arc_deg=360.0)
    rows, cols = full.det_shape
    narrow = max(1, math.ceil(cols * args.fraction))
    offset = (cols - narrow) * full.det_spacing[1] / 2
    half = CTGeometry.cone(tuple(args.size), tuple(args.voxel), full.source_origin, full.source_detector,
                           det_shape=(rows, narrow), det_spacing=full.det_spacing, num_angles=args.views,
                           arc_deg=360.0, det_offset=(offset, 0.0))  # fmt: skip
    if not half.half_fan:
        raise SystemExit(f"--fraction {args.fraction}: the offset detector still covers the volume on both sides")
    return {"full": full, "half-fan": half}


def _fdk(proj: torch.Tensor, geom: CTGeometry, weighted: bool) -> torch.Tensor:
    """Hann FDK; ``weighted=False`` switches the half-fan weights (and their padding) off."""
    if weighted:
        return fbp_module.fbp(proj, geom, "hann")
    real = fbp_module.half_fan_weights
    fbp_module.half_fan_weights = lambda geometry: None
    try:
        return fbp_module.fbp(proj, geom, "hann")
    finally:
        fbp_module.half_fan_weights = real


def _gaussians(args, geom: CTGeometry, proj: torch.Tensor, fdk: torch.Tensor, ref: torch.Tensor) -> dict:
    """The Gaussian reconstruction's PSNR at its end and peak (``--iterations``, the FDK-based start of
    ``--num-gaussians``, as ``reconstruct --init fbp`` makes it)."""
    run = fbp_started_reconstruction(geom, proj, fdk, ref, args.iterations, args.num_gaussians, args.phantom_seed)
    return {k: run[k] for k in ("end", "peak", "peak_iteration", "seconds")}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.5 < args.fraction < 1:
        build_parser().error("--fraction must lie between 0.5 and 1")
    torch.set_num_threads(args.threads)
    rows = []
    for name, geom in scans(args).items():
        proj, ref = simulate(args.phantom_seed, geom, args.photons, torch.device("cpu"))
        for weighted in (True, False) if geom.half_fan else (True,):
            fdk = _fdk(proj, geom, weighted)
            row = {"scan": name if weighted else f"{name}, unweighted", "det_shape": list(geom.det_shape),
                   "det_offset_mm": geom.det_offset[0], "fdk_psnr": psnr(fdk, ref)}  # fmt: skip
            if weighted and args.iterations > 0:
                row["gaussians"] = _gaussians(args, geom, proj, fdk, ref)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.size[0]} x {args.size[1]} x {args.size[2]} voxels of {args.voxel} mm, {args.views} cone-beam views "
          f"over 360 degrees, {args.photons:g} photons, simulated on a {SIMULATED_ON['finer']}; PSNR in dB\n")
    print("| scan | detector (rows, cols) | offset (mm) | FDK | Gaussians, end | Gaussians, peak (iteration) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        g = r.get("gaussians")
        more = f"{g['end']:.2f} | {g['peak']:.2f} ({g['peak_iteration']})" if g else "- | -"
        print(f"| {r['scan']} | {tuple(r['det_shape'])} | {r['det_offset_mm']:.1f} | {r['fdk_psnr']:.2f} | {more} |")
    if args.json:
        save_json_atomic({"machine": platform.platform(), "args": vars(args) | {"json": str(args.json)}, "rows": rows},
                         args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
