"""A training data loader whose random transforms draw the same crops and augmentations whatever ``num_workers`` is.

MONAI's random transforms each draw from a private NumPy ``RandomState``. With ``num_workers=0`` the main process's
states serve every item in turn; with workers, :func:`monai.data.utils.worker_init_fn` seeds each worker's copy
from that worker's torch seed, and which worker takes which item depends on how many there are. The same ``--seed``
therefore gave other crops, and so other weights, with another ``num_workers`` (and the 3D bundles' default
``num_workers`` depends on the machine's CPUs). MONAI's ``DataLoader`` also rewinds torch's generator to its initial
seed when it is built with ``num_workers=0`` and not otherwise, so the masks and initial weights drawn after it
differed too.

:class:`SeededDataLoader` re-seeds every random transform before each item from the epoch's seed and the item's
index, so an item's random draws depend on neither the workers nor the order they finish in, and it leaves torch's
generator as it found it. The epoch's seed is one draw from the loader's generator (torch's global one unless
``generator`` is given) when the epoch's iterator is made, in the main process, as the shuffle's own seed is: a
resumed run, whose checkpoint restores that generator (:class:`~medgmae.engine.random_state.RandomStateTracker`),
draws the same seeds as an uninterrupted one. The seed travels with each index, from the sampler in the main process
to whichever worker reads the item (:class:`SeededIndices`), so the workers may stay alive between epochs
(``persistent_workers``): the bundles keep them whenever ``num_workers`` > 0, which saves each epoch the start of its
workers (a fork of the process and its cache, or a new interpreter under ``spawn``).
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medgmae.engine.random_state import randomizables

__all__ = ["SeededDataLoader", "SeededIndices", "SeededItems"]

logger = logging.getLogger("medgmae.engine")


def _unseeded_note(dataset: Dataset, seeded: list, others: list) -> str | None:
    """Why some of ``dataset``'s random draws may still depend on the workers, or ``None``: random transforms with
    no private generator to seed (``others``: MONAI's ``RandTorchVisiond`` draws from torch's), or a dataset wrapped
    in another (a ``Subset``) whose transforms are not reached (``seeded`` empty)."""
    others = [type(t).__name__ for t in others]
    if others:
        return (f"the random transforms {', '.join(sorted(set(others)))} draw from another generator than their own: "
                "their draws are not seeded for each item and may depend on num_workers")
    if not seeded and hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):
        return (f"the {type(dataset).__name__} wraps another dataset, whose random transforms are not found: they are "
                "not seeded for each item, and their draws may depend on num_workers")
    return None


class SeededItems(Dataset):
    """A map-style dataset whose random transforms draw from a generator seeded by ``(epoch_seed, index)`` for each
    item (one generator the transforms share, which they draw from in the chain's order).

    Args:
        dataset: the dataset to wrap (its transforms are found as :func:`randomizables` finds them: the
            dataset's ``transform`` chain, nested ``Compose`` and the transforms' own random parts).

    An item is asked for by ``(epoch_seed, index)`` (what :class:`SeededIndices` yields) or by ``index`` alone, which
    uses :attr:`epoch_seed`.

    Attributes:
        epoch_seed: the current epoch's seed (set by :class:`SeededDataLoader` in the main process); ``None``: an item
            asked for by its index alone is drawn from the transforms' states as they are, as without this wrapper.
        unseeded: why some random draws are not seeded for each item (the warning's words), or ``None``.

    An index drawn twice in one epoch (a sampler with replacement) gets the same draws both times. Random
    transforms that draw from another generator than their ``R`` (MONAI's ``RandTorchVisiond``, torch's), and those
    of a dataset wrapped in a ``Subset``, are not reached: a warning names them.
    """

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"SeededItems needs a map-style dataset with a length, got {type(dataset).__name__}")
        from monai.transforms import Randomizable, RandomizableTrait

        found = randomizables(dataset, kind=RandomizableTrait)  # one walk: the seedable ones and any others
        self.dataset = dataset
        self.transforms = [t for t in found if isinstance(t, Randomizable)]
        self.epoch_seed: int | None = None
        self.unseeded = _unseeded_note(dataset, self.transforms, [t for t in found if not isinstance(t, Randomizable)])
        if self.unseeded:
            logger.warning("SeededDataLoader: %s", self.unseeded)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        seed = self.epoch_seed
        if isinstance(index, tuple):
            seed, index = index
        if seed is not None and self.transforms:
            # one stream for the item, drawn from in the chain's fixed order: a generator per transform cost about
            # 0.15 ms each to seed (a Mersenne Twister's set-up), a millisecond an item for the 3D chain
            stream = np.random.RandomState(np.random.SeedSequence([seed, int(index)]).generate_state(4))
            for transform in self.transforms:
                transform.R = stream
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        """The wrapped dataset's attributes (``data``, ``transform``, ...), for code that reads them through
        ``loader.dataset``."""
        if name.startswith("__") or name in ("dataset", "transforms", "epoch_seed", "unseeded"):
            raise AttributeError(name)  # not forwarded: unpickling (spawned workers) looks these up before __init__
        return getattr(self.dataset, name)


class SeededIndices:
    """The indices a loader's sampler (or batch sampler) yields, each as ``(epoch_seed, index)``: the seed of the
    epoch, read from the items when an epoch's iteration starts in the main process, reaches the worker that reads
    the item with its index (a worker kept from an earlier epoch holds that epoch's copy of the items).

    Args:
        indices: the sampler or batch sampler.
        items: the :class:`SeededItems` whose ``epoch_seed`` is read.
        batched: ``indices`` yields batches of indices (a batch sampler: the loader collates), not indices.
    """

    def __init__(self, indices: Any, items: SeededItems, batched: bool) -> None:
        self.indices, self.items, self.batched = indices, items, bool(batched)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        seed = self.items.epoch_seed
        for index in self.indices:  # Python, NumPy or 0-d torch integers, or batches of them (lists, arrays, tensors)
            yield [(seed, operator.index(i)) for i in index] if self.batched else (seed, operator.index(index))


class SeededDataLoader(DataLoader):
    """A ``torch`` data loader over :class:`SeededItems`, with MONAI's collation and worker set-up as defaults.

    Takes what ``torch.utils.data.DataLoader`` takes. ``loader.dataset`` is the :class:`SeededItems` wrapper
    (its attributes forward to ``dataset``); a ``sampler`` (``DistributedSampler``) is built on ``dataset``
    itself, as before, and stays ``loader.sampler`` (its ``set_epoch`` is called as before); the indices it yields
    reach the items with the epoch's seed (:class:`SeededIndices`).

    Args:
        dataset: a map-style dataset whose random transforms are MONAI ``Randomizable`` ones.
        num_workers: data loader worker processes; the items do not depend on it.
        **kwargs: the other ``DataLoader`` arguments; ``collate_fn`` defaults to MONAI's ``list_data_collate``
            (a transform's list of crops becomes items of the batch) and ``worker_init_fn`` to MONAI's;
            ``persistent_workers`` keeps the workers between epochs (the items do not depend on it either), except
            where some random draws are not seeded for each item (a warning names them): a kept worker's generators
            would carry on where a resumed run's new workers start afresh.
    """

    #: what :func:`~medgmae.engine.resume.loader_record` records: a resume compares it with the checkpoint's.
    item_seeded = True

    def __init__(self, dataset: Dataset, num_workers: int = 0, **kwargs: Any) -> None:
        from monai.data.utils import list_data_collate, worker_init_fn

        kwargs.setdefault("collate_fn", list_data_collate)
        kwargs.setdefault("worker_init_fn", worker_init_fn)
        items = SeededItems(dataset)
        if items.unseeded and kwargs.get("persistent_workers") and num_workers > 0:
            # a kept worker's own generators carry on from epoch to epoch, new ones (a resumed run's) start afresh
            logger.warning("SeededDataLoader: its workers are started each epoch, not kept (persistent_workers), so "
                           "that a resumed run draws those random draws as an uninterrupted one does")  # fmt: skip
            kwargs["persistent_workers"] = False
        super().__init__(items, num_workers=num_workers, **kwargs)
        self._seeded_indices: SeededIndices | None = None

    @property
    def _index_sampler(self) -> SeededIndices:
        """What the loader's iterators draw indices from (torch's ``DataLoader`` reads this property for them and
        for ``len(loader)``): its sampler or batch sampler, each index paired with the epoch's seed. One object for
        the loader's life: a kept iterator (``persistent_workers``) holds it and iterates it again each epoch."""
        if self._seeded_indices is None:
            self._seeded_indices = SeededIndices(super()._index_sampler, self.dataset, self._auto_collation)
        return self._seeded_indices

    def __iter__(self):
        """Draw the epoch's seed (in the main process, before the indices are drawn). A kept iterator
        (``persistent_workers``, after the first epoch) draws no seed for its workers as a new one does: one draw
        stands in for it, so that the generator, and so the shuffle and everything drawn after the epoch (masks,
        dropout), are those of a loader that starts its workers each epoch or has none."""
        self.dataset.epoch_seed = self._draw()
        if self.persistent_workers and self.num_workers > 0 and self._iterator is not None:
            self._draw()  # what torch's new iterator draws for its workers' base seed
        return super().__iter__()

    def _draw(self) -> int:
        return int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
