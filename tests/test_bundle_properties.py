"""MONAI's bundle conventions: each config's default run id, and the workflow properties of ``ConfigWorkflow``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
#: Each config's run list, which its default run id ``run`` runs.
RUN_LISTS = {
    "medgmae_pretrain/configs/train.json": "training",
    "medgmae_pretrain/configs/multi_gpu_train.json": "training",
    "medgmae_pretrain/configs/inference.json": "inferring",
    "gmae2d_pretrain/configs/train.json": "training",
    "gvit_classification/configs/train.json": "training",
    "gvit_classification/configs/evaluate.json": "evaluating",
    "gvit_classification/configs/inference.json": "inferring",
    "unetr_finetune/configs/train.json": "training",
    "unetr_finetune/configs/multi_gpu_train.json": "training",
    "unetr_finetune/configs/evaluate.json": "evaluating",
    "unetr_finetune/configs/inference.json": "inferring",
    "unetr_finetune/configs/export.json": "exporting",
}
#: Training configs whose properties MONAI's check finds, with settings that keep the check's data small.
TRAIN_CONFIGS = {
    "medgmae_pretrain/configs/train.json": {"num_phantoms": 2, "num_val_phantoms": 1, "phantom_shape": [32, 32, 32]},
    "gmae2d_pretrain/configs/train.json": {"num_phantoms": 1, "val_images": 1},
    "unetr_finetune/configs/train.json": {},
}


def test_every_config_is_listed():
    shipped = {str(p.relative_to(BUNDLES)) for p in BUNDLES.glob("*/configs/*.json") if p.name != "metadata.json"}
    assert shipped == set(RUN_LISTS)


@pytest.mark.parametrize("config", sorted(RUN_LISTS))
def test_default_run_id_runs_the_run_list(config):
    """``monai.bundle run`` without a run id runs ``run``: each config's one run list."""
    d = json.loads((BUNDLES / config).read_text(encoding="utf-8"))
    assert d["run"] == f"$@{RUN_LISTS[config]}" and isinstance(d[RUN_LISTS[config]], list)


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_multi_gpu_run_is_the_multi_gpu_training(bundle):
    from monai.bundle import ConfigParser

    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    multi = json.loads((configs / "multi_gpu_train.json").read_text(encoding="utf-8"))
    assert parser["run"] == "$@training" and parser["training"] == multi["training"]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("config", sorted(TRAIN_CONFIGS))
def test_train_workflow_properties(config, tmp_path, monkeypatch):
    """``ConfigWorkflow(workflow_type="train")`` finds every required and optional property. ``initialize`` writes
    nothing (not even ``output_dir``, which a run from Python holds while it runs); the check builds the trainer and
    its data (the default phantoms), all in ``output_dir``."""
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    workflow = ConfigWorkflow(config_file=str(BUNDLES / config), workflow_type="train", bundle_root=str(tmp_path),
                              output_dir=str(out), device="cpu", num_workers=0, **TRAIN_CONFIGS[config])  # fmt: skip
    workflow.initialize()
    assert _files(tmp_path) == []
    assert workflow.check_properties() == []
    assert workflow.trainer.inferer is workflow.train_inferer and workflow.max_epochs >= 1
    assert {p.parts[0] for p in map(Path, _files(tmp_path))} <= {"out"}


def test_gvit_metadata_outputs_are_what_forward_returns():
    """``GViT.forward`` returns the logits alone (its Gaussians stay inside the model): the metadata declares that."""
    meta = json.loads((BUNDLES / "gvit_classification" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    outputs = meta["network_data_format"]["outputs"]
    assert set(outputs) == {"pred"}
    assert outputs["pred"]["num_channels"] == len(outputs["pred"]["channel_def"])


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "gmae2d_pretrain"])
def test_the_summary_reference_names_the_summary_handler(bundle):
    """``val#summary`` names the summary handler by its place in ``train#handlers`` (MONAI's property check takes
    only objects there, not references): a reordered list must not point it at another handler."""
    config = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    index = int(config["val"]["summary"].rsplit("#", 1)[1])
    assert config["val"]["summary"] == f"@train#handlers#{index}"
    assert config["train"]["handlers"][index]["_target_"].endswith("Summary")
