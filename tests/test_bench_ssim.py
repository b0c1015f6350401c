"""bench/ssim.py at a toy size, so that the script cannot rot between runs."""

import sys

import torch

from bench_helpers import load_bench

bench = load_bench("ssim")


def test_the_baseline_is_the_metric_and_the_script_prints_both(monkeypatch, capsys):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 17, 15, 13, generator=g)
    pred = target + 0.1 * torch.randn(target.shape, generator=g)
    mask = (torch.rand(target.shape, generator=g) < 0.5).float()
    from medgmae.mae_training import masked_ssim

    assert torch.allclose(bench.monai_masked_ssim(pred, target, mask), masked_ssim(pred, target, mask), atol=1e-5)
    monkeypatch.setattr(sys, "argv", ["ssim.py", "--size", "16", "--repeats", "1"])
    bench.main()
    out = capsys.readouterr().out
    assert "| banded matrix products (now) |" in out and "| MONAI separable_filtering (before) |" in out
    assert "before / now:" in out
