"""Tests of the 2D splatting renderer (medgmae.twod.render, .compositor and .gsplat_backend)."""

import math
import sys
import types

import pytest
import torch

from medgmae.twod import compositor
from medgmae.twod import gsplat_backend as G
from medgmae.twod.render import render_gaussians_2d, render_planar_gaussians


def _random_gaussians(b, k, c, seed, dtype=torch.float64, opacity=(0.05, 1.0), scale=(0.03, 0.35)):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(b, k, 3, generator=g, dtype=dtype) * 2.4 - 1.2
    scales = torch.rand(b, k, 3, generator=g, dtype=dtype) * (scale[1] - scale[0]) + scale[0]
    quats = torch.randn(b, k, 4, generator=g, dtype=dtype)
    colors = torch.rand(b, k, c, generator=g, dtype=dtype)
    opac = torch.rand(b, k, generator=g, dtype=dtype) * (opacity[1] - opacity[0]) + opacity[0]
    return means, scales, quats, colors, opac


def _oracle(means, scales, quats, colors, opac, size, background=None):
    """Per-pixel float64 evaluation written independently: rotation by quaternion conjugation, Mahalanobis
    distances by linear solves in the normalised frame, explicit sort, explicit early-stop mask and cumprod."""
    h, w = size
    means, scales, quats, colors, opac = (t.double() for t in (means, scales, quats, colors, opac))
    q = quats / quats.norm(dim=-1, keepdim=True)
    qw, qv = q[..., :1], q[..., 1:]

    def rotate(v):  # q v q^-1 for unit q: v + 2 qw (qv x v) + 2 qv x (qv x v)
        t = 2.0 * torch.linalg.cross(qv, v.expand_as(qv), dim=-1)
        return v + qw * t + torch.linalg.cross(qv, t, dim=-1)

    axes = [rotate(torch.eye(3, dtype=torch.float64)[i]) for i in range(3)]  # rotated own axes (B, K, 3)
    cov = sum(scales[..., i, None, None] ** 2 * axes[i][..., :2, None] * axes[i][..., None, :2] for i in range(3))
    # gsplat's 0.3 px^2 dilation, converted to the normalised frame (one pixel is 2/W wide and 2/H high)
    cov = cov + torch.diag(torch.tensor([0.3 * (2.0 / w) ** 2, 0.3 * (2.0 / h) ** 2], dtype=torch.float64))
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * 2.0 / h - 1.0
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * 2.0 / w - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)  # row-major (i, j)
    d = grid[None, None] - means[:, :, None, :2]  # (B, K, P, 2)
    sol = torch.linalg.solve(cov[:, :, None].expand(*d.shape[:3], 2, 2), d.unsqueeze(-1)).squeeze(-1)
    maha2 = (d * sol).sum(-1)
    alpha = torch.minimum(opac[..., None] * torch.exp(-0.5 * maha2), torch.tensor(0.999, dtype=torch.float64))
    alpha = alpha * (alpha >= 1.0 / 255.0)
    _, order = torch.sort(means[..., 2], dim=1, stable=True)
    alpha = torch.take_along_dim(alpha, order[..., None], dim=1)
    colors = torch.take_along_dim(colors, order[..., None], dim=1)
    survive = torch.cumprod(1.0 - alpha, dim=1)
    used = survive > 1e-4
    alpha = alpha * used
    t_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), dim=1)
    img = ((alpha * t_before)[..., None] * colors[:, :, None]).sum(1)  # (B, P, C)
    t_final = torch.prod(1.0 - alpha, dim=1)
    if background is not None:
        img = img + t_final[..., None] * background.double().reshape(-1, 1, colors.shape[-1])
    early = (~used).any(dim=1)  # pixels where compositing stopped early
    return img.permute(0, 2, 1).reshape(means.shape[0], -1, h, w), (1 - t_final).reshape(-1, 1, h, w), early


@pytest.mark.parametrize("channels,size", [(1, (20, 28)), (3, (24, 16)), (2, (17, 17))])
def test_torch_renderer_matches_per_pixel_oracle(channels, size):
    args = _random_gaussians(2, 40, channels, seed=channels)
    bg = torch.rand(channels, dtype=torch.float64)
    img, alpha = render_gaussians_2d(*args, size, backend="torch", background=bg, return_alpha=True)
    ref, ref_alpha, _ = _oracle(*args, size, background=bg)
    assert img.shape == (2, channels, *size) and img.dtype == torch.float64
    torch.testing.assert_close(img, ref, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-10, rtol=1e-9)


def test_early_stop_matches_oracle():
    # many nearly opaque, large Gaussians: transmittance falls below 1e-4 on most pixels
    args = _random_gaussians(1, 30, 3, seed=7, opacity=(0.6, 1.0), scale=(0.5, 1.0))
    img = render_gaussians_2d(*args, (12, 12), backend="torch")
    ref, _, early = _oracle(*args, (12, 12))
    assert early.float().mean() > 0.5
    torch.testing.assert_close(img, ref, atol=1e-10, rtol=1e-9)


def test_single_gaussian_analytic():
    # a Gaussian centred on pixel (1, 2) of a 4 x 6 image: sigma = 0 there, so the pixel is opacity * colour
    x, y = 2 * (2 + 0.5) / 6 - 1, 2 * (1 + 0.5) / 4 - 1
    means = torch.tensor([[[x, y, 0.0]]], dtype=torch.float64)
    scales = torch.full((1, 1, 3), 0.1, dtype=torch.float64)
    quats = torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64)
    color = torch.tensor([[[0.2, 0.5, 1.0]]], dtype=torch.float64)
    img = render_gaussians_2d(means, scales, quats, color, torch.tensor([[0.8]], dtype=torch.float64), (4, 6), "torch")
    torch.testing.assert_close(img[0, :, 1, 2], 0.8 * color[0, 0])
    # the neighbour one pixel to the right: std in pixels is 0.1 * W / 2 = 0.3, variance 0.09 + 0.3 dilation
    expected = 0.8 * math.exp(-0.5 * 1.0 / (0.09 + 0.3))
    torch.testing.assert_close(img[0, 2, 1, 3], torch.tensor(expected, dtype=torch.float64))


def test_scales_are_in_units_of_x_along_x_and_of_y_along_y():
    """The documented spread (the docstring said "in the units of x" for both axes): on a 24 x 40 image a rotated
    Gaussian's image-plane covariance is ``D R S^2 R^T D`` with ``D = diag(W / 2, H / 2)`` pixels, plus 0.3 pixel^2
    on the diagonal, and alphas below 1/255 are dropped: every pixel equals that closed form."""
    h, w, angle, (mx, my), opacity = 24, 40, 0.6, (0.1, -0.2), 0.8
    s = torch.tensor([0.12, 0.05, 0.3], dtype=torch.float64)
    quat = torch.tensor([math.cos(angle / 2), 0, 0, math.sin(angle / 2)], dtype=torch.float64)
    img = render_gaussians_2d(torch.tensor([[[mx, my, 0.0]]], dtype=torch.float64), s.view(1, 1, 3), quat.view(1, 1, 4),
                              torch.ones(1, 1, 1, dtype=torch.float64), torch.full((1, 1), opacity, dtype=torch.float64),
                              (h, w), "torch")[0, 0]  # fmt: skip
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    d = torch.diag(torch.tensor([w / 2, h / 2], dtype=torch.float64))
    precision = torch.linalg.inv(d @ rot @ torch.diag(s[:2] ** 2) @ rot.T @ d + 0.3 * torch.eye(2, dtype=torch.float64))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5 - (my + 1) * h / 2,
                                torch.arange(w, dtype=torch.float64) + 0.5 - (mx + 1) * w / 2, indexing="ij")  # fmt: skip
    offset = torch.stack([cols, rows], -1)
    alpha = opacity * torch.exp(-0.5 * torch.einsum("...i,ij,...j->...", offset, precision, offset))
    torch.testing.assert_close(img, torch.where(alpha < 1 / 255, 0.0, alpha), rtol=0, atol=1e-12)


def test_numpy_arrays_render_as_tensors_do():
    """NumPy inputs were refused (``means must be a torch.Tensor``) while the 3D renderer takes them: the same
    Gaussians as arrays give the analytic centre pixel, float64 kept."""
    import numpy as np

    x, y = 2 * (2 + 0.5) / 6 - 1, 2 * (1 + 0.5) / 4 - 1
    color = np.array([[[0.2, 0.5, 1.0]]])
    img = render_gaussians_2d(np.array([[[x, y, 0.0]]]), np.full((1, 1, 3), 0.1), np.array([[[1.0, 0, 0, 0]]]), color,
                              np.array([[0.8]]), (4, 6), "torch", background=np.zeros(3))
    assert img.dtype == torch.float64
    np.testing.assert_allclose(img[0, :, 1, 2].numpy(), 0.8 * color[0, 0], rtol=1e-12)


def test_rotation_about_z_transposes_an_elongated_gaussian():
    means = torch.zeros(1, 1, 3, dtype=torch.float64)
    scales = torch.tensor([[[0.5, 0.1, 0.1]]], dtype=torch.float64)
    ones = torch.ones(1, 1, 1, dtype=torch.float64)
    o = torch.full((1, 1), 0.9, dtype=torch.float64)
    flat = render_gaussians_2d(means, scales, torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64), ones, o, (16, 16), "torch")
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    upright = render_gaussians_2d(means, scales, torch.tensor([[[c, 0, 0, s]]], dtype=torch.float64), ones, o, (16, 16), "torch")
    assert flat[0, 0, 7, :].sum() > 3 * flat[0, 0, :, 7].sum()  # long along x
    torch.testing.assert_close(upright[0, 0], flat[0, 0].T)


def test_depth_order_decides_visibility_not_input_order():
    means = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]]])
    scales = torch.full((1, 2, 3), 1.0)
    quats = torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0]]])
    colors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    opac = torch.full((1, 2), 0.99)
    img = render_gaussians_2d(means, scales, quats, colors, opac, (8, 8), "torch")
    assert img[0, 1, 4, 4] > 0.95 and img[0, 0, 4, 4] < 0.03  # the second Gaussian is nearer
    swapped = render_gaussians_2d(means.flip(1), scales, quats, colors.flip(1), opac, (8, 8), "torch")
    torch.testing.assert_close(swapped, img)
    means_far = means.clone()
    means_far[..., 2] = means_far[..., 2].flip(1)
    img_far = render_gaussians_2d(means_far, scales, quats, colors, opac, (8, 8), "torch")
    assert img_far[0, 0, 4, 4] > 0.95


def test_chunked_rendering_and_gradients_match_unchunked(monkeypatch):
    args = [t.float() for t in _random_gaussians(2, 24, 3, seed=3)]
    for t in args:
        t.requires_grad_(True)
    img = render_gaussians_2d(*args, (16, 20), "torch")
    grads = torch.autograd.grad((img * torch.linspace(0, 1, img.numel()).view_as(img)).sum(), args)
    monkeypatch.setattr(compositor, "_CHUNK_ELEMENTS", 2 * 24 * 7)  # 7 pixels per chunk, recomputed in backward
    img_c = render_gaussians_2d(*args, (16, 20), "torch")
    grads_c = torch.autograd.grad((img_c * torch.linspace(0, 1, img.numel()).view_as(img)).sum(), args)
    torch.testing.assert_close(img_c, img)
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(gc, g)


def test_gradients_against_finite_differences():
    args = list(_random_gaussians(1, 4, 2, seed=11, opacity=(0.2, 0.6), scale=(0.3, 0.6)))
    args[0] = args[0] * 0.5  # keep the Gaussians well inside the 6 x 5 image
    for t in args:
        t.requires_grad_(True)
    fn = lambda *a: render_gaussians_2d(*a, (6, 5), "torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6)


def test_render_planar_gaussians_wrapper():
    g = torch.Generator().manual_seed(5)
    b, k = 2, 12
    means2d = torch.rand(b, k, 2, generator=g, dtype=torch.float64) * 2 - 1
    scales2d = torch.rand(b, k, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
    angles = (torch.rand(b, k, generator=g, dtype=torch.float64) - 0.5) * 6
    colors = torch.rand(b, k, 3, generator=g, dtype=torch.float64)
    opac = torch.rand(b, k, generator=g, dtype=torch.float64)
    img = render_planar_gaussians(means2d, scales2d, angles, colors, opac, (14, 18), "torch")
    # reference: depth = token order, covariance R(angle) diag(s^2) R(angle)^T built directly in 2D
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    cov = rot @ torch.diag_embed(scales2d**2) @ rot.transpose(-1, -2)
    evals, evecs = torch.linalg.eigh(cov)
    scales3 = torch.cat([evals.sqrt(), torch.full((b, k, 1), 0.1, dtype=torch.float64)], -1)
    angle_e = torch.atan2(evecs[..., 1, 0], evecs[..., 0, 0])
    quats = torch.stack([torch.cos(angle_e / 2), 0 * angle_e, 0 * angle_e, torch.sin(angle_e / 2)], -1)
    depth = torch.arange(k, dtype=torch.float64).expand(b, k)[..., None]
    ref, _, _ = _oracle(torch.cat([means2d, depth], -1), scales3, quats, colors, opac, (14, 18))
    torch.testing.assert_close(img, ref, atol=1e-10, rtol=1e-9)


def test_render_planar_gaussians_takes_numpy_arrays():
    """NumPy planar Gaussians were refused as "must be a (B, K, 2) tensor, got (1, 5, 2)"."""
    g = torch.Generator().manual_seed(6)
    args = [torch.rand(1, 5, 2, generator=g) - 0.5, torch.rand(1, 5, 2, generator=g) * 0.2 + 0.05,
            torch.rand(1, 5, generator=g), torch.rand(1, 5, 1, generator=g), torch.rand(1, 5, generator=g)]  # fmt: skip
    img = render_planar_gaussians(*(t.numpy() for t in args), (8, 8), "torch")
    torch.testing.assert_close(img, render_planar_gaussians(*args, (8, 8), "torch"))


def test_no_gaussians_gives_background():
    z = torch.zeros(2, 0, 3)
    img = render_gaussians_2d(z, z, torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), torch.zeros(2, 0), (5, 4), "torch",
                              background=torch.tensor([0.1, 0.2, 0.3]))  # fmt: skip
    torch.testing.assert_close(img, torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(2, 3, 5, 4))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.__setitem__(0, a[0][..., :2]), "means must have shape"),
        (lambda a: a.__setitem__(1, a[1][:, :3]), "scales must have shape"),
        (lambda a: a.__setitem__(1, -a[1]), "scales must be finite and positive"),
        (lambda a: a.__setitem__(2, a[2] * 0), "quats must be finite and non-zero"),
        (lambda a: a.__setitem__(0, a[0].index_fill(1, torch.tensor([3]), float("nan"))), "means must be finite"),
        (lambda a: a.__setitem__(3, a[3][..., :0]), "colors must have shape"),
        (lambda a: a.__setitem__(4, a[4] + 1.5), "opacities must be in"),
        (lambda a: a.__setitem__(3, a[3].long()), "colors must be a floating-point"),
    ],
)
def test_bad_inputs(change, message):
    """Each bad input is named; only NaN / Inf values are a NonFiniteGaussiansError (named as divergence in
    training), finite but invalid ones (negative scales, zero quaternions, opacity 2.5) a plain ValueError."""
    from medgmae.render import NonFiniteGaussiansError

    args = list(_random_gaussians(1, 6, 3, seed=0, dtype=torch.float32))
    change(args)
    with pytest.raises(ValueError, match=message) as raised:
        render_gaussians_2d(*args, (8, 8), "torch")
    assert isinstance(raised.value, NonFiniteGaussiansError) == (message == "means must be finite")


def test_bad_size_backend_background_and_cpu_gsplat():
    args = _random_gaussians(1, 6, 3, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="image_size"):
        render_gaussians_2d(*args, (8, 0))
    with pytest.raises(ValueError, match="image_size"):
        render_gaussians_2d(*args, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        render_gaussians_2d(*args, (8, 8), backend="opengl")
    with pytest.raises(ValueError, match="background"):
        render_gaussians_2d(*args, (8, 8), background=torch.zeros(4))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        render_gaussians_2d(*args, (8, 8), backend="gsplat")


def test_gsplat_cache_dir_stays_out_of_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "user_choice"))
    assert G.set_gsplat_cache_dir(tmp_path / "other") == str(tmp_path / "user_choice")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("MEDGMAE_CACHE_DIR", str(tmp_path / "cache"))
    assert G.set_gsplat_cache_dir() == str(tmp_path / "cache" / "torch_extensions")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert G.set_gsplat_cache_dir(tmp_path / "run" / "ext") == str(tmp_path / "run" / "ext")
    assert (tmp_path / "run" / "ext").is_dir()


def _fake_gsplat_without_nvcc(monkeypatch, tmp_path):
    """Stand-in for gsplat's JIT backend module as it is left when no nvcc is found (importing the real one would
    start a compilation wherever a CUDA toolkit is installed)."""
    fake = types.ModuleType("gsplat.cuda._backend")
    fake._C = None
    fake.cuda_toolkit_available = lambda: False
    import gsplat.cuda

    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", fake)
    monkeypatch.setattr(gsplat.cuda, "_backend", fake, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))


def test_missing_cuda_compiler_raises_clear_error(monkeypatch, tmp_path):
    _fake_gsplat_without_nvcc(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match="no CUDA compiler"):
        G._load_gsplat()


def test_auto_backend_falls_back_to_torch_without_nvcc(monkeypatch, tmp_path, caplog):
    """A CUDA device whose gsplat build has no nvcc: "auto" resolves to the PyTorch compositor with one warning line,
    logged once; explicit choices and CPU devices are unaffected."""
    _fake_gsplat_without_nvcc(monkeypatch, tmp_path)
    monkeypatch.setattr(G, "_GSPLAT_PROBE", {})
    monkeypatch.setattr(G, "_NOTICES", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine without nvcc
    with caplog.at_level("WARNING", logger="medgmae.twod.gsplat_backend"):
        assert G.resolve_backend_2d("auto", torch.device("cuda")) == "torch"  # the real probe, no CUDA needed
        assert G.resolve_backend_2d("auto", "cuda:0") == "torch"
    notices = [r for r in caplog.records if "gsplat is unavailable" in r.getMessage()]
    assert len(notices) == 1 and "no CUDA compiler (nvcc)" in notices[0].getMessage()
    assert "\n" not in notices[0].getMessage() and "PyTorch compositor" in notices[0].getMessage()
    assert G._GSPLAT_PROBE["error"] is not None  # probed once, cached
    assert G.resolve_backend_2d("gsplat", "cuda") == "gsplat"  # an explicit choice still fails loudly when rendering
    assert G.resolve_backend_2d("auto", "cpu") == "torch" and G.resolve_backend_2d("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        G.resolve_backend_2d("gsplat", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        G.resolve_backend_2d("opengl", "cuda")


def test_auto_backend_uses_gsplat_when_it_loads_and_reports_other_failures(monkeypatch, caplog):
    monkeypatch.setattr(G, "_NOTICES", set())
    assert G.resolve_backend_2d("auto", "cuda", probe=lambda: None) == "gsplat"

    def broken():
        raise ImportError("No module named 'gsplat'")

    with caplog.at_level("WARNING", logger="medgmae.twod.gsplat_backend"):
        assert G.resolve_backend_2d("auto", "cuda", probe=broken) == "torch"
    assert any("No module named 'gsplat'" in r.getMessage() for r in caplog.records)


def _fresh_probe(monkeypatch, tmp_path, cuda: bool) -> None:
    """No probe made yet, no notice given, the default cache folder under ``tmp_path``, CUDA there or not."""
    monkeypatch.setattr(G, "_GSPLAT_PROBE", {})
    monkeypatch.setattr(G, "_NOTICES", set())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")  # restored after the test, whatever the code under test sets
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("MEDGMAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


def test_gsplat_not_installed_says_so_and_makes_no_folder(monkeypatch, tmp_path, caplog):
    """gsplat missing: the fallback notice says it is not installed and how to install it (not that its CUDA
    extension failed to build), and no cache folder is made."""
    _fresh_probe(monkeypatch, tmp_path, cuda=True)
    monkeypatch.setitem(sys.modules, "gsplat", None)  # import gsplat fails as where it is not installed
    with caplog.at_level("WARNING", logger="medgmae.twod.gsplat_backend"):
        assert G.resolve_backend_2d("auto", "cuda") == "torch"
    notice = " ".join(r.getMessage() for r in caplog.records)
    assert "gsplat is not installed: install it with `pip install gsplat`" in notice and "built" not in notice
    with pytest.raises(RuntimeError, match="gsplat is not installed"):
        G._load_gsplat()  # backend="gsplat" asked for explicitly
    assert not (tmp_path / "cache").exists()


def test_auto_on_cuda_without_a_cuda_device_builds_nothing(monkeypatch, tmp_path, caplog):
    """``resolve_backend_2d("auto", "cuda")`` where no CUDA device is available: the compositor, a notice naming
    the reason, and no gsplat import, build or cache folder."""
    _fresh_probe(monkeypatch, tmp_path, cuda=False)
    monkeypatch.setattr(G, "_load_gsplat", lambda: pytest.fail("gsplat loaded without a CUDA device"))
    with caplog.at_level("WARNING", logger="medgmae.twod.gsplat_backend"):
        assert G.resolve_backend_2d("auto", "cuda") == "torch"
    assert any("no CUDA device is available" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "cache").exists()


def test_gsplat_gpu_tests_skip_without_nvcc(monkeypatch, tmp_path, request):
    """The fixture of the gsplat GPU tests turns a missing nvcc into a skip, not a failure."""
    _fake_gsplat_without_nvcc(monkeypatch, tmp_path)
    with pytest.raises(pytest.skip.Exception, match="no CUDA compiler"):
        request.getfixturevalue("gsplat_cuda")


@pytest.mark.gpu
@pytest.mark.usefixtures("gsplat_cuda")
@pytest.mark.parametrize("channels", [1, 3])
def test_gsplat_matches_torch_on_cuda(channels):
    args = [t.float().cuda() for t in _random_gaussians(2, 64, channels, seed=21)]
    bg = torch.rand(channels, device="cuda")
    for t in args:
        t.requires_grad_(True)
    img_g, alpha_g = render_gaussians_2d(*args, (40, 56), "gsplat", background=bg, return_alpha=True)
    img_t, alpha_t = render_gaussians_2d(*args, (40, 56), "torch", background=bg, return_alpha=True)
    torch.testing.assert_close(img_g, img_t, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(alpha_g, alpha_t, atol=2e-4, rtol=1e-3)
    weight = torch.rand_like(img_t)
    grads_g = torch.autograd.grad((img_g * weight).sum(), args)
    grads_t = torch.autograd.grad((img_t * weight).sum(), args)
    for name, gg, gt in zip(("means", "scales", "quats", "colors", "opacities"), grads_g, grads_t):
        scale = gt.abs().max().clamp_min(1e-6)
        assert ((gg - gt).abs().max() / scale) < 2e-2, name


def test_a_fractional_image_size_is_refused_not_truncated():
    args = _random_gaussians(1, 6, 3, seed=0, dtype=torch.float32)
    for size in ((4.5, 4), (4, 4.5), (True, 4)):
        with pytest.raises(ValueError, match="image_size must be two positive ints"):
            render_gaussians_2d(*args, size, "torch")


@pytest.mark.parametrize("k", [0, 5])
@pytest.mark.parametrize("wide", range(5))
def test_mixed_dtypes_render_in_the_wider_one(k, wide):
    """One float64 input among float32 ones gives a float64 image and opacity, matching an all-float64 render."""
    args = list(_random_gaussians(2, k, 3, seed=1, dtype=torch.float64))
    narrow = [t.float() if i != wide else t for i, t in enumerate(args)]
    image, alpha = render_gaussians_2d(*narrow, (6, 7), "torch", return_alpha=True)
    assert image.dtype == alpha.dtype == torch.float64
    want, want_alpha = render_gaussians_2d(*[t.float().double() for t in args], (6, 7), "torch", return_alpha=True)
    torch.testing.assert_close(image, want)
    torch.testing.assert_close(alpha, want_alpha)
