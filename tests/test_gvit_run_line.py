"""What a GViT training run states when it starts (medgmae.twod.gvit_run_line)."""

from __future__ import annotations

import logging

from gvit_helpers import shapes_dataset, gvit_workflow

from medgmae.twod.classification_data import load_classification_data
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_run_line import gvit_run_line


def test_the_start_line_names_device_amp_renderer_model_gaussians_phases_and_batch():
    model = GViT(3, 16, 2, num_gaussians=6, patch_size=4)
    total = sum(p.numel() for p in model.parameters())
    line = gvit_run_line(model, "cpu", True, "auto", {"warmup": 2, "classifier": 0, "joint": 3}, batch_size=8)
    assert line == (
        "GViT training runs on cpu, AMP off (amp true has no effect on the CPU), renderer torch, "
        f"model gvit tiny ({total:,} parameters), K=6 Gaussians, 16x16 images of 3 channels, "
        "epochs warmup 2 / classifier 0 (skipped) / joint 3, global batch 8 images per step (1 process x 8)"
    )
    assert gvit_run_line(model, "cpu", False, "torch", {"warmup": 1}, None).startswith("GViT training runs on cpu, AMP off, ")
    assert "global batch" not in gvit_run_line(model, "cpu", False, "torch", {"warmup": 1}, None)


def test_the_workflow_logs_the_line_once_before_the_first_phase(tmp_path, caplog):
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    flow = gvit_workflow(data, tmp_path / "run", resume=False)
    flow.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    with caplog.at_level(logging.INFO, logger="medgmae.gvit"):
        flow.run()
    messages = [r.getMessage() for r in caplog.records if r.name == "medgmae.gvit"]
    lines = [m for m in messages if m.startswith("GViT training runs on")]
    assert lines == [flow.run_line()]
    assert messages.index(lines[0]) < next(i for i, m in enumerate(messages) if m.startswith("GViT phase 'warmup'"))
    assert "K=6 Gaussians, 16x16 images of 1 channel, epochs warmup 1 / classifier 0 (skipped) / joint 0 (skipped)" in lines[0]
    assert lines[0].endswith("global batch 4 images per step (1 process x 4)")
