"""A training run's seed repeats it whatever ``num_workers`` is: 3D pre-training (random crops, two per volume,
and the paper's augmentation), fine-tuning (class-balanced crops), 2D GMAE (flips) and GViT (its augmentation, and a
validation loader built after the model's weights were drawn) give bit-identical weights with 0 and 2 workers. The
runs are of the bundles' configs in this process (``monai.bundle.run``), the flags as the command line would give them."""

from __future__ import annotations

import torch
from monai.bundle import run

from bundle_helpers import bundle_keywords
from finetune_helpers import bundle_in_this_process
from gmae2d_helpers import train_gmae2d_bundle
from gvit_helpers import TINY, run_gvit_bundle
from pretrain_helpers import SMALL, TRAIN, read_checkpoint


def _different_tensors(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])]


def test_pretraining_weights_do_not_depend_on_num_workers(tmp_path):
    changed = {"--num_samples": "2", "--batch_size": "2"}
    settings = [changed.get(SMALL[i - 1], v) if i else v for i, v in enumerate(SMALL)] + ["--augment", "true", "--max_epochs", "2"]
    assert settings.count("2") >= 2
    encoders = []
    for workers in ("0", "2"):
        out = tmp_path / f"workers{workers}"
        run("training", config_file=TRAIN, logging_file=False,
            **bundle_keywords([*settings, "--output_dir", str(out), "--num_workers", workers]))  # fmt: skip
        encoders.append(read_checkpoint(out / "encoder.pt")["state_dict"])
    assert len(encoders[0]) > 30 and _different_tensors(*encoders) == []


def test_gvit_weights_do_not_depend_on_num_workers(tmp_path):
    settings = [f"--{k}={v}" for k, v in {**TINY, "batch_size": 8}.items()] + ["--augment", "true"]
    models = []
    for workers in ("0", "2"):
        out = tmp_path / f"workers{workers}"
        run_gvit_bundle("train.json", logging_file=False, **bundle_keywords([*settings, "--output_dir", str(out), "--num_workers", workers]))
        models.append(torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"])
    assert len(models[0]) > 30 and _different_tensors(*models) == []


def test_fine_tuning_weights_do_not_depend_on_num_workers(tmp_path):
    networks = []
    for workers in ("0", "2"):
        out = tmp_path / f"workers{workers}"
        bundle_in_this_process("training", "train.json", **bundle_keywords([
            "--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
            "--num_samples", "2", "--max_epochs", "1", "--num_workers", workers, "--progress_bar", "false"]))  # fmt: skip
        networks.append(read_checkpoint(out / "checkpoint_final.pt")["objects"]["network"])
    assert len(networks[0]) > 30 and _different_tensors(*networks) == []


def test_gmae2d_flips_do_not_depend_on_num_workers(tmp_path):
    encoders = []
    for workers in (0, 2):
        train_gmae2d_bundle(tmp_path / f"workers{workers}", flip=True, max_epochs=2, num_workers=workers)
        encoders.append(read_checkpoint(tmp_path / f"workers{workers}" / "encoder.pt")["state_dict"])
    assert len(encoders[0]) > 20 and _different_tensors(*encoders) == []
