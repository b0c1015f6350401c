"""The fine-tuning run record's training seed and pre-trained encoder, and ``medgmae-runs-table``, which puts runs
side by side."""

from __future__ import annotations

import csv
import hashlib
import json
import re

import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.run_record import (
    case_record, check_resume_matches, pretrained_record, read_run_record, start_record, write_run_record,
)  # fmt: skip
from medgmae.finetune.runs_table import main, repeated_seed_notes, runs_table, summary_table
from medgmae.networks.vit import MaskedViTEncoder

from finetune_helpers import encoder_file, fake_best_model, fake_run, run_bundle


def _study(tmp_path):
    """Three runs of a label-efficiency study: from scratch at 1 %, from a voxel-MAE encoder at 10 % (another
    training seed, the same subset seed), and one recorded before the training seed and encoder were, not yet
    validated."""
    encoder = {"path": "/enc/encoder.pt", "kind": "medgmae-encoder", "source": "voxel-mae"}
    scratch = fake_run(tmp_path / "scratch_1", 0.01, 1, 0, training_seed=0, epochs=40, best=(0.25, 30),
                       last={"liver": 0.5, "spleen": 0.25})  # fmt: skip
    pre = fake_run(tmp_path / "pre_10", 0.1, 10, 0, training_seed=2, pretrained=encoder, epochs=4, best=(0.75, 3),
                   last={"liver": 0.875, "spleen": 0.625, "kidney": 0.5625})  # fmt: skip
    old = fake_run(tmp_path / "old", 1.0, 100, 5, epochs=1)
    return scratch, pre, old


def test_the_table_holds_each_runs_recorded_values(tmp_path):
    scratch, pre, old = _study(tmp_path)
    columns, rows, messages = runs_table([scratch, pre, old], per_class=True)
    assert columns[-6:] == ["dice liver", "dice spleen", "dice kidney", "spacing", "hu_window", "orientation"]
    assert rows[0] == {"run": str(scratch), "init": "scratch", "encoder": "", "label_fraction": 0.01,
                       "effective_fraction": 0.01, "training_cases": 1, "training_seed": 0, "subset_seed": 0,
                       "epochs": 40, "best_dice": 0.25, "best_epoch": 30, "last_dice": 0.375, "eval_dice": None,
                       "dice liver": 0.5, "dice spleen": 0.25, "dice kidney": None, "spacing": None,
                       "hu_window": None, "orientation": None, "encoder_sha256": None}  # fmt: skip
    assert (rows[1]["init"], rows[1]["encoder"], rows[1]["training_seed"]) == ("voxel-mae", "/enc/encoder.pt", 2)
    assert (rows[1]["best_dice"], rows[1]["best_epoch"], rows[1]["last_dice"], rows[1]["dice kidney"]) == (0.75, 3, 0.6875, 0.5625)
    assert (rows[2]["init"], rows[2]["training_seed"], rows[2]["subset_seed"], rows[2]["best_dice"]) == ("not recorded", None, 5, None)
    assert messages == [f"{old}: no validation yet (no best_model.pt or validation/metrics.json): listed without Dice"]
    assert "dice liver" not in runs_table([scratch])[0]


def test_the_command_prints_and_writes_markdown_and_csv(tmp_path, capsys):
    scratch, pre, _ = _study(tmp_path)
    md, table = tmp_path / "t.md", tmp_path / "t.csv"
    assert main([str(scratch), str(pre), "--markdown", str(md), "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(md.read_text(encoding="utf-8"))
    assert f"| {pre} | voxel-mae | /enc/encoder.pt | 0.1000 | 0.1000 | 10 | 2 | 0 | 4 | 0.7500 | 3 | 0.6875 |  |" in out
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [r["run"] for r in rows] == [str(scratch), str(pre)] and rows[0]["best_dice"] == "0.25"
    assert rows[0]["eval_dice"] == "" and "dice liver" not in rows[0]


def test_bad_folders_are_named_and_the_others_listed(tmp_path, capsys):
    scratch, _, _ = _study(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "training_cases.json").write_text("{")
    bad = [str(tmp_path / n) for n in ("missing", "empty", "a_file", "broken")]
    assert main([*bad, str(scratch)]) == 0
    captured = capsys.readouterr()
    assert f"| {scratch} | scratch |" in captured.out
    err = captured.err.splitlines()
    assert err[:3] == [f"medgmae-runs-table: {bad[0]}: no such folder",
                       f"medgmae-runs-table: {bad[1]}: not a fine-tuning run (no training_cases.json)",
                       f"medgmae-runs-table: {bad[2]}: not a folder"]  # fmt: skip
    assert err[3].startswith(f"medgmae-runs-table: {bad[3]}/training_cases.json: the run record cannot be read")
    assert main(bad) == 2
    assert "error: none of the 4 folders could be read" in capsys.readouterr().err


def test_an_output_file_that_cannot_be_written_is_refused_first(tmp_path, capsys):
    scratch, _, _ = _study(tmp_path)
    assert main([str(scratch), "--csv", str(tmp_path / "no" / "t.csv")]) == 2
    assert f"--csv {tmp_path / 'no' / 't.csv'}: no folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(scratch), "--csv", "a.csv", "--csv", "b.csv"])


def test_a_file_where_the_outputs_folder_should_be_is_named_as_a_file(tmp_path, capsys):
    scratch, _, _ = _study(tmp_path)
    (tmp_path / "t.md").write_text("kept")
    for given in (tmp_path / "t.md" / "x.md", tmp_path / "t.md" / "sub" / "x.md"):
        assert main([str(scratch), "--markdown", str(given)]) == 2
        err = capsys.readouterr().err
        above = "" if given.parent.name == "t.md" else f" (above {given.parent})"  # in the words of output_dir_problem
        assert err == f"medgmae-runs-table: error: --markdown {given}: {tmp_path / 't.md'}{above} is an existing file, not a folder\n"


def test_one_file_given_for_both_tables_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    scratch, _, _ = _study(tmp_path)
    (tmp_path / "rt").mkdir()
    (tmp_path / "rt" / "old.md").write_text("kept")
    (tmp_path / "link.md").symlink_to(tmp_path / "rt" / "old.md")
    monkeypatch.chdir(tmp_path)
    for markdown, table in (("rt/same", "rt/same"), ("rt/same", "./rt/../rt/same"), ("link.md", "rt/old.md")):
        assert main([str(scratch), "--markdown", markdown, "--csv", table]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == (
            f"medgmae-runs-table: error: --markdown {markdown} and --csv {table} are one file: give each table its own\n")
    assert sorted(p.name for p in (tmp_path / "rt").iterdir()) == ["old.md"] and (tmp_path / "link.md").read_text() == "kept"


def test_a_table_without_room_is_named_once(tmp_path):
    """Under a 64-byte file-size limit the markdown file cannot be written: one line names it, once."""
    import resource
    import subprocess
    import sys

    scratch, _, _ = _study(tmp_path)
    md, before = tmp_path / "t.md", set(tmp_path.iterdir())

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    done = subprocess.run([sys.executable, "-B", "-m", "medgmae.finetune.runs_table", str(scratch), "--markdown", str(md)],
                          capture_output=True, text=True, preexec_fn=limit, timeout=120)  # fmt: skip
    assert done.returncode == 2 and set(tmp_path.iterdir()) == before, done  # no table, no temporary file
    assert done.stderr.startswith(f"medgmae-runs-table: error: {md} could not be written (File too large): ")
    assert done.stderr.count(str(md)) == 1 and len(done.stderr.splitlines()) == 1


def test_the_pretrained_record_names_the_file_and_its_source(tmp_path):
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    path = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), None, {"source": "medgmae-star"}), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert pretrained_record(path) == {"path": str(path.resolve()), "kind": "medgmae-encoder", "source": "medgmae-star",
                                       "sha256": digest}  # fmt: skip
    assert pretrained_record(encoder_file(tmp_path / "bare.pt"))["source"] == ""  # an encoder.pt that records none
    assert pretrained_record("") == {"path": "", "kind": "", "source": "", "sha256": ""}
    record = start_record(case_record(0.1, 4, 10, []), "", 9)
    assert (record["seed"], record["training_seed"], record["pretrained"]["path"]) == (4, 9, "")


@pytest.mark.parametrize("source, config, kind", [
    ("VoxelMAE", {}, "voxel-mae"), ("GMAE2D", {}, "gmae2d"), ("MedGMAE", {"multi_level": False}, "medgmae"),
    ("MedGMAE", {"multi_level": True}, "medgmae-star"), ("MedGMAE", {}, "medgmae or medgmae-star"),
    ("medgmae-star", {}, "medgmae-star"),
])  # fmt: skip
def test_an_old_encoders_class_name_source_is_recorded_as_its_kind(tmp_path, source, config, kind):
    """An encoder.pt written before 2026-12-04 records its source as the model class (MedGMAE for MedGMAE and
    MedGMAE* runs alike); the run record holds the kind, as for a newer file, and for a MedGMAE source whose file
    does not tell which, both."""
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    path = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", {**enc.config(), **config}, enc.state_dict(), None, {"source": source}), path)
    assert pretrained_record(path)["source"] == kind


def test_runs_recorded_from_old_and_new_encoders_of_one_pre_training_group_together(tmp_path, capsys):
    """A run record holding an old encoder's class-name source (written by a release that copied it) is listed by
    its kind: a voxel-MAE encoder's runs form one group whichever release wrote the file; an old MedGMAE source,
    which cannot tell MedGMAE from MedGMAE*, is named as either. (The summary keeps encoder files apart: the first
    two record one file, as an old and a new release record it.)"""
    runs = []
    for name, source, file in (("old", "VoxelMAE", "vm"), ("new", "voxel-mae", "vm"), ("old_medgmae", "MedGMAE", "mg")):
        encoder = {"path": f"/{file}/encoder.pt", "kind": "medgmae-encoder", "source": source}
        runs.append(fake_run(tmp_path / name, 0.5, 1, 0, training_seed=0, pretrained=encoder, epochs=1, best=(0.5, 1)))
    _, rows, _ = runs_table(runs)
    assert [r["init"] for r in rows] == ["voxel-mae", "voxel-mae", "medgmae or medgmae-star"]
    assert main([*(str(r) for r in runs[:2]), "--summary", "best_dice"]) == 0
    summary = capsys.readouterr().out.split("by setting")[1]
    assert "| voxel-mae | 0.5000 | 2 | 2 | 0.5000 |" in summary and "VoxelMAE" not in summary


def test_a_record_without_the_new_keys_still_resumes(tmp_path):
    """A run recorded before the training seed and encoder were resumes; those keys are not compared (another
    --seed or --pretrained is the settings check's to judge), the cases still are."""
    cases = [{"image": "/d/a.nii.gz", "label": "/d/la.nii.gz"}]
    data = {"dataset_dir": "/d", "datalist": ""}
    write_run_record(tmp_path, case_record(0.1, 0, 10, cases, data))
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    check_resume_matches(tmp_path, start_record(case_record(0.1, 0, 10, cases, data), "", 3))
    write_run_record(tmp_path, start_record(case_record(0.1, 0, 10, cases, data), "", 3))
    check_resume_matches(tmp_path, case_record(0.1, 0, 10, cases, data))
    with pytest.raises(ValueError, match=r"label_fraction differ"):
        check_resume_matches(tmp_path, start_record(case_record(0.2, 0, 10, cases, data), "", 3))


def test_a_resume_keeps_the_training_seed_and_encoder_its_run_recorded(tmp_path):
    """A resume with another --seed (or --pretrained) rewrote the record with it, though the run continues from its
    checkpoint's weights and random state; a resume into a folder with no checkpoint is a fresh start and records
    its own."""
    write_run_record(tmp_path, start_record(case_record(0.1, 0, 10, []), "/m/encoder.pt", 3))
    resumed = start_record(case_record(0.1, 0, 10, []), "", 7, resumed=tmp_path)
    assert (resumed["training_seed"], resumed["pretrained"]["path"]) == (7, "")  # no checkpoint: a fresh start
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    resumed = start_record(case_record(0.1, 0, 10, []), "", 7, resumed=tmp_path)
    assert (resumed["training_seed"], resumed["pretrained"]["path"]) == (3, "/m/encoder.pt")
    assert start_record(case_record(0.1, 0, 10, []), "", 7)["training_seed"] == 7  # not a resume
    write_run_record(tmp_path, case_record(0.1, 0, 10, []))  # recorded before these keys: they stay unrecorded
    resumed = start_record(case_record(0.1, 0, 10, []), "", 7, resumed=tmp_path)
    assert "training_seed" not in resumed and "pretrained" not in resumed


def test_result_files_of_other_writers_leave_cells_empty_and_names_are_escaped(tmp_path):
    """A non-numeric Dice or a per-class list stopped the whole table with a traceback; a class name holding ``|``
    broke the markdown header's columns; a run validated with no class scored was called not validated."""
    from medgmae.finetune.runs_table import markdown_table

    folder = fake_run(tmp_path / "a", 0.1, 2, 0, last={"liver": 0.5})
    (folder / "validation" / "metrics.json").write_text(json.dumps({"mean_dice": None, "dice_per_class": [0.5]}))
    columns, rows, messages = runs_table([folder], per_class=True)
    assert rows[0]["last_dice"] is None and not any(c.startswith("dice ") for c in columns)
    assert messages == [f"{folder}: validated, but no class of its validation cases was scored (mean Dice null): "
                        "listed without Dice"]
    (folder / "validation" / "metrics.json").write_text(json.dumps({"mean_dice": 1, "dice_per_class": {"left|kidney": "x"}}))
    columns, rows, _ = runs_table([folder], per_class=True)
    assert rows[0]["last_dice"] == 1.0 and rows[0]["dice left|kidney"] is None
    header, separator, row = markdown_table(columns, rows).splitlines()
    count = lambda line: line.replace("\\|", "").count("|")  # noqa: E731
    assert count(header) == count(separator) == count(row) == len(columns) + 1


def test_a_bundle_run_records_its_encoder_and_training_seed(tmp_path, capsys):
    """... and what else decides its weights: the loader workers (one here; phantom runs default to none), the
    software, the encoder file's content; the start line states the seed."""
    encoder = encoder_file(tmp_path / "encoder.pt")
    out = tmp_path / "run"
    proc = run_bundle("training", "train.json", "--output_dir", str(out), "--device", "cpu", "--feature_size", "4",
                      "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--max_epochs", "1",
                      "--pretrained", str(encoder), "--seed", "3", "--subset_seed", "0", "--progress_bar", "false",
                      "--num_workers", "1")  # fmt: skip
    record = read_run_record(out)
    assert (record["training_seed"], record["seed"], record["num_workers"]) == (3, 0, 1)
    assert record["pretrained"] == {"path": str(encoder.resolve()), "kind": "medgmae-encoder", "source": "",
                                    "sha256": hashlib.sha256(encoder.read_bytes()).hexdigest()}  # fmt: skip
    assert record["software"]["packages"]["torch"] == torch.__version__
    assert re.search(r"fine-tuning runs on cpu, .*, global batch 1 crop per step \(1 process x 1 volume x 1 crop\), "
                     r"seed 3\n", proc.stdout + proc.stderr)  # fmt: skip
    assert record["preprocessing"] == torch.load(out / "best_model.pt", weights_only=True, mmap=True)["preprocessing"]
    assert main([str(out), "--per-class"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split(" | ")
    assert row[1:4] == ["medgmae-encoder", str(encoder.resolve()), "1.0000"] and row[6:9] == ["3", "0", "1"]
    best = torch.load(out / "best_model.pt", weights_only=True, mmap=True)["extra"]["metric"]
    metrics = json.loads((out / "validation" / "metrics.json").read_text(encoding="utf-8"))
    assert row[9] == f"{best:.4f}" and row[11] == f"{metrics['mean_dice']:.4f}"
    assert metrics["software"]["packages"]["torch"] == torch.__version__


def test_the_summary_gathers_each_settings_seeds_against_numpy(tmp_path, capsys):
    import numpy as np

    encoder = {"path": "/enc/encoder.pt", "kind": "medgmae-encoder", "source": "medgmae"}
    best = {("scratch", 0): 0.125, ("scratch", 1): 0.5, ("scratch", 2): 0.375, ("medgmae", 0): 0.625, ("medgmae", 1): 0.75}
    runs = [fake_run(tmp_path / f"{init}_s{seed}", 0.1, 10, 0, training_seed=seed, epochs=4, best=(value, 3),
                     pretrained=encoder if init == "medgmae" else None)
            for (init, seed), value in best.items()]  # fmt: skip
    runs.append(fake_run(tmp_path / "medgmae_s2", 0.1, 10, 0, training_seed=2, pretrained=encoder, epochs=1))
    runs.append(fake_run(tmp_path / "scratch_full", 1.0, 100, 0, training_seed=0, epochs=4, best=(0.875, 2)))
    summary = summary_table(runs_table(runs)[1], "best_dice")
    assert [(s["init"], s["label_fraction"], s["runs"], s["scored"]) for s in summary] == [
        ("scratch", 0.1, 3, 3), ("medgmae", 0.1, 3, 2), ("scratch", 1.0, 1, 1)]  # fmt: skip
    for s, values in zip(summary, ([0.125, 0.5, 0.375], [0.625, 0.75], [0.875])):
        assert s["mean"] == pytest.approx(np.mean(values)) and (s["min"], s["max"]) == (min(values), max(values))
        assert s["sd"] == (pytest.approx(np.std(values, ddof=1)) if len(values) > 1 else None)
    assert summary[1]["training_seeds"] == "0, 1, 2"
    assert summary_table(runs_table(runs)[1], "eval_dice")[0]["mean"] is None
    with pytest.raises(ValueError, match="best_dice, last_dice, eval_dice"):
        summary_table([], "dice")
    md = tmp_path / "t.md"
    assert main([*map(str, runs), "--summary", "best_dice", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "best_dice by setting (initialisation, label fraction, pre-processing):" in out
    assert "| medgmae | 0.1000 | 3 | 2 | 0.6875 | 0.0884 | 0.6250 | 0.7500 | 0, 1, 2 |" in out
    assert md.read_text(encoding="utf-8").endswith("| scratch | 1.0000 | 1 | 1 | 0.8750 |  | 0.8750 | 0.8750 | 0 |  |  |  |  |\n")
    with pytest.raises(SystemExit):
        main([str(runs[0]), "--summary", "dice"])


def _evaluated(folder, mean_dice: float, model: dict | None) -> None:
    """``eval/metrics.json`` as ``evaluate.json`` writes it, with its record of the model it scored (``model``;
    ``None``: an evaluation of a release that recorded none)."""
    (folder / "eval").mkdir(exist_ok=True)
    metrics = {"mean_dice": mean_dice, "dice_per_class": {"liver": mean_dice}, "num_cases": 2}
    metrics.update({} if model is None else {"model": model, "checkpoint": str(folder / "best_model.pt")})
    (folder / "eval" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def test_an_evaluation_of_an_earlier_best_model_leaves_eval_dice_empty_with_a_note(tmp_path, capsys):
    """An evaluation run while the fine-tuning still trained (or before a --resume trained on) was reported as the
    Dice of the row's best model: ``best_dice 0.0105 | best_epoch 2 | ... | eval_dice 0.0032``, eval/metrics.json
    recording epoch 1."""
    from medgmae.finetune.best_model import finetuned_model_record

    folder = fake_run(tmp_path / "run", 0.1, 2, 0, training_seed=0, epochs=1, best=(0.0032, 1), last={"liver": 0.0032})
    _evaluated(folder, 0.0032, finetuned_model_record(folder / "best_model.pt"))
    assert runs_table([folder])[1][0]["eval_dice"] == 0.0032 and runs_table([folder])[2] == []
    fake_best_model(folder, 0.0105, 2)  # the training went on: a later epoch validated better
    _, rows, messages = runs_table([folder])
    assert (rows[0]["best_dice"], rows[0]["best_epoch"], rows[0]["eval_dice"]) == (0.0105, 2, None)
    assert messages == [f"{folder}: eval/metrics.json evaluated epoch 1; best_model.pt is now epoch 2: evaluate "
                        "again (listed without eval_dice)"]  # fmt: skip
    assert main([str(folder), "--summary", "eval_dice"]) == 0
    captured = capsys.readouterr()
    assert f"| 0.0105 | 2 | 0.0032 |  |  |  |  |\n" in captured.out and "| scratch | 0.1000 | 1 | 0 |" in captured.out
    assert captured.err == f"medgmae-runs-table: {messages[0]}\n"


def test_a_best_model_of_the_same_epoch_from_another_training_is_told_apart_but_not_by_its_time(tmp_path):
    import os

    from medgmae.finetune.best_model import finetuned_model_record

    folder = fake_run(tmp_path / "run", 0.1, 2, 0, epochs=3, best=(0.5, 3))
    _evaluated(folder, 0.5, finetuned_model_record(folder / "best_model.pt"))
    os.utime(folder / "best_model.pt", (1, 1))  # a run folder copied without its times: the same model
    assert runs_table([folder])[1][0]["eval_dice"] == 0.5 and runs_table([folder])[2] == []
    fake_best_model(folder, 0.25, 3)  # a new run into the folder, its best also at epoch 3
    _, rows, messages = runs_table([folder])
    assert rows[0]["eval_dice"] is None and len(messages) == 1
    assert messages[0].startswith(f"{folder}: eval/metrics.json evaluated another best_model.pt of epoch 3 (")
    assert "validation metric 0.5), not the one there now (" in messages[0] and messages[0].endswith(
        ", 0.25): evaluate again (listed without eval_dice)")  # fmt: skip
    _evaluated(folder, 0.5, None)  # recorded no model: cannot be told, listed as it is
    assert runs_table([folder])[1][0]["eval_dice"] == 0.5 and runs_table([folder])[2] == []


#: Two pre-processings as runs record them (``PreprocessingSpec.to_dict()``), written out here.
_COARSE = {"orientation": "LPS", "spacing": [2.0, 2.0, 3.0], "hu_window": [-1000.0, 1000.0],
           "intensity_range": [0.0, 1.0], "clip": True, "input_size": [96, 96, 96], "patch_size": [16, 16, 16]}  # fmt: skip
_FINE = {**_COARSE, "orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "hu_window": [-175.0, 250.5]}


def test_each_run_shows_its_preprocessing_and_the_summary_never_pools_other_ones(tmp_path, capsys):
    encoder = {"path": "/enc/model.pt", "kind": "medgmae-star", "source": "medgmae-star"}
    common = dict(fraction=1.0, cases=2, subset_seed=0, pretrained=encoder, epochs=1)
    coarse = fake_run(tmp_path / "coarse", training_seed=0, best=(0.5, 1), model_preprocessing=_COARSE, **common)
    fine = fake_run(tmp_path / "fine", training_seed=1, best=(0.25, 1), model_preprocessing=_FINE, **common)
    pending = fake_run(tmp_path / "pending", training_seed=2, preprocessing=_FINE, **common)  # not validated yet
    unknown = fake_run(tmp_path / "unknown", training_seed=3, best=(0.125, 1), **common)  # recorded nowhere
    columns, rows, _ = runs_table([coarse, fine, pending, unknown], per_class=True)
    assert columns[:13] == ["run", "init", "encoder", "label_fraction", "effective_fraction", "training_cases",
                            "training_seed", "subset_seed", "epochs", "best_dice", "best_epoch", "last_dice", "eval_dice"]
    assert columns[13:] == ["spacing", "hu_window", "orientation"]
    assert [(r["spacing"], r["hu_window"], r["orientation"]) for r in rows] == [
        ("[2, 2, 3]", "[-1000, 1000]", "LPS"), ("[1.5, 1.5, 1.5]", "[-175, 250.5]", "RAS"),
        ("[1.5, 1.5, 1.5]", "[-175, 250.5]", "RAS"), (None, None, None)]  # fmt: skip
    summary = summary_table(rows, "best_dice")
    assert [(s["runs"], s["mean"], s["spacing"], s["hu_window"]) for s in summary] == [
        (1, 0.5, "[2, 2, 3]", "[-1000, 1000]"), (2, 0.25, "[1.5, 1.5, 1.5]", "[-175, 250.5]"), (1, 0.125, None, None)]
    table = tmp_path / "t.csv"
    assert main([*map(str, (coarse, fine, pending, unknown)), "--summary", "best_dice", "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert f"| {coarse} | medgmae-star | /enc/model.pt | 1.0000 | 0.0200 | 2 | 0 | 0 | 1 | 0.5000 | 1 | " in out
    assert "| 0.5000 | 1 |  |  | [2, 2, 3] | [-1000, 1000] | LPS |" in out
    assert "| medgmae-star | 1.0000 | 2 | 1 | 0.2500 |  | 0.2500 | 0.2500 | 1, 2 | /enc/model.pt | [1.5, 1.5, 1.5] | [-175, 250.5] | RAS |" in out
    assert "note:" not in out  # four training seeds, none twice
    csv_rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [r["spacing"] for r in csv_rows] == ["[2, 2, 3]", "[1.5, 1.5, 1.5]", "[1.5, 1.5, 1.5]", ""]


def test_the_summary_notes_a_training_seed_one_setting_holds_twice(tmp_path, capsys):
    runs = [fake_run(tmp_path / name, 0.1, 10, subset, training_seed=0, epochs=2, best=(0.5, 1), model_preprocessing=spec)
            for name, subset, spec in (("a", 0, _FINE), ("b", 1, _FINE), ("c", 0, _COARSE))]  # fmt: skip
    assert main([*map(str, runs), "--summary", "best_dice"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: init scratch, label_fraction 0.1000, spacing [1.5, 1.5, 1.5], hu_window "
                     f"[-175, 250.5], orientation RAS: training seed 0 in 2 runs ({runs[0]}, {runs[1]}; subset seeds "
                     "0, 1): not independent repeats over training seeds; give each run its own --seed"]  # fmt: skip


def test_a_study_over_pre_training_seeds_pools_its_encoders_and_notes_no_repeat(tmp_path, capsys):
    """Fine-tuning seed 0 from each of two pre-trainings (two encoder files of one kind, one pre-processing) is a
    study over pre-training seeds: one summary row naming both files, and no repeated-seed note."""
    runs = [fake_run(tmp_path / f"ft{i}", 0.1, 10, 0, training_seed=0, epochs=2, best=(0.5 + i / 10, 1),
                     model_preprocessing=_FINE,
                     pretrained={"path": f"/pre{i}/encoder.pt", "kind": "medgmae-encoder", "source": "medgmae-star"})
            for i in range(2)]  # fmt: skip
    rows = runs_table(runs)[1]
    summary = summary_table(rows, "best_dice")
    assert [(s["runs"], s["encoder"], s["training_seeds"]) for s in summary] == [(2, "/pre0/encoder.pt, /pre1/encoder.pt", "0, 0")]
    assert repeated_seed_notes(rows) == []


def test_the_run_record_holds_the_preprocessing_a_resume_keeps(tmp_path):
    from medgmae.preprocessing import PreprocessingSpec

    record = case_record(1.0, 0, 2, [{"image": "a", "label": "b"}])
    started = start_record(record, "", 4, preprocessing=PreprocessingSpec.from_dict(_COARSE))
    assert started["preprocessing"] == _COARSE
    assert "preprocessing" not in start_record(record, "", 4)
    write_run_record(tmp_path, started)
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    resumed = start_record(record, "", 9, tmp_path, preprocessing=PreprocessingSpec.from_dict(_FINE))
    assert (resumed["preprocessing"], resumed["training_seed"]) == (_COARSE, 4)
    with pytest.raises(TypeError, match="preprocessing must be a PreprocessingSpec"):
        start_record(record, "", 4, preprocessing=_COARSE)


def _six_case_study(tmp_path) -> dict:
    """Runs of 6 training cases: from scratch at 1 % and 10 % (one case each: at least one is kept, and one subset
    seed's subsets are nested) and 50 % (3); at 5 % from an encoder, and 2 % of another pre-processing (one each)."""
    encoder = {"path": "/enc/encoder.pt", "kind": "medgmae-encoder", "source": "medgmae"}
    return {name: fake_run(tmp_path / name, fraction, cases, 0, training_seed=0, pretrained=pretrained, epochs=2,
                           best=(0.5, 1), preprocessing=spec, total=6)
            for name, fraction, cases, pretrained, spec in (
                ("s1", 0.01, 1, None, _COARSE), ("s10", 0.1, 1, None, _COARSE), ("s50", 0.5, 3, None, _COARSE),
                ("e5", 0.05, 1, encoder, _COARSE), ("f2", 0.02, 1, None, _FINE))}  # fmt: skip


def test_the_summary_notes_label_fractions_that_trained_on_the_same_cases(tmp_path, capsys):
    """1 % and 10 % of 6 training cases both kept one case, the same one: the summary showed two settings with the
    same numbers and said nothing; the one of another initialisation or pre-processing, and the 50 % (3 cases), are
    other experiments."""
    runs = _six_case_study(tmp_path)
    assert main([*map(str, runs.values()), "--summary", "best_dice"]) == 0
    out = capsys.readouterr().out
    assert "| scratch | 0.0100 | 1 | 1 | 0.5000 |" in out and "| scratch | 0.1000 | 1 | 1 | 0.5000 |" in out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == ["note: init scratch, spacing [2, 2, 3], hu_window [-1000, 1000], orientation LPS: label fractions "
                     "0.0100 and 0.1000 both trained on the same cases, 1 of 6 (effective fraction 0.1667; "
                     "/d/dataset.json): one experiment, not two label fractions; choose fractions that keep different "
                     "numbers of the 6 training cases"]  # fmt: skip


def _as_phantom_run(folder) -> None:
    """Rewrite ``folder``'s record as a run on phantom data records it: no data source, its cases in its own folder."""
    record = read_run_record(folder)
    cases = [{"image": f"{folder}/phantom/c{i}.nii.gz", "label": f"{folder}/phantom/l{i}.nii.gz"} for i in range(len(record["cases"]))]
    write_run_record(folder, {**record, "dataset_dir": "", "datalist": "", "cases": cases})


def test_label_fractions_of_phantom_runs_trained_on_the_same_number_of_cases_and_other_data_on_none(tmp_path):
    """Phantom data are made in each run's folder: the runs kept as many cases, not known to be the same ones; a run
    of phantom data and one of a datalist trained on other data."""
    from medgmae.finetune.runs_table import same_cases_notes

    runs = _six_case_study(tmp_path)
    pair = [runs["s1"], runs["s10"]]
    _as_phantom_run(runs["s1"])
    assert same_cases_notes(runs_table(pair)[1]) == []  # other data: not one experiment
    _as_phantom_run(runs["s10"])
    assert same_cases_notes(runs_table(pair)[1]) == [
        "note: init scratch, spacing [2, 2, 3], hu_window [-1000, 1000], orientation LPS: label fractions 0.0100 and "
        "0.1000 both trained on the same number of cases, 1 of 6 (effective fraction 0.1667; phantom data): one "
        "experiment, not two label fractions; choose fractions that keep different numbers of the 6 training cases"]
    three = fake_run(tmp_path / "s5", 0.05, 1, 1, training_seed=1, preprocessing=_COARSE, total=6)
    _as_phantom_run(three)
    assert "label fractions 0.0100, 0.1000 and 0.0500 all trained on the same number of cases, 1 of 6" in (
        same_cases_notes(runs_table([*pair, three])[1])[0])  # fmt: skip
    assert same_cases_notes(runs_table([runs["s1"], runs["s50"], runs["e5"], runs["f2"]])[1]) == []
