"""16-bit pictures whose values use a narrow part of the 16-bit range (12-bit data, CT as HU + 1024 or HU + 32768)
are named in a warning before 2D GMAE or GViT trains on them: divided by 65535, they are almost without contrast."""

import logging

import numpy as np
import pytest
from PIL import Image

from medgmae.twod.classification_data import resolve_classification_data
from medgmae.twod.data2d import gmae2d_dataset


def _png16(path, low, high, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(low, high + 1, (16, 16)).astype(np.uint16)
    arr.flat[0], arr.flat[1] = low, high  # the span stored in the file
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I;16")


def _warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "16-bit PNG/TIFF" in r.getMessage()]


@pytest.mark.parametrize("low, high", [(0, 4095), (32768 - 1024, 32768 + 3071)])
def test_a_folder_of_12_bit_values_in_16_bit_pngs_is_warned_about(tmp_path, caplog, low, high):
    """0..4095 (12-bit data, HU + 1024) read as 0..0.0625; HU + 32768 as 0.484..0.547: both named, with the span
    stored and what the model sees of it (value / 65535)."""
    for k in range(3):
        _png16(tmp_path / f"x{k}.png", low, high, seed=k)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "grey8.png")  # an 8-bit picture: not counted
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        gmae2d_dataset(str(tmp_path), image_size=(16, 16), cache=False)
    [line] = _warned(caplog)
    assert f"dataset_dir {tmp_path}: the values of its 16-bit PNG/TIFF files (3 files, all read) lie within " \
           f"{low}..{high}, 6 % of the range 0..65535" in line
    assert f"within {low / 65535:.3f}..{high / 65535:.3f}, almost without contrast" in line


def test_16_bit_pngs_using_the_range_are_not_warned_about(tmp_path, caplog):
    for k in range(2):
        _png16(tmp_path / f"x{k}.png", 0, 60000, seed=k)
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        gmae2d_dataset(str(tmp_path), image_size=(16, 16), cache=False)
    assert not _warned(caplog)


def test_a_classification_dataset_of_12_bit_pngs_is_warned_about(tmp_path, caplog):
    for cls in ("a", "b"):
        for k in range(3):
            _png16(tmp_path / cls / f"{k}.png", 0, 4095, seed=k)
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        resolve_classification_data(tmp_path, tmp_path / "unused", image_size=16)
    [line] = _warned(caplog)
    assert "(6 files, all read) lie within 0..4095" in line


def test_a_large_folder_is_sampled_evenly(tmp_path, caplog, monkeypatch):
    """At most SAMPLE files are read, spread over the list: the first and the fourth of five with SAMPLE 2."""
    from medgmae.twod import picture_range

    monkeypatch.setattr(picture_range, "SAMPLE", 2)
    for k in range(5):
        _png16(tmp_path / f"x{k}.png", 100 * k, 100 * k + 1000, seed=k)
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        gmae2d_dataset(str(tmp_path), image_size=(16, 16), cache=False)
    [line] = _warned(caplog)
    assert "(2 read of 5 files) lie within 0..1300" in line


@pytest.mark.parametrize("low, high, noted", [(0, 4095, True), (0, 60000, False)])
def test_medgmae_2d_notes_a_16_bit_image_of_12_bit_values(tmp_path, capsys, monkeypatch, low, high, noted):
    """``medgmae-2d`` reads one image as the bundles read their datasets: a 16-bit PNG of 0..4095 is noted on stderr,
    with what the model sees of it; one using the range is not; the picture is opened once for both."""
    import torch
    from PIL import Image

    from gmae2d_helpers import tiny_gmae2d
    from medgmae.twod.cli import main

    torch.save(tiny_gmae2d(k=8, size=16).model_checkpoint(), tmp_path / "model.pt")
    _png16(tmp_path / "dark.png", low, high)
    opened, real_open = [], Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    assert main(["layers", "--checkpoint", str(tmp_path / "model.pt"), "--image", str(tmp_path / "dark.png"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    said = f"note: dark.png is a 16-bit picture with values within {low}..{high} of 0..65535, read as 0.000..0.062"
    assert (said in err) == noted, err
    assert opened.count(str(tmp_path / "dark.png")) == 1, opened


def test_one_full_range_file_does_not_hide_the_narrow_ones(tmp_path, caplog):
    """Each sampled file is judged by its own span: four 12-bit files beside one full-range file are counted, and
    the first three named with their spans."""
    _png16(tmp_path / "full.png", 0, 65535)
    for k in range(4):
        _png16(tmp_path / f"n{k}.png", 100 * k, 100 * k + 4000, seed=k)
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        gmae2d_dataset(str(tmp_path), image_size=(16, 16), cache=False)
    [line] = _warned(caplog)
    assert line.startswith(f"dataset_dir {tmp_path}: 4 of its 16-bit PNG/TIFF files (5 files, all read) each hold "
                           "values within less than an eighth of the range 0..65535")  # fmt: skip
    assert "n0.png 0..4000 (read as 0.000..0.061), n1.png 100..4100" in line and "n2.png 200..4200" in line
    assert "n3.png" not in line and "and 1 more" in line and "full.png" not in line
