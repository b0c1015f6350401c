"""Resumption refused for changed settings, epoch lengths or data, naming what changed, writing nothing, and checked
before a trainer is built (the exact resumption itself: test_engine_resume.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from medgmae.engine import check_resume_fits

from engine_helpers import make_trainer


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


def test_a_refusal_says_where_settings_no_flag_names_come_from():
    """Fine-tuning's pre-processing comes from the --pretrained file: a resume with another one was refused naming
    only preprocessing.* differences, which no flag of the command sets; the record's sources now say where they
    come from, for the sections that differ only."""
    from medgmae.engine.records import SettingsRecord

    saved = SettingsRecord({"preprocessing": {"spacing": [1.5] * 3}, "optimiser": {"lr": 1.0}}).state_dict()
    sources = {"preprocessing": "the --pretrained file records them", "model": "the --pretrained file"}
    other = SettingsRecord({"preprocessing": {"spacing": [2.0] * 3}, "optimiser": {"lr": 1.0}}, "fine-tuning", sources=sources)
    with pytest.raises(ValueError) as refused:
        other.load_state_dict(saved)
    assert ("(preprocessing.spacing: saved [1.5, 1.5, 1.5], now [2.0, 2.0, 2.0]). Where they come from: "
            "preprocessing.*: the --pretrained file records them. Resume with the saved settings") in str(refused.value)
    lr = SettingsRecord({"preprocessing": {"spacing": [1.5] * 3}, "optimiser": {"lr": 2.0}}, "fine-tuning", sources=sources)
    with pytest.raises(ValueError) as refused:
        lr.load_state_dict(saved)
    assert "Where they come from" not in str(refused.value)


def test_a_refusal_names_a_settings_own_source_before_its_sections():
    """A resume with another --feature_size was refused saying 'model.*: the encoder's part comes from the
    --pretrained file', though the flag gives it: a setting's own source is said instead of its section's (an empty
    one says none), and the section's still for its other settings."""
    from medgmae.engine.records import SettingsRecord

    saved = SettingsRecord({"model": {"feature_size": 16, "hidden_size": 96, "out_channels": 4}}).state_dict()
    sources = {"model": "the encoder's part comes from the --pretrained file",
               "model.feature_size": "--feature_size gives it", "model.out_channels": ""}  # fmt: skip

    def refusal(**model) -> str:
        record = SettingsRecord({"model": {"feature_size": 16, "hidden_size": 96, "out_channels": 4, **model}},
                                "fine-tuning", sources=sources, flags={"model.feature_size": "feature_size"})  # fmt: skip
        with pytest.raises(ValueError) as refused:
            record.load_state_dict(saved)
        return str(refused.value)

    assert "Where they come from: model.feature_size: --feature_size gives it. Resume" in refusal(feature_size=8)
    assert "--pretrained" not in refusal(feature_size=8)
    assert "Where they come from" not in refusal(out_channels=3)
    both = refusal(feature_size=8, hidden_size=48)
    assert "Where they come from: model.*: the encoder's part comes from the --pretrained file; model.feature_size: " in both


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


def test_a_setting_with_a_saved_default_is_compared_in_a_section_an_older_checkpoint_lacks(caplog):
    """A setting added later with the value earlier runs had (``saved_defaults``) is compared whether the older
    record holds its section or lacks it: a run with another value is refused, a run with the earlier one resumes
    with a warning naming the section's other settings (not compared)."""
    from medgmae.engine.records import SettingsRecord

    oldest = SettingsRecord({"optimiser": {"lr": 1e-3}}, "the test").state_dict()  # no step section at all
    older = SettingsRecord({"optimiser": {"lr": 1e-3}, "step": {"clip": 1.0}}, "the test").state_dict()
    record = lambda augment: SettingsRecord({"optimiser": {"lr": 1e-3}, "step": {"clip": 1.0, "augment": augment}}, "the test",
                                            saved_defaults={"step": {"augment": False}})  # noqa: E731  # fmt: skip
    for saved in (oldest, older):
        with pytest.raises(ValueError, match=r"step\.augment: saved False, now True"):
            record(True).load_state_dict(saved)
    with caplog.at_level("WARNING"):
        record(False).load_state_dict(oldest)
    assert "records no step.clip settings" in caplog.text
    record(False).load_state_dict(older)
    with pytest.raises(ValueError, match=r"optimiser\.lr: saved 0\.001, now 0\.002"):
        SettingsRecord({"optimiser": {"lr": 2e-3}, "step": {"clip": 1.0, "augment": False}}, "the test",
                       saved_defaults={"step": {"augment": False}}).load_state_dict(oldest)  # fmt: skip


def test_a_retired_setting_of_an_older_record_is_dropped_and_no_other_saved_only_one():
    """A key an earlier version recorded and this one retired (``retired``) is not compared; a key only the saved
    record holds that is not retired, or a retired key's name in another section, is still named as saved, not
    set now."""
    from medgmae.engine.records import SettingsRecord

    record = SettingsRecord({"data": {"seed": 0}, "model": {"width": 4}}, "the test", retired={"data": ["root"]})
    record.load_state_dict({"settings": {"data": {"seed": 0, "root": "/gone"}, "model": {"width": 4}}})
    with pytest.raises(ValueError, match=r"other settings \(data\.crop: saved 8, now \(not set\)\)"):
        record.load_state_dict({"settings": {"data": {"seed": 0, "root": "/gone", "crop": 8}, "model": {"width": 4}}})
    with pytest.raises(ValueError, match=r"other settings \(model\.root: saved '/gone', now \(not set\)\)"):
        record.load_state_dict({"settings": {"data": {"seed": 0}, "model": {"width": 4, "root": "/gone"}}})
    with pytest.raises(ValueError, match=r"data\.seed: saved 1, now 0"):
        record.load_state_dict({"settings": {"data": {"seed": 1, "root": "/gone"}, "model": {"width": 4}}})
    with pytest.raises(ValueError, match="retired must map each section to a list of keys"):
        SettingsRecord({"data": {}}, retired={"data": "root"})


def test_a_checkpoint_without_a_settings_record_is_compared_on_the_settings_whose_earlier_value_is_known():
    """A checkpoint written before its run recorded settings stands in as ``{}`` for a record with saved defaults
    (a top-level one here, as the 2D GMAE's flip): that setting is compared and its refusal names the flag and the
    value that resume; the other settings are not compared. A record that holds the setting is compared as saved."""
    from medgmae.engine.records import SettingsRecord, unrecorded_states

    def record(flip):
        return SettingsRecord({"flip": flip, "optimiser": {"lr": 1e-3}}, "the test", saved_defaults={"flip": True},
                              flags={"flip": "flip"})  # fmt: skip

    assert unrecorded_states({"settings": record(False), "plain": SettingsRecord({"a": 1})}) == {"settings": {}}
    with pytest.raises(ValueError, match=r"\(flip: saved True, now False\)\. Resume with the saved settings \(here --flip true\) or"):
        record(False).load_state_dict({})
    record(True).load_state_dict({})  # the optimiser is not compared: not recorded
    record(False).load_state_dict(record(False).state_dict())  # a record that holds flip: its value, not the default
    nested = SettingsRecord({"model": {"freqs": 2}}, "the test", flags={"model.freqs": "classifier_freqs"})
    with pytest.raises(ValueError, match=r"saved 6, now 2\)\. Resume with the saved settings \(here --classifier_freqs 6\)"):
        nested.load_state_dict({"settings": {"model": {"freqs": 6}}})


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
    assert saved["loader"] == {"batch_size": 2, "epoch_length": 3, "num_workers": 0, "world_size": 1, "item_seeded": False}
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
                                         r"the number of training cases or images, or the samples per case, changed\. "):
        check_resume_fits(tmp_path, loader(3), max_epochs=4)
    saved["loader"] = {"batch_size": 3, "world_size": 1}  # the same batch size: more images or cases, not it
    torch.save(saved, tmp_path / "checkpoint_epoch=2.pt")
    with pytest.raises(ValueError, match=r"the number of training cases or images, or the samples per case, changed "
                                         r"\(the batch size, 3, did not\)"):
        check_resume_fits(tmp_path, loader(3), max_epochs=4)


def test_a_model_file_under_a_checkpoint_name_is_a_refusal_with_the_way_on(tmp_path):
    """A model's weights copied to ``checkpoint_epoch=N.pt`` (no ``engine`` record) passed check_resume_fits and
    then crashed the engine's start with ``KeyError: 'engine'``; both refuse it naming the file, what it lacks and
    what to do (the one before it to resume from, or a fresh start), as for a checkpoint cut short."""
    from medgmae.engine.restore import ResumeRefused

    loader = DataLoader(list(range(6)), batch_size=2)
    part, net = make_trainer(tmp_path, 2, resume=False, batch_size=2)
    part.run()
    newest = tmp_path / "checkpoint_epoch=2.pt"
    torch.save({"model": net.state_dict()}, newest)  # as a bundle's model.pt holds
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for resume in (lambda: check_resume_fits(tmp_path, loader, max_epochs=4),
                   lambda: make_trainer(tmp_path, 4, resume=True, batch_size=2)[0].run()):  # fmt: skip
        with pytest.raises(ResumeRefused) as refused:
            resume()
        assert str(refused.value) == (
            f"the newest checkpoint cannot be resumed from: {newest} holds no training state (no 'engine' record of "
            "its epoch: a model's weights, such as model.pt, copied to a checkpoint's name?); remove it, or run "
            "without --resume true to start afresh"
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    torch.save(net.state_dict(), tmp_path / "checkpoint_epoch=3.pt")  # bare weights, an older one beside
    with pytest.raises(ResumeRefused, match=r"checkpoint_epoch=3\.pt holds no training state .*; remove it to resume "
                                            r"from checkpoint_epoch=2\.pt, the one before"):
        check_resume_fits(tmp_path, loader, max_epochs=4)


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
    with pytest.raises(ValueError, match="other data: 2 images then, 2 now, 1 differing") as err:  # the 2D bundles' noun
        CasesRecord([{"image": np.zeros((2, 3))}, {"image": torch.ones(4) * 2}], noun="image").load_state_dict(arrays)
    # generated images are said as such, not by their digests (which tell a reader nothing)
    assert "(1 generated image (held in memory, e.g. phantom slices) with other pixels" in str(err.value)
    assert "<array>" not in str(err.value)
    with pytest.raises(ValueError, match="cases must be a list"):
        CasesRecord("dataset.json")


def test_a_refusal_of_other_cases_names_the_settings_that_choose_them(tmp_path):
    """A pre-training resume without the run's own --seed draws another split: the refusal says which settings
    choose the cases (the record's hint), and counts one case as one."""
    from medgmae.engine.records import CasesRecord

    saved = CasesRecord(_cases(tmp_path / "a", {"x.nii.gz": 10})).state_dict()
    other = CasesRecord(_cases(tmp_path / "a", {"y.nii.gz": 10}), what="the test", hint="drawn with --seed: give the run's")
    with pytest.raises(ValueError, match=r"other data: 1 case then, 1 now, .*Resume with the interrupted run's data "
                                         r"\(drawn with --seed: give the run's\) or train into a new output_dir"):
        other.load_state_dict(saved)
    # the values that chose the saved cases, saved with them: those that differ are given as their flags; a record
    # saved before it recorded them gives none
    chose = CasesRecord(_cases(tmp_path / "a", {"x.nii.gz": 10}), chosen_by={"seed": 1, "val_fraction": 0.34}).state_dict()
    assert chose["chosen_by"] == {"seed": 1, "val_fraction": 0.34} and "chosen_by" not in saved
    now = CasesRecord(_cases(tmp_path / "a", {"y.nii.gz": 10}), hint="drawn with --seed: give the run's",
                      chosen_by={"seed": 0, "val_fraction": 0.34})  # fmt: skip
    with pytest.raises(ValueError, match=r"\(drawn with --seed: give the run's \(here --seed 1\)\) or train"):
        now.load_state_dict(chose)
    with pytest.raises(ValueError, match=r"\(drawn with --seed: give the run's\) or train"):
        now.load_state_dict(saved)
    with pytest.raises(ValueError, match="chosen_by must map"):
        CasesRecord([], chosen_by=["seed"])
