"""Per-view detector offsets (a flexmap): what reconstructing with the true per-view offsets gives, against the mean
offset for every view (what a tool with one offset does) and no offset, by FDK and by the Gaussian reconstruction.

The phantom (``--phantom-seed``, ``--size`` D H W voxels of ``--voxel`` mm) is scanned over a full turn of
``--views`` cone-beam views (``CTGeometry.cone`` defaults: source at 4 volume half-diagonals, magnification 1.5) on a
detector of ``--det-spacing`` mm pixels (its default size, widened to cover the volume in every view) whose centre
sits at ``u = u0 + au sin t``, ``v = v0 + av cos t`` mm in view ``t`` (``--flexmap u0 au v0 av``: a CBCT's gantry sag,
a few mm over the turn). The scan is simulated without the inverse crime (``bench/recon_simulation.py``: the phantom
generated at twice the resolution, projected by the PyTorch projector on that finer grid with the per-view offsets,
Poisson noise at ``--photons``; the reference is the fine phantom's 2 x 2 x 2 mean).

The same projections are reconstructed with the geometry's ``det_offset`` given three ways: per view (the truth),
the mean of the per-view offsets for every view, and none. For each: FDK (Hann filter) PSNR and SSIM against the
reference (``recon.metrics``), the distance from the reference's centre of mass to the reconstruction's (mm: a
misplaced object, which PSNR and SSIM count only as a loss) and the PSNR of the reconstruction moved back by that
distance (linear interpolation: what is left once the misplacement is undone); and, for the first two, the Gaussian
reconstruction (``--preset toolkit``, the FDK-based start ``--init fbp`` of ``--num-gaussians``, ``--iterations``
iterations): the same at its end, and PSNR at its peak. One markdown table; ``--json`` writes it too.
``--quick`` is a toy size for tests.

    python bench/flexmap.py [--iterations 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this folder must not hide `recon`

from medgmae.cli_types import positive_float, positive_int  # noqa: E402
from medgmae.files import save_json_atomic  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.metrics import psnr, ssim  # noqa: E402
from recon_simulation import SIMULATED_ON, fbp_started_reconstruction, simulate  # noqa: E402

#: ``--quick``: the toy scan the CI test runs (every flag it sets, overriding the command line's).
QUICK = {"size": [16, 32, 32], "voxel": [2.0, 1.5, 1.5], "det_spacing": 2.0, "views": 40, "iterations": 5,
         "num_gaussians": 1000}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phantom-seed", type=int, default=1000, help="phantom generator seed (also the noise's)")
    p.add_argument("--size", type=positive_int, nargs=3, default=[24, 48, 48], metavar=("D", "H", "W"))
    p.add_argument("--voxel", type=positive_float, nargs=3, default=[1.5, 1.0, 1.0], metavar=("SZ", "SY", "SX"))
    p.add_argument("--det-spacing", type=positive_float, default=1.5, help="detector pixel pitch (mm, square)")
    p.add_argument("--flexmap", type=float, nargs=4, default=[2.0, 3.0, 1.0, 1.5], metavar=("U0", "AU", "V0", "AV"),
                   help="view t's detector offset: u = U0 + AU sin t, v = V0 + AV cos t (mm)")
    p.add_argument("--views", type=positive_int, default=90)
    p.add_argument("--photons", type=positive_float, default=1e5)
    p.add_argument("--iterations", type=int, default=300, help="Gaussian reconstruction iterations (0: FDK only)")
    p.add_argument("--num-gaussians", type=positive_int, default=10000)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--quick", action="store_true", help=f"a toy scan for tests: {QUICK}")
    p.add_argument("--json", type=Path, default=None)
    return p


def scans(args) -> dict[str, CTGeometry]:
    """The flexmap scan, and the same scan read with the mean of its offsets for every view and with none."""
    angles = np.linspace(0.0, 2 * math.pi, args.views, endpoint=False)
    u0, au, v0, av = args.flexmap
    offsets = [(u0 + au * math.sin(t), v0 + av * math.cos(t)) for t in angles]
    true = CTGeometry.cone(tuple(args.size), tuple(args.voxel), det_spacing=args.det_spacing, angles=angles,
                           det_offset=offsets)  # fmt: skip
    mean = [float(x) for x in np.mean(true.offsets(), axis=0)]
    same = lambda offset: CTGeometry.from_dict({**true.to_dict(), "det_offset": offset})  # noqa: E731
    return {"per view": true, "mean": same(mean), "none": same([0.0, 0.0])}


def centroid_shift(volume: torch.Tensor, reference: torch.Tensor, voxel) -> list[float]:
    """``(z, y, x)`` mm from the reference's centre of mass to the volume's (both weighted by their positive part):
    where the reconstruction put the object, which PSNR and SSIM count only as a loss."""
    def centre(v: torch.Tensor) -> np.ndarray:
        w = v.detach().reshape(reference.shape).clamp(min=0).double()
        axes = [torch.arange(n, dtype=torch.float64) for n in w.shape]
        grids = torch.meshgrid(*axes, indexing="ij")
        return np.array([float((g * w).sum() / w.sum()) for g in grids])

    return [float(s) for s in (centre(volume) - centre(reference)) * np.asarray(voxel, dtype=np.float64)]


def _scores(volume: torch.Tensor, reference: torch.Tensor, voxel) -> dict:
    """PSNR, SSIM, the centre-of-mass shift, and PSNR of the volume moved back by that shift (linear interpolation):
    what is left once the misplacement is undone."""
    from scipy.ndimage import shift as move

    shift = centroid_shift(volume, reference, voxel)
    vol = volume.detach().reshape(reference.shape).double().numpy()
    back = move(vol, -np.asarray(shift) / np.asarray(voxel, dtype=np.float64), order=1, mode="nearest")
    return {"psnr": psnr(volume, reference), "ssim": ssim(volume, reference), "centroid_shift_zyx_mm": shift,
            "centroid_shift_mm": float(np.linalg.norm(shift)), "psnr_recentred": psnr(back, reference)}  # fmt: skip


def _gaussians(args, geom: CTGeometry, proj: torch.Tensor, fdk: torch.Tensor, ref: torch.Tensor) -> dict:
    """The Gaussian reconstruction's PSNR and SSIM at its end and PSNR at its peak (``--iterations``, the FDK-based
    start of ``--num-gaussians``, as ``reconstruct --init fbp`` makes it)."""
    run = fbp_started_reconstruction(geom, proj, fdk, ref, args.iterations, args.num_gaussians, args.phantom_seed)
    return _scores(run["volume"], ref, args.voxel) | {k: run[k] for k in ("peak", "peak_iteration", "seconds")}


def _print_table(args, geom: CTGeometry, rows: list[dict]) -> None:
    print(f"\n{args.size[0]} x {args.size[1]} x {args.size[2]} voxels of {args.voxel} mm, {args.views} cone-beam views "
          f"over 360 degrees on a {geom.det_shape} detector of {args.det_spacing:g} mm pixels, flexmap u = "
          f"{args.flexmap[0]:g} + {args.flexmap[1]:g} sin t, v = {args.flexmap[2]:g} + {args.flexmap[3]:g} cos t mm, "
          f"{args.photons:g} photons, simulated on a {SIMULATED_ON['finer']}; PSNR in dB\n")  # fmt: skip
    print("| offset given | FDK PSNR | FDK SSIM | FDK shift (mm) | FDK PSNR, re-centred | Gaussians PSNR, end | "
          "Gaussians SSIM, end | Gaussians shift (mm) | Gaussians PSNR, end, re-centred | Gaussians PSNR, peak (iteration) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    cells = lambda m: f"{m['psnr']:.2f} | {m['ssim']:.4f} | {m['centroid_shift_mm']:.2f} | {m['psnr_recentred']:.2f}"  # noqa: E731
    for r in rows:
        g = r.get("gaussians")
        more = f"{cells(g)} | {g['peak']:.2f} ({g['peak_iteration']})" if g else "- | - | - | - | -"
        print(f"| {r['offset']} | {cells(r['fdk'])} | {more} |")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    torch.set_num_threads(args.threads)
    geoms = scans(args)
    proj, ref = simulate(args.phantom_seed, geoms["per view"], args.photons, torch.device("cpu"))
    rows = []
    for name, geom in geoms.items():
        fdk = fbp(proj, geom, "hann")
        off = geom.offsets()
        row = {"offset": name, "det_offset_u_mm": [float(off[:, 0].min()), float(off[:, 0].max())],
               "det_offset_v_mm": [float(off[:, 1].min()), float(off[:, 1].max())], "fdk": _scores(fdk, ref, args.voxel)}
        if name != "none" and args.iterations > 0:
            row["gaussians"] = _gaussians(args, geom, proj, fdk, ref)
        rows.append(row)
        print(json.dumps(row), flush=True)
    _print_table(args, geoms["per view"], rows)
    if args.json:
        save_json_atomic({"machine": platform.platform(), "args": vars(args) | {"json": str(args.json)},
                          "det_shape": list(geoms["per view"].det_shape), "rows": rows}, args.json)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
