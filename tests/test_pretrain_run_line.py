"""What a pre-training run states when it starts (medgmae.mae_training.run_line) and the learning-rate scalar it
writes to TensorBoard (medgmae.engine.LearningRateScalar)."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import LrScheduleHandler
from monai.optimizers import WarmupCosineSchedule
from torch.utils.tensorboard import SummaryWriter

from medgmae.engine import LearningRateScalar
from medgmae.mae_training import MaskedAutoencoderTrainer, build_model
from medgmae.mae_training.run_line import renderer_in_use, run_settings_line
from medgmae.render import resolve_backend
from medgmae.twod.gmae import GMAE2D


def _params(model: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_the_start_line_names_device_amp_renderer_model_gaussians_mask_and_batch():
    model = build_model("medgmae", "tiny", img_size=16, patch_size=8, num_gaussians=4)
    total, trainable = _params(model)
    line = run_settings_line(model, torch.device("cpu"), True, batch_size=2, crops_per_item=3, processes=1)
    assert line.startswith("pre-training runs on cpu, AMP off (amp true has no effect on the CPU), renderer torch, ")
    assert f"model medgmae tiny ({total:,} parameters" in line
    assert (f", {trainable:,} trainable)" in line) == (trainable != total)
    # a 16^3 crop of 8^3 patches has 8 patches; a quarter of them (2) stay visible
    assert "K=4 Gaussians, mask ratio 0.75 (2 of 8 patches visible per crop)" in line
    assert line.endswith("global batch 6 crops per step (1 process x 2 volumes x 3 crops)")
    assert "AMP off, " in run_settings_line(model, "cpu", False, 1)
    assert "augmentation" not in line
    augmented = run_settings_line(model, "cpu", False, 1, augmented=True)
    assert "patches visible per crop), crops augmented as in the paper (random flips, 90-degree turns, " in augmented


def test_the_start_line_counts_every_level_and_every_process():
    star = build_model("medgmae-star", "tiny", img_size=16, patch_size=8, num_gaussians=4, mask_ratio=0.5)
    line = run_settings_line(star, "cpu", False, batch_size=1, crops_per_item=2, processes=4)
    # levels of 1, 2 and 4 times K
    assert "model medgmae-star tiny" in line and "K=4 Gaussians (28 in all over 3 levels)" in line
    assert "(4 of 8 patches visible per crop)" in line
    assert line.endswith("global batch 8 crops per step (4 processes x 1 volume x 2 crops)")


def test_the_start_line_of_a_model_without_gaussians_and_of_a_2d_model():
    voxel = build_model("voxel-mae", "tiny", img_size=16, patch_size=8)
    line = run_settings_line(voxel, "cpu", False, batch_size=1)
    assert "no renderer (voxel decoder)" in line and "Gaussians" not in line
    assert f"model voxel-mae tiny ({_params(voxel)[0]:,} parameters" in line
    flat = GMAE2D(img_size=32, patch_size=8, model_size="tiny", num_gaussians=8)
    line = run_settings_line(flat, "cpu", False, batch_size=16)
    assert "renderer torch" in line and "K=8 Gaussians" in line
    assert "(4 of 16 patches visible per image)" in line
    assert line.endswith("global batch 16 images per step (1 process x 16)")


def test_the_renderer_named_is_the_one_auto_resolves_to():
    model = build_model("medgmae", "tiny", img_size=16, patch_size=8, num_gaussians=4)
    assert renderer_in_use(model, torch.device("cuda:0")) == "triton" == resolve_backend("auto", "cuda")
    assert renderer_in_use(model, "cpu") == "torch"
    forced = build_model("medgmae", "tiny", img_size=16, patch_size=8, num_gaussians=4, render_backend="torch")
    assert renderer_in_use(forced, torch.device("cuda:0")) == "torch"


def _trainer(num_crops: int = 2) -> MaskedAutoencoderTrainer:
    model = build_model("medgmae", "tiny", img_size=16, patch_size=8, num_gaussians=4)
    data = [{"image": torch.rand(num_crops, 1, 16, 16, 16)}]  # one loader batch of one volume's crops
    loader = torch.utils.data.DataLoader(data, batch_size=1, collate_fn=lambda items: {"image": items[0]["image"]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return MaskedAutoencoderTrainer("cpu", 1, loader, model, optimizer, amp=True, crops_per_item=num_crops)


def test_the_trainer_logs_the_line_once_when_it_starts(caplog):
    trainer = _trainer()
    with caplog.at_level(logging.INFO, logger="medgmae.mae_training"):
        trainer.run()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pre-training runs on")]
    assert lines == [trainer.run_settings()]
    assert "AMP off (amp true has no effect on the CPU)" in lines[0]
    assert lines[0].endswith("global batch 2 crops per step (1 process x 1 volume x 2 crops)")


def test_only_rank_0_logs_the_line(caplog, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.INFO, logger="medgmae.mae_training"):
        _trainer().run()
    assert not [r for r in caplog.records if r.getMessage().startswith("pre-training runs on")]


def test_the_learning_rate_scalar_is_the_rate_each_step_used(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    used = []

    def step(engine, _):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()

    engine = Engine(step)
    engine.optimizer = optimizer
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=2, t_total=6)
    LrScheduleHandler(scheduler, print_lr=False, epoch_level=False).attach(engine)  # steps the rate first, as in the bundles
    writer = SummaryWriter(str(tmp_path))
    LearningRateScalar(writer).attach(engine)
    engine.run([0, 1, 2], max_epochs=2)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/lr")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events] == pytest.approx(used) and used[0] == 0.0 and used[2] == 1.0


def test_no_writer_writes_nothing():
    engine = Engine(lambda *_: None)
    engine.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    LearningRateScalar(None).attach(engine)
    engine.run([0], max_epochs=1)  # a process other than rank 0: no writer, no error


def test_the_start_line_states_the_runs_seed():
    """The trainer's seed (the bundle's ``seed``) ends the line; without one the line names none."""
    model = build_model("voxel-mae", "tiny", img_size=16, patch_size=8)
    line = run_settings_line(model, "cpu", False, batch_size=2, crops_per_item=1, seed=42)
    assert line.endswith("global batch 2 crops per step (1 process x 2 volumes x 1 crop), seed 42")
    loader = torch.utils.data.DataLoader([{"image": torch.zeros(1, 16, 16, 16)}] * 2, batch_size=2)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = MaskedAutoencoderTrainer("cpu", 1, loader, model, optimiser, seed=7)
    assert trainer.run_settings().endswith("(1 process x 2 volumes x 1 crop), seed 7")
    assert "seed" not in MaskedAutoencoderTrainer("cpu", 1, loader, model, optimiser).run_settings()
    with pytest.raises(TypeError, match="seed must be a whole number"):
        MaskedAutoencoderTrainer("cpu", 1, loader, model, optimiser, seed=1.5)
