"""Counts given to the training and data constructors: whole numbers of any kind taken as their int, a fraction,
a bool or text refused by name (``int()`` truncated ``2.5`` to 2 or failed with "invalid literal")."""

from __future__ import annotations

import re

import numpy as np
import pytest
from monai.transforms import Compose

from medgmae.data.sources import phantom_dataset
from medgmae.data.precheck import check_datalist
from medgmae.engine import MetricHistory
from medgmae.finetune.invert import InvertedArgmaxd
from medgmae.mae_training.pictures import ValidationPictureHandler
from medgmae.mae_training.validation import MaskedValidationHandler
from medgmae.twod.gmae_validation import GMAE2DPictureHandler
from medgmae.twod.gvit_phases import PhaseStats

BAD = (2.5, "2", True, None)


def _refused(make, name: str, words: str = "a positive whole number") -> None:
    for bad in BAD:
        with pytest.raises(ValueError, match=f"^{re.escape(name)} must be {words}, got {re.escape(repr(bad))}$"):
            make(bad)


def test_the_inversion_takes_a_whole_number_of_channels_per_step():
    make = lambda n: InvertedArgmaxd(keys="pred", transform=Compose([]), orig_keys="image", channels_per_step=n)  # noqa: E731
    assert make(np.int64(3)).channels_per_step == 3 and type(make(3.0).channels_per_step) is int
    _refused(make, "channels_per_step")


def test_the_picture_handlers_take_whole_counts(tmp_path):
    assert ValidationPictureHandler(None, tmp_path, interval=np.int64(2)).interval == 2
    _refused(lambda n: ValidationPictureHandler(None, tmp_path, interval=n), "picture_interval")
    handler = GMAE2DPictureHandler(None, tmp_path, interval=2.0, num_layers=np.int64(3), num_images=4)
    assert (handler.interval, handler.num_layers, handler.num_images) == (2, 3, 4)
    for name, arg in (("picture_interval", "interval"), ("num_layers", "num_layers"), ("num_images", "num_images")):
        _refused(lambda n: GMAE2DPictureHandler(None, tmp_path, **{arg: n}), name)


def test_the_validation_handler_takes_whole_counts_and_seed(tmp_path):
    make = lambda **kw: MaskedValidationHandler(None, [{}], MetricHistory(), tmp_path, **kw)  # noqa: E731
    handler = make(interval=np.int64(2), max_crops=4.0, seed=np.int64(7))
    assert (handler.interval, handler.max_crops, handler.seed) == (2, 4, 7)
    _refused(lambda n: make(interval=n), "val_interval")
    _refused(lambda n: make(max_crops=n), "max_crops")
    _refused(lambda n: make(seed=n), "seed", "a whole number >= 0")


def test_phase_stats_take_a_whole_log_interval():
    assert PhaseStats(np.int64(5)).log_every == 5 and PhaseStats(0.0).log_every == 0
    _refused(PhaseStats, "log_every", "a whole number >= 0")


def test_the_precheck_takes_a_whole_number_of_workers(tmp_path):
    _refused(lambda n: check_datalist([{"image": str(tmp_path / "a.nii.gz")}], workers=n), "precheck workers",
             "a whole number >= 0")  # fmt: skip


def test_a_phantom_dataset_refuses_fractional_counts_and_shapes_before_writing(tmp_path):
    out = tmp_path / "phantoms"
    _refused(lambda n: phantom_dataset(out, n, 0), "num_cases (phantom cases)")
    _refused(lambda n: phantom_dataset(out, 4, 1, seed=n), "seed", "a whole number >= 0")
    for bad in (2.5, "1", 4, -1):
        with pytest.raises(ValueError, match=rf"^num_validation must be in \[0, num_cases - 1\] = \[0, 3\], got {re.escape(repr(bad))}\.$"):
            phantom_dataset(out, 4, bad)
    with pytest.raises(ValueError, match=r"shape must be three whole numbers >= 8 .*got \(8\.7, 16, 16\)"):
        phantom_dataset(out, 2, 0, shape=(8.7, 16, 16))
    assert not out.exists()


def test_inference_takes_a_whole_overlap_and_batch_size(tmp_path):
    from medgmae.mae_training.inference import GaussianInference

    scan = tmp_path / "ct.nii.gz"
    scan.write_bytes(b"")
    make = lambda **kw: GaussianInference(tmp_path / "model.pt", scan, tmp_path / "out", device="cpu", **kw)  # noqa: E731
    run = make(overlap=np.int64(4), batch_size=2.0)
    assert (run.overlap, run.batch_size) == (4, 2) and type(run.batch_size) is int
    _refused(lambda n: make(overlap=n), "overlap", "a whole number >= 0")
    _refused(lambda n: make(batch_size=n), "batch_size")
