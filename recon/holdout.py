"""Held-out views: when to stop a reconstruction that has no reference.

On noisy, sparse scans the Gaussians first approach the object and then fit the noise: in the reconstruction
study of ``bench/RESULTS.md`` the best starts peak at iteration 180-340 on 20-view scans and lose 1.0-2.3 dB by
iteration 600. A real scan has no ground truth to find the peak with, but it has views. A few views, spread evenly
over the arc, are left out of the loss; every evaluation measures how well the current Gaussians predict them,
and the reconstruction keeps the Gaussians of the evaluation that predicted them best (and, with a patience,
stops once that many evaluations have not improved on it). This is novel-view validation as in radiance-field
reconstruction, or hold-out cross-validation of the iteration count in iterative CT; it costs the held-out views'
information in the fit (measured in ``bench/RESULTS.md``).

Nothing here is a library's: MONAI's early-stopping handler works on ignite engines and metrics, the
reconstruction loop is a plain loop over a projector; the bookkeeping is a few numbers and one copy of the
parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["HeldOutViews", "direction_period", "fitted_views_fbp", "holdout_split"]


def direction_period(geometry) -> float:
    """The angle after which a scan's views look along the same lines again: 180 degrees, or 360 for a half-fan scan
    (:attr:`~recon.geometry.CTGeometry.half_fan`), whose opposite views see opposite halves of the object."""
    return 2 * math.pi if geometry.half_fan else math.pi


def holdout_split(angles, holdout: int, period: float = math.pi) -> tuple[Tensor, Tensor]:
    """Split view indices into fitted and held-out views, the held-out views spread evenly over the directions.

    A view's direction is its angle modulo ``period``, 180 degrees (:func:`direction_period`): on a 360-degree scan
    views ``i`` and ``i + N / 2`` see the object along the same lines, so holding out both would leave that direction
    out of the fit altogether (a half-fan scan's opposite views see different halves: its period is 360). The
    views are ordered by direction (stable: by index among equal directions) and held-out view ``i``
    (``0 <= i < holdout``) is the one at position ``floor((i + 0.5) * N / holdout)`` of that order: the middle view
    of the ``i``-th of ``holdout`` equal stretches of the directions covered. On a 180-degree scan that is view
    ``floor((i + 0.5) * N / holdout)``.

    Args:
        angles: the scan's view angles in radians (``CTGeometry.angles``), ``N`` of them.
        holdout: views to hold out, ``1 <= holdout <= N // 2`` (at least as many views fitted as held out).
        period: the directions' period in radians, ``pi`` or ``2 pi``.

    Returns:
        ``(fit, held_out)``: sorted ``int64`` index tensors, disjoint, together every view.
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    n = len(a)
    if n < 2 or not 1 <= holdout <= n // 2:
        raise ValueError(f"holdout views must be between 1 and half of the {n} views ({n // 2}), got {holdout}")
    direction = np.round(np.mod(a, period), 9) % period  # 180 (360) degrees is direction 0, not just below it
    order = np.argsort(direction, kind="stable")
    held = torch.from_numpy(np.sort(order[[int((i + 0.5) * n / holdout) for i in range(holdout)]])).to(torch.int64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return torch.arange(n)[mask], held


def fitted_views_fbp(projections: Tensor, geometry, holdout: int, filter_name: str = "hann") -> Tensor:
    """FBP / FDK of the views :func:`holdout_split` keeps in the fit: the start of a reconstruction whose held-out
    error must not have seen the held-out views.

    Args:
        projections: ``(V, rows, cols)`` every measured view.
        geometry: the scan's :class:`~recon.geometry.CTGeometry`.
        holdout: views held out.
        filter_name: the FBP filter.

    Returns:
        ``(D, H, W)`` attenuation volume.
    """
    from recon.fbp import fbp

    fit = holdout_split(geometry.angles, holdout, direction_period(geometry))[0]
    return fbp(projections[fit.to(projections.device)], geometry.select_views(fit.tolist()), filter_name)


class HeldOutViews:
    """The held-out views of a reconstruction and the best state seen on them.

    Args:
        angles: the scan's view angles in radians.
        holdout: views to hold out (see :func:`holdout_split`).
        period: the directions' period (:func:`direction_period`).
        patience: stop after this many evaluations in a row without a lower held-out error (0: never stop early;
            the best state is kept in any case).

    Attributes:
        fit, held_out: index tensors of the fitted and held-out views.
        best_error: the lowest held-out error seen (``inf`` before the first evaluation).
        best_iteration: the iteration it was seen at (``-1`` before).
        best_params: a copy of the parameters at that iteration (``None`` before).
        waiting: evaluations since the best one.
        stopped: whether the patience ran out.
    """

    def __init__(self, angles, holdout: int, patience: int = 0, period: float = math.pi):
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.fit, self.held_out = holdout_split(angles, holdout, period)
        self.patience = int(patience)
        self.best_error, self.best_iteration = math.inf, -1
        self.best_params: dict[str, Tensor] | None = None
        self.waiting, self.stopped = 0, False

    def update(self, iteration: int, error: float, params: dict[str, Tensor]) -> bool:
        """Record the held-out ``error`` of ``params`` at ``iteration``; returns whether it is the best so far."""
        if not math.isfinite(error):
            raise FloatingPointError(f"non-finite held-out error at iteration {iteration}")
        if error < self.best_error:
            self.best_error, self.best_iteration, self.waiting = float(error), int(iteration), 0
            self.best_params = {k: v.detach().clone() for k, v in params.items()}
            return True
        self.waiting += 1
        self.stopped = self.patience > 0 and self.waiting >= self.patience
        return False

    @torch.no_grad()
    def error(self, projector, projections: Tensor, volume: Tensor, norm: float) -> float:
        """Relative projection error of ``volume`` on the held-out views: the mean square error over their pixels
        divided by ``norm`` (the reconstruction passes the mean square of the fitted views' measurements).

        Args:
            projector: the scan's :class:`~recon.projectors.Projector`.
            projections: ``(V, rows, cols)`` every measured view.
            volume: ``(D, H, W)`` attenuation volume.
            norm: the divisor.
        """
        pred = projector.forward(volume, self.held_out)
        return float((pred - projections[self.held_out.to(projections.device)]).square().mean() / norm)

    def summary(self) -> dict:
        """What ``metrics.json`` records: the held-out views and the chosen iteration."""
        return {"views": self.held_out.tolist(), "patience": self.patience, "best_iteration": self.best_iteration,
                "best_error": self.best_error, "stopped_early": self.stopped}  # fmt: skip

    def state_dict(self) -> dict:
        """Everything a resumed run needs (``torch.load(..., weights_only=True)``-safe)."""
        best = None if self.best_params is None else {k: v.cpu().clone() for k, v in self.best_params.items()}
        return {"held_out": self.held_out.clone(), "patience": self.patience, "best_error": self.best_error,
                "best_iteration": self.best_iteration, "best_params": best, "waiting": self.waiting, "stopped": self.stopped}  # fmt: skip

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore a :meth:`state_dict` written for the same held-out views and patience."""
        if not torch.equal(state["held_out"].cpu(), self.held_out) or int(state["patience"]) != self.patience:
            raise ValueError(f"the saved run held out views {state['held_out'].tolist()} with patience {state['patience']}, "
                             f"this one {self.held_out.tolist()} with patience {self.patience}")  # fmt: skip
        self.best_error, self.best_iteration = float(state["best_error"]), int(state["best_iteration"])
        best = state["best_params"]
        self.best_params = None if best is None else {k: v.to(device).clone() for k, v in best.items()}
        self.waiting, self.stopped = int(state["waiting"]), bool(state["stopped"])
