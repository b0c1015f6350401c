"""The torch backend's tile path (:func:`medgmae.render._torch_impl.torch_path` ``"tile"``, the plain-PyTorch twin
of the Triton kernels and the path of Gaussians wider than a stencil): its hand-written backward against autograd
through the dense float64 reference."""

from __future__ import annotations

import torch

from medgmae.render import render_volume
from medgmae.render._reference import render_volume_reference as dense_reference
from medgmae.render._torch_impl import torch_path

from render_helpers import random_gaussians

SHAPE = (11, 14, 9)


def test_tile_path_float64_gradients_match_reference():
    """Gradients of all four inputs on the tile path equal autograd through the dense reference."""
    gs = random_gaussians(2, 8, SHAPE, seed=4, dtype=torch.float64)
    gs = [t.clone().requires_grad_() for t in gs]
    with torch_path("tile"):
        out = render_volume(*gs, SHAPE, cutoff=3.0, backend="torch")
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), gs)
    ref, _ = dense_reference(*gs, SHAPE, 3.0)
    want = torch.autograd.grad((ref * w).sum(), gs)
    for name, a, b in zip(("means", "scales", "quats", "intensities"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_tile_path_gradcheck_float64():
    """Float64 gradcheck of the tile path (cutoff 8: the mask's jumps are ~1e-14)."""
    shape = (4, 5, 3)
    gs = random_gaussians(2, 2, shape, seed=3, scale_range=(0.7, 2.0), dtype=torch.float64, margin=1.0)
    gs = [t.clone().requires_grad_() for t in gs]

    def f(m, s, q, i):
        with torch_path("tile"):
            return render_volume(m, s, q, i, shape, cutoff=8.0, backend="torch")

    assert torch.autograd.gradcheck(f, gs, eps=1e-6, atol=1e-6, rtol=1e-4)
