"""``medgmae-runs-table --summary``: runs grouped by setting and pre-processing, with notes on runs that repeat."""

from __future__ import annotations

import csv

import pytest

from medgmae.finetune.run_record import read_run_record, write_run_record
from medgmae.finetune.runs_table import main, repeated_seed_notes, runs_table, summary_table

from finetune_helpers import COARSE_PREPROCESSING as _COARSE, FINE_PREPROCESSING as _FINE, fake_run


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
