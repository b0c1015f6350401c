"""The fine-tuned UNETR exported as TorchScript with its pre-processing (medgmae.finetune.export, export.json)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.export import export_torchscript, load_exported
from medgmae.networks.unetr import MedGMAEUNETR
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "unetr_finetune" / "configs"
#: not the bundle's defaults: anisotropic spacing, another window, a non-cubic patch
SPEC = PreprocessingSpec(spacing=(0.8, 1.1, 2.5), hu_window=(-300.0, 400.0), input_size=(24, 24, 12), patch_size=12)


def _finetuned(path: Path, out_channels: int = 5) -> MedGMAEUNETR:
    torch.manual_seed(3)
    enc = MaskedViTEncoder(img_size=(24, 24, 12), patch_size=12, hidden_size=48, num_layers=2, num_heads=4, mlp_ratio=2.0)
    net = MedGMAEUNETR(out_channels, encoder=enc, feature_size=4).eval()
    torch.save(make_checkpoint("medgmae-unetr", net.config(), net.state_dict(), SPEC, {"epoch": 1}), path)
    return net


def test_export_matches_the_network_and_carries_the_spec(tmp_path):
    net = _finetuned(tmp_path / "best_model.pt")
    path = export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts", CONFIGS / "metadata.json")
    traced, spec, meta = load_exported(path)
    assert spec == SPEC
    assert meta["roi_size"] == [24, 24, 12] and meta["in_channels"] == 1 and meta["out_channels"] == 5
    assert meta["name"] == "UNETR fine-tuning"  # the bundle's metadata travels too
    for seed in range(3):  # the network as built here, on inputs neither export nor tracing saw
        x = torch.randn(2, 1, 24, 24, 12, generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            torch.testing.assert_close(traced(x), net(x), atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "model.ts"]  # no temporary file left


def test_load_exported_refuses_other_files(tmp_path):
    bad = tmp_path / "model.ts"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_exported(bad)
    with pytest.raises(FileNotFoundError, match="no such TorchScript file"):
        load_exported(tmp_path / "missing.ts")


def _run_export(*overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "exporting", "--config_file", str(CONFIGS / "export.json"),
           "--logging_file", str(CONFIGS / "logging.conf"), *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300)


def test_bundle_export_writes_model_ts_and_refuses_a_pretraining_file(tmp_path):
    _finetuned(tmp_path / "best_model.pt", out_channels=3)
    proc = _run_export("--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert load_exported(tmp_path / "model.ts")[2]["out_channels"] == 3
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    wrong = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), SPEC), wrong)
    proc = _run_export("--checkpoint", str(wrong), "--export_path", str(tmp_path / "other.ts"))
    assert proc.returncode != 0
    assert str(wrong) in proc.stderr and "medgmae-encoder" in proc.stderr
    assert not (tmp_path / "other.ts").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
