"""Counts and sizes given to the Python API: whole numbers of any kind taken as their int, the rest refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medgmae.data.phantom.generator import generate_phantom
from medgmae.networks import MaskedViTEncoder, MedGMAE, VoxelMAE
from medgmae.render import render_volume
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gvit import GViT
from medgmae.twod.images import to_model_input
from medgmae.whole_numbers import positive_count, positive_sizes, whole_number, whole_sizes

TINY = dict(img_size=24, patch_size=12, model_size="tiny", num_gaussians=8)


def test_whole_numbers_of_every_kind_are_ints_and_the_rest_refused():
    for value in (96, np.int64(96), np.int32(96), 96.0, np.float32(96.0), torch.tensor(96), torch.tensor(96.0)):
        assert whole_number(value) == 96 and type(whole_number(value)) is int
    for value in (96.5, True, np.bool_(True), float("nan"), float("inf"), "96", torch.tensor(True), None, (96,)):
        with pytest.raises(TypeError):
            whole_number(value)
    assert whole_sizes((4.0, np.int64(5), 6), "shape") == (4, 5, 6)
    with pytest.raises(ValueError, match=r"shape must be ints, got \(4\.5, 5\)"):
        whole_sizes((4.5, 5), "shape must be ints")
    assert positive_count(np.int64(3), "k") == 3 and positive_sizes(np.int64(2), 3, "s") == (2, 2, 2)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"k must be a positive whole number, got {bad}"):
            positive_count(bad, "k")
    with pytest.raises(ValueError, match=r"s must be 2 positive whole numbers, got 4"):
        positive_sizes(4, 2, "s", scalar=False)


@pytest.mark.parametrize("cls, kw", [(MedGMAE, TINY), (VoxelMAE, {k: v for k, v in TINY.items() if k != "num_gaussians"})])
def test_a_3d_model_takes_whole_sizes_of_any_kind(cls, kw):
    """``np.int64(24)`` and ``24.0`` were "not iterable"; a fractional size was truncated."""
    for img, patch in ((np.int64(24), np.int64(12)), (24.0, 12.0), ((24.0, np.int64(24), 24), 12)):
        model = cls(**{**kw, "img_size": img, "patch_size": patch})
        assert model.img_size == (24, 24, 24) and model.patch_size == (12, 12, 12)
        assert all(type(s) is int for s in (*model.img_size, *model.encoder.img_size))
    for name, bad in (("img_size", (24, 24, 24.5)), ("img_size", 0), ("img_size", -24), ("patch_size", 0),
                      ("patch_size", 12.5), ("in_channels", 1.5)):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be"):
            cls(**{**kw, name: bad})


@pytest.mark.parametrize("make", [
    lambda k: MedGMAE(**{**TINY, "num_gaussians": k}),
    lambda k: GMAE2D(16, 4, 1, model_size="tiny", num_gaussians=k),
    lambda k: GViT(1, 16, num_gaussians=k).encoder,
])  # fmt: skip
def test_a_count_of_gaussians_is_a_positive_whole_number(make):
    """``num_gaussians=2.5`` built 2 Gaussians (GViT kept 2.5 in its config)."""
    assert make(np.int64(4)).num_gaussians == 4 and type(make(4.0).num_gaussians) is int
    for bad in (2.5, 0, -3):
        with pytest.raises(ValueError, match=f"num_gaussians must be a positive whole number, got {bad}"):
            make(bad)


def test_level_multipliers_are_positive_whole_numbers():
    """``level_multipliers=(1, 2.5)`` built a level of 2 K Gaussians (``int`` truncated it)."""
    star = dict(TINY, multi_level=True, level_deltas=(0.02,))
    for given in ((1, 2.0), (np.int64(1), np.int64(2)), np.array([1, 2]), torch.tensor([1, 2])):
        model = MedGMAE(**star, level_multipliers=given)
        assert model.level_multipliers == [1, 2] and all(type(m) is int for m in model.level_multipliers)
        assert model.levels[0].ratio == 2 and model.config()["level_multipliers"] == [1, 2]
    for bad in ((1, 2.5), (1, 0), (1, -2), (1, True), "12", 2, (1, "2")):
        with pytest.raises(ValueError, match=rf"level_multipliers must be positive whole numbers, such as \(1, 2, 4\), "
                                             rf"got {re.escape(repr(bad))}$"):  # fmt: skip
            MedGMAE(**star, level_multipliers=bad)


@pytest.mark.parametrize("text, expected", [("[1,2,4]", [1, 2, 4]), ("1,2", [1, 2]), ("[1.0,2.0]", [1, 2])])
def test_level_multipliers_from_the_bundle_command_line_build_the_levels(text, expected):
    """``--network_def#level_multipliers [1,2,4]``: MONAI's runner parses the value with fire, the config passes it
    on through ``build_model``."""
    import fire.parser
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundles" / "medgmae_pretrain" / "configs" / "train.json"))
    value = fire.parser.DefaultParseValue(text)
    parser.update({"model_kind": "medgmae-star", "roi_size": 24, "patch_size": 12, "num_gaussians": 8,
                   "network_def#level_multipliers": value, "network_def#level_deltas": [0.02, 0.05][: len(expected) - 1]})
    model = parser.get_parsed_content("network_def", lazy=False)
    assert model.level_multipliers == expected and [lvl.ratio for lvl in model.levels] == [
        b // a for a, b in zip(expected, expected[1:])]


def test_gvit_takes_whole_sizes_and_counts_of_any_kind():
    model = GViT(np.int64(1), 16.0, num_classes=np.int64(3), num_gaussians=4.0, patch_size=np.int64(4))
    config = model.config()
    assert config["img_size"] == [16, 16] and config["num_gaussians"] == 4 and config["num_classes"] == 3
    assert type(config["num_gaussians"]) is int and type(config["in_channels"]) is int
    with pytest.raises(ValueError, match="num_classes must be a positive whole number, got 2.5"):
        GViT(1, 16, num_classes=2.5)
    with pytest.raises(ValueError, match=r"img_size must be 2 positive whole numbers .*got \(16\.5, 16\)"):
        MaskedViTEncoder(1, (16.5, 16), 4, 24, 1, 2, spatial_dims=2)


def test_a_phantom_takes_whole_sizes_and_any_number_for_the_spacing():
    shape = (np.int64(16), 16.0, 16)
    assert generate_phantom(0, shape, np.float32(4.0)).image.shape == (16, 16, 16)
    assert np.array_equal(generate_phantom(0, shape, np.float32(4.0)).image, generate_phantom(0, (16, 16, 16), 4.0).image)
    for bad in (16, (8.7, 8, 8), (16, 16, 0), (16, 16, True)):
        with pytest.raises(ValueError, match=r"shape must be three whole numbers >= 8 \(X, Y, Z voxels\), got"):
            generate_phantom(0, bad, 4.0)
    for bad in ("4", (4.0, 4.0), True, -1.0):
        with pytest.raises(ValueError, match="spacing must be one or three positive finite numbers"):
            generate_phantom(0, (16, 16, 16), bad)


def test_a_phantom_seed_is_a_whole_number_checked_first():
    """``seed="x"`` failed in ``int()`` ("invalid literal"), ``None`` in a comparison, ``True`` was taken as 1: each
    is now named, before the shape is looked at."""
    reference = generate_phantom(3, (16, 16, 16), 4.0).image
    for seed in (np.int64(3), 3.0):
        assert np.array_equal(generate_phantom(seed, (16, 16, 16), 4.0).image, reference)
    for bad in ("3", "x", "3.5", None, True, 2.5, -1, float("nan")):
        with pytest.raises(ValueError, match=rf"^seed must be a whole number >= 0, got {re.escape(repr(bad))}$"):
            generate_phantom(bad, (0, 0, 0), 4.0)


def test_a_phantom_dataset_names_a_bad_seed_or_count_before_writing(tmp_path):
    from medgmae.data.phantom import write_phantom_dataset
    from medgmae.data.phantom.writer import case_seeds

    assert case_seeds(np.int64(5), 3.0) == case_seeds(5, 3) and len(case_seeds(5, 3)) == 3
    for kwargs, message in ((dict(seed="x"), "seed must be a whole number >= 0, got 'x'"),
                            (dict(seed=None), "seed must be a whole number >= 0, got None"),
                            (dict(num_cases="two"), "num_cases must be a positive whole number, got 'two'"),
                            (dict(num_cases=2.5), "num_cases must be a positive whole number, got 2.5"),
                            (dict(num_validation="one"), r"num_validation must be in \[0, num_cases - 1\] = \[0, 2\], "
                                                         "got 'one'")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"^{message}\.?$"):
            write_phantom_dataset(tmp_path / "out", **{"num_cases": 3, "shape": (16, 16, 16), **kwargs})
        assert not (tmp_path / "out").exists()


def test_a_phantom_refuses_a_noise_that_is_not_a_bool():
    """The string ``"false"`` is true: it added noise."""
    for bad in ("false", 0, None):
        with pytest.raises(ValueError, match=f"noise must be a bool, got {bad!r}"):
            generate_phantom(0, (16, 16, 16), 4.0, noise=bad)
    assert generate_phantom(0, (16, 16, 16), 4.0, noise=np.bool_(False)).image.shape == (16, 16, 16)


def test_to_model_input_takes_two_whole_sizes():
    """A scalar size was "not iterable", 16.5 became 16 and (0, 16) an empty tensor."""
    image = np.random.default_rng(0).random((1, 20, 20), dtype=np.float32)
    assert torch.equal(to_model_input(image, 3, (16.0, np.int64(16))), to_model_input(image, 3, (16, 16)))
    for bad in (16, (16.5, 16), (0, 16), (-4, 16), (16, 16, 16)):
        with pytest.raises(ValueError, match=r"size \(H, W\) must be 2 positive whole numbers, got"):
            to_model_input(image, 3, bad)


def test_render_takes_a_whole_float_shape():
    """The shared whole-number check takes ``4.0`` as 4 (it was refused as not an integer) and still refuses 4.5."""
    args = (torch.full((1, 1, 3), 2.0), torch.ones(1, 1, 3), torch.tensor([[[1.0, 0, 0, 0]]]), torch.ones(1, 1))
    assert torch.equal(render_volume(*args, (4.0, 5, np.int64(6)), backend="torch"), render_volume(*args, (4, 5, 6), backend="torch"))
    with pytest.raises(ValueError, match="shape must be"):
        render_volume(*args, (4.5, 5, 6), backend="torch")


def test_a_count_of_iterations_may_be_zero_and_is_named_otherwise():
    from medgmae.whole_numbers import nonnegative_count
    from recon.presets import preset_config

    assert [nonnegative_count(v, "iterations") for v in (0, np.int64(3), 5.0)] == [0, 3, 5]
    for bad in (-1, 2.5, "3", True, float("nan")):
        with pytest.raises(ValueError, match=f"iterations must be a whole number >= 0, got {re.escape(repr(bad))}"):
            nonnegative_count(bad, "iterations")
    assert preset_config("toolkit", 20.0).iterations == 20
    with pytest.raises(ValueError, match="iterations must be a whole number >= 0, got -3"):
        preset_config("toolkit", -3)
