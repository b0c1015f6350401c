"""Shared training infrastructure: atomic writes, exact resume, non-finite loss, gradient clipping."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, Lambdad, RandGaussianNoised

from medgmae.engine import (
    CheckpointHandler,
    GradientClipHandler,
    NonFiniteLossHandler,
    check_resume_fits,
    latest_checkpoint,
    resolve_device,
)
from medgmae.files import atomic_write, load_torch_file, save_json_atomic


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    save_json_atomic({"a": 1}, target)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left behind


def test_atomic_write_keeps_extension(tmp_path):
    with atomic_write(tmp_path / "vol.nii.gz") as tmp:
        assert tmp.name.endswith("vol.nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "vol.nii.gz").read_bytes() == b"x"


def test_load_torch_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_torch_file(bad)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def _make_trainer(out_dir: Path, max_epochs: int, resume: bool, lr: float = 0.05, clip: float | None = None, extra: dict | None = None,
                  batch_size: int = 2, finished_ok: bool = False, earlier_outputs: tuple[str, ...] | None = None,
                  later_stage: bool = False, validation: list | None = None):  # fmt: skip
    torch.manual_seed(0)
    np.random.seed(0)
    data = [{"image": np.full((1, 4), i, np.float32), "label": np.full((1, 2), i % 3, np.float32)} for i in range(6)]
    transform = Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.5), Lambdad("label", lambda x: x)])
    transform.set_random_state(seed=1)
    ds = Dataset(data, transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    more = ({} if earlier_outputs is None else {"earlier_outputs": earlier_outputs}) | ({"later_stage": True} if later_stage else {})
    more |= {"validation": [make(net) for make in validation]} if validation else {}
    handlers = [CheckpointHandler(out_dir, {"network": net, "optimizer": opt, **(extra or {})}, resume=resume, source=ds,
                                  finished_ok=finished_ok, **more)]  # fmt: skip
    handlers.append(NonFiniteLossHandler())
    if clip:
        handlers.append(GradientClipHandler(clip))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=lambda p, t: ((p - t.flatten(1)) ** 2).mean(),
        train_handlers=handlers,
    )
    return trainer, net


def test_resume_is_bit_for_bit(tmp_path):
    full, net_full = _make_trainer(tmp_path / "full", 4, resume=False)
    full.run()
    part, _ = _make_trainer(tmp_path / "part", 2, resume=False)
    part.run()
    assert latest_checkpoint(tmp_path / "part").name == "checkpoint_epoch=2.pt"
    rest, net_rest = _make_trainer(tmp_path / "part", 4, resume=True)
    rest.run()
    assert rest.state.epoch == 4 and rest.state.iteration == full.state.iteration
    for a, b in zip(net_full.state_dict().values(), net_rest.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "part" / "checkpoint_final.pt").is_file()
    # a fresh run from scratch differs from the resumed one only if resume were broken: check it changed weights
    fresh, net_fresh = _make_trainer(tmp_path / "fresh", 2, resume=False)
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


def _validated_trainer(out_dir: Path, max_epochs: int, resume: bool, stop_at: int | None = None):
    """A :func:`_make_trainer` run validated by :class:`_Validation` (its history among the checkpointed objects),
    counting the iterations it trains."""
    from medgmae.engine import MetricHistory

    history = MetricHistory("val_score", mode="max")
    trainer, net = _make_trainer(out_dir, max_epochs, resume, extra={"history": history},
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


class _Record:
    """A state_dict-able object that refuses a state other than its own (as a model's configuration record does)."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        if state["value"] != self.value:
            raise ValueError(f"saved {state['value']}, current {self.value}")


def test_failed_resume_names_the_file_and_writes_nothing(tmp_path):
    """A resume whose state does not fit fails naming the checkpoint and the object, before any training, and
    writes no checkpoint (the epoch checkpoint it read is left as it was)."""
    part, _ = _make_trainer(tmp_path, 2, resume=False, extra={"record": _Record(1)})
    part.run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rest, _ = _make_trainer(tmp_path, 4, resume=True, extra={"record": _Record(2)})
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*checkpoint_epoch=2\.pt \('record'\): saved 1, current 2"):
        rest.run()
    assert rest.state.iteration == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_changed_setting_is_named_before_the_weights_refuse_it(tmp_path):
    """A resume with another model size: the configuration record names the change, not a tensor's shape."""
    part, _ = _make_trainer(tmp_path, 1, resume=False, extra={"record": _Record(64)})
    part.run()
    rest, net = _make_trainer(tmp_path, 2, resume=True, extra={"record": _Record(32)})
    with torch.no_grad():  # the weights would refuse the state too (as a changed num_gaussians does)
        net[1].weight = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\('record'\): saved 64, current 32"):
        rest.run()


def test_a_finished_checkpoint_is_refused_at_engine_start(tmp_path, folder_state):
    """Resuming a checkpoint that has already trained max_epochs epochs would train nothing and still rewrite
    checkpoint_final.pt: the handler refuses it as check_resume_fits does, unless told a finished stage is fine."""
    part, _ = _make_trainer(tmp_path, 2, resume=False)
    part.run()
    before = folder_state(tmp_path)
    rest, _ = _make_trainer(tmp_path, 2, resume=True)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt has already trained 2 epochs = --max_epochs 2: "
                                         r"nothing to resume"):
        rest.run()
    assert rest.state.iteration == 0 and folder_state(tmp_path) == before
    stage, _ = _make_trainer(tmp_path, 2, resume=True, finished_ok=True)  # a finished stage is passed through
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

    first, net = _make_trainer(tmp_path, 2, resume=False)
    first.add_event_handler(Events.COMPLETED, closing)
    with pytest.raises(KeyboardInterrupt) as stopped:
        first.run()
    assert not (tmp_path / "checkpoint_final.pt").exists() and (tmp_path / "checkpoint_interrupted.pt").is_file()
    assert "--resume true to write its closing outputs" in stopped.value.resume_advice
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"x")  # as a stop between epoch 2's save and its pruning leaves
    rest, _ = _make_trainer(tmp_path, 2, resume=True)
    rest.add_event_handler(Events.COMPLETED, closing)
    rest.run()
    assert seen[1][:2] == seen[0][:2] == (2, 6) and rest.state.iteration == 6  # nothing trained
    assert all(torch.equal(a, b) for a, b in zip(seen[1][2], seen[0][2]))
    assert load_torch_file(tmp_path / "checkpoint_final.pt")["engine"] == {"epoch": 2, "iteration": 6, "max_epochs": 2}
    assert not (tmp_path / "checkpoint_interrupted.pt").exists()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    again, _ = _make_trainer(tmp_path, 2, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        again.run()
    # a run of 3 epochs stopped after its second, resumed with --max_epochs 2: not a run in its closing steps (its
    # checkpoint records the 3 epochs it was to train), refused as before
    longer = tmp_path / "longer"

    def stop(engine):
        raise KeyboardInterrupt

    cut, _ = _make_trainer(longer, 3, resume=False)
    cut.add_event_handler(Events.EPOCH_STARTED(once=3), stop)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    lowered, _ = _make_trainer(longer, 2, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        lowered.run()


def test_a_checkpoint_from_before_a_settings_record_resumes_with_a_warning(tmp_path, caplog):
    """A run that records its settings (a SettingsRecord among the objects) resumes a checkpoint written before
    it did, saying so; one written with other settings is refused naming them."""
    from medgmae.engine.records import SettingsRecord

    part, _ = _make_trainer(tmp_path, 2, resume=False)
    part.run()
    rest, _ = _make_trainer(tmp_path, 3, resume=True, extra={"settings": SettingsRecord({"width": 4}, "the test")})
    with caplog.at_level("WARNING"):
        rest.run()
    assert rest.state.epoch == 3 and "was written before its run recorded ['settings']" in caplog.text
    other, _ = _make_trainer(tmp_path, 4, resume=True, extra={"settings": SettingsRecord({"width": 8}, "the test")})
    with pytest.raises(ValueError, match=r"written by the test with other settings \(width: saved 4, now 8\)"):
        other.run()


def test_a_setting_added_later_reads_an_older_record_as_its_earlier_behaviour():
    """GViT's ``classifier_freqs`` was 6 before it was a setting: an older phase checkpoint (its model record without
    the key) is compared as 6, so the default 2 is named as the difference and ``--classifier_freqs 6`` resumes."""
    from medgmae.twod.gvit_phases import resume_records

    saved = resume_records({"model": {"num_classes": 3}, "data": {"seed": 0}}, None)["settings"].state_dict()
    now = resume_records({"model": {"num_classes": 3, "classifier_freqs": 2}, "data": {"seed": 0}}, None)["settings"]
    with pytest.raises(ValueError, match=r"model\.classifier_freqs: saved 6, now 2"):
        now.load_state_dict(saved)
    resume_records({"model": {"num_classes": 3, "classifier_freqs": 6}, "data": {"seed": 0}}, None)["settings"].load_state_dict(saved)
    now.load_state_dict(now.state_dict())  # a record that has the key: compared as saved


def test_settings_sections_added_later_are_not_compared_with_older_checkpoints(caplog):
    """A checkpoint whose record lacks a whole section the run records now (added in a later version) resumes with a
    warning naming it; the sections it holds are still compared."""
    from medgmae.engine.records import SettingsRecord

    saved = SettingsRecord({"model": {"width": 4}}, "the test").state_dict()
    newer = SettingsRecord({"model": {"width": 4}, "preprocessing": {"spacing": [1.5, 1.5, 2.0]}}, "the test")
    with caplog.at_level("WARNING"):
        newer.load_state_dict(saved)
    assert "records no preprocessing settings (an earlier version wrote it)" in caplog.text
    wider = SettingsRecord({"model": {"width": 8}, "preprocessing": {"spacing": [1.5, 1.5, 2.0]}}, "the test")
    with pytest.raises(ValueError, match=r"model\.width: saved 4, now 8"):
        wider.load_state_dict(saved)
    newer.load_state_dict(newer.state_dict())  # a record of this version: every section compared, all equal
    with pytest.raises(ValueError, match=r"preprocessing\.spacing"):
        newer.load_state_dict(SettingsRecord({"model": {"width": 4}, "preprocessing": {"spacing": [1.0, 1.0, 1.0]}}).state_dict())


def test_a_changed_epoch_length_is_refused(tmp_path):
    """Resuming with another batch size (here 3 batches per epoch instead of 2) would count the saved iterations
    against the new epoch length: ignite ended such a run at once, having trained nothing."""
    part, _ = _make_trainer(tmp_path, 2, resume=False, batch_size=2)
    part.run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rest, _ = _make_trainer(tmp_path, 4, resume=True, batch_size=3)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt is at epoch 2 after 6 iterations \(3 per epoch, batch size 2\), "
                                         r"but this run has 2 iterations per epoch \(batch size 3\): the batch size changed "
                                         r"from 2 to 3\. Resume .*\(--batch_size 2\)"):
        rest.run()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    same, _ = _make_trainer(tmp_path, 3, resume=True, batch_size=2)
    same.run()
    assert same.state.iteration == 9


def test_resume_is_checked_before_a_trainer_is_built(tmp_path):
    """check_resume_fits refuses, from the checkpoint's recorded loader, epoch and settings records alone, what
    CheckpointHandler would refuse when the engine starts: another epoch length (naming both batch sizes), an epoch
    beyond max_epochs, or a record of other settings."""
    loader = lambda batch_size: DataLoader(list(range(6)), batch_size=batch_size)  # noqa: E731
    assert check_resume_fits(tmp_path, loader(3), max_epochs=4) is None  # no checkpoint: a fresh start
    part, _ = _make_trainer(tmp_path, 2, resume=False, batch_size=2, extra={"record": _Record(1)})
    part.run()
    saved = torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)
    assert saved["loader"] == {"batch_size": 2, "epoch_length": 3, "num_workers": 0, "world_size": 1}
    assert saved["engine"] == {"epoch": 2, "iteration": 6, "max_epochs": 2}
    assert check_resume_fits(tmp_path, loader(2), max_epochs=4) == tmp_path / "checkpoint_epoch=2.pt"
    with pytest.raises(ValueError, match=r"\(3 per epoch, batch size 2\), but this run has 2 iterations per epoch "
                                         r"\(batch size 3\): the batch size changed from 2 to 3"):
        check_resume_fits(tmp_path, loader(3), max_epochs=4)
    assert check_resume_fits(tmp_path, loader(3), max_epochs=4, resume=False) is None
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt is at epoch 2, beyond max_epochs=1"):
        check_resume_fits(tmp_path, loader(2), max_epochs=1)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt has already trained 2 epochs = --max_epochs 2: "
                                         r"nothing to resume; give a larger --max_epochs to train on"):
        check_resume_fits(tmp_path, loader(2), max_epochs=2)
    assert check_resume_fits(tmp_path, loader(2), max_epochs=3) == tmp_path / "checkpoint_epoch=2.pt"
    assert check_resume_fits(tmp_path, loader(2), max_epochs=4, records={"record": _Record(1)}) is not None
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*checkpoint_epoch=2\.pt \('record'\): saved 1, current 2"):
        check_resume_fits(tmp_path, loader(2), max_epochs=4, records={"record": _Record(2)})
    # every record that refuses is named in the one error (other settings and other data: not one per try)
    saved["objects"]["other"] = {"value": 5}
    torch.save(saved, tmp_path / "checkpoint_epoch=2.pt")
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt \('record'\): saved 1, current 2; \('other'\): "
                                         r"saved 5, current 6"):
        check_resume_fits(tmp_path, loader(2), max_epochs=4, records={"record": _Record(2), "other": _Record(6)})
    # another epoch length (another data folder) and a refusing record (another setting): both in the one error
    with pytest.raises(ValueError) as both:
        check_resume_fits(tmp_path, loader(3), max_epochs=4, records={"record": _Record(2), "other": _Record(5)})
    first, second = str(both.value).split("\n")
    assert "(3 per epoch, batch size 2), but this run has 2 iterations per epoch (batch size 3)" in first
    assert second.endswith("checkpoint_epoch=2.pt ('record'): saved 1, current 2")
    # a checkpoint beyond --max_epochs and a refusing record: both named too (the record hid the epochs)
    with pytest.raises(ValueError) as both:
        check_resume_fits(tmp_path, loader(2), max_epochs=1, records={"record": _Record(2), "other": _Record(5)})
    first, second = str(both.value).split("\n")
    assert "checkpoint_epoch=2.pt is at epoch 2, beyond max_epochs=1" in first and "('record'): saved 1" in second
    # a checkpoint from before the loader was recorded: the epoch lengths are named, and the possible causes
    del saved["loader"]
    torch.save(saved, tmp_path / "checkpoint_epoch=2.pt")
    with pytest.raises(ValueError, match=r"\(3 per epoch\), but this run has 2 iterations per epoch \(batch size 3\): "
                                         r"the batch size, the number of training cases or the samples per case changed"):
        check_resume_fits(tmp_path, loader(3), max_epochs=4)


def test_non_finite_loss_stops_and_saves_interrupted(tmp_path):
    trainer, _ = _make_trainer(tmp_path, 2, resume=False, lr=1e30)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.run()
    assert (tmp_path / "checkpoint_interrupted.pt").is_file()


def test_the_non_finite_loss_error_names_the_settings_that_can_cause_it():
    """The message blamed the data or the learning rate alone; a bundle lists its settings that can make the loss
    diverge (the 2D ones: the scale cap, the classifier's octaves), named with their values."""
    from ignite.engine import Engine

    def nan_step(engine, _):
        engine.state.output = {"loss": torch.tensor(float("nan"))}
        return engine.state.output

    named = Engine(nan_step)
    NonFiniteLossHandler("loss", settings={"learning_rate": 0.0005, "scale_cap": 1.0, "amp": True}).attach(named)
    with pytest.raises(FloatingPointError) as err:
        named.run([0])
    assert ("lower the learning rate or disable amp (the settings that can cause it: --learning_rate 0.0005, "
            "--scale_cap 1.0, --amp True), then resume") in str(err.value)
    plain = Engine(nan_step)
    NonFiniteLossHandler("loss").attach(plain)
    with pytest.raises(FloatingPointError, match=r"disable amp, then resume from the last epoch checkpoint\.$"):
        plain.run([0])


@pytest.mark.parametrize("case", ["nan weights", "nan gaussians", "other error"])
def test_a_step_failing_on_a_diverged_model_is_named_as_divergence(tmp_path, case):
    """A step that made the weights NaN from a finite loss fails at the next forward (a check like the renderer's);
    so does one whose finite but huge weights give the renderer NaN Gaussians (NonFiniteGaussiansError). Either
    stops the run naming the divergence and where, with no interrupted checkpoint of the diverged state; another
    ValueError with finite weights is passed on as it is, the interrupted state saved."""
    from ignite.engine import Events

    from medgmae.render import NonFiniteGaussiansError

    trainer, net = _make_trainer(tmp_path, 2, resume=False)

    def check_inputs(module, args):
        if not all(bool(torch.isfinite(w).all()) for w in module.parameters()):
            raise ValueError("means must be finite (found NaN or Inf)")
        if trainer.state.iteration == 3:
            raise (NonFiniteGaussiansError if case == "nan gaussians" else ValueError)("means must be finite (found NaN or Inf)")

    net.register_forward_pre_hook(check_inputs)
    if case == "nan weights":
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: net[1].bias.data.fill_(float("nan")))
    with pytest.raises(ValueError if case == "other error" else FloatingPointError) as raised:
        trainer.run()
    what = {"nan weights": "the weights of 'network' became NaN or infinite (1.bias first)",
            "nan gaussians": "its Gaussians became NaN or infinite", "other error": None}[case]  # fmt: skip
    if what:
        assert str(raised.value).startswith(f"training diverged: {what} by epoch 1, iteration 3, where the step then "
                                            "failed ("), str(raised.value)  # fmt: skip
    assert (tmp_path / "checkpoint_interrupted.pt").is_file() == (what is None)


def test_gradient_clip_bounds_update(tmp_path):
    # with lr=1 and SGD momentum 0.9 the first step's update norm equals the clipped gradient norm
    trainer, net = _make_trainer(tmp_path, 1, resume=False, lr=1.0, clip=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.terminate())
    trainer.run()
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert math.isclose(float((after - before).norm()), 1e-3, rel_tol=1e-4)



def _cases(root: Path, sizes: dict[str, int]) -> list[dict]:
    for name, size in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    return [{"image": str(root / name)} for name in sizes]


def test_cases_record_refuses_other_data_of_the_same_count(tmp_path):
    """The training cases are compared by path (relative to the folder holding them all) and size: a dataset moved
    as a whole resumes; one file of another size, another file or another order at an equal count (which the
    epoch-length check cannot see) is refused, naming the file; in-memory arrays compare by content."""
    from medgmae.engine.records import CasesRecord

    sizes = {"imagesTr/a.nii.gz": 10, "imagesTr/b.nii.gz": 20, "series/c/1.dcm": 5}
    saved = CasesRecord(_cases(tmp_path / "old", sizes), what="the test").state_dict()
    CasesRecord(_cases(tmp_path / "moved" / "data", sizes)).load_state_dict(saved)
    CasesRecord([{"image": str(tmp_path / "old" / "series" / "c")}]).load_state_dict(
        CasesRecord([{"image": str(tmp_path / "moved" / "data" / "series" / "c")}]).state_dict())  # a DICOM folder
    with pytest.raises(ValueError, match=r"the test trained on other data: 3 cases then, 3 now, 1 differing "
                                         r'\(saved \{"image": \["imagesTr/b.nii.gz", 20\]\}; now \{"image": \["imagesTr/b.nii.gz", 21\]\}'):
        CasesRecord(_cases(tmp_path / "edited", {**sizes, "imagesTr/b.nii.gz": 21}), what="the test").load_state_dict(saved)
    renamed = {("imagesTr/d.nii.gz" if k.endswith("a.nii.gz") else k): v for k, v in sizes.items()}
    with pytest.raises(ValueError, match=r"imagesTr/a.nii.gz.*now .*imagesTr/d.nii.gz"):
        CasesRecord(_cases(tmp_path / "renamed", renamed)).load_state_dict(saved)
    with pytest.raises(ValueError, match="the same cases in another order"):
        CasesRecord(_cases(tmp_path / "old", dict(reversed(sizes.items())))).load_state_dict(saved)
    arrays = CasesRecord([{"image": np.zeros((2, 3))}, {"image": torch.ones(4)}]).state_dict()
    CasesRecord([{"image": np.zeros((2, 3))}, {"image": torch.ones(4)}]).load_state_dict(arrays)
    with pytest.raises(ValueError, match="1 differing") as err:
        CasesRecord([{"image": np.zeros((2, 3))}, {"image": torch.ones(4) * 2}]).load_state_dict(arrays)
    # generated images are said as such, not by their digests (which tell a reader nothing)
    assert "(1 generated image (held in memory, e.g. phantom slices) with other pixels" in str(err.value)
    assert "<array>" not in str(err.value)
    with pytest.raises(ValueError, match="cases must be a list"):
        CasesRecord("dataset.json")


def test_a_resumed_scheduler_keeps_this_runs_plan(tmp_path, caplog):
    """A warm-up + cosine schedule resumed with a longer plan (a larger --max_epochs) continues on the new plan
    from the saved step: the rate equals an uninterrupted run of the new plan's at every later step (PyTorch's
    load_state_dict kept the saved t_total, and the rate climbed back up after it); the same plan restores exactly."""
    from monai.optimizers import WarmupCosineSchedule

    from medgmae.engine.restore import restore_states

    def schedule(t_total: int, steps: int) -> WarmupCosineSchedule:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = WarmupCosineSchedule(opt, warmup_steps=2, t_total=t_total)
        for _ in range(steps):
            opt.step()
            sched.step()
        return sched

    first = schedule(10, 10)  # the first run, finished at its t_total
    saved = first.state_dict()
    longer, straight = schedule(20, 0), schedule(20, 10)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("optimizer", longer.optimizer), ("lr_scheduler", longer)],
                       {"optimizer": first.optimizer.state_dict(), "lr_scheduler": saved})  # fmt: skip
    assert "t_total: saved 10, now 20" in caplog.text and longer.last_epoch == 10
    # the first resumed step's rate too (the restored optimiser held the saved plan's last rate, 0)
    assert longer.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"] > 0.1
    for _ in range(10):
        for s in (longer, straight):
            s.optimizer.step()
            s.step()
        assert longer.get_last_lr() == straight.get_last_lr()
    assert straight.get_last_lr()[0] < 0.05  # the new plan's end, not the old cosine rising again
    caplog.clear()
    same = schedule(10, 0)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("lr_scheduler", same)], {"lr_scheduler": saved})
    assert same.state_dict() == saved and "continues on this run's schedule" not in caplog.text


def test_a_warm_up_capped_by_the_saved_plan_is_explained_not_named_as_changed(tmp_path, caplog):
    """WarmupCosineSchedule caps warmup_steps at t_total: a run asking 10 warm-up steps of an 8-step plan warmed up
    for 8. Resumed at step 8 with a 16-step plan (a larger --max_epochs, the same warm-up asked), the warning names
    t_total and says truthfully why the warm-up now ends at step 10 and what the rate does (0.8 of the base rate at
    step 8, rising to it by step 10, as an uninterrupted 16-step run's), not 'warmup_steps: saved 8, now 10' as if
    the user had changed it. A warm-up the user did change is still named."""
    from monai.optimizers import WarmupCosineSchedule

    from medgmae.engine.restore import restore_states

    def schedule(warmup: int, t_total: int, steps: int) -> WarmupCosineSchedule:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = WarmupCosineSchedule(opt, warmup_steps=warmup, t_total=t_total)
        for _ in range(steps):
            opt.step()
            sched.step()
        return sched

    saved = schedule(10, 8, 8).state_dict()
    assert saved["warmup_steps"] == 8  # capped
    longer, straight = schedule(10, 16, 0), schedule(10, 16, 8)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("lr_scheduler", longer)], {"lr_scheduler": saved})
    assert "t_total: saved 8, now 16" in caplog.text and "warmup_steps: saved" not in caplog.text
    assert ("the warm-up ends at step 10 instead of 8: the saved run's warm-up was capped at its t_total of 8 "
            "(WarmupCosineSchedule caps warmup_steps at t_total) and this run's longer plan holds 10 warm-up steps; "
            "at the saved step 8 the rate is 0.8 x the base rate (saved plan: 1) and warms up to it by step 10") in caplog.text  # fmt: skip
    assert longer.lr_lambda(8) == straight.lr_lambda(8) == 0.8
    for _ in range(8):
        for s in (longer, straight):
            s.optimizer.step()
            s.step()
        assert longer.get_last_lr() == straight.get_last_lr()
    caplog.clear()
    changed = schedule(3, 16, 0)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("lr_scheduler", changed)], {"lr_scheduler": schedule(2, 8, 8).state_dict()})
    assert "warmup_steps: saved 2, now 3" in caplog.text and "the warm-up ends" not in caplog.text


def test_a_new_run_in_a_used_folder_replaces_the_earlier_runs_checkpoints(tmp_path, caplog):
    """A fresh run (no resume) in a folder holding a finished 3-epoch run: its start names the earlier checkpoints,
    its first epoch checkpoint replaces them, and a resume then continues this run (epoch 1), not the earlier one
    (whose checkpoint_epoch=3.pt used to outrank this run's own and be the one kept)."""
    first, _ = _make_trainer(tmp_path, 3, resume=False)
    first.run()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=3.pt", "checkpoint_final.pt"]
    again, _ = _make_trainer(tmp_path, 1, resume=False, lr=0.01)
    with caplog.at_level("WARNING"):
        again.run()
    assert ("holds a finished earlier run's checkpoints (checkpoint_epoch=3.pt, checkpoint_final.pt): this new run "
            "removes them when it saves its first epoch (stop now and give another --output_dir to keep it, or add "
            "--resume true with a larger --max_epochs to train it further)") in caplog.text  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_final.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=1.pt"
    assert load_torch_file(tmp_path / "checkpoint_final.pt")["engine"]["epoch"] == 1
    (tmp_path / "checkpoint_final.pt").unlink()  # an unfinished run's folder: --resume true continues it
    caplog.clear()
    third, _ = _make_trainer(tmp_path, 1, resume=False)
    with caplog.at_level("WARNING"):
        third.run()
    assert ("holds an earlier run's checkpoints (checkpoint_epoch=1.pt): this new run removes them when it saves its "
            "first epoch (stop now and add --resume true to continue that run instead)") in caplog.text


def test_a_new_run_in_a_used_folder_removes_the_earlier_runs_pictures_and_event_files_at_its_first_save(tmp_path, caplog):
    """The earlier run's pictures/epoch_*.png and TensorBoard event files are named at the start of a fresh run and
    removed when it saves its first epoch checkpoint, not before: a run that fails in its first epoch removes
    nothing. This process's own event file (its writer opens it before the engine starts) and a picture this run
    rewrote stay; so does a TensorBoard file of another kind."""
    import os
    import socket

    from ignite.engine import Events

    pics, tb = tmp_path / "pictures", tmp_path / "tensorboard"
    pics.mkdir()
    tb.mkdir()
    old = [pics / "epoch_0001.png", pics / "epoch_0003.png", tb / "events.out.tfevents.1700000000.elsewhere.4242.0"]
    own = tb / f"events.out.tfevents.1800000000.{socket.gethostname()}.{os.getpid()}.7"
    other = tb / "projector_config.pbtxt"
    for p in (*old, own, other):
        p.write_bytes(b"earlier")
    (tmp_path / "checkpoint_final.pt").write_bytes(b"x")

    def fail(engine):
        raise RuntimeError("stopped in the first epoch")

    failing, _ = _make_trainer(tmp_path, 1, resume=False)
    failing.add_event_handler(Events.ITERATION_COMPLETED(once=1), fail)
    with pytest.raises(RuntimeError, match="stopped in the first epoch"):
        failing.run()
    assert all(p.is_file() for p in old)  # nothing removed without a first save

    seen = []
    trainer, _ = _make_trainer(tmp_path, 2, resume=False)

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _during_first_epoch(engine):
        seen.append(all(p.is_file() for p in old))
        old[0].write_bytes(b"this run's picture of epoch 1")

    with caplog.at_level("WARNING"):
        trainer.run()
    assert seen == [True]
    assert ("holds a finished earlier run's checkpoints (checkpoint_final.pt, checkpoint_interrupted.pt), 2 pictures/epoch_*.png "
            "files, 1 tensorboard/events.out.tfevents.* file: this new run removes them when it saves its first epoch") in caplog.text  # fmt: skip
    assert old[0].read_bytes() == b"this run's picture of epoch 1"
    assert not old[1].exists() and not old[2].exists()
    assert own.is_file() and other.is_file()


def _bundle_earlier_outputs(bundle: str) -> tuple[str, ...]:
    """The ``earlier_outputs`` of the CheckpointHandler in a bundle's train.json."""
    import json

    config = json.loads((Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "train.json").read_text())
    handler = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))
    return tuple(handler["earlier_outputs"])


@pytest.mark.parametrize("bundle, outputs", [
    ("medgmae_pretrain", ["model.pt", "encoder.pt", "best_model.pt", "summary.json", "curves.png", "pictures/epoch_0003.png"]),
    ("gmae2d_pretrain", ["model.pt", "encoder.pt", "best_model.pt", "summary.json", "curves.png", "pictures/epoch_0003.png"]),
    ("unetr_finetune", ["best_model.pt", "model.ts", "segmentation.png", "dice_per_class.md", "validation/metrics.json",
                        "validation/per_case_dice.csv"]),
])  # fmt: skip
def test_a_fresh_run_stopped_after_its_first_save_leaves_nothing_of_the_earlier_run(tmp_path, caplog, bundle, outputs):
    """A fresh run in the folder of a finished run, stopped right after its first epoch checkpoint (before its own
    summary and models are written): none of the earlier run's outputs is left beside its checkpoint (they used to
    read as this run's: a summary of other epochs, another run's models); the removal names every file, checkpoints
    included. A file this run rewrote before (best_model.pt of its first validation) stays, and so do its inputs."""
    from ignite.engine import Events

    earlier = [tmp_path / "checkpoint_epoch=3.pt", tmp_path / "checkpoint_final.pt", tmp_path / "tensorboard" /
               "events.out.tfevents.1700000000.elsewhere.4242.0", *(tmp_path / name for name in outputs)]  # fmt: skip
    inputs = [tmp_path / "cache" / "precheck.json", tmp_path / "phantom" / "dataset.json", tmp_path / "training_cases.json"]
    for p in earlier + inputs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"earlier run")
    trainer, _ = _make_trainer(tmp_path, 2, resume=False, earlier_outputs=_bundle_earlier_outputs(bundle))

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _validated(engine):  # this run's own first best model, written before its first checkpoint
        (tmp_path / "best_model.pt").write_bytes(b"this run")

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def _stop(engine):  # attached after the checkpoint handler: right after the first save
        raise KeyboardInterrupt

    with caplog.at_level("INFO", logger="medgmae.engine"), pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    assert stopped.value.resume_advice is None  # checkpoint_epoch=1.pt is this run's: "--resume true" continues it
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    expected = ["best_model.pt", "cache/precheck.json", "checkpoint_epoch=1.pt", "checkpoint_interrupted.pt",
                "phantom/dataset.json", "training_cases.json"]  # fmt: skip
    assert left == expected and (tmp_path / "best_model.pt").read_bytes() == b"this run"
    removed = sorted(str(p.relative_to(tmp_path)) for p in earlier if p.name != "best_model.pt")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("removed "))
    shown = ", ".join(removed[:8]) + (f" and {len(removed) - 8} more" if len(removed) > 8 else "")
    assert line == f"removed {len(removed)} files of the earlier run from {tmp_path}: {shown}", line
    assert "checkpoint_epoch=3.pt, checkpoint_final.pt" in line


def test_ctrl_c_before_a_fresh_runs_first_save_in_a_used_folder_keeps_the_earlier_run(tmp_path):
    """Ctrl-C in the first epoch of a fresh run in a finished run's folder: the advice says that nothing of the
    earlier run was removed and that --resume true would continue that run (not this one)."""
    _make_trainer(tmp_path, 2, resume=False)[0].run()
    trainer, _ = _make_trainer(tmp_path, 2, resume=False)

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _stop(engine):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    assert stopped.value.resume_advice == (
        f"interrupted before this run finished an epoch: it saved no checkpoint_epoch=N.pt and removed nothing of the "
        f"earlier run in {tmp_path}; run the same command again to start over (with --resume true it would continue "
        "the earlier run instead)")
    assert (tmp_path / "checkpoint_epoch=2.pt").is_file()


def test_ctrl_c_in_a_later_stage_before_its_first_save_advises_resuming_past_the_finished_stages(tmp_path):
    """GViT's classifier phase stopped in its first epoch: no checkpoint in its own folder, but the warm-up is
    finished; "with or without --resume true" would have started over and replaced the warm-up's checkpoints."""
    trainer, _ = _make_trainer(tmp_path / "classifier", 2, resume=False, later_stage=True)

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _stop(engine):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    advice = stopped.value.resume_advice
    assert advice.startswith(f"interrupted before this stage saved a checkpoint (none in {tmp_path / 'classifier'}): "
                             "run the same command with --resume true") and "with or without" not in advice


def test_tensorboard_purge_step_is_the_iteration_after_the_newest_checkpoint(tmp_path):
    from medgmae.engine.resume import tensorboard_purge_step

    assert tensorboard_purge_step(tmp_path, True) is None  # nothing to resume: a fresh run purges nothing
    torch.save({"engine": {"epoch": 2, "iteration": 14}}, tmp_path / "checkpoint_epoch=2.pt")
    torch.save({"engine": {"epoch": 3, "iteration": 21}}, tmp_path / "checkpoint_epoch=3.pt")
    assert tensorboard_purge_step(tmp_path, True) == 22 and tensorboard_purge_step(tmp_path, False) is None
    (tmp_path / "checkpoint_epoch=4.pt").write_bytes(b"not a checkpoint")  # the resume itself names the problem
    assert tensorboard_purge_step(tmp_path, True) is None
