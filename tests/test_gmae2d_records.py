"""What a 2D GMAE pre-training run records of how it was made: its settings (the seed among them) and software in
``summary.json``, the seed in its checkpoints, which a resume with another seed is refused by, naming it, and the
seed and loader workers in its model files, which a file of an earlier version lacks and still loads without."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch
from gmae2d_helpers import TINY_GMAE, train_gmae2d_bundle
from PIL import Image

from medgmae.checkpoint import load_checkpoint
from medgmae.twod.cli import main as cli_main
from medgmae.twod.gmae import GMAE2D


def _error_chain(e: BaseException) -> list[str]:
    chain = []
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    return chain


def test_summary_records_the_settings_seed_and_software_and_a_resume_names_another_seed(tmp_path, folder_state, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        train_gmae2d_bundle(out, max_epochs=1, seed=3)
    assert any(r.getMessage().endswith(", seed 3") for r in caplog.records), caplog.text[-2000:]  # the start line
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    training = summary["settings"]["training"]
    assert training["seed"] == 3 and training["max_epochs"] == 1 and training["batch_size"] == 4
    assert training["learning_rate"] == 0.0005 and training["num_workers"] == 0
    assert summary["settings"]["data"] == {"flip": False, "window": [-350.0, 400.0], "dataset_dir": "",
                                           "num_phantoms": 1, "slices_per_case": 6}  # fmt: skip
    model = summary["settings"]["model"]
    assert model["img_size"] == [32, 32] and model["num_gaussians"] == TINY_GMAE["num_gaussians"]
    assert summary["software"]["packages"]["torch"] == torch.__version__
    assert summary["software"]["python"] == platform.python_version()

    before = folder_state(out)
    with pytest.raises(Exception) as info:
        train_gmae2d_bundle(out, max_epochs=2, seed=4, resume=True)
    chain = _error_chain(info.value)
    assert any("seed: saved 3, now 4" in t and "--seed 3" in t for t in chain), chain
    assert folder_state(out) == before


def test_a_checkpoint_from_before_the_seed_was_recorded_resumes(tmp_path, caplog):
    """Checkpoints written before the seed was recorded resume (the seed is not compared; a warning says so)."""
    out = tmp_path / "run"
    train_gmae2d_bundle(out, max_epochs=1)
    for path in out.glob("checkpoint_*.pt"):
        saved = torch.load(path, weights_only=True)
        del saved["objects"]["settings"]["settings"]["seed"]
        torch.save(saved, path)
    with caplog.at_level("WARNING"):
        train_gmae2d_bundle(out, max_epochs=2, resume=True)
    assert torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)["objects"]["settings"]["settings"]["seed"] == 0
    assert "records no seed settings" in caplog.text


def test_the_model_files_record_the_seed_and_loader_workers_and_an_older_file_still_serves(tmp_path):
    """model.pt, best_model.pt and encoder.pt say the seed and data loader workers the run trained with (as its
    summary.json does), so a model file handed on alone says how it was made; a model.pt without that record, as
    earlier versions wrote it, loads and runs medgmae-2d as before."""
    out = tmp_path / "run"
    train_gmae2d_bundle(out, max_epochs=1, seed=5, num_workers=1)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))["settings"]["training"]
    for name in ("model.pt", "best_model.pt", "encoder.pt"):
        raw = torch.load(out / name, weights_only=True)
        assert raw["extra"]["run"] == {"seed": 5, "num_workers": 1}, name
        assert (raw["extra"]["run"]["seed"], raw["extra"]["run"]["num_workers"]) == (summary["seed"], summary["num_workers"])
    assert GMAE2D.from_checkpoint(out / "model.pt").run_settings == {"seed": 5, "num_workers": 1}
    assert load_checkpoint(out / "encoder.pt", "medgmae-encoder").run == {"seed": 5, "num_workers": 1}

    older = torch.load(out / "model.pt", weights_only=True)
    del older["extra"]["run"]
    torch.save(older, tmp_path / "older.pt")
    model = GMAE2D.from_checkpoint(tmp_path / "older.pt")
    assert model.run_settings is None and model.data_settings == {"flip": False, "window": [-350.0, 400.0]}
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    assert cli_main(["layers", "--checkpoint", str(tmp_path / "older.pt"), "--image", str(tmp_path / "img.png"),
                     "--out", str(tmp_path / "layers"), "--num-layers", "2", "--device", "cpu"]) == 0  # fmt: skip
    assert (tmp_path / "layers" / "layer_stack.png").is_file()
