"""``medgmae-runs-table --summary``: only runs of one experiment are pooled; what tells the rows apart is named;
runs still training or stopped are said to be."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest

from medgmae.finetune.runs_experiment import differing_fields
from medgmae.finetune.runs_table import main, repeated_seed_notes, runs_table, same_cases_notes, summary_table

from finetune_helpers import COARSE_PREPROCESSING as _COARSE, fake_epoch_checkpoint, fake_evaluation, fake_run


def _data(root, sizes=(3, 5)) -> dict:
    """A dataset under ``root``: a datalist path and validation case files of the given byte counts."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, size in enumerate(sizes):
        for kind in ("img", "lab"):
            (root / f"{kind}{i}.nii.gz").write_bytes(b"x" * size)
        cases.append({"image": str(root / f"img{i}.nii.gz"), "label": str(root / f"lab{i}.nii.gz")})
    return {"source": {"dataset_dir": str(root), "datalist": str(root / "dataset.json")}, "validation": cases}


def _run(folder, data, seed=0, best=0.5, feature_size=16, input_size=96, max_epochs=2, epoch=None, total=10):
    """A run of 10 % of ``total`` training cases of ``data`` as the bundle records it: its record (training seed
    and subset seed ``seed``, the pre-processing of ``input_size``), its newest epoch checkpoint (epoch ``epoch``,
    default ``max_epochs``, with the settings record of the network and the validation cases) and best model."""
    spec = {**_COARSE, "input_size": [input_size] * 3}
    fake_run(folder, 0.1, 1, seed, training_seed=seed, best=(best, 1), preprocessing=spec, total=total,
             source=data["source"])  # fmt: skip
    settings = {"model": {"out_channels": 3, "feature_size": feature_size, "img_size": [input_size] * 3,
                          "hidden_size": 96}, "preprocessing": spec, "optimiser": {"learning_rate": 0.0003}}  # fmt: skip
    fake_epoch_checkpoint(folder, max_epochs if epoch is None else epoch, max_epochs, settings, data["validation"])
    return folder


@pytest.fixture
def btcv(tmp_path):
    return _data(tmp_path / "btcv")


def _two_rows(rows, metric="best_dice"):
    summary = summary_table(rows, metric)
    return [(s["runs"], s["mean"], s["differs_in"]) for s in summary]


def test_runs_that_differ_only_in_seeds_pool_in_one_row_without_differs_in(tmp_path, btcv, capsys):
    runs = [_run(tmp_path / f"s{seed}", btcv, seed=seed, best=best) for seed, best in ((0, 0.25), (1, 0.75))]
    assert _two_rows(runs_table(runs)[1]) == [(2, 0.5, "")]
    assert main([*map(str, runs), "--summary", "best_dice"]) == 0
    out = capsys.readouterr().out
    assert "best_dice by setting (initialisation, label fraction, pre-processing):" in out and "differs_in" not in out


@pytest.mark.parametrize("change, differs", [
    (dict(feature_size=32), ("feature_size 16", "feature_size 32")),
    (dict(input_size=48), ("img_size [96, 96, 96]; input_size [96, 96, 96]", "img_size [48, 48, 48]; input_size [48, 48, 48]")),
    (dict(max_epochs=1), ("max_epochs 2", "max_epochs 1")),
    (dict(max_epochs=3), ("max_epochs 2", "max_epochs 3")),  # a run resumed to train on to epoch 3
])  # fmt: skip
def test_runs_of_another_network_or_length_are_separate_rows_naming_it(tmp_path, btcv, change, differs):
    runs = [_run(tmp_path / "s0", btcv, seed=0, best=0.25), _run(tmp_path / "s1", btcv, seed=1, best=0.75),
            _run(tmp_path / "other", btcv, seed=2, best=0.125, **change)]  # fmt: skip
    assert _two_rows(runs_table(runs)[1]) == [(2, 0.5, differs[0]), (1, 0.125, differs[1])]


def test_runs_on_other_data_or_another_validation_split_are_separate_rows(tmp_path, btcv):
    amos = _data(tmp_path / "amos", sizes=(7, 9))
    redrawn = {**btcv, "validation": btcv["validation"][:1]}  # the same datalist path, another validation split
    base = [_run(tmp_path / "b0", btcv, seed=0, best=0.25), _run(tmp_path / "b1", btcv, seed=1, best=0.75)]
    rows = runs_table([*base, _run(tmp_path / "amos_run", amos, seed=0, best=0.125, total=20)])[1]
    # two datalists named dataset.json in other folders may be one dataset moved: told apart by their content
    (n0, mean0, cell0), (n1, mean1, cell1) = _two_rows(rows)
    assert (n0, mean0, n1, mean1) == (2, 0.5, 1, 0.125) and "data" not in cell0 + cell1
    assert cell0.startswith("training set 10 cases; validation cases 2 cases #") and cell1.startswith(
        "training set 20 cases; validation cases 2 cases #") and cell0[-12:] != cell1[-12:]  # fmt: skip
    cells = [c for _, _, c in _two_rows(runs_table([*base, _run(tmp_path / "split", redrawn, seed=2)])[1])]
    assert cells[0].startswith("validation cases 2 cases #") and cells[1].startswith("validation cases 1 cases #")


def test_a_dataset_moved_as_a_whole_still_pools(tmp_path, btcv):
    """The same validation files (relative paths and sizes) under another folder, named by another datalist path."""
    shutil.copytree(tmp_path / "btcv", tmp_path / "moved")
    moved = _data(tmp_path / "moved")
    runs = [_run(tmp_path / "s0", btcv, seed=0, best=0.25), _run(tmp_path / "s1", moved, seed=1, best=0.75)]
    assert _two_rows(runs_table(runs)[1]) == [(2, 0.5, "")]


def test_eval_dice_of_another_dice_space_is_a_row_of_its_own_best_dice_pools(tmp_path, btcv):
    runs = [_run(tmp_path / f"s{seed}", btcv, seed=seed) for seed in range(3)]
    for run, space in zip(runs, ("pre-processed grid", "pre-processed grid", "label files voxels")):
        fake_evaluation(run, space, btcv["source"]["datalist"])
    rows = runs_table(runs)[1]
    assert _two_rows(rows, "eval_dice") == [(2, 1.0, "dice_space pre-processed grid"), (1, 1.0, "dice_space label files voxels")]
    assert _two_rows(rows, "best_dice") == [(3, 0.5, "")]
    fake_evaluation(runs[2], "pre-processed grid", "/elsewhere/dataset.json", data_key="test")
    cells = [c for _, _, c in _two_rows(runs_table(runs)[1], "eval_dice")]
    assert cells == ["eval cases 'validation' list of the run's data", "eval cases 'test' list of /elsewhere/dataset.json"]


def test_notes_follow_the_rows_a_seed_on_two_datasets_is_no_repeat(tmp_path, btcv):
    """Training seed 0 on BTCV and on AMOS was noted as one seed twice ("give each run its own --seed"); a run on
    AMOS pooled with BTCV runs hid that 0.01 and 0.1 of 6 cases trained on the same case."""
    amos = _data(tmp_path / "amos", sizes=(7, 9))
    pair = [_run(tmp_path / "btcv0", btcv), _run(tmp_path / "amos0", amos)]
    assert repeated_seed_notes(runs_table(pair)[1]) == []
    assert len(repeated_seed_notes(runs_table([*pair, _run(tmp_path / "btcv0_again", btcv)])[1])) == 1
    six = [fake_run(tmp_path / name, fraction, 1, 0, training_seed=0, best=(0.5, 1), preprocessing=_COARSE, total=6,
                    source=data["source"]) for name, fraction, data in (("f1", 0.01, btcv), ("f10", 0.1, btcv), ("a1", 0.01, amos))]  # fmt: skip
    notes = same_cases_notes(runs_table(six)[1])
    assert len(notes) == 1 and "label fractions 0.0100 and 0.1000 both trained on the same cases, 1 of 6" in notes[0]


def test_a_run_still_training_or_stopped_is_said_and_not_scored(tmp_path, btcv, capsys):
    done = _run(tmp_path / "done", btcv, seed=0, best=0.25)
    stopped = _run(tmp_path / "stopped", btcv, seed=1, best=0.75, epoch=1, max_epochs=2)
    training = _run(tmp_path / "training", btcv, seed=2, best=0.5, epoch=1, max_epochs=2)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)", str(training)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        _, rows, messages = runs_table([done, stopped, training])
        assert [r["epochs"] for r in rows] == [2, 1, 1]  # numbers: the status is a field of its own
        elsewhere = "stopped, or training on another machine"  # a lock held on another host is not seen here
        assert [r["status"] for r in rows] == [None, elsewhere, "still training"]
        assert messages[0].startswith(f"{stopped}: {elsewhere} (a lock held on another host") and "at epoch 1 of 2" in messages[0]
        assert "once no run trains in it, resume it (--resume true)" in messages[0]
        assert messages[1].startswith(f"{training}: still training (epoch 1 of 2; process {holder.pid} holds")
        assert [(s["runs"], s["scored"], s["mean"]) for s in summary_table(rows, "best_dice")] == [(3, 1, 0.25)]
        table = tmp_path / "runs.csv"
        assert main([str(done), str(stopped), str(training), "--summary", "best_dice", "--csv", str(table)]) == 0
        out = capsys.readouterr().out
        assert f": {stopped} has not finished (epochs 1 of 2, {elsewhere}): counted in runs, not scored" in out
        assert f"| {training} | scratch |  | 0.1000 | 0.1000 | 1 | 2 | 2 | 1 of 2, still training |" in out
        with open(table, newline="", encoding="utf-8") as f:
            csv_rows = list(csv.DictReader(f))
        assert [(r["epochs"], r["status"]) for r in csv_rows] == [("2", ""), ("1", elsewhere), ("1", "still training")]
        assert list(csv_rows[0])[8:10] == ["epochs", "status"]
    finally:
        holder.kill()
        holder.wait()


def test_eval_dice_of_one_datalist_named_two_ways_pools(tmp_path, btcv, monkeypatch):
    """A run trained with --dataset_dir alone (its record names no datalist) and evaluated on <dir>/dataset.json
    scored the cases of a run trained with --datalist <dir>/dataset.json; a relative datalist in eval/metrics.json
    (recorded against the folder the evaluation ran in) names the run's phantoms."""
    (tmp_path / "btcv" / "dataset.json").write_text("{}", encoding="utf-8")
    folder_only = {**btcv, "source": {"dataset_dir": str(tmp_path / "btcv"), "datalist": ""}}
    runs = [_run(tmp_path / "dir", folder_only, seed=0), _run(tmp_path / "list", btcv, seed=1)]
    for run in runs:
        fake_evaluation(run, "pre-processed grid", str(tmp_path / "btcv" / "dataset.json"))
    assert _two_rows(runs_table(runs)[1], "eval_dice") == [(2, 1.0, "")]
    phantoms = {"source": {"dataset_dir": "", "datalist": ""}, "validation": btcv["validation"]}
    runs = [_run(tmp_path / "runs" / f"p{seed}", phantoms, seed=seed) for seed in range(2)]
    fake_evaluation(runs[0], "pre-processed grid", "runs/p0/phantom/dataset.json")  # evaluated from tmp_path
    fake_evaluation(runs[1], "pre-processed grid", str(runs[1] / "phantom" / "dataset.json"))
    monkeypatch.chdir(tmp_path / "runs")  # the table made from another folder
    assert _two_rows(runs_table(runs)[1], "eval_dice") == [(2, 1.0, "")]
    fake_evaluation(runs[1], "pre-processed grid", "other/dataset.json")
    cells = [c for _, _, c in _two_rows(runs_table(runs)[1], "eval_dice")]
    assert cells == ["eval cases 'validation' list of the run's data", "eval cases 'validation' list of other/dataset.json"]


def test_two_datalists_of_one_folder_are_separate_rows_though_their_validation_files_match(tmp_path, btcv):
    splits = [{**btcv, "source": {**btcv["source"], "datalist": str(tmp_path / "btcv" / name)}}
              for name in ("split1.json", "split2.json")]  # fmt: skip
    runs = [_run(tmp_path / "a", splits[0], seed=0, best=0.25), _run(tmp_path / "b", splits[1], seed=1, best=0.75)]
    assert _two_rows(runs_table(runs)[1]) == [(1, 0.25, f"data {tmp_path}/btcv/split1.json"),
                                              (1, 0.75, f"data {tmp_path}/btcv/split2.json")]  # fmt: skip


def test_differs_in_names_only_what_is_compared_and_keeps_the_section_of_a_shared_name():
    moved = [{"data": "/a/btcv/dataset.json", "validation": "2 cases #1", "max_epochs": 2, "model.patch_size": 16,
              "preprocessing.patch_size": 16, "model.feature_size": 16},
             {"data": "/b/moved/dataset.json", "validation": "2 cases #1", "max_epochs": 3, "model.patch_size": 8,
              "preprocessing.patch_size": 8, "model.feature_size": 32}]  # fmt: skip
    fields = list(moved[0])
    assert differing_fields([[moved[0]], [moved[1]]], fields) == [
        "max_epochs 2; model.patch_size 16; preprocessing.patch_size 16; feature_size 16",
        "max_epochs 3; model.patch_size 8; preprocessing.patch_size 8; feature_size 32"]  # fmt: skip


def test_notes_of_eval_dice_name_where_it_was_scored(tmp_path, btcv, capsys):
    runs = [_run(tmp_path / name, btcv, seed=0) for name in ("a", "b", "c")]
    for run, space in zip(runs, ("pre-processed grid", "pre-processed grid", "label files voxels")):
        fake_evaluation(run, space, btcv["source"]["datalist"])
    notes = repeated_seed_notes(runs_table(runs)[1], "eval_dice")
    assert len(notes) == 1 and "(dice_space pre-processed grid): training seed 0 in 2 runs" in notes[0]
    assert main([*map(str, runs), "--summary", "eval_dice"]) == 0
    assert "(dice_space pre-processed grid): training seed 0 in 2 runs" in capsys.readouterr().out
