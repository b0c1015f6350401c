"""The training data loader draws each item's random crops and augmentations from the epoch's seed and the item:
the batches of a seed do not depend on ``num_workers`` (MONAI's loader, the control, gives other ones), the loader
leaves torch's generator as it found it, and a restored generator draws the same epoch again."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, MapTransform, RandFlipd, RandGaussianNoised, RandomizableTrait, RandSpatialCropSamplesd
from torch.utils.data import Subset

from medgmae.engine.random_state import RandomStateTracker
from medgmae.engine.seeded_loader import SeededDataLoader, SeededItems

ITEMS = [{"image": np.arange(i, i + 8 * 9 * 10, dtype=np.float32).reshape(1, 8, 9, 10)} for i in range(7)]


def _dataset() -> CacheDataset:
    """Seven volumes, each giving two random crops, flipped and noised at random (a nested chain, as the bundles')."""
    chain = Compose([
        RandSpatialCropSamplesd(keys="image", roi_size=(4, 5, 6), num_samples=2, random_size=False),
        Compose([RandFlipd(keys="image", prob=0.5, spatial_axis=0), RandGaussianNoised(keys="image", prob=0.5)]),
    ])  # fmt: skip
    return CacheDataset(ITEMS, transform=chain, cache_rate=1.0, progress=False)


def _epochs(loader_type, seed: int, workers: int, epochs: int = 2, **kwargs) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    loader = loader_type(_dataset(), batch_size=3, shuffle=True, num_workers=workers, **kwargs)
    return [torch.cat([batch["image"].as_tensor() for batch in loader]) for _ in range(epochs)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_batches_of_a_seed_do_not_depend_on_the_workers(seed):
    alone = _epochs(SeededDataLoader, seed, 0)
    for workers in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(alone, _epochs(SeededDataLoader, seed, workers))), workers
    assert not torch.equal(alone[0], alone[1])  # each epoch draws again
    assert not torch.equal(alone[0], _epochs(SeededDataLoader, seed + 10, 0)[0])  # and each seed


def test_workers_kept_between_epochs_draw_each_epoch_as_new_ones_do():
    """``persistent_workers``: a worker holds its copy of the items from the first epoch on, yet each epoch's items
    are those of the loader without workers (the seed comes with each index), epoch after epoch."""
    alone = _epochs(SeededDataLoader, 4, 0, epochs=3)
    assert len({a.numpy().tobytes() for a in alone}) == 3
    after = torch.rand(5)  # what is drawn after the epochs (masks, dropout) too
    kept = _epochs(SeededDataLoader, 4, 2, epochs=3, persistent_workers=True)
    assert all(torch.equal(a, b) for a, b in zip(alone, kept)) and torch.equal(torch.rand(5), after)


def _images(**kwargs) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.cat([b["image"].as_tensor() for b in SeededDataLoader(_dataset(), num_workers=0, **kwargs)])


def test_samplers_of_numpy_and_torch_integers_and_batches_of_tuples_index_as_ints_do():
    ints = _images(batch_size=2, sampler=[3, 1, 6])
    assert ints.shape[0] == 6  # two crops an item
    assert torch.equal(_images(batch_size=2, sampler=np.array([3, 1, 6])), ints)
    assert torch.equal(_images(batch_size=2, sampler=[torch.tensor(i) for i in (3, 1, 6)]), ints)
    for batches in ([(3, 1), (6,)], [np.array([3, 1]), np.array([6])], list(torch.tensor([3, 1, 6]).split(2))):
        assert torch.equal(_images(batch_sampler=batches), ints)  # a last batch of one tensor index: still a batch
    assert not torch.equal(_images(batch_size=2, sampler=[3, 6, 1]), ints)  # the control: the order matters


def test_the_control_monai_loader_depends_on_the_workers():
    """Without per-item seeds the same seed gives other batches with workers (what the loader mends)."""
    assert not all(torch.equal(a, b) for a, b in zip(_epochs(DataLoader, 0, 0), _epochs(DataLoader, 0, 2)))


def test_an_item_depends_on_the_epoch_seed_and_its_index_only():
    items = SeededItems(_dataset())
    items.epoch_seed = 12345
    first = [items[i][0]["image"] for i in (4, 2, 4)]
    assert torch.equal(first[0], first[2])  # the same item again, after another one drew
    items.epoch_seed = 12346
    assert not torch.equal(items[4][0]["image"], first[0])


def test_the_items_of_an_epoch_draw_apart():
    """Seven copies of one volume: each index draws its own crops (a seed of the epoch alone would crop them alike)."""
    same = [{"image": ITEMS[0]["image"].copy()} for _ in range(7)]
    items = SeededItems(CacheDataset(same, transform=_dataset().transform, cache_rate=1.0, progress=False))
    items.epoch_seed = 2024
    crops = [items[i][0]["image"] for i in range(7)]
    assert len({c.as_tensor().numpy().tobytes() for c in crops}) >= 5  # 2 x 3 x 3 crop corners, flips, noise


def test_building_the_loader_leaves_torchs_generator_as_it_was():
    """MONAI's loader rewinds torch's generator to its initial seed when built without workers (and not with
    them): what was drawn after it (masks, initial weights) then depended on ``num_workers``."""
    torch.manual_seed(5)
    torch.rand(3)
    expected = torch.rand(4)
    for workers in (0, 2):
        torch.manual_seed(5)
        torch.rand(3)
        SeededDataLoader(_dataset(), batch_size=2, num_workers=workers)
        assert torch.equal(torch.rand(4), expected), workers
    torch.manual_seed(5)
    torch.rand(3)
    DataLoader(_dataset(), batch_size=2, num_workers=0)
    assert not torch.equal(torch.rand(4), expected)  # the control


def test_a_restored_generator_draws_the_same_epoch_again():
    """A resume restores torch's generator (:class:`RandomStateTracker`): the next epoch is the uninterrupted one."""
    torch.manual_seed(7)
    loader = SeededDataLoader(_dataset(), batch_size=2, shuffle=True, num_workers=0)
    tracker = RandomStateTracker(None)  # the global generators: the transforms' own states no longer matter
    saved = tracker.state_dict()
    straight = torch.cat([b["image"].as_tensor() for b in loader])
    torch.manual_seed(99)
    tracker.load_state_dict(saved)
    again = SeededDataLoader(_dataset(), batch_size=2, shuffle=True, num_workers=2)
    assert torch.equal(torch.cat([b["image"].as_tensor() for b in again]), straight)


def test_the_wrapper_forwards_the_datasets_attributes_and_pickles():
    dataset = _dataset()
    loader = SeededDataLoader(dataset, batch_size=2)
    assert loader.dataset.data is dataset.data and len(loader.dataset) == 7 and len(loader) == 4
    copy = pickle.loads(pickle.dumps(loader.dataset))  # as a spawned worker receives it
    copy.epoch_seed = loader.dataset.epoch_seed = 3
    assert torch.equal(copy[1][1]["image"], loader.dataset[1][1]["image"])
    with pytest.raises(AttributeError):
        loader.dataset.no_such_attribute


def test_datasets_without_a_length_are_refused():
    with pytest.raises(ValueError, match="map-style dataset"):
        SeededItems(iter(range(3)))


class _TorchDrawn(RandomizableTrait, MapTransform):
    """A random transform without a private generator (as MONAI's ``RandTorchVisiond``): it draws from torch's."""

    def __call__(self, data):
        return {k: v + torch.rand(()) for k, v in data.items()}


def test_workers_are_not_kept_where_some_draws_are_not_seeded(caplog):
    """A kept worker's own generators carry on from epoch to epoch where a resumed run's new workers start afresh:
    with random draws the loader cannot seed, its workers are started each epoch, and it says so."""
    caplog.set_level(logging.WARNING, logger="medgmae.engine")
    chain = Compose([_TorchDrawn(keys="image"), RandFlipd(keys="image", prob=0.5)])
    loader = SeededDataLoader(Dataset(ITEMS, transform=chain), num_workers=2, persistent_workers=True)
    assert not loader.persistent_workers and "its workers are started each epoch, not kept" in caplog.text
    seeded = SeededDataLoader(_dataset(), num_workers=2, persistent_workers=True)
    assert seeded.persistent_workers and seeded.dataset.unseeded is None


def test_random_draws_the_loader_cannot_seed_are_named(caplog):
    caplog.set_level(logging.WARNING, logger="medgmae.engine")
    SeededItems(Dataset(ITEMS, transform=Compose([_TorchDrawn(keys="image"), RandFlipd(keys="image", prob=0.5)])))
    assert "the random transforms _TorchDrawn draw from another generator" in caplog.text
    caplog.clear()
    SeededItems(Subset(_dataset(), [0, 1]))
    assert "the Subset wraps another dataset, whose random transforms are not found" in caplog.text
    caplog.clear()
    SeededItems(_dataset())
    SeededItems(Dataset(ITEMS))  # no random transform at all: nothing to say
    assert caplog.text == ""
