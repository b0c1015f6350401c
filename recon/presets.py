"""Settings of the Gaussian reconstruction and its two presets: ``toolkit`` (the default) and ``3dgr-ct``.

``3dgr-ct`` reproduces SigmaLDC/3DGR-CT's published code (github.com/SigmaLDC/3DGR-CT, files under ``3DGR-CT/``):
``configs/gaussian.yaml``, the ``OptimizationParams`` of ``train_ct_recon.py``, ``models/gaussian_model.py`` and
the renderer ``gs_utils/discretize_grid.cu``. :data:`THREEDGR_CT` lists every published number with its source;
its initialisation is :func:`recon.init_3dgr.init_3dgr_ct`. How the numbers are carried over:

* 3DGR-CT works in a frame where the volume spans ``[0, 1]`` and its image is normalised to ``[0, 1]``. Here
  lengths of this preset are in units of the largest volume side (``length_unit="volume"``: the same frame for a
  cubic volume; 3DGR-CT normalises each axis separately, which stretches its Gaussians along the short axes of a
  non-cubic volume, here they stay isotropic in voxels), and intensities in units of the FBP's maximum
  (``value_scale``), so thresholds such as ``min_intensity = 1e-4`` mean what they mean there. Its initial scales
  follow the volume too: on 64-voxel slices most are below a voxel, 4x smaller than on its 256-voxel ones, and the
  start then stays below FBP on most scans under either preset (bench/RESULTS.md, "One optimiser for both sparse
  starts").
* The loss is the plain MSE of the projections (``loss="mse"``, as ``torch.nn.functional.mse_loss``); the
  gradient threshold ``max_grad = 1e-5`` applies to the positional gradient in the normalised frame. Its effect
  still depends on the projections' scale (3DGR-CT: 80 x 256 x 256 voxels of 1.4 mm, 20 cone-beam views).
* Schedules are given for 15,000 iterations; for a run of ``N`` iterations they are scaled by ``N / 15000``:
  the half-resolution stage covers the first third, density control the whole run, and the position learning
  rate decays log-linearly from 0.002 towards 2e-6 over ``2 N`` iterations (``position_lr_max_steps = 30000``
  against ``max_iter = 15000``: the published run stops at a ~32x decay, not at the 1000x of its end point).
* Coarse stage: 3DGR-CT compares the 8 strided half-resolution sub-grids in turn with projections of the
  downsampled *ground truth*; a real scan has none, so this preset compares one half-resolution rendering with
  the *measured* projections downsampled 2x2 (:mod:`recon.coarse`). Its Gaussians are then held only at the
  half-resolution sample points: on 32 x 64 x 64 volumes the stage ends with the full-resolution image at 15-19 dB,
  which gains 4-12 dB in the first few hundred full-resolution iterations (bench/RESULTS.md, "The published
  schedule with 3DGR-CT's cap scaled to the volume").
* Density control runs after iterations 100, 200, ... (3DGR-CT: loop indices 100, 200, ..., i.e. after steps
  101, 201, ...); its renderer sums every Gaussian over a box of +-2 standard deviations, here over the ellipsoid
  of Mahalanobis radius 2 (``cutoff = 2``); scales are floored at ``min_scale = 1e-3`` voxels (3DGR-CT: none).

``toolkit`` differs, each for a reason measured or argued in the toolkit (see also the README):

* linear intensities and a relative projection MSE: sums of Gaussians may need any sign and scale (a sigmoid
  caps each Gaussian at ``value_scale`` and saturates); the relative MSE makes one set of learning rates fit
  any attenuation units and scan sizes;
* lengths in voxels with larger position and scale rates (0.05 voxels, 0.02) decaying 10x over the run for all
  parameters: on the toolkit's small CPU-sized volumes (tens of voxels a side) the normalised-frame rates of
  3DGR-CT move Gaussians by hundredths of a voxel and its initial scales fall below a voxel;
* density control by ranking (the top 5 % by *mean* positional gradient since the last round, clones drawn from
  the Gaussian) instead of an absolute threshold on one iteration's gradient, whose meaning changes with the
  data's units; a cap of 200,000 Gaussians (ten times a larger start, :func:`toolkit_cap`) and pruning of
  oversized Gaussians; ``split_rule="moments"`` (``reconstruct --split-rule moments``) splits along the largest
  axis instead, keeping the rendered volume at each round (bench/RESULTS.md, "Density control");
* no coarse phase: a first 10 % on 2x2-binned projections (``coarse_iterations``, ``coarse_mode="bin"``: the
  full-resolution volume against binned projections, cheaper to set up for any geometry than a half-resolution
  volume) cost the FBP-based start 25-43 % more iterations to the best FBP/FDK on five held-out phantom scans
  and raised no peak (bench/RESULTS.md, "The coarse phase"); it stays available as a setting;
* its initialisation (``--init fbp``): one Gaussian per 8 voxels, at least 20,000 (:func:`toolkit_budget`; 3DGR-CT
  places 50,000 whatever the volume), sampled with probability proportional to the FBP's
  gradient magnitude (plus a uniform part), scales from the 3 nearest neighbours, intensities calibrated by
  least squares against the FBP, instead of a deterministic top-gradient band at half resolution.
* a sparse start (``--init medgmae``: the zero-shot Gaussians) grows fast with :func:`sparse_start_growth`
  (density control every 10 iterations, half of the Gaussians per round, up to the budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from medgmae.whole_numbers import nonnegative_count, positive_count

__all__ = [
    "DENSIFY_MODES",
    "GaussianReconConfig",
    "PRESETS",
    "SPLIT_RULES",
    "THREEDGR_CT",
    "THREEDGR_CT_INIT",
    "preset_config",
    "preset_init_settings",
    "sparse_start_growth",
    "toolkit_budget",
    "toolkit_cap",
]

PRESETS = ("toolkit", "3dgr-ct")

#: Every number of SigmaLDC/3DGR-CT's published code that this preset uses, with the file it comes from
#: (paths under the repository's ``3DGR-CT/`` folder).
THREEDGR_CT = {
    "max_iter": (15000, "configs/gaussian.yaml"),
    "num_gaussian": (50000, "configs/gaussian.yaml"),
    "start": (0.15, "configs/gaussian.yaml"),
    "air_threshold": (0.05, "configs/gaussian.yaml"),
    "ini_intensity": (0.25, "configs/gaussian.yaml"),
    "ini_sigma": (0.15, "configs/gaussian.yaml"),
    "neighbour_kernel": (5, "models/gaussian_model.py (create_from_fbp: kernel_size = 5)"),
    "intensity_offset": (0.001, "models/gaussian_model.py (create_from_fbp: ini_intensity * fbp + 0.001)"),
    "low_reso_stage": (5000, "configs/gaussian.yaml"),
    "densification_interval": (100, "configs/gaussian.yaml"),
    "densify_from_iter": (0, "configs/gaussian.yaml"),
    "densify_until_iter": (15000, "configs/gaussian.yaml"),
    "max_gaussians": (300000, "configs/gaussian.yaml"),
    "max_grad": (1.0e-05, "configs/gaussian.yaml"),
    "min_intensity": (0.0001, "configs/gaussian.yaml"),
    "sigma_extent": (2, "configs/gaussian.yaml"),
    "tv_weight": (0.0, "configs/gaussian.yaml"),
    "spatial_lr_scale": (1, "configs/gaussian.yaml"),
    "position_lr_init": (0.002, "train_ct_recon.py (OptimizationParams)"),
    "position_lr_final": (0.000002, "train_ct_recon.py (OptimizationParams)"),
    "position_lr_max_steps": (30000, "train_ct_recon.py (OptimizationParams)"),
    "intensity_lr": (0.05, "train_ct_recon.py (OptimizationParams)"),
    "scaling_lr": (0.005, "train_ct_recon.py (OptimizationParams)"),
    "rotation_lr": (0.001, "train_ct_recon.py (OptimizationParams)"),
    "percent_dense": (0.01, "train_ct_recon.py (OptimizationParams)"),
    "split_children": (2, "models/gaussian_model.py (densify_and_split: N=2)"),
    "split_scale_divisor": (1.6, "models/gaussian_model.py (densify_and_split: scaling / (0.8 * N))"),
    "prune_min_scale": (0.003, "models/gaussian_model.py (densify_and_prune: min scaling < 0.003)"),
    "render_extent_sigmas": (2.0, "gs_utils/discretize_grid.cu (coeff = 2.0)"),
    "adam_eps": (1e-15, "models/gaussian_model.py (training_setup: eps=1e-15)"),
}

#: Settings of the 3DGR-CT initialisation (:func:`recon.init_3dgr.init_3dgr_ct`).
THREEDGR_CT_INIT = {
    k: THREEDGR_CT[k][0] for k in ("num_gaussian", "start", "air_threshold", "ini_intensity", "ini_sigma", "neighbour_kernel", "intensity_offset")
}

#: Density-control rules (:mod:`recon.density`): ``densify_mode`` and, in toolkit mode, ``split_rule``.
DENSIFY_MODES = ("toolkit", "3dgr-ct")
SPLIT_RULES = ("sample", "moments")


@dataclass
class GaussianReconConfig:
    """Optimisation settings. Build them with :meth:`preset` (``"toolkit"``, the default, or ``"3dgr-ct"``, the
    published settings; see :mod:`recon.presets`) and override single fields as needed.

    Lengths (``lr_means``, ``grad_threshold``, ``split_scale``, ``prune_min_scale``) are in ``length_unit``:
    voxels, or ``"volume"``: the largest volume side (3DGR-CT's normalised frame, exact for cubic volumes).
    ``min_scale`` is always in voxels; intensities are in ``value_scale`` units (see the module docstring).

    Attributes:
        iterations: total iterations.
        preset_name: the preset these settings came from (a label recorded with the results).
        lr_means, lr_scales, lr_quats, lr_intensities: Adam learning rates at the start.
        lr_final_ratio: the scale, rotation and intensity learning rates decay log-linearly to this fraction at
            the last iteration (1 = constant).
        lr_means_final_ratio: final fraction of the position learning rate (``None``: ``lr_final_ratio``).
        lr_means_horizon: the position rate reaches ``lr_means_final_ratio`` after ``lr_means_horizon *
            iterations`` iterations (log-linear, constant after).
        intensity_activation: ``"linear"`` (intensities optimised directly) or ``"sigmoid"`` (optimised as logits).
        loss: ``"relative"`` (projection MSE divided by the mean square of the measured projections) or ``"mse"``
            (plain MSE of projections of the volume in ``value_scale`` units).
        length_unit: ``"voxel"`` or ``"volume"`` (see above).
        tv_weight: weight of the anisotropic total variation of the volume (``value_scale`` units), 0 = off.
        views_per_iteration: project a random subset of this many views per iteration (``None``: all views).
        coarse_iterations: length of the coarse phase.
        coarse_mode: ``"bin"`` (full volume, 2x2-binned projections in the loss) or ``"half"`` (the Gaussians
            rendered on a half-resolution grid and projected on a half-resolution detector, compared with the
            measured projections downsampled 2x2).
        densify_mode: ``"toolkit"`` or ``"3dgr-ct"`` (see :mod:`recon.density`).
        densify_from, densify_until, densify_every: the density-control window and period.
        densify_fraction: fraction of the Gaussians (largest mean positional-gradient norm) densified (toolkit
            mode).
        grad_threshold: only Gaussians with at least this positional-gradient norm are densified.
        split_rule: toolkit mode: ``"sample"`` (the default: small Gaussians cloned, large ones split into two drawn
            children 1.6x narrower) or ``"moments"`` (each chosen Gaussian split in two along its largest axis, the
            pair keeping its mass, mean and covariance: no PSNR drop at a round, better with a coarse budget on many
            views, 0.1-0.5 dB lower at the end elsewhere in bench/RESULTS.md); see :mod:`recon.density`.
        split_offset: ``"moments"``: the children sit this many largest-scale standard deviations from the centre
            (in ``(0, 1)``).
        split_scale: Gaussians whose largest scale exceeds this are split, smaller ones cloned (3DGR-CT mode and
            ``split_rule="sample"``).
        prune_intensity: prune intensities (after the activation) below this (``value_scale`` units).
        prune_scale: prune Gaussians whose largest scale exceeds this fraction of the smallest volume side (0: off).
        prune_min_scale: prune Gaussians whose smallest scale is below this (0: off).
        max_gaussians: cap on the number of Gaussians.
        min_scale: lower bound of the scales (voxels).
        cutoff: renderer cutoff (Mahalanobis).
        eval_every: iterations between evaluations (PSNR/SSIM when a reference is given, the held-out error when
            views are held out).
        holdout_views: views left out of the loss to choose the iteration by (:mod:`recon.holdout`; 0 = off):
            the reconstruction returns the Gaussians of the evaluation with the lowest held-out error.
        holdout_patience: stop after this many evaluations without a lower held-out error (0: run every iteration).
        checkpoint_every: iterations between checkpoints (0 = only at the end when a path is set).
        seed: random seed (view subsets and density control).
    """

    iterations: int = 1000
    preset_name: str = "toolkit"
    lr_means: float = 0.05
    lr_scales: float = 0.02
    lr_quats: float = 0.01
    lr_intensities: float = 0.02
    lr_final_ratio: float = 0.1
    lr_means_final_ratio: float | None = None
    lr_means_horizon: float = 1.0
    intensity_activation: str = "linear"
    loss: str = "relative"
    length_unit: str = "voxel"
    tv_weight: float = 0.0
    views_per_iteration: int | None = None
    coarse_iterations: int = 0
    coarse_mode: str = "bin"
    densify_mode: str = "toolkit"
    densify_from: int = 100
    densify_until: int = 0
    densify_every: int = 100
    densify_fraction: float = 0.05
    grad_threshold: float = 0.0
    split_rule: str = "sample"
    split_offset: float = 0.7
    split_scale: float = 2.0
    prune_intensity: float = 0.005
    prune_scale: float = 0.5
    prune_min_scale: float = 0.0
    max_gaussians: int = 200_000
    min_scale: float = 0.3
    cutoff: float = 3.0
    eval_every: int = 50
    holdout_views: int = 0
    holdout_patience: int = 0
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        self.iterations = nonnegative_count(self.iterations, "iterations")
        for name in ("lr_means", "lr_scales", "lr_quats", "lr_intensities", "lr_final_ratio", "lr_means_horizon", "min_scale", "cutoff"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive, got {v}")
        if self.lr_means_final_ratio is not None and not (math.isfinite(self.lr_means_final_ratio) and self.lr_means_final_ratio > 0):
            raise ValueError(f"lr_means_final_ratio must be positive, got {self.lr_means_final_ratio}")
        for name, allowed in (("intensity_activation", ("linear", "sigmoid")), ("loss", ("relative", "mse")),
                              ("length_unit", ("voxel", "volume")), ("coarse_mode", ("bin", "half")),
                              ("densify_mode", DENSIFY_MODES), ("split_rule", SPLIT_RULES)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.densify_mode == "3dgr-ct" and self.intensity_activation != "sigmoid":
            raise ValueError("densify_mode '3dgr-ct' prunes on sigmoid intensities: it needs intensity_activation='sigmoid'")
        self.coarse_iterations = nonnegative_count(self.coarse_iterations, "coarse_iterations")
        if self.views_per_iteration is not None:
            self.views_per_iteration = positive_count(self.views_per_iteration, "views_per_iteration")
        if not 0 < self.split_offset < 1:
            raise ValueError(f"split_offset must be in (0, 1), got {self.split_offset}")
        if not 0 < self.densify_fraction <= 1:
            raise ValueError(f"densify_fraction must be in (0, 1], got {self.densify_fraction}")
        self.max_gaussians = positive_count(self.max_gaussians, "max_gaussians")
        if self.preset_name not in PRESETS:
            raise ValueError(f"preset_name must be one of {PRESETS}, got {self.preset_name!r}")
        for name in ("densify_until", "holdout_views", "holdout_patience", "checkpoint_every"):
            setattr(self, name, nonnegative_count(getattr(self, name), name))
        if self.densify_until == 0:
            self.densify_until = int(0.6 * self.iterations)
        for name in ("eval_every", "densify_every"):
            setattr(self, name, positive_count(getattr(self, name), name))
        if self.holdout_patience and not self.holdout_views:
            raise ValueError("holdout_patience needs holdout_views > 0 (the patience counts held-out evaluations)")

    @classmethod
    def preset(cls, name: str, iterations: int = 1000, **overrides) -> "GaussianReconConfig":
        """Settings of preset ``name`` (``"toolkit"`` or ``"3dgr-ct"``) for a run of ``iterations``, with
        ``overrides`` replacing single fields (see :func:`preset_config`)."""
        return preset_config(name, iterations, **overrides)




def _published(key: str):
    return THREEDGR_CT[key][0]


def _3dgr_ct(iterations: int) -> dict:
    """3DGR-CT's settings for a run of ``iterations`` (schedules scaled from its 15,000 iterations)."""
    p, n = _published, max(1, iterations)
    scale = n / p("max_iter")
    return {
        "preset_name": "3dgr-ct",
        "lr_means": p("position_lr_init") * p("spatial_lr_scale"),
        "lr_means_final_ratio": p("position_lr_final") / p("position_lr_init"),
        "lr_means_horizon": p("position_lr_max_steps") / p("max_iter"),
        "lr_scales": p("scaling_lr"),
        "lr_quats": p("rotation_lr"),
        "lr_intensities": p("intensity_lr"),
        "lr_final_ratio": 1.0,  # only the position rate is scheduled (GaussianModel.update_learning_rate)
        "intensity_activation": "sigmoid",
        "loss": "mse",
        "length_unit": "volume",
        "tv_weight": p("tv_weight"),
        "coarse_iterations": int(round(p("low_reso_stage") * scale)),
        "coarse_mode": "half",
        "densify_mode": "3dgr-ct",
        "densify_from": p("densify_from_iter"),
        "densify_until": max(1, int(round(p("densify_until_iter") * scale))),
        "densify_every": p("densification_interval"),
        "densify_fraction": 1.0,
        "grad_threshold": p("max_grad"),
        "split_scale": p("percent_dense") * p("sigma_extent"),
        "prune_intensity": p("min_intensity"),
        "prune_scale": 0.0,
        "prune_min_scale": p("prune_min_scale"),
        "max_gaussians": p("max_gaussians"),
        "min_scale": 1e-3,
        "cutoff": p("render_extent_sigmas"),
    }


def _toolkit(iterations: int) -> dict:
    return {"preset_name": "toolkit"}


def sparse_start_growth(budget: int = 20000) -> dict:
    """Toolkit-preset overrides that grow a sparse start (the zero-shot MedGMAE Gaussians: the model's K queries per
    window less those outside the scan or near zero, a few hundred or fewer for a small scan and K = 256) quickly:
    density control every 10 iterations from iteration 10 to 60 % of the run (the preset's ``densify_until``),
    half of the Gaussians cloned or split each round, up to ``budget`` Gaussians (pruning continues after that); a
    run too short for the rounds to reach it ends below the budget.

    Measured in ``bench/RESULTS.md`` (reconstruction study, with the coarse phase the preset then had): on 20-view
    parallel and cone scans the zero-shot start (K = 256 queries) grown this way reaches the best FBP/FDK in 80-100
    iterations (20,000 random Gaussians: 70-180, the FBP-based start: 40-90) and ends within 0.9 dB of the random
    start (above it on full views), where the same start under the standard schedule, or subdivided to the same
    budget, stays behind. Without the coarse phase the K = 1,024 start takes 50-80 iterations, the FBP start 30-60
    ("The coarse phase"); doubling the growth per round changed little.

    Args:
        budget: the number of Gaussians growth stops at.

    Returns:
        Overrides for :func:`preset_config` (``"toolkit"``).
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    return {"densify_from": 10, "densify_every": 10, "densify_fraction": 0.5, "max_gaussians": int(budget)}


def preset_config(name: str, iterations: int = 1000, **overrides) -> GaussianReconConfig:
    """A :class:`GaussianReconConfig` with preset ``name``'s settings for a run of ``iterations``.

    Args:
        name: ``"toolkit"`` or ``"3dgr-ct"``.
        iterations: length of the run (the preset's schedules are scaled to it).
        overrides: fields to replace (any :class:`GaussianReconConfig` field).

    Returns:
        The settings.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    iterations = nonnegative_count(iterations, "iterations")
    known = {f.name for f in fields(GaussianReconConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown reconstruction settings {unknown}")
    values = (_3dgr_ct if name == "3dgr-ct" else _toolkit)(iterations)
    values.update(overrides)
    return GaussianReconConfig(iterations=iterations, **values)


#: The toolkit preset's default budget: one initial Gaussian per this many voxels, at least
#: :data:`TOOLKIT_MIN_GAUSSIANS` (measured in bench/RESULTS.md, "The Gaussian budget against volume size").
TOOLKIT_VOXELS_PER_GAUSSIAN = 8
TOOLKIT_MIN_GAUSSIANS = 20000


def toolkit_budget(num_voxels: int) -> int:
    """The toolkit preset's default number of Gaussians for a volume of ``num_voxels`` voxels: one per
    :data:`TOOLKIT_VOXELS_PER_GAUSSIAN` voxels, at least :data:`TOOLKIT_MIN_GAUSSIANS` (the study's volumes of about
    10^5 voxels keep 20,000; the bundle's 112 x 128 x 160 phantom gets about 290,000)."""
    if num_voxels < 1:
        raise ValueError(f"num_voxels must be >= 1, got {num_voxels}")
    return max(TOOLKIT_MIN_GAUSSIANS, math.ceil(num_voxels / TOOLKIT_VOXELS_PER_GAUSSIAN))


def toolkit_cap(num_gaussians: int) -> dict:
    """Toolkit-preset override of the density-control cap for a start of ``num_gaussians``: ten times the start,
    at least the preset's 200,000 (a start above the cap would never be densified)."""
    return {"max_gaussians": max(GaussianReconConfig.max_gaussians, 10 * int(num_gaussians))}


def preset_init_settings(name: str, num_voxels: int | None = None) -> dict:
    """The initialisation a preset uses by default: ``{"init": method, "num_gaussians": K, ...}``; the toolkit's
    ``K`` is :func:`toolkit_budget` of ``num_voxels`` (:data:`TOOLKIT_MIN_GAUSSIANS` when not given), 3DGR-CT's
    its published 50,000."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    if name == "toolkit":
        return {"init": "fbp", "num_gaussians": TOOLKIT_MIN_GAUSSIANS if num_voxels is None else toolkit_budget(num_voxels)}
    s = THREEDGR_CT_INIT
    return {"init": "3dgr-ct", "num_gaussians": s["num_gaussian"], "start": s["start"], "air_threshold": s["air_threshold"],
            "ini_intensity": s["ini_intensity"], "ini_sigma": s["ini_sigma"], "neighbour_kernel": s["neighbour_kernel"],
            "intensity_offset": s["intensity_offset"]}  # fmt: skip
