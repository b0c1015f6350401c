"""Exact resumption: bit for bit, through a stop while validating, while writing an epoch's checkpoint or in the
closing steps, and a finished checkpoint refused when the engine starts (the refusals of changed settings, epoch
lengths or data, and the check before a trainer is built: test_engine_resume_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from medgmae.engine import latest_checkpoint
from medgmae.torch_files import load_torch_file

from engine_helpers import make_trainer


def test_resume_is_bit_for_bit(tmp_path):
    full, net_full = make_trainer(tmp_path / "full", 4, resume=False)
    full.run()
    part, _ = make_trainer(tmp_path / "part", 2, resume=False)
    part.run()
    assert latest_checkpoint(tmp_path / "part").name == "checkpoint_epoch=2.pt"
    rest, net_rest = make_trainer(tmp_path / "part", 4, resume=True)
    rest.run()
    assert rest.state.epoch == 4 and rest.state.iteration == full.state.iteration
    for a, b in zip(net_full.state_dict().values(), net_rest.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "part" / "checkpoint_final.pt").is_file()
    # a fresh run from scratch differs from the resumed one only if resume were broken: check it changed weights
    fresh, net_fresh = make_trainer(tmp_path / "fresh", 2, resume=False)
    fresh.run()
    assert not all(torch.equal(a, b) for a, b in zip(net_fresh.state_dict().values(), net_rest.state_dict().values()))


class _Validation:
    """Validation at every epoch end, as a bundle's: a score of the network, recorded in a MetricHistory with the best
    one, after a draw from the global random generator (as a validation data loader's iterator draws its seed);
    Ctrl-C in the validation of epoch ``stop_at``, after the score was recorded (a later step cut short)."""

    def __init__(self, net: torch.nn.Module, history, stop_at: int | None = None) -> None:
        self.net, self.history, self.stop_at = net, history, stop_at

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        noise = torch.rand(1, 1, 4)
        with torch.no_grad():
            score = float(self.net(torch.ones(1, 1, 4) + noise).sum())
        self.history.record("val_score", engine.state.epoch, score)
        self.history.update_best(engine.state.epoch, score)
        if engine.state.epoch == self.stop_at:
            raise KeyboardInterrupt


def _validated_trainer(out_dir: Path, max_epochs: int, resume: bool, stop_at: int | None = None, save_interval: int = 1):
    """A :func:`make_trainer` run validated by :class:`_Validation` (its history among the checkpointed objects),
    counting the iterations it trains."""
    from medgmae.engine import MetricHistory

    history = MetricHistory("val_score", mode="max")
    trainer, net = make_trainer(out_dir, max_epochs, resume, extra={"history": history}, save_interval=save_interval,
                                 validation=[lambda net: _Validation(net, history, stop_at)])  # fmt: skip
    trainer.trained = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: trainer.trained.append((e.state.epoch, e.state.iteration)))
    return trainer, net, history


def test_a_stop_while_validating_keeps_the_epochs_training(tmp_path):
    """Ctrl-C (or SIGTERM) while epoch 2 was validated saved checkpoint_interrupted.pt, and a resume went back to
    checkpoint_epoch=1.pt and trained epoch 2 again. The epoch's training is now saved as checkpoint_epoch=2.pt,
    marked as not validated; the resume validates epoch 2, trains epochs 3 and 4 only and ends as the uninterrupted
    run: weights, optimiser, random states, metric history and best value alike."""
    full, net_full, history_full = _validated_trainer(tmp_path / "full", 4, resume=False)
    full.run()
    part, _, _ = _validated_trainer(tmp_path / "part", 4, resume=False, stop_at=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        part.run()
    assert part.trained[-1] == (2, 6)
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["checkpoint_epoch=2.pt"]
    saved = load_torch_file(tmp_path / "part" / "checkpoint_epoch=2.pt")
    assert saved["engine"] == {"epoch": 2, "iteration": 6, "max_epochs": 4, "pending": "validation"}
    assert saved["objects"]["history"]["series"]["val_score"]["epoch"] == [1]  # as epoch 2's training left it
    assert stopped.value.resume_advice == (
        f"interrupted while validating epoch 2: its training is saved in checkpoint_epoch=2.pt; run the same command "
        "with --resume true to validate it and train on")
    rest, net_rest, history_rest = _validated_trainer(tmp_path / "part", 4, resume=True)
    rest.run()
    assert [epoch for epoch, _ in rest.trained] == [3, 3, 3, 4, 4, 4]  # epoch 2 is not trained again
    assert history_rest.state_dict() == history_full.state_dict()
    assert history_rest.get("val_score")[0] == [1, 2, 3, 4] and history_rest.best_epoch == history_full.best_epoch
    a, b = (load_torch_file(tmp_path / d / "checkpoint_epoch=4.pt") for d in ("full", "part"))
    assert a["engine"] == b["engine"] == {"epoch": 4, "iteration": 12, "max_epochs": 4}
    for x, y in zip(net_full.state_dict().values(), net_rest.state_dict().values()):
        assert torch.equal(x, y)
    for i, state in a["objects"]["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["objects"]["optimizer"]["state"][i]["momentum_buffer"])
    assert torch.equal(a["random_state"]["torch"], b["random_state"]["torch"])
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["checkpoint_epoch=4.pt", "checkpoint_final.pt"]


def test_checkpoints_every_save_interval_epochs_and_at_the_last_resume_exactly(tmp_path):
    """``save_interval`` 2 of 5 epochs: checkpoints at epochs 2, 4 and 5 (the last always has one; the epoch
    filter was ``every=2``, which left epoch 5 without). Ctrl-C (or SIGTERM) while epoch 3, between checkpoints, is
    validated saves ``checkpoint_interrupted.pt``; the resume goes back to epoch 2, trains epochs 3 to 5 again and
    ends as the uninterrupted run. A stop before the first checkpoint (epoch 3 of ``save_interval`` 3) says so."""
    full, net_full, history_full = _validated_trainer(tmp_path / "full", 5, resume=False, save_interval=2)
    newest = []
    full.add_event_handler(Events.EPOCH_COMPLETED, lambda e: newest.append(latest_checkpoint(tmp_path / "full")))
    full.run()
    assert [p and p.name for p in newest] == [None, "checkpoint_epoch=2.pt", "checkpoint_epoch=2.pt",
                                              "checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]  # fmt: skip
    part, _, _ = _validated_trainer(tmp_path / "part", 5, resume=False, stop_at=3, save_interval=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        part.run()
    assert stopped.value.resume_advice is None  # the usual advice: resume
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_interrupted.pt"]
    rest, net_rest, history_rest = _validated_trainer(tmp_path / "part", 5, resume=True, save_interval=2)
    rest.run()
    assert [epoch for epoch, _ in rest.trained] == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert history_rest.state_dict() == history_full.state_dict()
    assert all(torch.equal(x, y) for x, y in zip(net_full.state_dict().values(), net_rest.state_dict().values()))
    a, b = (load_torch_file(tmp_path / d / "checkpoint_epoch=5.pt") for d in ("full", "part"))
    assert torch.equal(a["random_state"]["torch"], b["random_state"]["torch"]) and a["engine"] == b["engine"]
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["checkpoint_epoch=5.pt", "checkpoint_final.pt"]
    early, _, _ = _validated_trainer(tmp_path / "early", 5, resume=False, stop_at=2, save_interval=3)
    with pytest.raises(KeyboardInterrupt) as stopped:
        early.run()
    assert stopped.value.resume_advice.startswith(
        "interrupted before its first checkpoint, at the end of epoch 3: there is no checkpoint_epoch=N.pt in ")


def test_a_stop_while_the_epoch_checkpoint_is_written_keeps_the_epochs_training(tmp_path, monkeypatch):
    """Ctrl-C while checkpoint_epoch=2.pt was written, after epoch 2's validation: the write is abandoned and the
    state epoch 2's training left is saved in its place, marked as not validated, so the resume validates epoch 2
    again (as the first time: its records are those from before the validation) rather than training it again."""
    import medgmae.engine.checkpoint_handler as handler_module

    full, net_full, history_full = _validated_trainer(tmp_path / "full", 4, resume=False)
    full.run()
    real_save, cut = handler_module.save_torch_atomic, []

    def save_cut_short(payload, path):
        if Path(path).name == "checkpoint_epoch=2.pt" and not cut:
            cut.append(path)
            raise KeyboardInterrupt  # as Ctrl-C inside torch.save: nothing replaces the file
        return real_save(payload, path)

    monkeypatch.setattr(handler_module, "save_torch_atomic", save_cut_short)
    part, _, history_part = _validated_trainer(tmp_path / "part", 4, resume=False)
    with pytest.raises(KeyboardInterrupt):
        part.run()
    assert cut and history_part.get("val_score")[0] == [1, 2]  # stopped after epoch 2 was validated
    saved = load_torch_file(tmp_path / "part" / "checkpoint_epoch=2.pt")
    assert saved["engine"]["pending"] == "validation" and not (tmp_path / "part" / "checkpoint_interrupted.pt").exists()
    rest, net_rest, history_rest = _validated_trainer(tmp_path / "part", 4, resume=True)
    rest.run()
    assert [epoch for epoch, _ in rest.trained] == [3, 3, 3, 4, 4, 4]  # epoch 2 is not trained again
    assert history_rest.state_dict() == history_full.state_dict()
    assert all(torch.equal(x, y) for x, y in zip(net_full.state_dict().values(), net_rest.state_dict().values()))


def test_a_stop_while_validating_the_last_epoch_resumes_to_validate_it_and_close(tmp_path):
    """Stopped while the last epoch was validated: the resume trains nothing, validates that epoch, writes the
    closing checkpoint, and a further resume is refused as finished."""
    full, net_full, history_full = _validated_trainer(tmp_path / "full", 2, resume=False)
    full.run()
    part, _, _ = _validated_trainer(tmp_path / "part", 2, resume=False, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        part.run()
    rest, net_rest, history_rest = _validated_trainer(tmp_path / "part", 2, resume=True)
    rest.run()
    assert rest.trained == [] and history_rest.state_dict() == history_full.state_dict()
    assert all(torch.equal(x, y) for x, y in zip(net_full.state_dict().values(), net_rest.state_dict().values()))
    assert load_torch_file(tmp_path / "part" / "checkpoint_epoch=2.pt")["engine"] == {"epoch": 2, "iteration": 6, "max_epochs": 2}
    again, _, _ = _validated_trainer(tmp_path / "part", 2, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        again.run()


def test_a_finished_checkpoint_is_refused_at_engine_start(tmp_path, folder_state):
    """Resuming a checkpoint that has already trained max_epochs epochs would train nothing and still rewrite
    checkpoint_final.pt: the handler refuses it as check_resume_fits does, unless told a finished stage is fine."""
    part, _ = make_trainer(tmp_path, 2, resume=False)
    part.run()
    before = folder_state(tmp_path)
    rest, _ = make_trainer(tmp_path, 2, resume=True)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt has already trained 2 epochs = --max_epochs 2: "
                                         r"nothing to resume"):
        rest.run()
    assert rest.state.iteration == 0 and folder_state(tmp_path) == before
    stage, _ = make_trainer(tmp_path, 2, resume=True, finished_ok=True)  # a finished stage is passed through
    stage.run()
    assert stage.state.epoch == 2 and stage.state.iteration == 6


def test_a_run_stopped_in_its_closing_steps_resumes_to_finish_them(tmp_path):
    """Ctrl-C or SIGTERM after the last epoch's checkpoint, in a completion step (a bundle's model export, its
    summary), advised --resume true, which was refused as nothing to train: the closing outputs were never written.
    checkpoint_final.pt is now the last completion step; a resume of a run that lacks it at the newest epoch's
    iteration trains nothing and runs the completion steps on the saved state, then a further resume is refused."""
    from ignite.engine import Events

    seen = []

    def closing(engine):  # a completion step attached with the bundle's handlers, after the checkpoint handler
        seen.append((engine.state.epoch, engine.state.iteration, [w.detach().clone() for w in engine.network.parameters()]))
        if len(seen) == 1:
            raise KeyboardInterrupt

    first, net = make_trainer(tmp_path, 2, resume=False)
    first.add_event_handler(Events.COMPLETED, closing)
    with pytest.raises(KeyboardInterrupt) as stopped:
        first.run()
    assert not (tmp_path / "checkpoint_final.pt").exists() and (tmp_path / "checkpoint_interrupted.pt").is_file()
    assert "--resume true to write its closing outputs" in stopped.value.resume_advice
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"x")  # as a stop between epoch 2's save and its pruning leaves
    rest, _ = make_trainer(tmp_path, 2, resume=True)
    rest.add_event_handler(Events.COMPLETED, closing)
    rest.run()
    assert seen[1][:2] == seen[0][:2] == (2, 6) and rest.state.iteration == 6  # nothing trained
    assert all(torch.equal(a, b) for a, b in zip(seen[1][2], seen[0][2]))
    assert load_torch_file(tmp_path / "checkpoint_final.pt")["engine"] == {"epoch": 2, "iteration": 6, "max_epochs": 2}
    assert not (tmp_path / "checkpoint_interrupted.pt").exists()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    again, _ = make_trainer(tmp_path, 2, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        again.run()
    # a run of 3 epochs stopped after its second, resumed with --max_epochs 2: not a run in its closing steps (its
    # checkpoint records the 3 epochs it was to train), refused as before
    longer = tmp_path / "longer"

    def stop(engine):
        raise KeyboardInterrupt

    cut, _ = make_trainer(longer, 3, resume=False)
    cut.add_event_handler(Events.EPOCH_STARTED(once=3), stop)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    lowered, _ = make_trainer(longer, 2, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        lowered.run()


def test_the_model_export_and_the_gvit_phases_follow_the_checkpoint_interval(tmp_path, caplog):
    """``model.pt`` / ``encoder.pt`` were written every epoch: now at the epochs with a checkpoint (every
    ``interval``-th and the last), so that they are of the newest checkpoint's epoch; a GViT phase's checkpoint
    handler takes the bundle's ``checkpoint_interval`` too."""
    import logging

    from ignite.engine import Engine

    from medgmae.mae_training import ModelExportHandler
    from medgmae.networks.medgmae import MedGMAE
    from medgmae.twod.gvit_phases import PhaseCheckpoint, PhaseContext

    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    engine = Engine(lambda e, b: None)
    ModelExportHandler(tmp_path, model, interval=2).attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.mae_training"):
        engine.run([0], max_epochs=5)
    assert [r.getMessage().split(":")[0] for r in caplog.records if " wrote " in r.getMessage()] == ["epoch 2", "epoch 4", "epoch 5"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    assert PhaseCheckpoint(interval=3)(PhaseContext("warmup", model, opt, sched, tmp_path / "warmup")).save_interval == 3
    for make in (lambda: PhaseCheckpoint(interval=0), lambda: ModelExportHandler(tmp_path, model, interval=1.5)):
        with pytest.raises(ValueError, match="checkpoint_interval"):
            make()
