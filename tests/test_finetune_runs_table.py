"""``medgmae-runs-table``: each run's recorded values side by side, its outputs, folders it cannot read, stale evaluations."""

from __future__ import annotations

import csv
import json

import pytest

from medgmae.finetune.runs_table import main, runs_table

from finetune_helpers import fake_best_model, fake_run


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
    experiment = rows[0].pop("experiment")  # no column: what the summary compares runs by
    assert (experiment["data"], experiment["training set"], experiment["model.out_channels"]) == ("/d/dataset.json", "100 cases", 3)
    assert experiment["max_epochs"] is None and experiment["_progress"] is None  # its checkpoint holds no record
    assert rows[0] == {"run": str(scratch), "init": "scratch", "encoder": "", "label_fraction": 0.01,
                       "effective_fraction": 0.01, "training_cases": 1, "training_seed": 0, "subset_seed": 0,
                       "epochs": 40, "best_dice": 0.25, "best_epoch": 30, "last_dice": 0.375, "eval_dice": None,
                       "dice liver": 0.5, "dice spleen": 0.25, "dice kidney": None, "spacing": None,
                       "hu_window": None, "orientation": None, "status": None, "encoder_sha256": None}  # fmt: skip
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
