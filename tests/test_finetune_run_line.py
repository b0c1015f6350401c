"""What a fine-tuning run states when it starts (medgmae.finetune.run_line), the warning for a frozen encoder
without pre-trained weights, the learning rate it writes to TensorBoard (medgmae.engine.LearningRateScalar), and
the bundle's warm-up and cosine schedule in optimiser steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine
from monai.optimizers import WarmupCosineSchedule

from medgmae.engine import LearningRateScalar
from medgmae.engine.run_words import amp_words, plural
from medgmae.finetune import FinetuneRunLine, build_unetr, param_groups
from medgmae.finetune.run_line import finetune_run_line, rate_words

ROOT = Path(__file__).resolve().parents[1]
ENCODER = dict(patch_size=8, hidden_size=24, num_layers=2, num_heads=2, mlp_ratio=2.0)


def _unetr(freeze: bool = False, layer_decay: float = 0.5, warmup: int = 0):
    torch.manual_seed(0)
    net = build_unetr(3, [16, 16, 16], "", encoder=ENCODER, feature_size=4)
    opt = torch.optim.AdamW(param_groups(net, 3e-4, 1e-5, layer_decay, freeze), lr=3e-4)
    WarmupCosineSchedule(opt, warmup_steps=warmup, t_total=10)
    return net, opt


def test_amp_words_name_the_precision_and_that_amp_has_no_effect_on_the_cpu():
    assert amp_words(True, "cuda:0", precision="fp16") == "AMP on (fp16)" and amp_words(True, "cuda:0") == "AMP on (bf16)"
    assert amp_words(True, "cpu", precision="fp16") == "AMP off (amp true has no effect on the CPU)"
    assert amp_words(False, "cuda:0", precision="fp16") == "AMP off"


def test_rates_are_written_compactly():
    assert [rate_words(r) for r in (3e-4, 1.27e-4, 3.75e-5, 0.05)] == ["3e-4", "1.27e-4", "3.75e-5", "0.05"]


def test_the_start_line_names_device_amp_network_encoder_rates_and_batch():
    net, opt = _unetr(warmup=3)  # the warm-up starts the groups' rates at 0: the line gives the base rates
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    line = finetune_run_line(net, opt, "cpu", True, "/runs/pre/encoder.pt", batch_size=2, crops_per_item=3, processes=1)
    assert line.startswith("fine-tuning runs on cpu, AMP off (amp true has no effect on the CPU), ")
    assert f"network UNETR (feature size 4, {total:,} parameters, {trainable:,} trainable)" in line
    assert "encoder loaded from /runs/pre/encoder.pt, fine-tuned" in line
    # 2 blocks, layer decay 0.5: patch embedding 3e-4 * 0.5 ** 3, blocks 0.5 ** 2 and 0.5, decoder 3e-4
    assert f"learning rates 3.75e-5 (patch embedding) ... 3e-4 (decoder), 4 rates in {len(opt.param_groups)} parameter groups" in line
    assert line.endswith("global batch 6 crops per step (1 process x 2 volumes x 3 crops)")
    flat = finetune_run_line(*_unetr(layer_decay=1.0), "cpu", False, "", 1, 1, 4)
    assert ", AMP off, " in flat and "encoder trained from scratch" in flat
    assert f"learning rate 3e-4 ({len(_unetr(layer_decay=1.0)[1].param_groups)} parameter groups)" in flat
    assert flat.endswith("global batch 4 crops per step (4 processes x 1 volume x 1 crop)")


def _engine(net, opt, batch_size: int = 1) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.network, engine.optimizer, engine.amp = net, opt, False
    engine.data_loader = SimpleNamespace(batch_size=batch_size)
    engine.state.device = torch.device("cpu")
    return engine


def test_a_frozen_encoder_without_pretrained_weights_is_warned_about_once(caplog):
    net, opt = _unetr(freeze=True)
    vit = sum(p.numel() for p in net.vit.parameters())
    total = sum(p.numel() for p in net.parameters())
    engine = _engine(net, opt)
    FinetuneRunLine("", crops_per_item=2).attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.finetune"):
        engine.run([0], max_epochs=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "freezes a randomly initialised encoder: only the decoder trains" in warnings[0]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("fine-tuning runs on "))
    assert f"(feature size 4, {total:,} parameters, {total - vit:,} trainable)" in line and "encoder randomly initialised, frozen" in line
    assert line.endswith("global batch 2 crops per step (1 process x 1 volume x 2 crops)")


def test_a_frozen_pretrained_encoder_is_not_warned_about_and_other_ranks_log_nothing(caplog, monkeypatch):
    net, opt = _unetr(freeze=True)
    engine = _engine(net, opt)
    FinetuneRunLine("/runs/pre/encoder.pt").attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.finetune"):
        engine.run([0], max_epochs=1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("encoder loaded from /runs/pre/encoder.pt, frozen" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr("medgmae.finetune.run_line.is_main_process", lambda: False)
    net, opt = _unetr(freeze=True)
    engine = _engine(net, opt)
    FinetuneRunLine("").attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.finetune"):
        engine.run([0], max_epochs=1)
    assert not caplog.records


class _Writer:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("group, expected", [(0, 3e-4 * 0.5**3), (-1, 3e-4)])
def test_the_lr_scalar_writes_the_named_group(group, expected):
    """Layer-wise decay's last group is the decoder's, at the base rate; the first is the patch embedding's."""
    net, opt = _unetr()
    writer = _Writer()
    engine = _engine(net, opt)
    LearningRateScalar(writer, group=group).attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert [(t, s) for t, _, s in writer.scalars] == [("train/lr", 1), ("train/lr", 2)]
    assert writer.scalars[0][1] == pytest.approx(expected)


def test_the_bundle_logs_the_start_line_and_writes_the_decoders_rate():
    handlers = json.loads((ROOT / "bundles/unetr_finetune/configs/train.json").read_text(encoding="utf-8"))["train"]["handlers"]
    targets = [h["_target_"] for h in handlers]
    assert targets[0] == "medgmae.finetune.FinetuneRunLine"
    scalar = next(h for h in handlers if h["_target_"] == "medgmae.engine.LearningRateScalar")
    assert scalar["group"] == -1 and scalar["tag"] == "train/lr" and scalar["_disabled_"] == "$not @is_main_process"


def test_the_bundles_warm_up_and_cosine_count_optimiser_steps():
    """``--warmup_epochs`` and ``--lr_schedule_epochs`` are epochs, the schedule's steps are the optimiser's: with 7
    batches an epoch, 2 warm-up epochs are 14 steps of a 35-step schedule over 5 epochs (the pre-training bundle's
    pair, pinned in test_pretrain_bundle), and after one step the decoder's rate is 1/14 of its base (MONAI's
    linear warm-up from 0)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "unetr_finetune" / "configs" / "train.json"))
    parser.update({"roi_size": 24, "encoder#patch_size": 12, "encoder#num_layers": 1, "feature_size": 4,
                   "warmup_epochs": 2, "lr_schedule_epochs": 5, "train#dataloader": "$[None] * 7"})  # fmt: skip
    schedule = parser.get_parsed_content("lr_scheduler", lazy=False)
    assert (schedule.warmup_steps, schedule.t_total) == (14, 35)
    schedule.optimizer.step()
    schedule.step()
    assert schedule.get_last_lr()[-1] == pytest.approx(parser["learning_rate"] / 14)


@pytest.mark.parametrize("n,word,expected", [(1, "batch", "1 batch"), (3, "batch", "3 batches"), (2, "process", "2 processes"),
                                             (2, "crop", "2 crops"), (0, "case", "0 cases"), (4, "box", "4 boxes")])
def test_plural_words(n, word, expected):
    assert plural(n, word) == expected


def test_the_start_line_counts_the_volumes_a_short_dataset_gives_a_step(caplog):
    """Three training cases with ``batch_size`` 4: each step holds the three (the loader keeps its short batch), as
    the line says; it stated a global batch of 4 volumes."""
    net, opt = _unetr()
    engine = _engine(net, opt, batch_size=4)
    engine.data_loader.sampler = range(3)  # the loader's sampler: three cases in one process
    with caplog.at_level(logging.INFO, logger="medgmae.finetune"):
        FinetuneRunLine("", crops_per_item=2)(engine)
    line = caplog.records[-1].getMessage()
    assert line.endswith("global batch 6 crops per step (1 process x 3 volumes x 2 crops; batch_size 4, but the "
                         "dataset holds 3 volumes)"), line  # fmt: skip


def test_the_start_line_states_the_runs_seed(caplog):
    """The seed in effect ends the line (a run with the default seed never said which); the bundle passes its own."""
    net, opt = _unetr()
    engine = _engine(net, opt)
    with caplog.at_level(logging.INFO, logger="medgmae.finetune"):
        FinetuneRunLine("", crops_per_item=2, seed=1234)(engine)
    assert caplog.records[-1].getMessage().endswith("global batch 2 crops per step (1 process x 1 volume x 2 crops), seed 1234")
    assert "seed" not in finetune_run_line(net, opt, "cpu", False)  # none given: none stated
    with pytest.raises(TypeError, match="seed must be a whole number"):
        FinetuneRunLine("", seed="0")
    config = json.loads((ROOT / "bundles" / "unetr_finetune" / "configs" / "train.json").read_text(encoding="utf-8"))
    line = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("FinetuneRunLine"))
    assert line["seed"] == "$int(@seed)"
