"""What the 3D training records say of how to repeat a run: fine-tuning's ``training_cases.json`` names the data
loader's workers, the software and the pre-trained file's content (SHA-256: the next pre-training run replaces an
``encoder.pt`` at the same path), ``medgmae-runs-table`` notes runs whose encoder path held other content, and each
``metrics.json`` and pre-training's ``summary.json`` name the software."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from ignite.engine import Engine

from medgmae.checkpoint import make_checkpoint
from medgmae.engine import MetricHistory
from medgmae.finetune.evaluate import SegmentationReport
from medgmae.finetune.run_record import case_record, pretrained_record, start_record, write_run_record
from medgmae.finetune.runs_table import main, repeated_seed_notes, runs_table
from medgmae.data.fingerprint import file_sha256
from medgmae.mae_training.summary import PretrainSummary
from medgmae.networks.vit import MaskedViTEncoder

from finetune_helpers import fake_run


def _encoder(path, seed: int):
    """An ``encoder.pt`` at ``path`` whose weights come from ``seed`` (another seed: other bytes, same path)."""
    torch.manual_seed(seed)
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), None, {"source": "medgmae"}), path)
    return path


def test_file_sha256_is_the_sha256_of_the_files_bytes(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * (1 << 20) + 17))  # more than one block, and a short last one
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(TypeError, match="path must be a path"):
        file_sha256(3)


def test_two_encoders_written_at_one_path_are_told_apart_by_the_record(tmp_path):
    """The next pre-training run replaces ``encoder.pt``: the two runs' records name one path, and the content each
    loaded."""
    path = _encoder(tmp_path / "encoder.pt", 0)
    first = pretrained_record(path)
    first_bytes = path.read_bytes()
    _encoder(path, 1)
    second = pretrained_record(path)
    assert first["path"] == second["path"] == str(path.resolve())
    assert first["sha256"] == hashlib.sha256(first_bytes).hexdigest()
    assert second["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != first["sha256"]


def test_the_runs_table_notes_an_encoder_path_that_held_other_content(tmp_path, capsys):
    path = "/pre/encoder.pt"
    runs = [fake_run(tmp_path / name, 0.5, 1, 0, training_seed=seed, epochs=1, best=(0.5, 1),
                     pretrained={"path": path, "kind": "medgmae-encoder", "source": "medgmae", "sha256": digest})
            for name, seed, digest in (("a", 0, "a" * 64), ("b", 1, "a" * 64), ("c", 2, "c" * 64))]  # fmt: skip
    columns, rows, messages = runs_table(runs)
    hidden = {"encoder_sha256", "experiment"}  # no columns: what the summary and the notes read
    optional = {"status"}  # a run still training or stopped: the CSV's status column, the markdown's epochs cell
    assert not (hidden | optional) & set(columns)
    assert all({*columns, *hidden} <= set(row) <= {*columns, *hidden, *optional} for row in rows)
    notes = [m for m in messages if path in m]
    assert len(notes) == 1 and f"sha256 {'a' * 12}: {runs[0]}, {runs[1]}" in notes[0] and f"sha256 {'c' * 12}: {runs[2]}" in notes[0]
    assert main([str(r) for r in runs]) == 0 and "had other content in different runs" in capsys.readouterr().err
    _, _, messages = runs_table(runs[:2])  # one content: nothing to note
    assert not any(path in m for m in messages)
    old = fake_run(tmp_path / "old", 0.5, 1, 0, training_seed=3, epochs=1, best=(0.5, 1),
                   pretrained={"path": path, "kind": "medgmae-encoder", "source": "medgmae"})  # recorded before sha256
    _, _, messages = runs_table([runs[0], old])
    assert not any(path in m for m in messages)


def test_the_run_record_names_the_loader_workers_and_the_software(tmp_path):
    encoder = _encoder(tmp_path / "encoder.pt", 0)
    record = start_record(case_record(0.5, 0, 2, []), str(encoder), 4, num_workers=3, device=torch.device("cpu"))
    assert (record["training_seed"], record["num_workers"]) == (4, 3)
    assert record["software"]["packages"]["torch"] == torch.__version__ and "gpu" not in record["software"]
    assert record["pretrained"]["sha256"] == hashlib.sha256(encoder.read_bytes()).hexdigest()
    write_run_record(tmp_path / "run", record)
    (tmp_path / "run" / "checkpoint_epoch=1.pt").write_bytes(b"")
    resumed = start_record(case_record(0.5, 0, 2, []), "", 9, resumed=tmp_path / "run", num_workers=0)
    assert resumed["num_workers"] == 3 and resumed["software"] == json.loads(json.dumps(record["software"]))
    assert [r["num_workers"] for r in resumed["resumes"]] == [0]  # what the resume ran with, beside the start's
    assert resumed["resumes"][0]["software"]["packages"]["torch"] == torch.__version__
    write_run_record(tmp_path / "run", resumed)
    (tmp_path / "run" / "checkpoint_epoch=4.pt").write_bytes(b"")  # the newest, which the next resume continues
    again = start_record(case_record(0.5, 0, 2, []), "", 9, resumed=tmp_path / "run", num_workers=2)
    assert [r["num_workers"] for r in again["resumes"]] == [0, 2] and again["num_workers"] == 3
    assert [r["epoch"] for r in again["resumes"]] == [1, 4]  # the epoch each resume continued from
    with pytest.raises(ValueError, match="num_workers must be a whole number"):
        start_record(case_record(0.5, 0, 2, []), "", 4, num_workers=-1)


def test_a_resume_stopped_before_its_first_checkpoint_is_listed_once(tmp_path):
    """The record is written as a resume starts, before it trains: a resume stopped before its first checkpoint
    (killed, then resumed again from the same checkpoint) is listed once, by the last try, as the other bundles'
    checkpoints list it; a resume from a later checkpoint adds its entry; one from an earlier checkpoint (the later
    ones removed) drops the entries of the sessions after it, whose training it does not carry."""
    run = tmp_path / "run"

    def resume(workers: int) -> list:
        record = start_record(case_record(0.5, 0, 2, []), "", 9, resumed=run, num_workers=workers)
        write_run_record(run, record)
        return [(r["epoch"], r["num_workers"]) for r in record["resumes"]]

    write_run_record(run, start_record(case_record(0.5, 0, 2, []), "", 4, num_workers=3))
    (run / "checkpoint_epoch=1.pt").write_bytes(b"")
    assert resume(0) == [(1, 0)]
    assert resume(1) == [(1, 1)]  # the try before wrote no checkpoint: replaced
    (run / "checkpoint_epoch=3.pt").write_bytes(b"")
    assert resume(2) == [(1, 1), (3, 2)]
    assert resume(5) == [(1, 1), (3, 5)]
    (run / "checkpoint_epoch=3.pt").unlink()  # back to epoch 1: the sessions from epoch 1 on are not this run's past
    assert resume(6) == [(1, 6)]
    record = json.loads((run / "training_cases.json").read_text(encoding="utf-8"))
    record["resumes"] = ["not an entry", {"epoch": True}, {"epoch": 0, "num_workers": 2}, *record["resumes"]]
    write_run_record(run, record)
    resumes = start_record(case_record(0.5, 0, 2, []), "", 9, resumed=run, num_workers=7)["resumes"]
    assert resumes[:3] == ["not an entry", {"epoch": True}, {"epoch": 0, "num_workers": 2}]  # kept as recorded
    assert [(r["epoch"], r["num_workers"]) for r in resumes[3:]] == [(1, 7)]


def test_metrics_json_and_the_pretraining_summary_name_the_software(tmp_path):
    report = SegmentationReport(tmp_path / "validation", ["background", "liver"])
    engine = Engine(lambda e, b: None)
    engine.state.device = torch.device("cpu")
    report.write(engine)
    written = json.loads((tmp_path / "validation" / "metrics.json").read_text(encoding="utf-8"))
    assert written["software"]["packages"]["torch"] == torch.__version__
    assert written["software"]["packages"]["monai"] == __import__("monai").__version__
    summary = PretrainSummary(tmp_path / "pre", MetricHistory(), "medgmae", settings={"training": {"num_workers": 2}})
    engine.state.epoch = 1
    s = summary.summary(engine)
    assert s["settings"]["training"]["num_workers"] == 2 and s["software"]["packages"]["torch"] == torch.__version__


def test_one_training_seed_from_a_replaced_encoder_is_no_repeat(tmp_path):
    """Two runs of one setting and training seed whose encoder path held other content started from different
    encoders: not the "not independent repeats" of one seed (the replaced-encoder note says what they are); the
    same content is."""
    path = "/pre/encoder.pt"

    def run(name, digest):
        return fake_run(tmp_path / name, 0.5, 1, 0, training_seed=0, epochs=1, best=(0.5, 1),
                        pretrained={"path": path, "kind": "medgmae-encoder", "source": "medgmae", "sha256": digest})  # fmt: skip

    _, rows, _ = runs_table([run("a", "a" * 64), run("b", "b" * 64)])
    assert repeated_seed_notes(rows) == []
    _, rows, _ = runs_table([run("c", "c" * 64), run("d", "c" * 64)])
    assert len(notes := repeated_seed_notes(rows)) == 1 and "training seed 0 in 2 runs" in notes[0]
    _, rows, _ = runs_table([run("e", "e" * 64), run("f", None)])  # a run recorded before the digest: maybe the same
    assert len(notes := repeated_seed_notes(rows)) == 1 and "training seed 0 in 2 runs" in notes[0]


def test_only_the_main_process_writes_the_record(tmp_path, monkeypatch):
    """Under torchrun each rank builds the same record: rank 0 alone writes it, so that a resume's ``resumes``
    entry is added once (a rank reading after another's write appended a second)."""
    import medgmae.finetune.run_record as run_record

    monkeypatch.setattr(run_record, "is_main_process", lambda: False)
    path = write_run_record(tmp_path / "run", start_record(case_record(0.5, 0, 2, []), "", 0, num_workers=1))
    assert path == tmp_path / "run" / "training_cases.json" and not path.exists()
