"""Every random number generator a training run draws from, as a ``state_dict``-able snapshot for checkpoints.

MONAI's random transforms each keep a private NumPy ``RandomState`` besides Python's, NumPy's and torch's global
generators; :class:`RandomStateTracker` saves and restores all of them, so that a resumed run draws the same crops
and masks as an uninterrupted one, and gives a rank that a checkpoint lacks (a run resumed with more processes)
seeds of its own.
"""

from __future__ import annotations

import logging
import random
import zlib
from typing import Any, Mapping

import numpy as np
import torch
from monai.transforms import Compose, Randomizable

from medgmae.distributed import is_main_process

__all__ = ["RandomStateTracker", "randomizables"]

logger = logging.getLogger("medgmae.engine")


def _numpy_state_to_plain(state: tuple) -> dict:
    """A NumPy ``RandomState.get_state()`` tuple as plain data (keys as a tensor), so that checkpoints load with
    ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _plain_to_numpy_state(d: Mapping) -> tuple:
    """The inverse of :func:`_numpy_state_to_plain`."""
    return (d["name"], np.asarray(d["keys"].numpy(), dtype=np.uint32), int(d["pos"]), int(d["has_gauss"]),
            float(d["cached_gaussian"]))  # fmt: skip


def randomizables(obj: Any, seen: set | None = None, kind: type = Randomizable) -> list[Randomizable]:
    """Random transforms reachable from a transform, a Compose or a dataset (depth-first, stable order).

    Args:
        obj: the transform, Compose or dataset (its ``transform`` and the transforms held as its attributes).
        seen: objects already visited (internal).
        kind: what is collected: MONAI's ``Randomizable`` (a private ``R`` to seed), or ``RandomizableTrait`` to
            find also the random transforms that draw from another generator (torch's, in ``RandTorchVisiond``).
    """
    seen = set() if seen is None else seen
    out: list = []
    if obj is None or id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, kind):
        out.append(obj)
    children = list(obj.transforms) if isinstance(obj, Compose) else []
    if isinstance(obj, (Randomizable, Compose)) or hasattr(obj, "transform"):
        children += [v for v in vars(obj).values() if isinstance(v, (Randomizable, Compose))]
    for child in children:
        out.extend(randomizables(child, seen, kind))
    return out


class RandomStateTracker:
    """A ``state_dict``-able snapshot of every random number generator a training run draws from.

    Covers Python's ``random``, NumPy's global generator, torch's CPU and CUDA generators, and the private
    ``RandomState`` of each MONAI random transform reachable from ``source`` (a dataset or transform chain), so
    that a resumed run draws the same crops and shuffles as an uninterrupted one.

    Args:
        source: dataset or transform whose random transforms are tracked (optional).
    """

    def __init__(self, source: Any = None) -> None:
        self.transforms = randomizables(source)

    def state_dict(self) -> dict:
        return {
            "python": random.getstate(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state_to_plain(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping) -> None:
        random.setstate(state["python"])
        np.random.set_state(_plain_to_numpy_state(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state.get("cuda"):
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = state.get("transforms", [])
        if len(saved) != len(self.transforms) and is_main_process():  # every rank builds the same pipeline
            logger.warning(
                "checkpoint has %d random-transform states but the pipeline has %d: crops will differ from an "
                "uninterrupted run", len(saved), len(self.transforms)
            )
        for t, s in zip(self.transforms, saved):
            t.R.set_state(_plain_to_numpy_state(s))

    def load_rank_state(self, states: list[Mapping], rank: int) -> bool:
        """Restore this process's random states from a checkpoint's states of ranks ``0..len(states) - 1``.

        A rank the checkpoint holds gets its own states back. A rank beyond them (a run resumed with more
        processes) gets every generator seeded from rank 0's saved torch state and its rank, so that it draws
        other crops and masks than the other ranks, and the same ones on every such resume.

        Args:
            states: the saved :meth:`state_dict` of each rank (a single-process checkpoint: one).
            rank: this process's rank.

        Returns:
            Whether the states were derived (``rank >= len(states)``) rather than restored.
        """
        if not states or rank < 0:
            raise ValueError(f"need at least one saved random state and a rank >= 0, got {len(states)} and {rank}")
        if rank < len(states):
            self.load_state_dict(states[rank])
            return False
        self.load_state_dict(states[0])
        origin = zlib.crc32(torch.as_tensor(states[0]["torch"]).numpy().tobytes())
        seeds = [int(x) for x in np.random.SeedSequence([origin, rank]).generate_state(3 + len(self.transforms))]
        random.seed(seeds[0])
        np.random.seed(seeds[1])
        torch.manual_seed(seeds[2])  # CUDA generators included
        for t, seed in zip(self.transforms, seeds[3:]):
            t.set_random_state(seed=seed)
        return True
