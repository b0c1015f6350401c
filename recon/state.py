"""A :class:`~recon.gaussian_recon.GaussianReconstructor`'s saved state: what ``recon_state.pt`` holds and how a
reconstructor built for the same scan takes it back.

The state holds every piece of a run (parameters, Adam moments, the iteration that fixes the learning rates, the
generator's state, the density-control statistics and rounds, the history, the held-out views' record, the run's
wall time) as tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``
and a resumed run continues bit for bit.

A state records the version of its layout (``"version"``: :data:`STATE_VERSION`), as a model file records its format
version (:mod:`medgmae.checkpoint_checks`): a state of a newer version, written by a newer release, is refused
(:class:`NewerStateError`) rather than read as this one's; a state without the field (written before it was
recorded: version 0) has this layout and resumes.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from recon.cli_names import RECON_STATE

if TYPE_CHECKING:
    from recon.gaussian_recon import GaussianReconstructor

__all__ = ["CHECKPOINT_KIND", "PARAMS", "RECON_STATE", "STATE_VERSION", "NewerStateError", "check_state",
           "reconstructor_state", "restore_reconstructor"]  # fmt: skip


CHECKPOINT_KIND = "recon-gaussians"
#: The newest state layout this release reads (and writes); a state without a version is version 0, this layout. A
#: number of its own, not the model files' format version (``medgmae.checkpoint_checks.VERSION``): the two layouts
#: change apart, and a new model-file version must not refuse the states of resumable reconstructions, nor the reverse.
STATE_VERSION = 1
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
        "version": STATE_VERSION,
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
        "resumes": rec.resumes,
    }


class NewerStateError(ValueError):
    """A reconstruction state written by a newer release of the toolkit (a version above :data:`STATE_VERSION`); the
    message names the file and says to update the toolkit."""


def check_state(state, path: str | Path | None = None) -> None:
    """Refuse what is not a :func:`reconstructor_state` this release reads (checked as soon as a state is read,
    before any work).

    Args:
        state: what the file held.
        path: the file, as the newer-version refusal names it (``None``: "the reconstruction state").

    Raises:
        NewerStateError: a state of a newer layout version (a ``ValueError``).
        ValueError: not a reconstruction state (naming the kind it holds, e.g. a pre-trained model's
            ``'medgmae'``), or one lacking entries.
    """
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        kind = state.get("kind") if isinstance(state, dict) else None
        raise ValueError(f"not a Gaussian reconstruction checkpoint (kind {kind!r}, not {CHECKPOINT_KIND!r})")
    version = state.get("version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:  # a layout unknown here
        raise NewerStateError(f"{path or 'the reconstruction state'}: written by a newer release of the toolkit "
                              f"(reconstruction state version {version}; this one reads version {STATE_VERSION}): "
                              "update the toolkit to resume it")  # fmt: skip
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing} (written by an older version)")


def restore_reconstructor(rec: GaussianReconstructor, state: dict) -> None:
    """Restore a :func:`reconstructor_state` into ``rec`` (built for the same scan) and record the resume in
    ``rec.resumed``: ``{"iteration", "seconds_before"}``, the latter ``None`` for a state that saved no time (an
    older version), whose run then counts its time from the resume; ``rec.resumes`` lists the earlier resumes the
    state recorded (none in an older version's) and this one.

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
    rec.resumes = [*(dict(r) for r in state.get("resumes", [])), rec.resumed]
    rec.density_rounds = [dict(r) for r in state.get("density_rounds", [])]
    rec._build_optimizer()
    rec.optimizer.load_state_dict(state["optimizer"])
    rec.grad_accum = state["grad_accum"].to(rec.device).clone()
    rec.grad_count = state["grad_count"].to(rec.device).clone()
    rec.generator.set_state(state["generator"])
    rec.last_grad_norm = None
    if rec.holdout is not None:
        rec.holdout.load_state_dict(state["holdout"], rec.device)
