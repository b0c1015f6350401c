"""What :meth:`recon.gaussian_recon.GaussianReconstructor.run` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from medgmae.gaussians import Gaussians3D

__all__ = ["GaussianReconResult"]


@dataclass
class GaussianReconResult:
    """What a reconstruction returns.

    Attributes:
        gaussians: voxel-frame Gaussians (``B = 1``), intensities in attenuation units.
        volume: ``(D, H, W)`` reconstruction.
        history: per-evaluation records (iteration, loss, number of Gaussians, seconds, PSNR/SSIM if available).
        iterations: iterations run in total.
        seconds: optimisation wall time of all iterations so far: the runs before a resume included (their time
            is saved in the state; a state of an older version without it counts from the resume).
        iterations_to_psnr: first evaluated iteration reaching PSNR 30 and 35 (``None`` if never / no reference).
        best_iteration: with held-out views, the iteration whose Gaussians ``gaussians`` and ``volume`` are (the
            lowest held-out error); ``None`` without.
        density_rounds: one record per density-control round: iteration, cloned, split, pruned, num_gaussians after.
    """

    gaussians: Gaussians3D
    volume: Tensor
    history: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    iterations_to_psnr: dict = field(default_factory=dict)
    best_iteration: int | None = None
    density_rounds: list = field(default_factory=list)
