"""A resume checks the run's ``best_model.pt`` against the best epoch its checkpoint records: a missing, cut short or
other epoch's file is named in one warning and written again at the next validation (pre-training, 2D GMAE through
the same handler, fine-tuning), and a closing summary never lists a best model no validation has written."""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine

from medgmae.checkpoint import load_checkpoint
from medgmae.engine import CheckpointHandler, MetricHistory
from medgmae.mae_training import MaskedValidationHandler, PretrainSummary
from medgmae.mae_training.validation import save_best_model
from medgmae.networks.medgmae import MedGMAE
from medgmae.networks.vit import MaskedViTEncoder


def _damage(path, how: str, network) -> None:
    """Leave ``path`` missing, cut short (the first 1000 bytes, as a copy stopped halfway) or holding epoch 2."""
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        os.truncate(path, 1000)
    elif how == "other epoch":
        save_best_model(network, path.parent, epoch=2, psnr=1.0)


def _pretraining(out, max_epochs: int, resume: bool) -> tuple[MetricHistory, MedGMAE]:
    """Run a pre-training whose weights never change (every validation scores the same PSNR, so only the first
    one is a new best) with the bundle's checkpoint, validation and summary handlers."""
    torch.manual_seed(0)
    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    history = MetricHistory()
    crops = [{"image": torch.rand(1, 16, 16, 16, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    engine = Engine(lambda e, b: None)
    CheckpointHandler(out, {"model": model, "history": history}, resume=resume,
                      validation=[MaskedValidationHandler(model, crops, history, out)]).attach(engine)  # fmt: skip
    PretrainSummary(out, history, "medgmae").attach(engine)
    engine.run([0], max_epochs=max_epochs)
    return history, model


@pytest.mark.parametrize("how", ["missing", "truncated", "other epoch"])
def test_a_pretraining_resume_writes_a_lost_best_model_again(tmp_path, caplog, how):
    """The best epoch (1) of a finished run loses its ``best_model.pt``; the resumed run used to say nothing and
    list the file as the best model at its end, though it was missing or a stub no loader reads."""
    best = tmp_path / "best_model.pt"
    _, model = _pretraining(tmp_path, 3, resume=False)
    assert load_checkpoint(best).extra["best"]["epoch"] == 1
    _damage(best, how, model)
    with caplog.at_level(logging.WARNING):
        history, _ = _pretraining(tmp_path, 5, resume=True)
    lost = [r.getMessage() for r in caplog.records if "weights" in r.getMessage()]
    assert len(lost) == 1 and str(best) in lost[0] and "epoch 1's weights" in lost[0] and "lost" in lost[0]
    assert load_checkpoint(best).extra["best"]["epoch"] == 4  # the first validation after the resume
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_epoch"] == 4 == history.best_epoch and summary["files"]["best_model.pt"] == str(best)


def test_a_pretraining_resume_keeps_an_intact_best_model(tmp_path, caplog):
    best = tmp_path / "best_model.pt"
    _pretraining(tmp_path, 3, resume=False)
    before = best.read_bytes()
    with caplog.at_level(logging.WARNING):
        _pretraining(tmp_path, 5, resume=True)
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    assert best.read_bytes() == before and json.loads((tmp_path / "summary.json").read_text())["best_epoch"] == 1


def test_the_pretraining_summary_claims_no_best_model_without_a_best_epoch(tmp_path):
    history = MetricHistory()
    history.record("val_psnr", 1, float("nan"))
    summary = PretrainSummary(tmp_path, history, "medgmae")
    s = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    assert "best_model.pt" not in s["files"] and s["best_epoch"] is None
    line = next(x for x in summary.text(s).splitlines() if "best_model.pt" in x)
    assert str(tmp_path) not in line and "none" in line


def test_kept_model_problem_reads_the_recorded_epoch(tmp_path):
    """A file of the recorded epoch, or one written before files recorded their epoch, is taken as it is."""
    from medgmae.checkpoint import kept_model_problem

    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    path = save_best_model(model, tmp_path, epoch=3, psnr=20.0)
    epoch_of = lambda extra: extra["best"]["epoch"] if "best" in extra else None  # noqa: E731
    assert kept_model_problem(path, 3, epoch_of) is None
    assert kept_model_problem(path, 5, epoch_of) == "it holds epoch 3's weights"
    assert kept_model_problem(save_best_model(model, tmp_path, "older.pt"), 5, epoch_of) is None  # records none
    assert kept_model_problem(tmp_path / "gone.pt", 3, epoch_of) == "it is missing"
    os.truncate(path, 1000)
    problem = kept_model_problem(path, 3, epoch_of)
    assert problem.startswith("it cannot be read (") and str(path) not in problem


def test_the_lost_best_model_warning_is_one_sentence_for_both_trainings(tmp_path):
    """Pre-training and fine-tuning warn of a lost ``best_model.pt`` in the same words, their scores as given; a
    file of a later epoch than the records' best is one the stopped run wrote after its newest checkpoint (with a
    ``checkpoint_interval`` above 1, a normal resume), said so."""
    from medgmae.checkpoint import lost_best_warning

    path = save_best_model(MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4), tmp_path, epoch=3)
    epoch_of = lambda extra: extra["best"]["epoch"]  # noqa: E731
    assert lost_best_warning(path, 3, "best validation PSNR 20.00 dB", epoch_of) is None
    assert lost_best_warning(path, 2, "best val_mean_dice 0.8000", epoch_of) == (
        f"{path}: it holds epoch 3's weights, of an epoch the stopped run trained after its newest checkpoint, which "
        "this resume trains again: epoch 2's weights (best val_mean_dice 0.8000) are lost; the next validation writes it")
    assert lost_best_warning(path, 4, "best validation PSNR 20.00 dB", epoch_of) == (  # an earlier epoch's: no more
        f"{path}: it holds epoch 3's weights: epoch 4's weights (best validation PSNR 20.00 dB) are lost; "
        "the next validation writes it")
    assert lost_best_warning(tmp_path / "gone.pt", 1, "best validation PSNR 20.00 dB", epoch_of) == (
        f"{tmp_path / 'gone.pt'}: it is missing: epoch 1's weights (best validation PSNR 20.00 dB) are lost; "
        "the next validation writes it")


def _unetr():
    from medgmae.networks.unetr import MedGMAEUNETR

    encoder = MaskedViTEncoder(img_size=16, patch_size=8, hidden_size=48, num_layers=1, num_heads=4)
    return MedGMAEUNETR(3, encoder=encoder, feature_size=4)


def _validated(epoch: int, dice: float) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": dice}, epoch=epoch))


def _finetuning_resume(out, net, max_epochs: int):
    """A fine-tuning run's saver restored by the checkpoint handler of a resume (training and validation left out)."""
    from medgmae.finetune import BestCheckpointSaver

    saver = BestCheckpointSaver(out, net)
    engine = Engine(lambda e, b: None)
    CheckpointHandler(out, {"best": saver}, resume=True).attach(engine)
    engine.run([0], max_epochs=max_epochs)
    return saver


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_a_finetuning_resume_writes_a_lost_best_model_again(tmp_path, caplog, how):
    """Epoch 1 scored the best Dice (0.8) and its ``best_model.pt`` is lost: the resume warned of nothing, a worse
    later epoch (0.3) wrote nothing, and the summary named the lost file as the best model."""
    from medgmae.finetune import BestCheckpointSaver
    from medgmae.finetune.report import FinetuneSummary

    net, best = _unetr(), tmp_path / "best_model.pt"
    saver = BestCheckpointSaver(tmp_path, net)
    saver(_validated(1, 0.8))  # epoch 1's validation, then its checkpoint
    engine = Engine(lambda e, b: None)
    CheckpointHandler(tmp_path, {"best": saver}).attach(engine)
    engine.run([0], max_epochs=1)
    _damage(best, how, None)
    with caplog.at_level(logging.WARNING):
        resumed = _finetuning_resume(tmp_path, net, 2)
    lost = [r.getMessage() for r in caplog.records if "weights" in r.getMessage()]
    assert len(lost) == 1 and str(best) in lost[0] and "epoch 1's weights" in lost[0] and "lost" in lost[0]
    report = SimpleNamespace(metrics={"mean_dice": 0.3, "dice_per_class": {"liver": 0.3}, "num_cases": 1},
                             output_dir=tmp_path / "validation")  # fmt: skip
    line = next(x for x in FinetuneSummary(tmp_path, report, resumed).text(2)[0].splitlines() if "best_model.pt" in x)
    assert str(best) not in line and "none" in line  # nothing written since the resume: not claimed
    resumed(_validated(3, 0.3))
    assert load_checkpoint(best, "medgmae-unetr").extra == {"epoch": 3, "metric_name": "val_mean_dice", "metric": 0.3}
