"""The reconstruction API's argument checks: each bad argument is named in a ``ValueError`` or ``TypeError`` before
any computation meets it, and a boolean view mask selects the views it marks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.fbp import fbp
from recon.geometry import CTGeometry
from recon.initialisation import fbp_init, random_init
from recon.presets import GaussianReconConfig, preset_config
from recon.projectors import make_projector

SHAPE = (4, 12, 12)


def _geometry(views: int = 12) -> CTGeometry:
    return CTGeometry.parallel(SHAPE, 1.0, num_angles=views)


def test_a_boolean_mask_selects_the_views_it_marks():
    g = _geometry()
    mask = np.arange(12) % 2 == 0
    assert g.select_views(mask).angles == g.angles[::2]
    p = make_projector(g, "torch")
    vol = torch.rand(SHAPE)
    every_other = [0, 2, 4, 6, 8, 10]
    torch.testing.assert_close(p.forward(vol, views=mask), p.forward(vol, views=every_other))
    proj = torch.rand(6, *g.det_shape)
    torch.testing.assert_close(p.adjoint(proj, views=torch.as_tensor(mask)), p.adjoint(proj, views=every_other))


@pytest.mark.parametrize("call", ["select", "forward", "adjoint"])
def test_a_boolean_mask_of_another_length_is_refused(call):
    g = _geometry()
    mask = np.ones(5, dtype=bool)
    p = make_projector(g, "torch")
    run = {"select": lambda: g.select_views(mask), "forward": lambda: p.forward(torch.rand(SHAPE), views=mask),
           "adjoint": lambda: p.adjoint(torch.rand(5, *g.det_shape), views=mask)}[call]  # fmt: skip
    with pytest.raises(ValueError, match=r"views.*\(12\), got 5"):
        run()


@pytest.mark.parametrize("make", [CTGeometry.parallel, CTGeometry.cone])
def test_an_arc_in_radians_is_refused(make):
    with pytest.raises(ValueError, match="arc_deg is 3.142.*degrees"):
        make(SHAPE, 1.0, num_angles=60, arc_deg=np.pi)
    with pytest.raises(ValueError, match="arc_deg is 6.283"):
        make(SHAPE, 1.0, num_angles=60, arc_deg=2 * np.pi)
    for arc, words in ((3.14, "half a"), (np.pi / 2, "a quarter"), (1.5 * np.pi, "three quarters of a")):
        with pytest.raises(ValueError, match=f"arc_deg is {arc:.4g}: {words} turn in radians"):
            make(SHAPE, 1.0, num_angles=60, arc_deg=arc)
    assert make(SHAPE, 1.0, num_angles=8, arc_deg=7.0).num_views == 8  # past a turn in radians: degrees
    short = make(SHAPE, 1.0, num_angles=10, arc_deg=5.0)  # a short arc of a few degrees (limited-angle), as given
    assert short.angles[-1] == pytest.approx(np.deg2rad(4.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_factories_take_angles_as_a_tensor_of_any_float_dtype_with_grad(dtype):
    angles = torch.linspace(0, 3, 6, dtype=dtype, requires_grad=True)
    g = CTGeometry.parallel(SHAPE, 1.0, angles=angles)
    assert g.angles == pytest.approx([float(a) for a in angles.detach().double()])


@pytest.mark.parametrize("angles", [np.zeros((3, 4)), torch.zeros(2, 6, dtype=torch.float16), [[0.0, 0.5], [1.0, 1.5]]])
def test_the_constructor_refuses_angles_of_two_axes_as_the_factories_do(angles):
    expected = r"angles must be a 1-D list of numbers \(radians\), got shape \(\d+, \d+\)"
    with pytest.raises(ValueError, match=expected):
        CTGeometry("parallel", SHAPE, 1.0, (4, 20), 1.0, angles)
    with pytest.raises(ValueError, match=expected):
        CTGeometry.parallel(SHAPE, 1.0, angles=angles)


def test_the_constructor_takes_angles_as_a_tensor_of_any_dtype():
    angles = torch.linspace(0, 3, 6, dtype=torch.bfloat16, requires_grad=True)
    g = CTGeometry("parallel", SHAPE, 1.0, (4, 20), 1.0, angles)
    assert g.angles == pytest.approx([float(a) for a in angles.detach().double()])
    assert CTGeometry("parallel", SHAPE, 1.0, (4, 20), 1.0, torch.arange(4)).angles == (0.0, 1.0, 2.0, 3.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(volume_shape=(16, 16)), "volume_shape must have 3 entries"),
    (dict(volume_shape=(4, 0, 12)), "volume_shape must be positive"),
    (dict(voxel_size=-1.0), "voxel_size must be positive"),
    (dict(det_spacing=0), "det_spacing must be positive"),
    (dict(angles=np.zeros((3, 4))), "angles must be a 1-D list"),
    (dict(num_angles=2.5), "num_angles must be a positive whole number, got 2.5"),
    (dict(arc_deg="180"), "arc_deg must hold numbers"),
])  # fmt: skip
def test_the_factories_name_a_bad_argument(kwargs, match):
    args = dict(volume_shape=SHAPE, voxel_size=1.0) | kwargs
    for make in (CTGeometry.parallel, CTGeometry.cone):
        with pytest.raises(ValueError, match=match):
            make(**args)


@pytest.mark.parametrize("value, match", [(float("nan"), "must be a positive finite"), ("100", "must hold numbers"),
                                          (-5.0, "must be a positive finite")])  # fmt: skip
def test_the_cone_factory_names_a_bad_source_distance(value, match):
    for name in ("source_origin", "source_detector"):
        with pytest.raises(ValueError, match=f"{name} {match}"):
            CTGeometry.cone(SHAPE, 1.0, **{name: value})


def test_fbp_names_a_bad_filter_chunk_or_geometry():
    g = _geometry()
    proj = make_projector(g, "torch").forward(torch.rand(SHAPE))
    with pytest.raises(ValueError, match="filter must be one of .* got None"):
        fbp(proj, g, filter_name=None)
    for chunk in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"chunk \(views per step\) must be a positive whole number, got {chunk}"):
            fbp(proj, g, chunk=chunk)
    for run in (lambda: fbp(proj, g.to_dict()), lambda: make_projector(g.to_dict())):
        with pytest.raises(TypeError, match=r"geometry must be a CTGeometry, got dict.*CTGeometry\.from_dict"):
            run()


@pytest.mark.parametrize("backend", ["torch", "matrix", "astra"])
def test_an_integer_volume_is_refused_by_every_backend(backend):
    g = _geometry()
    p = make_projector(g, backend)
    with pytest.raises(TypeError, match="volume must be a floating-point tensor.*int64"):
        p.forward(torch.ones(SHAPE, dtype=torch.int64))
    with pytest.raises(TypeError, match="proj must be a floating-point tensor.*int32"):
        p.adjoint(torch.ones(g.proj_shape, dtype=torch.int32))


@pytest.mark.parametrize("iterations", ["5", 5.5])
def test_preset_iterations_must_be_whole(iterations):
    with pytest.raises(ValueError, match=rf"iterations must be a whole number >= 0, got {iterations!r}"):
        preset_config("toolkit", iterations)


@pytest.mark.parametrize("init", [fbp_init, random_init])
def test_a_fractional_gaussian_count_is_refused(init):
    with pytest.raises(ValueError, match="num_gaussians must be a positive whole number, got 50.5"):
        init(torch.rand(SHAPE), 50.5)
    assert init(torch.rand(SHAPE), 20.0).num_gaussians == 20  # a whole float (2e4 from a config) is its int


def _reconstructor(**kwargs):
    from recon.gaussian_recon import GaussianReconstructor

    g = _geometry()
    mu = 0.02 * torch.rand(SHAPE)
    p = make_projector(g, "torch")
    return GaussianReconstructor(p, p.forward(mu), random_init(mu, 20), **kwargs), mu


def test_a_config_dict_is_refused_by_name():
    with pytest.raises(TypeError, match="config must be a GaussianReconConfig, got dict"):
        _reconstructor(config={"iterations": 3})
    rec, _ = _reconstructor(config=GaussianReconConfig(iterations=3))
    assert rec.config.iterations == 3


def test_a_reference_in_hu_is_refused_unless_unit_check_is_off():
    mu = 0.02 * torch.rand(SHAPE)
    hu = (mu / 0.0192 - 1.0) * 1000.0
    with pytest.raises(ValueError, match="reference looks like a CT in HU"):
        _reconstructor(reference=hu)
    assert _reconstructor(reference=hu, unit_check=False)[0].reference is not None
    assert _reconstructor(reference=mu)[0].reference is not None
