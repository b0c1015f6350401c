"""Gaussian CT reconstruction (3DGR-CT-style): fit 3D Gaussians to measured projections.

Each iteration renders the Gaussians into the voxel grid (:func:`medgmae.render.render_volume`), projects the
volume with a differentiable projector and takes an Adam step on a projection MSE (optionally plus a TV term on
the volume). Each parameter kind has its own learning rate with a log-linear decay (see
:class:`GaussianReconConfig`). Adaptive density control (:mod:`recon.density`; the count it leads to and the time
left as it grows: :mod:`recon.growth`) runs every ``densify_every`` iterations from ``densify_from`` to
``densify_until``. The first ``coarse_iterations`` work at half resolution (low spatial frequencies first). With
``holdout_views`` a few views stay out of the loss and choose the Gaussians returned (:mod:`recon.holdout`).
Presets (:mod:`recon.presets`): the toolkit's defaults and SigmaLDC/3DGR-CT's published settings.

Parameters live in the voxel frame of the reconstruction grid; intensities are optimised in units of
``value_scale`` (a robust maximum of the initial volume unless given) so one set of learning rates fits any
attenuation scale. With ``intensity_activation="sigmoid"`` the intensity parameters are logits.

Checkpoints (:meth:`GaussianReconstructor.state_dict`, :mod:`recon.state`) hold every piece of state, so they load
with ``torch.load(..., weights_only=True)`` and a resumed run continues bit for bit. The reconstructor draws random
numbers only from its own generator.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae import terminal
from medgmae.gaussians import Gaussians3D
from medgmae.render import render_volume
from recon.growth import RunPace, progress_bar, round_due
from recon.metrics import psnr as psnr_fn, ssim as ssim_fn
from recon.presets import GaussianReconConfig
from recon.projectors import Projector
from recon.reconstructor_inputs import checked_inputs
from recon.result import GaussianReconResult
from recon.state import CHECKPOINT_KIND, PARAMS as _PARAMS, reconstructor_state, restore_reconstructor

__all__ = ["GaussianReconConfig", "GaussianReconResult", "GaussianReconstructor", "CHECKPOINT_KIND"]


class GaussianReconstructor:
    """Fit Gaussians to measured projections.

    Args:
        projector: the differentiable projector of the scan.
        projections: ``(V, rows, cols)`` measured line integrals of one scan (a tensor or NumPy array); other ranks,
            a batch ``(B, V, rows, cols)`` included, are refused.
        init: initial Gaussians in the voxel frame of the projector's volume (``B = 1``; centres in voxel indices
            ``(z, y, x)``), attenuation units. With held-out views, derive it from the fitted views only (e.g. their
            FBP), or the held-out error is biased. A start none of whose centres lies in the volume is refused, one
            with more than 5 % outside it warned about (:mod:`recon.reconstructor_inputs`).
        config: :class:`GaussianReconConfig`.
        reference: optional ``(D, H, W)`` ground truth for PSNR/SSIM (a tensor or NumPy array), attenuation (1/mm).
        device: where to optimise.
        value_scale: the intensity unit (attenuation); default the 99th percentile of the initial intensities
            (``|init|``). With sigmoid intensities, the initial intensities are clamped into ``(0, value_scale)``
            (to ``[1e-6, 1 - 1e-6]`` of it). :meth:`render` returns volumes in this unit; the result's ``volume``
            is in attenuation (1/mm).
        unit_check: refuse a ``reference`` whose range is that of a CT in HU (the CLI's ``--no-unit-check`` skips it).
    """

    def __init__(
        self,
        projector: Projector,
        projections: Tensor,
        init: Gaussians3D,
        config: GaussianReconConfig | None = None,
        reference: Tensor | None = None,
        device: str | torch.device = "cpu",
        value_scale: float | None = None,
        unit_check: bool = True,
    ):
        if config is not None and not isinstance(config, GaussianReconConfig):
            raise TypeError(f"config must be a GaussianReconConfig, got {type(config).__name__}: build one with "
                            "GaussianReconConfig.preset(name, iterations, **fields) or GaussianReconConfig(**fields)")
        self.projector, self.config = projector, config or GaussianReconConfig()
        self.geometry = projector.geometry
        projections, reference, self.device = checked_inputs(self.geometry, projections, init, reference, device, unit_check)
        if value_scale is not None and not (math.isfinite(value_scale) and value_scale > 0):
            raise ValueError(f"value_scale must be positive, got {value_scale}")
        self.proj = projections.to(self.device, torch.float32)
        self.reference = None if reference is None else reference.detach().to(torch.float32).cpu()
        inten = init.intensities.detach().float()
        if value_scale is None:
            q = torch.quantile(inten.abs().flatten(), 0.99) if inten.numel() > 1 else inten.abs().max()
            value_scale = float(q.clamp_min(1e-12))
        self.value_scale = float(value_scale)
        self.length = float(max(self.geometry.volume_shape)) if self.config.length_unit == "volume" else 1.0
        self.iteration = 0
        self.history: list = []
        self.density_rounds: list = []  # {"iteration", "cloned", "split", "pruned", "num_gaussians"} per round
        self.last_grad_norm: Tensor | None = None
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self._coarse = None
        if self.config.coarse_mode == "half" and self.config.coarse_iterations > 0:
            from recon.coarse import HalfResolutionStage

            self._coarse = HalfResolutionStage(self.geometry, self.projector.name, self.proj)
        self.seconds = 0.0  # optimisation wall time of the iterations so far (earlier runs resumed included)
        self.resumed: dict | None = None  # after load_state_dict: {"iteration", "seconds_before"} (recon.state)
        self.resumes: list[dict] = []  # every resume of the run, the earlier ones' from the state, this one last
        self.run_info: dict = {}  # what the caller records about the run (scan, settings); saved with the state
        self.holdout = None
        if self.config.holdout_views:
            from recon.holdout import HeldOutViews, direction_period

            self.holdout = HeldOutViews(self.geometry.angles, self.config.holdout_views, self.config.holdout_patience,
                                        direction_period(self.geometry))  # fmt: skip
        fitted = self.proj if self.holdout is None else self.proj[self.holdout.fit.to(self.device)]
        self.proj_norm = float(fitted.square().mean().clamp_min(1e-12))  # of the fitted views only
        self._set_params(init)
        self._build_optimizer()

    # ------------------------------------------------------------------ parameters
    def _set_params(self, g: Gaussians3D) -> None:
        g = g.detach().to(self.device, torch.float32)
        inten = g.intensities[0] / self.value_scale
        if self.config.intensity_activation == "sigmoid":
            inten = torch.logit(inten.clamp(1e-6, 1 - 1e-6))
        values = {
            "means": g.means[0],
            "log_scales": g.scales[0].clamp_min(self.config.min_scale).log(),
            "quats": F.normalize(g.quats[0], dim=-1),
            "intensities": inten,
        }
        self.params = {k: torch.nn.Parameter(v.clone().contiguous()) for k, v in values.items()}

    def _base_lrs(self) -> dict[str, float]:
        c = self.config
        return {"means": c.lr_means * self.length, "log_scales": c.lr_scales, "quats": c.lr_quats, "intensities": c.lr_intensities}

    def learning_rates(self, iteration: int) -> dict[str, float]:
        """Learning rates of the step taken at ``iteration`` (log-linear decay, a function of the iteration only)."""
        c = self.config
        n = max(1, c.iterations)
        out = {}
        for name, lr in self._base_lrs().items():
            ratio, horizon = c.lr_final_ratio, 1.0
            if name == "means":
                ratio = c.lr_means_final_ratio if c.lr_means_final_ratio is not None else c.lr_final_ratio
                horizon = c.lr_means_horizon
            t = min(1.0, iteration / (horizon * n))
            out[name] = math.exp(math.log(lr) * (1.0 - t) + math.log(lr * ratio) * t)
        return out

    def _build_optimizer(self) -> None:
        lrs = self.learning_rates(self.iteration)
        self.optimizer = torch.optim.Adam([{"params": [self.params[k]], "lr": lrs[k], "name": k} for k in _PARAMS], eps=1e-15)
        self._reset_stats()

    def _reset_stats(self) -> None:
        k = self.params["means"].shape[0]
        self.grad_accum = torch.zeros(k, device=self.device)
        self.grad_count = torch.zeros(k, device=self.device)

    @property
    def num_gaussians(self) -> int:
        """The number of Gaussians now."""
        return int(self.params["means"].shape[0])

    def activated_intensities(self, params: dict[str, Tensor] | None = None) -> Tensor:
        """``(K,)`` intensities in ``value_scale`` units (after the activation; differentiable) of ``params``
        (default: the current parameters)."""
        x = (self.params if params is None else params)["intensities"]
        return torch.sigmoid(x) if self.config.intensity_activation == "sigmoid" else x

    def gaussians(self, params: dict[str, Tensor] | None = None) -> Gaussians3D:
        """The Gaussians of ``params`` (default: the current ones; voxel frame, attenuation units, detached)."""
        p = {k: v.detach() for k, v in (self.params if params is None else params).items()}
        return Gaussians3D(
            p["means"][None], p["log_scales"].exp()[None], F.normalize(p["quats"], dim=-1)[None],
            self.activated_intensities(p).detach()[None] * self.value_scale,
        )  # fmt: skip

    def render(self, params: dict[str, Tensor] | None = None) -> Tensor:
        """``(D, H, W)`` volume of ``params`` (default: the current parameters), in ``value_scale`` units
        (differentiable)."""
        p = self.params if params is None else params
        scales = p["log_scales"].exp().clamp_min(self.config.min_scale)
        return render_volume(
            p["means"][None], scales[None], p["quats"][None], self.activated_intensities(p)[None], self.geometry.volume_shape, self.config.cutoff
        )[0]

    def render_coarse(self) -> Tensor:
        """The Gaussians rendered on the half-resolution grid of the coarse phase (``value_scale`` units)."""
        p = self.params
        return self._coarse.render(p["means"], p["log_scales"].exp(), p["quats"], self.activated_intensities(), self.config.min_scale, self.config.cutoff)

    # ------------------------------------------------------------------ optimisation
    def loss(self, volume: Tensor, coarse: bool = False) -> Tensor:
        """Projection loss of ``volume`` (``value_scale`` units; the half-resolution volume when ``coarse``)."""
        c = self.config
        views = None if self.holdout is None else self.holdout.fit
        fitted = self.geometry.num_views if views is None else len(views)
        projector, target = (self._coarse.projector, self._coarse.proj) if coarse else (self.projector, self.proj)
        if c.views_per_iteration is not None and c.views_per_iteration < fitted:
            pick = torch.randperm(fitted, generator=self.generator)[: c.views_per_iteration].sort().values
            views = pick if views is None else views[pick]
        if views is not None:
            target = target[views.to(self.device)]
        pred = projector.forward(volume * self.value_scale, views)
        if self.iteration < c.coarse_iterations and c.coarse_mode == "bin":
            pred, target = F.avg_pool2d(pred, 2, ceil_mode=True), F.avg_pool2d(target, 2, ceil_mode=True)
        if c.loss == "relative":
            loss = (pred - target).square().mean() / self.proj_norm
        else:
            loss = ((pred - target) / self.value_scale).square().mean()
        if c.tv_weight > 0:
            tv = sum((volume.diff(dim=d)).abs().mean() for d in range(3))
            loss = loss + c.tv_weight * tv
        return loss

    def step(self) -> float:
        """One optimisation step; returns the loss."""
        self.start_step()
        coarse = self._coarse is not None and self.iteration < self.config.coarse_iterations
        loss = self.loss(self.render_coarse(), coarse=True) if coarse else self.loss(self.render())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {self.iteration}")
        loss.backward()
        self.finish_step()
        return float(loss.detach())

    def start_step(self) -> None:
        """The first part of :meth:`step`: this iteration's learning rates, gradients cleared."""
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates(self.iteration).values()):
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)

    def finish_step(self) -> None:
        """The last part of :meth:`step`, after the backward pass: densification statistics, the Adam step, the
        quaternions normalised and the scales clamped, the iteration counted."""
        with torch.no_grad():
            g = self.params["means"].grad
            norm = g.norm(dim=-1) if g is not None else torch.zeros_like(self.grad_accum)
            self.grad_accum += norm
            self.grad_count += 1
            self.last_grad_norm = norm
        self.optimizer.step()
        with torch.no_grad():
            self.params["quats"].copy_(F.normalize(self.params["quats"], dim=-1))
            lo = math.log(self.config.min_scale)
            self.params["log_scales"].clamp_(min=lo, max=math.log(max(self.geometry.volume_shape)))
        self.iteration += 1

    # ------------------------------------------------------------------ density control
    def _densify_if_due(self) -> None:
        """Density control after the current iteration when :func:`recon.growth.round_due` says so, recorded."""
        if round_due(self.config, it := self.iteration):
            self.density_rounds.append({"iteration": it, **self.densify_and_prune(), "num_gaussians": self.num_gaussians})

    def densify_and_prune(self) -> dict:
        """One round of adaptive density control (:mod:`recon.density`); returns counts of cloned, split and
        pruned Gaussians."""
        from recon.density import densify_3dgr_ct, densify_toolkit

        return (densify_3dgr_ct if self.config.densify_mode == "3dgr-ct" else densify_toolkit)(self)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs (:func:`recon.state.reconstructor_state`)."""
        return reconstructor_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the reconstructor must have been built for the same scan;
        :func:`recon.state.restore_reconstructor`)."""
        restore_reconstructor(self, state)

    def _save_if_due(self, path: str | Path | None, t0: float) -> None:
        """Save to ``path`` (when given) every ``checkpoint_every`` iterations, the time so far counted from ``t0``."""
        every = self.config.checkpoint_every
        if path is not None and every > 0 and self.iteration % every == 0:
            self.seconds = time.perf_counter() - t0
            self.save_checkpoint(path)

    def save_checkpoint(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically."""
        from medgmae.torch_files import save_torch_atomic

        save_torch_atomic(self.state_dict(), path)

    # ------------------------------------------------------------------ driver
    @torch.no_grad()
    def evaluate(self, volume: Tensor | None = None, with_ssim: bool = True) -> dict:
        """PSNR (and SSIM) of ``volume`` (default: the current rendering; ``value_scale`` units) against the
        reference; ``{}`` without one."""
        if self.reference is None:
            return {}
        vol = (self.render() if volume is None else volume) * self.value_scale
        out = {"psnr": psnr_fn(vol, self.reference)}
        if with_ssim:
            out["ssim"] = ssim_fn(vol, self.reference)
        return out

    def run(
        self,
        checkpoint_path: str | Path | None = None,
        progress: bool | str = True,
        ssim_every_eval: bool = True,
        stop_at: int | None = None,
    ) -> GaussianReconResult:
        """Optimise to ``config.iterations`` (continuing from the current iteration after a resume).

        Args:
            checkpoint_path: where to save checkpoints (every ``checkpoint_every`` iterations and at the end).
            progress: ``True``: a tqdm bar with the loss (and PSNR/SSIM when a reference is given) and the time left
                of :class:`recon.growth.RunPace` (:func:`recon.growth.progress_bar`), or, where no bar
                can be drawn (a captured log: :func:`medgmae.terminal.progress_bars_shown`), one printed line per
                evaluation; ``"lines"``: those lines in any case; ``False``: nothing.
            ssim_every_eval: compute SSIM at every evaluation (PSNR always).
            stop_at: stop after this iteration (default ``config.iterations``); the schedules still follow
                ``config.iterations``, so a later :meth:`run` continues exactly (the history holds the evaluations
                every ``eval_every`` iterations and at ``config.iterations``, as an uninterrupted run's).

        With held-out views (``config.holdout_views``) every evaluation records ``holdout_error``, the run stops
        early when ``config.holdout_patience`` evaluations in a row did not improve on the best, and the result
        holds the Gaussians of the best evaluation (the checkpoint keeps the current state and the best).

        Returns:
            :class:`GaussianReconResult`.
        """
        c = self.config
        t0 = time.perf_counter() - self.seconds  # the history's seconds continue those of the runs before
        stop = c.iterations if stop_at is None else min(int(stop_at), c.iterations)
        half = self._coarse is not None  # the half-resolution stage ("bin": full-resolution volumes, binned data)
        coarse_end = c.coarse_iterations if half and self.iteration < c.coarse_iterations < stop else 0
        pace = RunPace(self.iteration, coarse_end or stop, c, self.num_gaussians, c.eval_every,
                       stage=" of the half-resolution stage" if coarse_end else "")  # the stage: its own pace
        lines, bar = progress_bar(c, self.iteration, progress, lambda n: pace.left(n))  # the pace then in use
        with bar:  # closed on Ctrl-C too, so that the interruption's message starts on a line of its own
            postfix: dict = {}
            while self.iteration < stop and not (self.holdout is not None and self.holdout.stopped):
                loss = self.step()
                it = self.iteration
                self._densify_if_due()
                line, shown = self._progress_line(loss, time.perf_counter() - t0, pace.quiet_for(), ssim_every_eval)
                pace.record(it, self.num_gaussians)  # the time left follows the count (recon.growth)
                if lines and line is not None:
                    print(f"iteration {it}/{c.iterations}: {line} ({time.perf_counter() - t0:.0f} s{pace.left(it)})", flush=True)
                    pace.said()
                if it == coarse_end:  # full resolution from here: its own pace
                    pace = RunPace(it, stop, c, self.num_gaussians, c.eval_every)
                postfix = {**(postfix if shown is None else shown), "loss": f"{loss:.4g}"}  # the last evaluation's
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                self._save_if_due(checkpoint_path, t0)
        self.seconds = time.perf_counter() - t0
        if checkpoint_path is not None:  # always at the end (also with checkpoint_every = 0)
            self.save_checkpoint(checkpoint_path)
        return self._result(self.seconds)

    def _progress_line(self, loss: float, seconds: float, quiet: float, ssim_every_eval: bool) -> tuple[str | None, dict | None]:
        """``(line, bar values)`` after the current iteration: its evaluation when one is due (recorded in the
        history), else the loss alone after ``quiet`` seconds without a line (a log hears from a slow run between
        evaluations too, after :data:`medgmae.terminal.LINE_SECONDS`; no bar values), else ``(None, None)``."""
        c, it = self.config, self.iteration
        if it % c.eval_every == 0 or it == c.iterations:
            rec = self._record(loss, seconds, with_ssim=ssim_every_eval or it == c.iterations)
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items() if k in ("loss", "psnr", "ssim", "num_gaussians", "holdout_error")}
            return ", ".join(f"{k} {v}" for k, v in shown.items()), shown
        return (f"loss {loss:.4g}" if quiet >= terminal.LINE_SECONDS else None), None

    def _record(self, loss: float, seconds: float, with_ssim: bool) -> dict:
        """The evaluation of the current iteration, appended to the history (the held-out error recorded too)."""
        rec = {"iteration": self.iteration, "loss": loss, "num_gaussians": self.num_gaussians, "seconds": seconds}
        with torch.no_grad():
            volume = self.render() if self.holdout is not None or self.reference is not None else None
        rec.update(self.evaluate(volume, with_ssim=with_ssim))
        if self.holdout is not None:
            rec["holdout_error"] = self.holdout.error(self.projector, self.proj, volume * self.value_scale, self.proj_norm)
            self.holdout.update(self.iteration, rec["holdout_error"], self.params)
        self.history.append(rec)
        return rec

    def _result(self, seconds: float) -> GaussianReconResult:
        """The result of :meth:`run`: the current Gaussians, or with held-out views those of the best evaluation."""
        chosen = None if self.holdout is None else self.holdout.best_params
        with torch.no_grad():
            volume = self.render(chosen) * self.value_scale
        hits = {thr: [r["iteration"] for r in self.history if r.get("psnr", -math.inf) >= thr] for thr in (30, 35)}
        reached = {str(thr): (h[0] if h else None) for thr, h in hits.items()}
        best = None if chosen is None else self.holdout.best_iteration
        return GaussianReconResult(self.gaussians(chosen), volume.detach(), list(self.history), self.iteration, seconds, reached, best,
                                   list(self.density_rounds))  # fmt: skip

