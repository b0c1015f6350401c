"""The measurements of ``bench/recon.py``, simulated without the inverse crime: the phantom generated at twice the
reconstruction's resolution, projected by the PyTorch projector on that finer grid, with Poisson noise; the
reference is the fine phantom averaged over 2 x 2 x 2 blocks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgmae.data.phantom import generate_phantom  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.initialisation import hu_to_mu  # noqa: E402
from recon.noise import poisson_line_integrals  # noqa: E402

__all__ = ["SIMULATED_ON", "phantom_mu", "simulate"]


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
