"""Pre-training's held-out split of a user's volumes (``val_fraction``): its documented rule (rounded, at least one
volume validates and one trains), and the warning when the split is far from ``val_fraction`` or leaves a single
volume to train on (0.1 of two volumes validates on one of them, half the data)."""

from __future__ import annotations

import logging

import pytest

from medgmae.mae_training.data import held_out_count, pretrain_split


@pytest.mark.parametrize("fraction, n, held", [(0.1, 2, 1), (0.1, 10, 1), (0.1, 25, 2), (0.1, 100, 10), (0.05, 10, 1),
                                               (0.5, 4, 2), (0.5, 3, 2), (0.9, 3, 2), (0.99, 2, 1)])  # fmt: skip
def test_the_held_out_count_is_rounded_and_leaves_one_volume_on_each_side(fraction, n, held):
    assert held_out_count(fraction, n) == held


def _volumes(tmp_path, n: int) -> str:
    folder = tmp_path / "vols"
    folder.mkdir()
    for k in range(n):
        (folder / f"ct{k}.nii.gz").write_bytes(b"")  # named only: the split is made before the files are read
    return str(folder)


def _split(tmp_path, caplog, n: int, fraction: float) -> tuple[dict, list[str]]:
    with caplog.at_level(logging.WARNING, logger="medgmae.mae_training"):
        split = pretrain_split(_volumes(tmp_path, n), tmp_path, val_fraction=fraction, validate=False)
    return split, [r.getMessage() for r in caplog.records if "val_fraction" in r.getMessage()]


def test_a_tenth_of_two_volumes_is_one_of_each_and_said_so(tmp_path, caplog):
    split, said = _split(tmp_path, caplog, 2, 0.1)
    assert len(split["training"]) == len(split["validation"]) == 1
    assert len(said) == 1, said
    assert said[0] == (f"{tmp_path / 'vols'}: val_fraction 0.1 of 2 volumes is 0.2 volumes, held out as 1 (rounded, at "
                       "least 1 and at most 1): 1 of 2 volumes (50 %) validate, not 10 % and a single volume is left "
                       "to train on; add volumes, give a datalist with a 'validation' list, or set val_fraction 0 to "
                       "validate on the training volumes")  # fmt: skip


def test_a_single_training_volume_is_said_even_near_the_fraction(tmp_path, caplog):
    split, said = _split(tmp_path, caplog, 3, 0.5)
    assert (len(split["training"]), len(split["validation"])) == (1, 2)
    assert len(said) == 1 and said[0].endswith("held out as 2 (rounded, at least 1 and at most 2): a single volume is "
                                               "left to train on; add volumes, give a datalist with a 'validation' "
                                               "list, or set val_fraction 0 to validate on the training volumes")  # fmt: skip


@pytest.mark.parametrize("n, fraction", [(10, 0.1), (20, 0.1), (4, 0.5)])
def test_an_ordinary_split_is_not_warned_about(tmp_path, caplog, n, fraction):
    split, said = _split(tmp_path, caplog, n, fraction)
    assert len(split["validation"]) == held_out_count(fraction, n) and said == []


def test_only_rank_0_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    split, said = _split(tmp_path, caplog, 2, 0.1)
    assert len(split["validation"]) == 1 and said == []
