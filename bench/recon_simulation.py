"""The measurements of ``bench/recon.py``, simulated without the inverse crime: the phantom generated at twice the
reconstruction's resolution, projected by the PyTorch projector on that finer grid, with Poisson noise; the
reference is the fine phantom averaged over 2 x 2 x 2 blocks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgmae.data.phantom import generate_phantom  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.initialisation import hu_to_mu  # noqa: E402
from recon.noise import poisson_line_integrals  # noqa: E402

__all__ = ["SIMULATED_ON", "add_zero_shot_scan_args", "phantom_mu", "simulate", "zero_shot_scan"]


def phantom_mu(seed: int, shape_zyx, voxel_zyx, texture: bool = False) -> torch.Tensor:
    """The phantom's attenuation (1/mm) as a ``(z, y, x)`` tensor: piecewise-constant organs with partial-volume
    edges, with ``texture`` plus the generator's correlated 10-15 HU noise (a stand-in for tissue texture)."""
    ph = generate_phantom(seed, shape=tuple(shape_zyx[::-1]), spacing=tuple(voxel_zyx[::-1]), noise=texture)
    return torch.from_numpy(hu_to_mu(ph.image).astype(np.float32)).permute(2, 1, 0).contiguous()


SIMULATED_ON = {"finer": "2x finer grid, PyTorch projector",
                "same": "the reconstruction grid, PyTorch projector (inverse crime: a diagnostic only)"}


def simulate(seed: int, geom: CTGeometry, photons: float | None, device, texture: bool = False,
             grid: str = "finer") -> tuple[torch.Tensor, torch.Tensor]:
    """``(projections, reference)``: measured on a 2x finer phantom (with ``texture``: see :func:`phantom_mu`) with
    Poisson noise; reference = its 2x2x2 mean. ``grid="same"`` measures the phantom of the reconstruction grid
    itself (the reference): no detail the grid cannot hold, a diagnostic of what the finer simulation changes."""
    from recon.projectors import TorchProjector

    if grid not in SIMULATED_ON:
        raise ValueError(f"grid must be one of {sorted(SIMULATED_ON)}, got {grid!r}")
    factor = 2 if grid == "finer" else 1
    fine_shape = [factor * n for n in geom.volume_shape]
    fine_voxel = [v / factor for v in geom.voxel_size]
    fine = phantom_mu(seed, fine_shape, fine_voxel, texture).to(device)
    fine_geom = CTGeometry.from_dict({**geom.to_dict(), "volume_shape": fine_shape, "voxel_size": fine_voxel})
    with torch.no_grad():
        proj = TorchProjector(fine_geom)(fine)
        if photons:
            proj = poisson_line_integrals(proj, photons, torch.Generator(device=proj.device).manual_seed(seed))[0]
    reference = torch.nn.functional.avg_pool3d(fine[None, None], factor)[0, 0]
    return proj, reference


def add_zero_shot_scan_args(parser) -> None:
    """The flags of the zero-shot start studies' scan (``--checkpoint``, ``--geometry``, ``--views``, ``--seed``,
    ``--threads``), read back by :func:`zero_shot_scan`."""
    parser.add_argument("--checkpoint", required=True, help="the MedGMAE model.pt whose decoder makes the start")
    parser.add_argument("--geometry", choices=("cone", "parallel"), default="cone")
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000, help="phantom seed (1000 on: held out of pre-training)")
    parser.add_argument("--threads", type=int, default=2)


def zero_shot_scan(args) -> tuple[CTGeometry, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(geometry, projections, reference, Hann FBP/FDK)`` of the study scan :func:`add_zero_shot_scan_args` names:
    32 x 64 x 64 voxels of 6 x 4 x 4 mm, measured by :func:`simulate` at 1e5 photons (sets torch's thread count)."""
    from recon.fbp import fbp

    torch.set_num_threads(args.threads)
    make = CTGeometry.cone if args.geometry == "cone" else CTGeometry.parallel
    geom = make((32, 64, 64), (6, 4, 4), num_angles=args.views)
    proj, vol = simulate(args.seed, geom, 1e5, torch.device("cpu"))
    return geom, proj, vol, fbp(proj, geom, "hann")


def fbp_started_reconstruction(geom: CTGeometry, proj: torch.Tensor, fdk: torch.Tensor, ref: torch.Tensor,
                               iterations: int, num_gaussians: int, seed: int) -> dict:
    """A CPU Gaussian reconstruction from ``reconstruct --init fbp``'s start (the toolkit preset, evaluated every 25
    iterations against ``ref``), as the half-fan and flexmap benchmarks run it.

    Returns:
        ``{"volume", "end", "peak", "peak_iteration", "seconds"}``: the final volume and the PSNR curve's last and
        best points.
    """
    from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
    from recon.initialisation import fbp_init
    from recon.projectors import make_projector

    cfg = GaussianReconConfig.preset("toolkit", iterations, eval_every=25)
    start = fbp_init(fdk, num_gaussians, seed=seed)
    t = time.perf_counter()
    res = GaussianReconstructor(make_projector(geom, "auto", torch.device("cpu")), proj, start, cfg, reference=ref).run(progress=False)
    seconds = time.perf_counter() - t
    curve = [(h["iteration"], h["psnr"]) for h in res.history]
    peak = max(curve, key=lambda c: c[1])
    return {"volume": res.volume, "end": curve[-1][1], "peak": peak[1], "peak_iteration": peak[0], "seconds": seconds}
