"""Which parameters AdamW decays (MAE's rule), and a resume of an optimiser saved with every parameter in one group.

MAE pre-trains, and BEiT / MAE fine-tune, with weight decay on the weight matrices and kernels only: biases, norm
weights, the class token, the position embeddings, mask and query tokens are not decayed (timm's
``param_groups_weight_decay``: a parameter of at most one dimension, or one the model names as such). The
pre-training bundles, the GViT phases and fine-tuning's layer-wise groups
(:func:`medgmae.finetune.weights.param_groups`) all take the rule from :func:`no_weight_decay`.

An earlier release gave AdamW every parameter in one group (``network.parameters()``, decayed alike). Its optimiser
state does not load into the groups made here (``load_state_dict`` refuses another number of groups):
:func:`regroup_saved_state` puts each saved parameter's state onto the same parameter in this run's groups.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from medgmae.distributed import rank_world
from medgmae.engine.devices import unwrap_model

__all__ = ["NO_DECAY_TOKENS", "no_weight_decay", "decay_groups", "regroup_saved_state"]

logger = logging.getLogger(__name__)

#: Names (the last part of a parameter's name) of the token and embedding tensors of the toolkit's networks, which
#: have two or more dimensions but are not weight matrices: the ViT's ``cls_token`` and ``position_embeddings``, the
#: voxel-MAE's ``mask_token``, the learned ``query_tokens`` of MedGMAE and the 2D GMAE, MedGMAE*'s per-level
#: ``child_embed``, and the GViT encoder's ``queries`` and Gaussian ``gaussian_type`` embedding.
NO_DECAY_TOKENS = ("cls_token", "position_embeddings", "mask_token", "query_tokens", "child_embed", "queries",
                   "gaussian_type")  # fmt: skip


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether AdamW leaves ``param`` undecayed (MAE's rule): a bias or norm weight (at most one dimension), or a
    token or embedding (:data:`NO_DECAY_TOKENS`).

    Args:
        name: the parameter's name in its network (``"encoder.blocks.0.norm1.weight"``).
        param: the parameter, of any shape.

    Returns:
        ``True`` for no decay.
    """
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_TOKENS


def decay_groups(network: nn.Module | Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW parameter groups under MAE's rule: the decayed parameters, then those :func:`no_weight_decay` exempts.

    Every parameter is in one group, frozen ones too (an optimiser skips a parameter without a gradient), each group
    in the network's parameter order; an empty group is left out.

    Args:
        network: the network (a DDP wrapper is unwrapped), or ``(name, parameter)`` pairs (a phase's parameters).
        weight_decay: decay of the weight matrices (>= 0).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``, for any
        ``torch.optim`` optimiser (which takes ``lr`` and the rest from its own arguments).
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    named = unwrap_model(network).named_parameters() if isinstance(network, nn.Module) else network
    decayed, exempt = [], []
    for name, param in named:
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"network must give (name, parameter) pairs, got {type(param).__name__} for {name!r}")
        (exempt if no_weight_decay(name, param) else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": float(weight_decay)}, {"params": exempt, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def regroup_saved_state(optimizer: torch.optim.Optimizer, modules: Sequence[nn.Module], state: Mapping,
                        source: str = "the checkpoint") -> Mapping:
    """An optimiser state saved with one parameter group, put onto ``optimizer``'s groups; any other state unchanged.

    A checkpoint of the earlier release holds one group over a network's parameters in their order. When this run's
    ``optimizer`` has several groups over the same parameters, the saved parameter ``i`` is the ``i``-th parameter of
    the network (of ``modules``) that ``optimizer`` holds: its Adam state (``exp_avg``, ``exp_avg_sq``, ``step``)
    goes to that parameter, and every group takes the saved group's settings (``lr``, ``initial_lr``, betas, ...),
    ``weight_decay`` except where the group has none (MAE's rule). Any other mismatch is left to
    ``load_state_dict``, which refuses it as before.

    Args:
        optimizer: this run's optimiser.
        modules: the networks among the checkpoint's objects (DDP wrappers are unwrapped).
        state: the saved ``optimizer.state_dict()``.
        source: the checkpoint, as the log line names it.

    Returns:
        The state to load: ``state`` itself unless it is such a single group.
    """
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    current = [p for g in optimizer.param_groups for p in g["params"]]
    if not (isinstance(groups, list) and len(groups) == 1 and len(optimizer.param_groups) > 1
            and len(groups[0].get("params", ())) == len(current)):  # fmt: skip
        return state
    order = _saved_order(current, modules)
    saved_states = state.get("state", {})
    if order is None or not _shapes_fit(order, groups[0]["params"], saved_states):
        return state
    index = {id(p): i for i, p in enumerate(current)}
    hyper = {k: v for k, v in groups[0].items() if k != "params"}
    regrouped = [{**hyper, "weight_decay": hyper.get("weight_decay", g["weight_decay"]) if g["weight_decay"] else 0.0,
                  "params": [index[id(p)] for p in g["params"]]} for g in optimizer.param_groups]  # fmt: skip
    moved = {index[id(p)]: saved_states[i] for p, i in zip(order, groups[0]["params"]) if i in saved_states}
    if rank_world()[0] == 0:
        logger.info("%s: its optimiser decayed every parameter (one group, the earlier release's rule): from here on "
                    "biases, norms and tokens are not decayed (MAE's rule); each parameter keeps its AdamW state", source)  # fmt: skip
    return {"state": moved, "param_groups": regrouped}


def _saved_order(current: list[torch.Tensor], modules: Sequence[nn.Module]) -> list[torch.Tensor] | None:
    """``current``'s parameters in the order of the first of ``modules`` that holds them all (the order an optimiser
    over its ``parameters()``, or a phase's modules in the network's order, saved them), ``None`` if none does."""
    held = {id(p) for p in current}
    for module in modules:
        order = [p for p in unwrap_model(module).parameters() if id(p) in held]
        if len(order) == len(current):
            return order
    return None


def _shapes_fit(order: list[torch.Tensor], ids: list[Any], saved_states: Mapping) -> bool:
    """Whether every saved moment has the shape of the parameter it goes to (else the state is another network's)."""
    for param, i in zip(order, ids):
        for key in ("exp_avg", "exp_avg_sq"):
            saved = saved_states.get(i, {}).get(key)
            if isinstance(saved, torch.Tensor) and saved.shape != param.shape:
                return False
    return True
