"""Every trained network leaves each parameter a gradient in the parameter's own dense layout, as DistributedDataParallel's
gradient buckets hold it: a token parameter expanded and concatenated with one volume per process (batch 1, the
usual 3D setting) got a strided view of the concatenation's gradient, and every torchrun process warned "Grad
strides do not match bucket view strides ... may impair performance" at its first step."""

from __future__ import annotations

import pytest
import torch

from medgmae.mae_training.models import MODEL_KINDS, build_model
from medgmae.networks.unetr import MedGMAEUNETR


def _strided_gradients(net: torch.nn.Module, loss: torch.Tensor) -> list[str]:
    loss.backward()
    # a bucket view is a dense tensor of the parameter's shape: its strides are those of a new tensor of that shape
    return [f"{name} {tuple(p.grad.stride())}" for name, p in net.named_parameters()
            if p.grad is not None and p.grad.stride() != torch.empty(p.shape).stride()]  # fmt: skip


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_pretraining_models_give_gradients_in_the_parameters_layout(kind):
    torch.manual_seed(0)
    net = build_model(kind, img_size=16, patch_size=8, num_gaussians=8, render_backend="torch") if kind != "voxel-mae" \
        else build_model(kind, img_size=16, patch_size=8)  # fmt: skip
    assert _strided_gradients(net, net(torch.rand(1, 1, 16, 16, 16)).loss) == []


def test_the_segmentation_network_gives_gradients_in_the_parameters_layout():
    torch.manual_seed(0)
    net = MedGMAEUNETR(3, feature_size=4, img_size=16, patch_size=8, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    assert _strided_gradients(net, net(torch.rand(1, 1, 16, 16, 16)).square().mean()) == []
