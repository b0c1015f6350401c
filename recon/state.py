"""A :class:`~recon.gaussian_recon.GaussianReconstructor`'s saved state: what ``recon_state.pt`` holds and how a
reconstructor built for the same scan takes it back.

The state holds every piece of a run (parameters, Adam moments, the iteration that fixes the learning rates, the
generator's state, the density-control statistics and rounds, the history, the held-out views' record, the run's
wall time) as tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``
and a resumed run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from recon.cli_names import RECON_STATE

if TYPE_CHECKING:
    from recon.gaussian_recon import GaussianReconstructor

__all__ = ["CHECKPOINT_KIND", "PARAMS", "RECON_STATE", "check_state", "reconstructor_state", "restore_reconstructor"]


CHECKPOINT_KIND = "recon-gaussians"
#: The optimised parameter kinds, in the order of the optimiser's groups.
PARAMS = ("means", "log_scales", "quats", "intensities")
_REQUIRED = ("iteration", "params", "optimizer", "value_scale", "generator", "grad_accum", "grad_count")


def reconstructor_state(rec: GaussianReconstructor) -> dict:
    """Everything a resumed run of ``rec`` needs (``torch.load(..., weights_only=True)``-safe).

    Args:
        rec: the reconstructor.

    Returns:
        The state (``"seconds"``: the optimisation wall time of every iteration so far).
    """
    return {
        "kind": CHECKPOINT_KIND,
        "iteration": rec.iteration,
        "params": {k: v.detach().cpu().clone() for k, v in rec.params.items()},
        "optimizer": rec.optimizer.state_dict(),
        "value_scale": rec.value_scale,
        "history": rec.history,
        "density_rounds": rec.density_rounds,
        "generator": rec.generator.get_state(),
        "grad_accum": rec.grad_accum.detach().cpu().clone(),
        "grad_count": rec.grad_count.detach().cpu().clone(),
        "config": asdict(rec.config),
        "holdout": None if rec.holdout is None else rec.holdout.state_dict(),
        "run_info": rec.run_info,
        "seconds": rec.seconds,
    }


def check_state(state) -> None:
    """Refuse what is not a :func:`reconstructor_state` (checked as soon as a state is read, before any work).

    Raises:
        ValueError: not a reconstruction state (naming the kind it holds, e.g. a pre-trained model's
            ``'medgmae'``), or one lacking entries.
    """
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        kind = state.get("kind") if isinstance(state, dict) else None
        raise ValueError(f"not a Gaussian reconstruction checkpoint (kind {kind!r}, not {CHECKPOINT_KIND!r})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing} (written by an older version: start a new run)")


def restore_reconstructor(rec: GaussianReconstructor, state: dict) -> None:
    """Restore a :func:`reconstructor_state` into ``rec`` (built for the same scan) and record the resume in
    ``rec.resumed``: ``{"iteration", "seconds_before"}``, the latter ``None`` for a state that saved no time (an
    older version), whose run then counts its time from the resume.

    Args:
        rec: the reconstructor.
        state: the saved state.

    Raises:
        ValueError: not a reconstruction state, one lacking entries, or one of a run that did (not) hold out views
            when this one does not (does).
    """
    check_state(state)
    if (state.get("holdout") is None) != (rec.holdout is None):
        raise ValueError(f"the saved run {'held out' if state.get('holdout') else 'did not hold out'} views, this one "
                         f"{'does' if rec.holdout else 'does not'}")  # fmt: skip
    rec.value_scale = float(state["value_scale"])
    rec.params = {k: torch.nn.Parameter(state["params"][k].to(rec.device, torch.float32).clone()) for k in PARAMS}
    rec.iteration, rec.history = int(state["iteration"]), [dict(r) for r in state["history"]]
    rec.seconds = float(state.get("seconds", 0.0))
    rec.resumed = {"iteration": rec.iteration, "seconds_before": state.get("seconds")}
    rec.density_rounds = [dict(r) for r in state.get("density_rounds", [])]
    rec._build_optimizer()
    rec.optimizer.load_state_dict(state["optimizer"])
    rec.grad_accum = state["grad_accum"].to(rec.device).clone()
    rec.grad_count = state["grad_count"].to(rec.device).clone()
    rec.generator.set_state(state["generator"])
    rec.last_grad_norm = None
    if rec.holdout is not None:
        rec.holdout.load_state_dict(state["holdout"], rec.device)
