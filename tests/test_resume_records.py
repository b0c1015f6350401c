"""A resumed run's records name the settings and software it started with and each resume (its epoch, loader
workers, software and the settings it changed), in every training bundle: the start survives in the checkpoints
(``medgmae.engine.start_record.StartRecord``), a checkpoint of the previous release without one still resumes with
the start unknown, and a run never resumed lists no resumes."""

from __future__ import annotations

import shutil

import pytest
import torch
from monai.bundle import run

from engine_helpers import make_trainer
from gmae2d_helpers import train_gmae2d_bundle
from gvit_helpers import BUNDLE, TINY
from pretrain_helpers import SMALL, TRAIN, read_checkpoint
from start_record_helpers import read_json, software_named, strip_start_records

from medgmae.engine.start_record import StartRecord, resume_entry

#: the pre-training bundle's SMALL settings as keywords of a run in this process
SMALL_KEYWORDS = {"roi_size": 32, "patch_size": 8, "num_gaussians": 8, "num_phantoms": 2, "phantom_shape": [48, 48, 40],
                  "phantom_spacing": 3.0, "pixdim": 3.0, "num_samples": 1, "batch_size": 1, "lr_schedule_epochs": 3,
                  "warmup_steps": 3, "device": "cpu", "progress_bar": False}  # fmt: skip


def test_the_keywords_are_the_small_pretraining_settings():
    given = {SMALL[i][2:]: SMALL[i + 1] for i in range(0, len(SMALL), 2)}
    assert {k: str(v).replace(" ", "") for k, v in SMALL_KEYWORDS.items() if k != "progress_bar"} == given


def test_a_record_keeps_the_start_and_adds_each_resume(monkeypatch, tmp_path):
    first = software_named(monkeypatch, "1.0")
    part, _ = make_trainer(tmp_path, 2, resume=False, extra={"run": StartRecord({"width": 4, "lr": 0.1}, 0)})
    part.run()
    saved = read_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["objects"]["run"]
    assert saved == {"start": {"settings": {"width": 4, "lr": 0.1}, "num_workers": 0, "software": first}, "resumes": []}

    second = software_named(monkeypatch, "2.0")
    record = StartRecord({"width": 4, "lr": 0.2}, 3)
    rest, _ = make_trainer(tmp_path, 3, resume=True, extra={"run": record})
    rest.run()
    entry = {"epoch": 2, "num_workers": 3, "software": second, "changed_settings": ["lr: saved 0.1, now 0.2"]}
    assert record.summary() == {"settings": {"width": 4, "lr": 0.1}, "software": first, "resumes": [entry]}
    assert read_checkpoint(tmp_path / "checkpoint_epoch=3.pt")["objects"]["run"]["resumes"] == [entry]
    record.load_state_dict(saved)  # loaded again (a GViT phase after another): from that state alone
    assert record.resumes == [] and record.resumed(2) == entry and record.resumes == [entry]


def test_a_checkpoint_without_a_start_record_resumes_with_the_start_unknown(monkeypatch, tmp_path, caplog):
    part, _ = make_trainer(tmp_path, 2, resume=False)
    part.run()
    ran_with = software_named(monkeypatch, "2.0")
    record = StartRecord({"width": 4, "none_yet": None}, 1)
    rest, _ = make_trainer(tmp_path, 3, resume=True, extra={"run": record})
    with caplog.at_level("INFO"):
        rest.run()
    assert rest.state.epoch == 3 and "without comparing" not in caplog.text  # a start compares nothing
    assert "records no start of its run" in caplog.text
    entry = {"epoch": 2, "num_workers": 1, "software": ran_with, "changed_settings": ["width: saved (not recorded), now 4"]}
    assert record.summary() == {"settings": None, "software": None, "resumes": [entry]}


def test_a_start_unrecorded_is_taken_from_the_checkpoints_records(tmp_path, caplog):
    """A checkpoint without a start record (the previous release's): the start's settings are those the
    checkpoint's other records hold (``recorded_in``: a whole section, and single settings deep in a record's state),
    compared with this session's on resume and so shared by every session; a setting no record holds (or a path to
    nothing) stays unknown, the entry naming it alone; the note is said once however often the record is loaded."""
    from medgmae.engine.records import SettingsRecord

    settings = {"model": {"width": 4, "depth": 2}, "training": {"lr": 0.05, "seed": 7, "max_epochs": 3}}
    records = {"settings": SettingsRecord({"net": {"width": 4, "depth": 2}, "optimiser": {"lr": 0.05}})}
    part, _ = make_trainer(tmp_path, 2, resume=False, extra=dict(records))
    part.run()
    recorded_in = {"model": "settings.settings.net", "training.lr": "settings.settings.optimiser.lr",
                   "training.seed": "settings.settings.optimiser.seed"}  # the last: recorded nowhere  # fmt: skip
    record = StartRecord(settings, 1, recorded_in=recorded_in)
    rest, _ = make_trainer(tmp_path, 3, resume=True, extra={**records, "run": record})
    with caplog.at_level("INFO"):
        rest.run()
    summary = record.summary()
    assert summary["settings"] == {"model": {"width": 4, "depth": 2}, "training": {"lr": 0.05}}
    assert summary["software"] is None and record.start["num_workers"] is None
    assert summary["resumes"][0]["changed_settings"] == ["training.seed: saved (not recorded), now 7",
                                                         "training.max_epochs: saved (not recorded), now 3"]  # fmt: skip
    assert caplog.text.count("records no start of its run") == 1 and "those the checkpoint's records hold" in caplog.text
    saved = read_checkpoint(tmp_path / "checkpoint_epoch=3.pt")["objects"]["run"]["start"]
    assert saved["settings"] == summary["settings"] and saved["software"] is None

    caplog.clear()
    with caplog.at_level("INFO"):
        for _ in range(3):  # loaded again and again (a GViT run's phases): said once
            record.load_state_dict({})
            record.resumed(2, {"settings": {}})
    assert caplog.text.count("records no start of its run") == 0  # this record said it already
    assert record.summary()["settings"] is None  # records holding none: unknown, as before
    fresh = StartRecord(settings, 1, recorded_in=recorded_in)
    with caplog.at_level("INFO"):
        for _ in range(3):
            fresh.load_state_dict({})
            fresh.resumed(2, {"settings": {}})
    assert caplog.text.count("records no start of its run") == 1 and "start settings and software are recorded as unknown" in caplog.text
    with pytest.raises(ValueError, match="recorded_in must map each setting"):
        StartRecord(settings, recorded_in={"model": "config"})


def test_a_record_of_no_settings_and_the_entry_checks():
    record = StartRecord()
    assert set(record.summary()) == {"software"}  # no settings recorded, no resumes
    record.load_state_dict({"start": {"settings": None, "num_workers": 2, "software": {"python": "x"}}, "resumes": []})
    assert record.resumed(4) == {"epoch": 4, "num_workers": None, "software": record.session["software"]}
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_workers must be a whole number"):
            StartRecord(num_workers=bad)
        with pytest.raises(ValueError, match="epoch must be a whole number"):
            resume_entry(bad, 0, {})
    with pytest.raises(ValueError, match="settings must be a mapping"):
        StartRecord([1, 2])


def test_pretraining_summary_names_the_start_and_each_resume(monkeypatch, tmp_path):
    out = tmp_path / "run"
    first = software_named(monkeypatch, "1.0")
    run("training", config_file=TRAIN, logging_file=False, output_dir=str(out), max_epochs=1, **SMALL_KEYWORDS)
    fresh = read_json(out / "summary.json")
    assert fresh["software"] == first and "resumes" not in fresh
    shutil.copytree(out, tmp_path / "old")  # resumed below as a run of the previous release
    second = software_named(monkeypatch, "2.0")
    run("training", config_file=TRAIN, logging_file=False, output_dir=str(out), max_epochs=2, num_workers=1,
        resume=True, **SMALL_KEYWORDS)  # fmt: skip
    summary = read_json(out / "summary.json")
    assert summary["epochs"] == 2 and summary["software"] == first and summary["settings"] == fresh["settings"]
    assert summary["settings"]["training"]["max_epochs"] == 1 and summary["settings"]["training"]["num_workers"] == 0
    assert summary["resumes"] == [{"epoch": 1, "num_workers": 1, "software": second, "changed_settings": [
        "training.max_epochs: saved 1, now 2", "training.num_workers: saved 0, now 1"]}]  # fmt: skip

    old = tmp_path / "old"
    assert strip_start_records(old) == 2  # as the previous release wrote its checkpoints
    run("training", config_file=TRAIN, logging_file=False, output_dir=str(old), max_epochs=2, resume=True, **SMALL_KEYWORDS)
    summary, known = read_json(old / "summary.json"), fresh["settings"]
    # the model and pre-processing of the model record, and the settings record's: the fresh start's
    training = {k: known["training"][k] for k in ("num_samples", "learning_rate", "weight_decay", "grad_clip")}
    assert summary["settings"] == {"model": known["model"], "preprocessing": known["preprocessing"], "training": training}
    assert summary["software"] is None
    assert summary["resumes"][0]["changed_settings"] == [  # the settings no record holds, and only those
        "training.max_epochs: saved (not recorded), now 2",
        *(f"training.{k}: saved (not recorded), now {known['training'][k]!r}"
          for k in ("batch_size", "warmup_steps", "amp", "seed", "num_workers", "processes")),
    ]  # fmt: skip


def test_gmae2d_summary_keeps_the_start_over_two_resumes_and_a_previous_release_checkpoint(monkeypatch, tmp_path):
    out, old = tmp_path / "run", tmp_path / "old"
    first = software_named(monkeypatch, "1.0")
    for folder in (out, old):
        train_gmae2d_bundle(folder, max_epochs=1, seed=3)
    start = read_json(out / "summary.json")
    assert start["software"] == first and start["settings"]["training"]["seed"] == 3 and "resumes" not in start
    second = software_named(monkeypatch, "2.0")
    train_gmae2d_bundle(out, max_epochs=2, seed=3, num_workers=1, resume=True)
    third = software_named(monkeypatch, "3.0")
    train_gmae2d_bundle(out, max_epochs=3, seed=3, resume=True)
    summary = read_json(out / "summary.json")
    assert summary["epochs"] == 3 and summary["software"] == first and summary["settings"] == start["settings"]
    assert summary["resumes"] == [
        {"epoch": 1, "num_workers": 1, "software": second,
         "changed_settings": ["training.max_epochs: saved 1, now 2", "training.num_workers: saved 0, now 1"]},
        {"epoch": 2, "num_workers": 0, "software": third, "changed_settings": ["training.max_epochs: saved 1, now 3"]},
    ]  # fmt: skip

    assert strip_start_records(old) == 2  # the epoch's checkpoint and the final one, as the previous release wrote
    train_gmae2d_bundle(old, max_epochs=2, seed=3, resume=True)  # the settings check still compares the seed
    summary = read_json(old / "summary.json")
    # the start's settings that the checkpoint's model and settings records hold (the fresh run's), the rest unknown
    known = start["settings"]
    assert summary["settings"] == {
        "model": known["model"], "data": {k: known["data"][k] for k in ("flip", "window")},
        "training": {k: known["training"][k] for k in ("learning_rate", "weight_decay", "grad_clip", "seed", "val_images")},
    }  # fmt: skip
    assert summary["software"] is None  # not the resuming session's
    [entry] = summary["resumes"]
    assert entry["epoch"] == 1 and entry["num_workers"] == 0 and entry["software"] == third
    assert entry["changed_settings"] == [  # no line for a setting the records hold: only those not known
        *(f"data.{k}: saved (not recorded), now {known['data'][k]!r}" for k in ("dataset_dir", "num_phantoms", "slices_per_case")),
        "training.max_epochs: saved (not recorded), now 2",
        *(f"training.{k}: saved (not recorded), now {known['training'][k]!r}" for k in ("batch_size", "warmup_steps", "amp", "num_workers")),
    ]  # fmt: skip
    saved = read_checkpoint(old / "checkpoint_epoch=2.pt")["objects"]["run"]["start"]
    assert saved["software"] is None and saved["settings"] == summary["settings"]


def test_gvit_records_keep_the_start_through_the_phases(monkeypatch, tmp_path):
    out, config = tmp_path / "run", str(BUNDLE / "configs" / "train.json")
    first = software_named(monkeypatch, "1.0")
    run("training", config_file=config, logging_file=False, output_dir=str(out), **TINY)
    fresh = read_json(out / "metrics.json")
    assert fresh["software"] == first and "resumes" not in fresh and "resumes" not in read_json(out / "summary.json")
    second = software_named(monkeypatch, "2.0")
    run("training", config_file=config, logging_file=False, output_dir=str(out), resume=True, joint_epochs=2,
        num_workers=1, **TINY)  # fmt: skip
    third = software_named(monkeypatch, "3.0")
    run("training", config_file=config, logging_file=False, output_dir=str(out), resume=True, joint_epochs=3, **TINY)
    metrics, summary = read_json(out / "metrics.json"), read_json(out / "summary.json")
    assert metrics["software"] == summary["software"] == first and metrics["data"]["num_workers"] == 0
    assert metrics["training"]["epochs"] == {"warmup": 1, "classifier": 1, "joint": 3}  # the model's
    resumes = [  # the warm-up and classifier phases' checkpoints, older, do not undo the first resume
        {"epoch": 1, "stage": "joint", "num_workers": 1, "software": second,
         "changed_settings": ["training.epochs.joint: saved 1, now 2"]},
        {"epoch": 2, "stage": "joint", "num_workers": 0, "software": third,
         "changed_settings": ["training.epochs.joint: saved 1, now 3"]},
    ]  # fmt: skip
    assert metrics["resumes"] == summary["resumes"] == resumes
    saved = torch.load(out / "checkpoints" / "joint" / "checkpoint_epoch=3.pt", weights_only=True)["objects"]["run"]
    assert saved["start"]["software"] == first and saved["resumes"] == resumes


def test_a_gvit_run_of_the_previous_release_takes_its_start_from_the_phase_records(tmp_path, caplog):
    """GViT's phase checkpoints without a start record (the previous release's): the start's data and training
    settings that the phase's settings record holds are taken, so the resume's entry names only the settings no
    record holds (the phantom task's folder and window, which the record leaves out, the epochs, each session's,
    and whether guidance ran, which follows from them); the note that the start is not recorded is said once,
    though each phase's checkpoint is loaded."""
    out, config = tmp_path / "run", str(BUNDLE / "configs" / "train.json")
    run("training", config_file=config, logging_file=False, output_dir=str(out), **TINY)
    assert strip_start_records(out) == 6  # an epoch checkpoint and the final one of each phase
    with caplog.at_level("INFO", logger="medgmae"):
        run("training", config_file=config, logging_file=False, output_dir=str(out), resume=True, joint_epochs=2, **TINY)
    assert caplog.text.count("records no start of its run") == 1
    [entry] = read_json(out / "metrics.json")["resumes"]
    data = read_json(out / "metrics.json")["data"]
    assert entry["epoch"] == 1 and entry["stage"] == "joint" and entry["changed_settings"] == [
        f"data.default_root: saved (not recorded), now {data['default_root']!r}",
        f"data.window: saved (not recorded), now {data['window']!r}",
        "training.epochs.warmup: saved (not recorded), now 1", "training.epochs.classifier: saved (not recorded), now 1",
        "training.epochs.joint: saved (not recorded), now 2", "training.guidance: saved (not recorded), now True",
    ]  # fmt: skip
    start = torch.load(out / "checkpoints" / "joint" / "checkpoint_epoch=2.pt", weights_only=True)["objects"]["run"]["start"]
    assert start["software"] is None and start["settings"]["training"] == {
        "lr": 1e-3, "weight_decay": 0.05, "pixel_loss": "bce", "perceptual_weight": 0.1, "gamma": 0.1, "guidance_interval": 1}
    assert start["settings"]["data"] == {k: v for k, v in data.items() if k not in ("default_root", "window", "num_workers")}
