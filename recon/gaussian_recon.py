"""3DGR-CT: CT reconstruction with 3D Gaussians.

Each iteration renders the Gaussians into the voxel grid (:func:`medgmae.render.render_volume`), projects the
volume with a differentiable projector and takes an Adam step on the relative projection MSE (optionally plus a
TV term on the volume). Each parameter kind has its own learning rate, decayed exponentially to
``lr_final_ratio`` of its start over the run. Adaptive density control runs every ``densify_every`` iterations
between ``densify_from`` and ``densify_until``: the Gaussians with the largest mean positional-gradient norm are
cloned (small ones, the clone drawn from the Gaussian and both halves at half intensity) or split (large ones: two
children drawn from the Gaussian with scales divided by 1.6), and Gaussians with a negligible intensity or an
oversized scale are pruned. During the first ``coarse_iterations`` the loss compares 2x2-binned projections
(the coarse phase: low spatial frequencies first).

Parameters live in the voxel frame of the reconstruction grid; intensities are optimised in units of
``value_scale`` (a robust maximum of the initial volume) so one set of learning rates fits any attenuation scale.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.gaussians import Gaussians3D
from medgmae.render import render_volume
from recon.metrics import psnr as psnr_fn
from recon.metrics import ssim as ssim_fn
from recon.projectors import Projector

__all__ = ["GaussianReconConfig", "GaussianReconResult", "GaussianReconstructor", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "recon-gaussians"
_PARAMS = ("means", "log_scales", "quats", "intensities")


@dataclass
class GaussianReconConfig:
    """Optimisation settings (learning rates in voxels, log-voxels, quaternion units and ``value_scale`` units).

    Attributes:
        iterations: total iterations.
        lr_means, lr_scales, lr_quats, lr_intensities: Adam learning rates at the start.
        lr_final_ratio: every learning rate decays exponentially to this fraction at the last iteration.
        tv_weight: weight of the anisotropic total variation of the volume (``value_scale`` units), 0 = off.
        views_per_iteration: project a random subset of this many views per iteration (``None``: all views).
        coarse_iterations: length of the coarse phase (2x2-binned projections in the loss).
        densify_from, densify_until, densify_every: the density-control window and period.
        densify_fraction: fraction of the Gaussians (largest mean positional-gradient norm) cloned or split.
        grad_threshold: only Gaussians above this mean positional-gradient norm are densified.
        split_scale: Gaussians whose largest scale exceeds this (voxels) are split, smaller ones cloned.
        prune_intensity: prune ``|intensity| <`` this (``value_scale`` units).
        prune_scale: prune Gaussians whose largest scale exceeds this fraction of the smallest volume side.
        max_gaussians: cap on the number of Gaussians.
        min_scale: lower bound of the scales (voxels).
        cutoff: renderer cutoff (Mahalanobis).
        eval_every: iterations between PSNR/SSIM evaluations (when a reference is given).
        checkpoint_every: iterations between checkpoints (0 = only at the end when a path is set).
        seed: random seed (view subsets and density control).
    """

    iterations: int = 1000
    lr_means: float = 0.05
    lr_scales: float = 0.02
    lr_quats: float = 0.01
    lr_intensities: float = 0.02
    lr_final_ratio: float = 0.1
    tv_weight: float = 0.0
    views_per_iteration: int | None = None
    coarse_iterations: int = 0
    densify_from: int = 100
    densify_until: int = 0
    densify_every: int = 100
    densify_fraction: float = 0.05
    grad_threshold: float = 0.0
    split_scale: float = 2.0
    prune_intensity: float = 0.005
    prune_scale: float = 0.5
    max_gaussians: int = 200_000
    min_scale: float = 0.3
    cutoff: float = 3.0
    eval_every: int = 50
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("lr_means", "lr_scales", "lr_quats", "lr_intensities", "lr_final_ratio"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive, got {v}")
        if self.views_per_iteration is not None and self.views_per_iteration < 1:
            raise ValueError(f"views_per_iteration must be >= 1, got {self.views_per_iteration}")
        if not 0 < self.densify_fraction <= 1:
            raise ValueError(f"densify_fraction must be in (0, 1], got {self.densify_fraction}")
        if self.densify_until == 0:
            self.densify_until = int(0.6 * self.iterations)
        if self.eval_every < 1 or self.densify_every < 1:
            raise ValueError("eval_every and densify_every must be >= 1")


@dataclass
class GaussianReconResult:
    """What a reconstruction returns.

    Attributes:
        gaussians: voxel-frame Gaussians (``B = 1``), intensities in attenuation units.
        volume: ``(D, H, W)`` reconstruction.
        history: per-evaluation records (iteration, loss, number of Gaussians, seconds, PSNR/SSIM if available).
        iterations: iterations run in total.
        seconds: optimisation wall time (this run).
        iterations_to_psnr: first evaluated iteration reaching PSNR 30 and 35 (``None`` if never / no reference).
    """

    gaussians: Gaussians3D
    volume: Tensor
    history: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    iterations_to_psnr: dict = field(default_factory=dict)


class GaussianReconstructor:
    """Fit Gaussians to measured projections.

    Args:
        projector: the differentiable projector of the scan.
        projections: ``(V, rows, cols)`` measured line integrals.
        init: initial Gaussians in the voxel frame of the projector's volume (``B = 1``), attenuation units.
        config: :class:`GaussianReconConfig`.
        reference: optional ``(D, H, W)`` ground truth for PSNR/SSIM.
        device: where to optimise.
    """

    def __init__(
        self,
        projector: Projector,
        projections: Tensor,
        init: Gaussians3D,
        config: GaussianReconConfig | None = None,
        reference: Tensor | None = None,
        device: str | torch.device = "cpu",
    ):
        self.projector, self.config = projector, config or GaussianReconConfig()
        self.geometry = projector.geometry
        self.device = torch.device(device)
        self.geometry.check_projections(tuple(projections.shape))
        if not torch.isfinite(projections).all():
            raise ValueError("projections contain NaN or Inf")
        if init.batch_size != 1 or init.num_gaussians < 1:
            raise ValueError(f"init must hold one set (B=1) of at least one Gaussian, got B={init.batch_size}, K={init.num_gaussians}")
        if reference is not None and tuple(reference.shape) != self.geometry.volume_shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} does not match the volume {self.geometry.volume_shape}")
        self.proj = projections.to(self.device, torch.float32)
        self.reference = None if reference is None else reference.detach().to(torch.float32).cpu()
        inten = init.intensities.detach().float()
        self.value_scale = float(torch.quantile(inten.abs().flatten(), 0.99).clamp_min(1e-12)) if inten.numel() > 1 else float(inten.abs().max().clamp_min(1e-12))
        self.proj_norm = float(self.proj.square().mean().clamp_min(1e-12))
        self.iteration = 0
        self.history: list = []
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self._set_params(init)
        self._build_optimizer()

    # ------------------------------------------------------------------ parameters
    def _set_params(self, g: Gaussians3D) -> None:
        g = g.detach().to(self.device, torch.float32)
        values = {
            "means": g.means[0],
            "log_scales": g.scales[0].clamp_min(self.config.min_scale).log(),
            "quats": F.normalize(g.quats[0], dim=-1),
            "intensities": g.intensities[0] / self.value_scale,
        }
        self.params = {k: torch.nn.Parameter(v.clone().contiguous()) for k, v in values.items()}

    def _build_optimizer(self) -> None:
        c = self.config
        lrs = {"means": c.lr_means, "log_scales": c.lr_scales, "quats": c.lr_quats, "intensities": c.lr_intensities}
        self.optimizer = torch.optim.Adam([{"params": [self.params[k]], "lr": lrs[k], "name": k} for k in _PARAMS], eps=1e-15)
        gamma = c.lr_final_ratio ** (1.0 / max(1, c.iterations))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)
        self._reset_stats()

    def _reset_stats(self) -> None:
        k = self.params["means"].shape[0]
        self.grad_accum = torch.zeros(k, device=self.device)
        self.grad_count = torch.zeros(k, device=self.device)

    def gaussians(self) -> Gaussians3D:
        """Current Gaussians (voxel frame, attenuation units, detached)."""
        p = {k: v.detach() for k, v in self.params.items()}
        return Gaussians3D(
            p["means"][None], p["log_scales"].exp()[None], F.normalize(p["quats"], dim=-1)[None],
            p["intensities"][None] * self.value_scale,
        )  # fmt: skip

    def render(self) -> Tensor:
        """``(D, H, W)`` volume of the current Gaussians, in ``value_scale`` units (differentiable)."""
        p = self.params
        scales = p["log_scales"].exp().clamp_min(self.config.min_scale)
        return render_volume(
            p["means"][None], scales[None], p["quats"][None], p["intensities"][None], self.geometry.volume_shape, self.config.cutoff
        )[0]

    # ------------------------------------------------------------------ optimisation
    def loss(self, volume: Tensor) -> Tensor:
        c = self.config
        views = None
        target = self.proj
        if c.views_per_iteration is not None and c.views_per_iteration < self.geometry.num_views:
            views = torch.randperm(self.geometry.num_views, generator=self.generator)[: c.views_per_iteration].sort().values
            target = self.proj[views.to(self.device)]
        pred = self.projector.forward(volume * self.value_scale, views)
        if self.iteration < c.coarse_iterations:
            pred, target = F.avg_pool2d(pred, 2, ceil_mode=True), F.avg_pool2d(target, 2, ceil_mode=True)
        loss = (pred - target).square().mean() / self.proj_norm
        if c.tv_weight > 0:
            tv = sum((volume.diff(dim=d)).abs().mean() for d in range(3))
            loss = loss + c.tv_weight * tv
        return loss

    def step(self) -> float:
        """One optimisation step; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.render())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {self.iteration}")
        loss.backward()
        with torch.no_grad():
            g = self.params["means"].grad
            if g is not None:
                self.grad_accum += g.norm(dim=-1)
                self.grad_count += 1
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.params["quats"].copy_(F.normalize(self.params["quats"], dim=-1))
            lo = math.log(self.config.min_scale)
            self.params["log_scales"].clamp_(min=lo, max=math.log(max(self.geometry.volume_shape)))
        self.iteration += 1
        return float(loss.detach())

    # ------------------------------------------------------------------ density control
    def _replace(self, keep: Tensor, new: dict[str, Tensor] | None) -> None:
        """Keep rows ``keep`` of every parameter (and their Adam moments) and append ``new`` rows."""
        for group in self.optimizer.param_groups:
            name = group["name"]
            old = group["params"][0]
            state = self.optimizer.state.pop(old, None)
            extra = new[name] if new else old.new_zeros((0, *old.shape[1:]))
            p = torch.nn.Parameter(torch.cat([old.detach()[keep], extra], 0).contiguous())
            if state is not None:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = torch.cat([state[key][keep], torch.zeros_like(extra)], 0)
                self.optimizer.state[p] = state
            group["params"][0] = p
            self.params[name] = p
        self._reset_stats()

    @torch.no_grad()
    def densify_and_prune(self) -> dict:
        """One round of adaptive density control; returns counts of cloned, split and pruned Gaussians."""
        c = self.config
        p = self.params
        k = p["means"].shape[0]
        avg = self.grad_accum / self.grad_count.clamp_min(1)
        scales = p["log_scales"].exp()
        n_pick = min(int(math.ceil(c.densify_fraction * k)), max(0, c.max_gaussians - k))
        chosen = torch.zeros(k, dtype=torch.bool, device=self.device)
        if n_pick > 0:
            top = torch.topk(avg, n_pick).indices
            chosen[top[avg[top] > c.grad_threshold]] = True
        big = scales.max(-1).values > c.split_scale
        clone, split = chosen & ~big, chosen & big
        rot = Gaussians3D(p["means"][None], scales[None], p["quats"][None], p["intensities"][None]).rotation_matrices()[0]

        def sample(mask: Tensor, shrink: float) -> dict[str, Tensor]:
            n = int(mask.sum())
            z = torch.randn(n, 3, generator=self.generator).to(self.device) * scales[mask]
            return {
                "means": p["means"][mask] + (rot[mask] @ z.unsqueeze(-1)).squeeze(-1) * shrink,
                "log_scales": p["log_scales"][mask] - math.log(1.6 if shrink == 1.0 else 1.0),
                "quats": p["quats"][mask],
                "intensities": p["intensities"][mask] * (1.0 if shrink == 1.0 else 0.5),
            }

        new_clone = sample(clone, 0.5)
        new_split = [sample(split, 1.0), sample(split, 1.0)]
        p["intensities"][clone] *= 0.5
        limit = c.prune_scale * min(self.geometry.volume_shape)
        prune = (p["intensities"].abs() < c.prune_intensity) | (scales.max(-1).values > limit) | split
        keep = (~prune).nonzero().squeeze(-1)
        new = {n: torch.cat([new_clone[n], new_split[0][n], new_split[1][n]], 0) for n in _PARAMS}
        if keep.numel() + new["means"].shape[0] == 0:  # never prune everything
            keep = torch.arange(k, device=self.device)
        self._replace(keep, new)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum() - split.sum())}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "iteration": self.iteration,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "value_scale": self.value_scale,
            "history": self.history,
            "generator": self.generator.get_state(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a Gaussian reconstruction checkpoint (kind {state.get('kind') if isinstance(state, dict) else None!r})")
        self.value_scale = float(state["value_scale"])
        self.params = {k: torch.nn.Parameter(v.to(self.device)) for k, v in state["params"].items()}
        self._build_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration, self.history = int(state["iteration"]), list(state["history"])
        self.generator.set_state(state["generator"])

    def save_checkpoint(self, path: str | Path) -> None:
        from medgmae.engine import save_torch_atomic

        save_torch_atomic(self.state_dict(), path)

    # ------------------------------------------------------------------ driver
    @torch.no_grad()
    def evaluate(self, volume: Tensor | None = None, with_ssim: bool = True) -> dict:
        vol = (self.render() if volume is None else volume) * self.value_scale
        if self.reference is None:
            return {}
        out = {"psnr": psnr_fn(vol, self.reference)}
        if with_ssim:
            out["ssim"] = ssim_fn(vol, self.reference)
        return out

    def run(
        self,
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
        ssim_every_eval: bool = True,
        stop_at: int | None = None,
    ) -> GaussianReconResult:
        """Optimise to ``config.iterations`` (continuing from the current iteration after a resume).

        Args:
            checkpoint_path: where to save checkpoints (every ``checkpoint_every`` iterations and at the end).
            progress: show a tqdm bar with the loss (and PSNR/SSIM when a reference is given).
            ssim_every_eval: compute SSIM at every evaluation (PSNR always).
            stop_at: stop after this iteration (default ``config.iterations``); the schedules still follow
                ``config.iterations``, so a later :meth:`run` continues exactly.

        Returns:
            :class:`GaussianReconResult`.
        """
        from tqdm.auto import tqdm

        c = self.config
        t0 = time.perf_counter()
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not progress, desc="3DGR-CT", dynamic_ncols=True)
        postfix: dict = {}
        stop = c.iterations if stop_at is None else min(int(stop_at), c.iterations)
        while self.iteration < stop:
            loss = self.step()
            it = self.iteration
            if c.densify_from <= it <= c.densify_until and it % c.densify_every == 0 and it < c.iterations:
                self.densify_and_prune()
            if it % c.eval_every == 0 or it == stop:
                rec = {"iteration": it, "loss": loss, "num_gaussians": int(self.params["means"].shape[0]), "seconds": time.perf_counter() - t0}
                rec.update(self.evaluate(with_ssim=ssim_every_eval or it == stop))
                self.history.append(rec)
                postfix = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items() if k in ("loss", "psnr", "ssim", "num_gaussians")}
            postfix["loss"] = f"{loss:.4g}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if checkpoint_path is not None and c.checkpoint_every > 0 and it % c.checkpoint_every == 0:
                self.save_checkpoint(checkpoint_path)
        bar.close()
        seconds = time.perf_counter() - t0
        if checkpoint_path is not None:
            self.save_checkpoint(checkpoint_path)
        with torch.no_grad():
            volume = self.render() * self.value_scale
        reached = {}
        for thr in (30, 35):
            hits = [r["iteration"] for r in self.history if r.get("psnr", -math.inf) >= thr]
            reached[str(thr)] = hits[0] if hits else None
        return GaussianReconResult(self.gaussians(), volume.detach(), list(self.history), self.iteration, seconds, reached)
