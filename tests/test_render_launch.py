"""Every launch shape ``bench/render_launch.py`` times on a GPU renders what the torch backend renders.

The block shapes change only the order of the kernels' sums, so each shape must give the torch backend's volume
and gradients (an independent implementation); on a CPU-only machine through ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_helpers import random_gaussians  # noqa: E402

import medgmae.render._triton_impl as triton_impl  # noqa: E402
from medgmae.render import render_volume  # noqa: E402

from bench_helpers import load_bench  # noqa: E402

pytestmark = [
    pytest.mark.triton_interpreter,
    pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="needs CUDA or TRITON_INTERPRET=1"),
]  # fmt: skip

render_launch = load_bench("render_launch")


@pytest.mark.parametrize("regime", sorted(render_launch.CANDIDATES))
def test_every_launch_shape_renders_what_the_torch_backend_renders(regime):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = (8, 9, 16)  # four 8^3 tiles, two of them cut
    gs = [t.to(device) for t in random_gaussians(1, 12, shape, seed=11, scale_range=(0.6, 3.0))]
    weight = torch.randn((1, *shape), generator=torch.Generator().manual_seed(4)).to(device)
    xs = [t.clone().requires_grad_() for t in gs]
    ref = render_volume(*xs, shape, cutoff=3.0, backend="torch")
    ref_grads = torch.autograd.grad((ref * weight).sum(), xs)
    original = triton_impl._launch_config
    shapes = render_launch.all_shapes(regime)
    assert len(set(shapes)) == len(shapes) == len(render_launch.CANDIDATES[regime]) + 1
    for fwd, bwd in shapes:
        with render_launch.launch_shapes(fwd, bwd):
            out, grads = render_launch.br.render_with_grads(gs, shape, 3.0, weight, "triton")
        scale = ref.abs().max()
        assert (out - ref.detach()).abs().max() <= 1e-5 * scale, (fwd, bwd)
        for g, r in zip(grads, ref_grads):
            assert (g - r).abs().max() <= 1e-3 * r.abs().max(), (fwd, bwd)
    assert triton_impl._launch_config is original
