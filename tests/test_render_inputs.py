"""Tests of medgmae.render.render_volume's argument checks: every malformed tensor, shape, cut-off, backend and
path is refused with a ValueError naming the argument; NumPy and 0-d tensor numbers are taken as Python numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgmae.render import render_volume
from medgmae.render._torch_impl import torch_path


def test_torch_path_rejects_unknown_path():
    with pytest.raises(ValueError, match="path"):
        with torch_path("stencils"):
            pass


def _good(b=2, k=3):
    return dict(
        means=torch.rand(b, k, 3) * 4,
        scales=torch.ones(b, k, 3),
        quats=torch.tensor([1.0, 0, 0, 0]).repeat(b, k, 1),
        intensities=torch.ones(b, k),
        shape=(4, 5, 6),
    )


def _bad(**changes):
    kw = _good()
    kw.update(changes)
    return kw


def _with(name, idx, value):
    kw = _good()
    t = kw[name].clone()
    t[idx] = value
    kw[name] = t
    return kw


BAD_INPUTS = [
    (_bad(means=torch.rand(2, 3)), "means"),
    (_bad(means=torch.rand(2, 3, 2)), "means"),
    (_bad(means=[[0.0, 0.0, 0.0]]), "means"),
    (_bad(means=torch.zeros(2, 3, 3, dtype=torch.long)), "means"),
    (_bad(scales=torch.ones(2, 3)), "scales"),
    (_bad(scales=torch.ones(2, 4, 3)), "scales"),
    (_bad(quats=torch.ones(2, 3, 3)), "quats"),
    (_bad(quats=torch.ones(1, 3, 4)), "quats"),
    (_bad(intensities=torch.ones(2, 3, 1)), "intensities"),
    (_bad(intensities=torch.ones(2, 2)), "intensities"),
    (_with("scales", (0, 1, 2), 0.0), "scales"),
    (_with("scales", (1, 0, 0), -1.0), "scales"),
    (_with("scales", (1, 0, 0), float("nan")), "scales"),
    (_with("scales", (1, 0, 0), float("inf")), "scales"),
    (_with("quats", (0, 2), 0.0), "quats"),
    (_with("quats", (0, 2, 1), float("nan")), "quats"),
    (_with("means", (1, 2, 0), float("nan")), "means"),
    (_with("means", (1, 2, 0), float("-inf")), "means"),
    (_with("intensities", (0, 0), float("inf")), "intensities"),
    (_bad(shape=(4, 5)), "shape"),
    (_bad(shape=(4, 0, 6)), "shape"),
    (_bad(shape=None), "shape"),
    (_bad(shape=(4.5, 5, 6)), "shape"),  # a fraction is refused, not truncated to 4
    (_bad(shape=(True, 5, 6)), "shape"),
]


@pytest.mark.parametrize("kwargs,name", BAD_INPUTS)
def test_bad_input_raises_value_error_naming_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        render_volume(**kwargs)


def test_numpy_and_tensor_numbers_are_accepted_as_shape_and_cutoff():
    """A NumPy integer shape and a NumPy or 0-d tensor cutoff give what Python numbers give."""
    good = _good()
    want = render_volume(**good, cutoff=2.5)
    assert want.abs().sum() > 0
    numpy_shape = {**good, "shape": tuple(np.int64(v) for v in good["shape"])}
    assert torch.equal(render_volume(**numpy_shape, cutoff=np.float32(2.5)), want)
    assert torch.equal(render_volume(**good, cutoff=torch.tensor(2.5)), want)


@pytest.mark.parametrize(
    "cutoff", [0.0, -1.0, float("nan"), float("inf"), "3", True, np.True_, torch.tensor(True), torch.tensor([[3.0]])]
)
def test_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff"):
        render_volume(**_good(), cutoff=cutoff)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        render_volume(**_good(), backend="cuda")


def test_numpy_gaussians_render_as_the_same_tensors():
    """NumPy arrays are taken as the tensors they hold: same values, same dtype."""
    good = _good()
    want = render_volume(**good)
    arrays = {name: good[name].numpy() for name in ("means", "scales", "quats", "intensities")}
    got = render_volume(**arrays, shape=good["shape"])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    wide = render_volume(**{**arrays, "intensities": arrays["intensities"].astype(np.float64)}, shape=good["shape"])
    assert wide.dtype == torch.float64


@pytest.mark.parametrize("wide", ["means", "scales", "quats", "intensities"])
def test_a_float64_input_gives_float64_also_without_gaussians(wide):
    """The output dtype rule (float64 when any input is float64) holds for K = 0 as for K > 0."""
    for k in (0, 3):
        kw = _good(k=k)
        kw[wide] = kw[wide].double()
        out = render_volume(**kw)
        assert out.dtype == torch.float64 and out.shape == (2, 4, 5, 6)
