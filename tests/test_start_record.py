"""A run's start record and its resumes (medgmae.engine.start_record), in memory: the entry's checks, plain JSON
settings, the software of the training device, the stage, the resumes a checkpoint recorded kept around this
session's one entry, the settings a resume changed (none: an empty list), the start's settings read from a
checkpoint's other records, and every record among a checkpoint's objects told of the resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import medgmae.software
from medgmae.engine.start_record import StartRecord, note_resume, resume_entry


@pytest.fixture(autouse=True)
def _software(monkeypatch):
    """A software record that names the device it was made for (the real one reads packages and git)."""
    monkeypatch.setattr(medgmae.software, "software_versions", lambda device=None: {"device": device})


def _resumed_record(settings: dict, saved_start: dict | None = None, **kwargs) -> StartRecord:
    """A record of ``settings`` that loaded a checkpoint whose start had ``saved_start`` settings (its own if
    ``None``)."""
    record = StartRecord(settings, 0, **kwargs)
    start = record.state_dict()["start"]
    if saved_start is not None:
        start = {**start, "settings": saved_start}
    record.load_state_dict({"start": start, "resumes": []})
    return record


def test_a_resume_from_epoch_0_is_recorded():
    assert resume_entry(0, 0, {}) == {"epoch": 0, "num_workers": 0, "software": {}}
    assert _resumed_record({"a": 1}).resumed(0)["epoch"] == 0


def test_a_software_record_that_is_no_mapping_is_refused():
    with pytest.raises(ValueError, match="^ran_with must be the software record \\(a mapping\\), got list$"):
        resume_entry(1, 0, [("python", "3.11")])


def test_a_resume_that_changed_no_setting_records_an_empty_list():
    """Settings recorded and none changed: ``changed_settings`` is ``[]`` (nothing changed), not left out (which
    says a record of no settings)."""
    record = _resumed_record({"a": 1, "b": {"c": 2}})
    assert record.resumed(3) == {"epoch": 3, "num_workers": 0, "software": {"device": None}, "changed_settings": []}


def test_the_settings_are_kept_as_plain_json():
    """A path is kept as its text and a tuple as a list, so that the checkpoint and summary hold plain JSON."""
    record = StartRecord({"path": Path("/data/x"), "sizes": (1, 2), "nested": {"p": Path("y")}}, 0)
    assert record.start["settings"] == {"path": "/data/x", "sizes": [1, 2], "nested": {"p": "y"}}
    assert json.loads(json.dumps(record.state_dict()))["start"]["settings"] == record.start["settings"]


def test_the_software_record_is_made_for_the_training_device():
    record = StartRecord({"a": 1}, 0, device="cuda:1")
    assert record.start["software"] == {"device": "cuda:1"}
    record.load_state_dict(record.state_dict())
    assert record.resumed(1)["software"] == {"device": "cuda:1"}


def test_the_stage_given_is_named_in_a_resumes_entry():
    assert _resumed_record({"a": 1}, stage="warmup").resumed(2)["stage"] == "warmup"
    assert "stage" not in _resumed_record({"a": 1}).resumed(2)


def test_the_resumes_a_checkpoint_recorded_are_kept_around_this_sessions_one_entry():
    """Loaded, the earlier resumes are the record's before this session adds its own; told twice (two handlers
    over one record, a phase loading it again), this session still has one entry, after the earlier ones."""
    earlier = {"epoch": 1, "num_workers": 0, "software": {"device": "cpu"}}
    record = StartRecord({"a": 1}, 0)
    record.load_state_dict({"start": record.state_dict()["start"], "resumes": [earlier]})
    assert record.summary()["resumes"] == [earlier] and record.state_dict()["resumes"] == [earlier]
    record.resumed(2)
    entry = record.resumed(2)
    assert record.resumes == [earlier, entry] and entry["epoch"] == 2


def test_a_setting_changed_since_the_start_is_named_on_its_own_line():
    record = _resumed_record({"a": 1, "b": {"c": 3, "d": 4}}, saved_start={"a": 1, "b": {"c": 2, "d": 4}})
    assert record.resumed(5)["changed_settings"] == ["b.c: saved 2, now 3"]


def test_a_value_saved_where_a_section_now_is_compared_as_that_value():
    """The start recorded ``model`` as one value; now it is a section: the line names ``model`` and the value
    the start recorded, not the section's settings as unrecorded."""
    record = _resumed_record({"model": {"size": 1}}, saved_start={"model": "small"})
    assert record.resumed(1)["changed_settings"] == ["model: saved 'small', now {'size': 1}"]


def test_the_start_settings_are_read_only_where_the_records_path_leads():
    """A checkpoint that recorded no start: ``x`` is read at ``obj.a.b`` of its saved states; where ``obj.a`` is
    a plain value, not a section, nothing is read."""
    for saved, start in (({"obj": {"a": {"b": 5}}}, {"x": 5}), ({"obj": {"a": 5}}, None), ({"obj": {}}, None)):
        record = StartRecord({"x": 1}, 0, recorded_in={"x": "obj.a.b"})
        record.load_state_dict({})
        record.resumed(1, saved)
        assert record.start["settings"] == start, saved


def test_every_start_record_among_a_checkpoints_objects_is_told():
    one, two = _resumed_record({"a": 1}), _resumed_record({"b": 1})
    note_resume({"one": one, "model": object(), "two": two}, 4)
    assert [[r["epoch"] for r in record.resumes] for record in (one, two)] == [[4], [4]]
