"""bench/gmae2d_zero_shot.py: its flags checked before the pre-training, and models with few Gaussians."""

import json

import pytest
import torch

from medgmae.twod.gmae import GMAE2D

from bench_helpers import load_bench

bench = load_bench("gmae2d_zero_shot")


@pytest.fixture()
def few_gaussians(tmp_path):
    """An untrained 32 x 32 model of 8 Gaussians (fewer than the finest edge granularity, 16)."""
    torch.manual_seed(0)
    model = GMAE2D(img_size=32, patch_size=8, model_size="tiny", num_gaussians=8, render_backend="torch")
    path = tmp_path / "model.pt"
    torch.save(model.model_checkpoint(), path)
    return path


def test_more_layers_than_gaussians_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "pretrain", lambda args: pytest.fail("pre-trained despite the bad flags"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        bench.main(["--output-dir", str(out), "--num-gaussians", "8", "--num-layers", "16"])
    assert e.value.code == 2 and "--num-layers 16 exceeds the 8 Gaussians of --num-gaussians" in capsys.readouterr().err
    assert not out.exists()


def test_few_gaussians_get_coarser_edges_and_layers(few_gaussians, tmp_path, capsys):
    """8 Gaussians: edges at l@4 and l@8 and 8 figure-ground layers by default; more layers asked of the given
    model is a usage error that writes nothing."""
    out = tmp_path / "out"
    base = ["--output-dir", str(out), "--checkpoint", str(few_gaussians), "--eval-cases", "1", "--slices-per-case", "1"]
    with pytest.raises(SystemExit) as e:
        bench.main([*base, "--num-layers", "12"])
    assert e.value.code == 2 and f"the 8 Gaussians of the model of --checkpoint {few_gaussians}" in capsys.readouterr().err
    assert not out.exists()
    assert bench.main(base) == 0
    results = json.loads((out / "results_gmae2d.json").read_text(encoding="utf-8"))
    assert results["figure_ground"]["num_layers"] == 8
    assert {k for k in results["edges"] if k.startswith("gmae")} == {"gmae l@4", "gmae l@8"}


def test_edge_granularities_are_the_2d_tools_defaults():
    assert bench.edge_granularities(128) == (4, 8, 16) and bench.edge_granularities(2) == (2,)
    assert bench.edge_granularities(12) == (4, 8)  # as medgmae-2d edges: those up to the Gaussians, not capped
