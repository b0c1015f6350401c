"""Exact resumption: bit for bit, through a stop while validating or in the closing steps, refused for changed
settings, epoch lengths or data, checked before a trainer is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader

from medgmae.engine import check_resume_fits, latest_checkpoint
from medgmae.files import load_torch_file

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


def _validated_trainer(out_dir: Path, max_epochs: int, resume: bool, stop_at: int | None = None):
    """A :func:`make_trainer` run validated by :class:`_Validation` (its history among the checkpointed objects),
    counting the iterations it trains."""
    from medgmae.engine import MetricHistory

    history = MetricHistory("val_score", mode="max")
    trainer, net = make_trainer(out_dir, max_epochs, resume, extra={"history": history},
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
    part, _ = make_trainer(tmp_path, 2, resume=False, extra={"record": _Record(1)})
    part.run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rest, _ = make_trainer(tmp_path, 4, resume=True, extra={"record": _Record(2)})
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*checkpoint_epoch=2\.pt \('record'\): saved 1, current 2"):
        rest.run()
    assert rest.state.iteration == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_changed_setting_is_named_before_the_weights_refuse_it(tmp_path):
    """A resume with another model size: the configuration record names the change, not a tensor's shape."""
    part, _ = make_trainer(tmp_path, 1, resume=False, extra={"record": _Record(64)})
    part.run()
    rest, net = make_trainer(tmp_path, 2, resume=True, extra={"record": _Record(32)})
    with torch.no_grad():  # the weights would refuse the state too (as a changed num_gaussians does)
        net[1].weight = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\('record'\): saved 64, current 32"):
        rest.run()


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


def test_a_checkpoint_from_before_a_settings_record_resumes_with_a_warning(tmp_path, caplog):
    """A run that records its settings (a SettingsRecord among the objects) resumes a checkpoint written before
    it did, saying so; one written with other settings is refused naming them."""
    from medgmae.engine.records import SettingsRecord

    part, _ = make_trainer(tmp_path, 2, resume=False)
    part.run()
    rest, _ = make_trainer(tmp_path, 3, resume=True, extra={"settings": SettingsRecord({"width": 4}, "the test")})
    with caplog.at_level("WARNING"):
        rest.run()
    assert rest.state.epoch == 3 and "was written before its run recorded ['settings']" in caplog.text
    other, _ = make_trainer(tmp_path, 4, resume=True, extra={"settings": SettingsRecord({"width": 8}, "the test")})
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
    part, _ = make_trainer(tmp_path, 2, resume=False, batch_size=2)
    part.run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rest, _ = make_trainer(tmp_path, 4, resume=True, batch_size=3)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt is at epoch 2 after 6 iterations \(3 per epoch, batch size 2\), "
                                         r"but this run has 2 iterations per epoch \(batch size 3\): the batch size changed "
                                         r"from 2 to 3\. Resume .*\(--batch_size 2\)"):
        rest.run()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    same, _ = make_trainer(tmp_path, 3, resume=True, batch_size=2)
    same.run()
    assert same.state.iteration == 9


def test_resume_is_checked_before_a_trainer_is_built(tmp_path):
    """check_resume_fits refuses, from the checkpoint's recorded loader, epoch and settings records alone, what
    CheckpointHandler would refuse when the engine starts: another epoch length (naming both batch sizes), an epoch
    beyond max_epochs, or a record of other settings."""
    loader = lambda batch_size: DataLoader(list(range(6)), batch_size=batch_size)  # noqa: E731
    assert check_resume_fits(tmp_path, loader(3), max_epochs=4) is None  # no checkpoint: a fresh start
    part, _ = make_trainer(tmp_path, 2, resume=False, batch_size=2, extra={"record": _Record(1)})
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
