"""The closing summary of a pre-training run: its next commands (medgmae.mae_training.summary)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medgmae.engine import MetricHistory
from medgmae.mae_training.summary import PretrainSummary


def _fine_tune(tmp_path: Path, pretrained_on: str, data_dir: str = "") -> tuple[list[str], str]:
    summary = PretrainSummary(tmp_path / "run", MetricHistory(), "medgmae", pretrained_on=pretrained_on,
                              data_dir=data_dir)
    s = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    return shlex.split(s["next"]["fine-tune"]), summary.text(s)


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_fine_tune_after_phantoms_runs_on_phantoms(tmp_path):
    args, text = _fine_tune(tmp_path, "")
    assert _flag(args, "--pretrained") == str(tmp_path / "run" / "encoder.pt")
    assert _flag(args, "--dataset_dir") is None and _flag(args, "--datalist") is None
    assert "needs labels" not in text
    assert "--roi_size" not in args  # fine-tuning reads the crop size from encoder.pt


def test_fine_tune_after_user_data_asks_for_labelled_data(tmp_path):
    """After pre-training on a user's data, the printed fine-tuning command names a labelled dataset to give: pasted
    unchanged it stops on a missing folder rather than fine-tuning on generated phantoms."""
    args, text = _fine_tune(tmp_path, "/data/ct_unlabelled")
    dataset_dir = _flag(args, "--dataset_dir")
    assert dataset_dir is not None and not Path(dataset_dir).exists()
    assert "fine-tuning needs labels" in text and "/data/ct_unlabelled" in text


def test_fine_tune_after_a_decathlon_folder_without_datalist_writes_one_first(tmp_path, capsys):
    """Pre-trained on an ``imagesTr/`` + ``labelsTr/`` folder without ``dataset.json`` (read as a folder of volumes,
    the labels left out): fine-tuning needs the pairing, so the summary's first step writes it (``medgmae-datalist``)
    and the fine-tuning command then takes the folder; with a ``dataset.json`` there the datalist is used as it is."""
    from medgmae.data.decathlon import main as datalist_main

    folder = tmp_path / "Task09"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    summary = PretrainSummary(tmp_path / "pre", MetricHistory(), "medgmae", pretrained_on=str(folder))
    s = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    assert list(s["next"])[:2] == ["datalist", "fine-tune"]
    assert shlex.split(s["next"]["datalist"])[1:] == [str(folder)]
    assert _flag(shlex.split(s["next"]["fine-tune"]), "--dataset_dir") == str(folder)
    assert "medgmae-datalist writes one" in summary.text(s)
    with pytest.raises(SystemExit):  # the suggested command on this (empty) folder names what it lacks
        datalist_main(shlex.split(s["next"]["datalist"])[1:])
    assert "no volumes" in capsys.readouterr().err
    (folder / "dataset.json").write_text(json.dumps({"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}]}))
    s = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    assert "datalist" not in s["next"] and _flag(shlex.split(s["next"]["fine-tune"]), "--datalist") == str(folder / "dataset.json")


def test_fine_tune_after_a_labelled_datalist_uses_it(tmp_path):
    """Pre-trained on a datalist whose training cases have labels: the fine-tuning command takes the same datalist
    (with the dataset_dir its paths resolved against), not a placeholder; a datalist without labels still asks."""
    labelled, unlabelled = tmp_path / "dataset.json", tmp_path / "ct_only.json"
    labelled.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}))
    unlabelled.write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    for source, data_dir in ((str(labelled), ""), (str(tmp_path), ""), (str(labelled), "/data/btcv")):
        args, text = _fine_tune(tmp_path, source, data_dir)
        assert _flag(args, "--datalist") == str(labelled) and _flag(args, "--dataset_dir") == (data_dir or None)
        assert "needs labels" not in text
    args, text = _fine_tune(tmp_path, str(unlabelled))
    assert _flag(args, "--datalist") is None and "fine-tuning needs labels" in text
    # without a "labels" map fine-tuning cannot count the classes: the command asks for them
    args, text = _fine_tune(tmp_path, str(labelled))
    assert _flag(args, "--num_classes") == "NUM_CLASSES" and "replace NUM_CLASSES by the number of classes" in text
    labelled.write_text(json.dumps({"labels": {"0": "background", "1": "liver"},
                                    "training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}))
    args, text = _fine_tune(tmp_path, str(labelled))
    assert _flag(args, "--num_classes") is None and "NUM_CLASSES" not in text


def test_each_pre_training_run_suggests_its_own_fine_tuning_folder(tmp_path):
    """Following the suggestions of two pre-training runs side by side (pre/, pre_star/) writes two fine-tuning
    folders, beside the runs and named after them, so neither result overwrites the other."""
    folders = []
    for name, kind in (("pre", "medgmae"), ("pre_star", "medgmae-star")):
        summary = PretrainSummary(tmp_path / name, MetricHistory(), kind)
        s = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))
        folders.append(Path(_flag(shlex.split(s["next"]["fine-tune"]), "--output_dir")))
    assert folders == [tmp_path / "pre_finetune", tmp_path / "pre_star_finetune"]


def test_the_next_commands_name_configs_that_exist_from_the_folder_the_run_was_started_in(tmp_path, monkeypatch):
    """From the repository root (the README's commands) the configs are named ``bundles/...``; from another folder
    (a run started with an absolute ``--config_file``) by the checkout's absolute path, which exists there too."""
    repo = Path(__file__).resolve().parents[1]
    for cwd, relative in ((repo, True), (tmp_path, False)):
        monkeypatch.chdir(cwd)
        summary = PretrainSummary(tmp_path / "run", MetricHistory(), "medgmae")
        commands = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))["next"]
        for name in ("fine-tune", "zero-shot inference"):
            config = _flag(shlex.split(commands[name]), "--config_file")
            assert config.startswith("bundles/") == relative and Path(config).is_file(), (cwd, config)


def test_curves_mark_whole_epochs_and_a_few_round_values():
    """The curves' axes were labelled with their padded ends only (``0.95`` and ``2.05`` for 2 epochs)."""
    import numpy as np

    from medgmae.engine.figures import epoch_ticks, line_plot, value_ticks

    assert epoch_ticks(0.95, 2.05) == [1, 2] and epoch_ticks(0.95, 1.05) == [1]
    assert epoch_ticks(0.3, 15.7) == [5, 10, 15] and epoch_ticks(0.5, 6.5) == [1, 2, 3, 4, 5, 6]
    assert epoch_ticks(-3.95, 104.95) == [50, 100]  # an axis padded below epoch 1 gets no tick at a nonexistent epoch 0
    assert value_ticks(0.0793, 0.0861) == pytest.approx([0.080, 0.082, 0.084, 0.086])
    assert value_ticks(11.3485, 11.3815) == pytest.approx([11.35, 11.36, 11.37, 11.38])
    assert value_ticks(0.0723, 0.0849) == pytest.approx([0.074 + 0.002 * i for i in range(6)])  # not 0.075, 0.080 alone
    # a grid line at each whole epoch: a 420-pixel panel plots x from 56 to 408 pixels over epochs 0.95 to 2.05
    img = line_plot([("psnr", {"validation": ([1, 2], [10.0, 11.0])})])
    grey = np.all(img == (220, 220, 220), axis=-1)
    for epoch in (1, 2):
        column = round(56 + (epoch - 0.95) / 1.1 * (408 - 56))
        assert grey[30:260, column - 1 : column + 2].any(axis=1).mean() > 0.5


def test_a_run_stopped_for_good_keeps_the_curves_and_summary_of_its_epochs_so_far(tmp_path):
    """curves.png and summary.json were written only when training completed: a run killed by a job's time limit
    and never resumed had neither. With ``interval`` 2 they are written (atomically) after epochs 2 and 4, the
    summary marked ``in_progress`` and claiming no model file not written yet; the closing ones are not marked.
    Here a run of 6 epochs stops in epoch 5, then one runs to its end."""
    from ignite.engine import Engine, Events
    from PIL import Image

    def run(out: Path, stop_at: int | None) -> list:
        history, seen = MetricHistory(), []
        engine = Engine(lambda e, b: None)

        @engine.on(Events.EPOCH_COMPLETED)
        def validate(e):  # as the validation the checkpoint handler runs before the summary's step
            history.record("train_loss", e.state.epoch, 1.0 / e.state.epoch)
            history.record("val_psnr", e.state.epoch, 10.0 + e.state.epoch)
            history.update_best(e.state.epoch, 10.0 + e.state.epoch)
            if e.state.epoch == stop_at:
                raise KeyboardInterrupt

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: (out / "model.pt").write_bytes(b"%d" % e.state.epoch))
        PretrainSummary(out, history, "medgmae", interval=2).attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(
            json.loads((out / "summary.json").read_text())["epochs"] if (out / "summary.json").is_file() else None))
        try:
            engine.run([0], max_epochs=6)
        except KeyboardInterrupt:
            pass
        return seen

    out = tmp_path / "run"
    out.mkdir()
    assert run(out, stop_at=5) == [None, 2, 2, 4]  # none after epoch 5: stopped before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in_progress"] is True and summary["epochs"] == 4 and summary["best_epoch"] == 4
    assert "encoder.pt" not in summary["files"] and summary["files"]["curves"] == str(out / "curves.png")
    assert "model.pt" in summary["files"] and "fine-tune" not in summary["next"]  # no encoder.pt written yet
    assert np.asarray(Image.open(out / "curves.png").convert("RGB")).astype(float).var() > 100.0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "model.pt", "summary.json"]  # no temporary left
    assert run(out, stop_at=None) == [4, 2, 2, 4, 4, 4]  # the stopped run's at first; the last epoch's at the end:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in_progress"] is False and summary["epochs"] == 6 and "model.pt" in summary["files"]
    with pytest.raises(ValueError, match="picture_interval"):
        PretrainSummary(out, MetricHistory(), "medgmae", interval=0)


def test_a_fresh_run_keeps_an_earlier_runs_summary_and_curves_until_it_writes_its_own_model(tmp_path):
    """A fresh run in the folder of a finished run, ``picture_interval`` 1 and its first checkpoint (and model.pt) at
    epoch 3: the summary and curves of the run so far were written from epoch 1, replacing the earlier run's closing
    ones before its files were removed, and listed the earlier run's model.pt and encoder.pt as this run's, with
    commands on them. Now epochs 1 and 2 leave them as they were; epoch 3 writes them, naming this run's files."""
    from ignite.engine import Engine, Events

    out = tmp_path / "run"
    out.mkdir()
    earlier = {name: b"the earlier run's " + name.encode() for name in ("summary.json", "curves.png", "model.pt", "encoder.pt")}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    history, seen = MetricHistory(), []
    engine = Engine(lambda e, b: None)
    summary = PretrainSummary(out, history, "medgmae", interval=1)

    @engine.on(Events.EPOCH_COMPLETED)
    def validate_and_export(e):  # the checkpoint handler's validation, then the model export at the checkpoint
        history.record("val_psnr", e.state.epoch, 10.0 + e.state.epoch)
        if e.state.epoch == 3:
            (out / "model.pt").write_bytes(b"this run's model")

    summary.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(
        {n: (out / n).read_bytes() == data for n, data in earlier.items()}))

    @engine.on(Events.EPOCH_COMPLETED(once=2))
    def as_in_progress(e):  # what a summary of the run so far would say now: no earlier run's file, no command on one
        s = summary.summary(e, in_progress=True)
        assert not {"model.pt", "encoder.pt"} & set(s["files"]) and s["next"] == {}, s

    @engine.on(Events.EPOCH_COMPLETED(once=3))
    def after_the_first_checkpoint(e):
        s = json.loads((out / "summary.json").read_text())
        assert s["in_progress"] is True and s["epochs"] == 3 and "encoder.pt" not in s["files"], s
        assert s["files"]["model.pt"] == str(out / "model.pt") and "fine-tune" not in s["next"], s
        assert "zero-shot inference" in s["next"]

    engine.run([0], max_epochs=4)
    assert seen[:2] == [dict.fromkeys(earlier, True)] * 2
    assert seen[2] == {"summary.json": False, "curves.png": False, "model.pt": False, "encoder.pt": True}
    written = json.loads((out / "summary.json").read_text())  # the closing one, after epoch 4
    assert written["in_progress"] is False and written["epochs"] == 4
