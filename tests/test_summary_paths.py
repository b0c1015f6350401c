"""``summary.json`` (pre-training, 2D GMAE, GViT) records absolute paths, also for a run given relative folders: the
summary is read later, from other folders than the one the run was started in."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

from medgmae.engine import MetricHistory
from medgmae.files import absolute_path
from medgmae.mae_training.summary import PretrainSummary
from medgmae.twod.gvit_summary import gvit_summary


def test_absolute_path_keeps_links_and_expands_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert absolute_path("link/a.nii.gz") == tmp_path / "link" / "a.nii.gz"  # the name given, not its target
    assert absolute_path("./x/../b") == tmp_path / "b" and absolute_path("~/c") == tmp_path / "home" / "c"
    assert absolute_path(tmp_path / "d") == tmp_path / "d"


def test_a_pre_training_summary_of_relative_folders_names_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ct").mkdir()
    history = MetricHistory()
    history.update_best(1, 20.0)  # a validation wrote best_model.pt
    summary = PretrainSummary("runs/pre", history, "medgmae", example_image="ct/a.nii.gz",
                              tensorboard_dir="runs/tb", pretrained_on="ct")  # fmt: skip
    s = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    run = tmp_path / "runs" / "pre"
    assert s["files"] == {"model.pt": str(run / "model.pt"), "encoder.pt": str(run / "encoder.pt"),
                          "best_model.pt": str(run / "best_model.pt"), "pictures": str(run / "pictures"),
                          "curves": str(run / "curves.png"), "tensorboard": str(tmp_path / "runs" / "tb")}  # fmt: skip
    zero_shot = shlex.split(s["next"]["zero-shot inference"])
    assert zero_shot[zero_shot.index("--image") + 1] == str(tmp_path / "ct" / "a.nii.gz")
    assert zero_shot[zero_shot.index("--model_path") + 1] == str(run / "model.pt")
    fine_tune = shlex.split(s["next"]["fine-tune"])
    assert fine_tune[fine_tune.index("--output_dir") + 1] == str(tmp_path / "runs" / "pre_finetune")
    assert f"{tmp_path / 'ct'} was the pre-training data" in summary.text(s)


def test_a_gvit_summary_of_relative_folders_records_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "run" / "evaluation"
    (results / "explanations").mkdir(parents=True)
    (results / "explanations" / "p1-IM0001.png").write_bytes(b"")
    metrics = {"accuracy": 1.0, "per_class_accuracy": {"liver": 1.0}, "num_images": 1, "split": "val",
               "confusion_matrix": [[1]], "class_names": ["liver"], "training": {}}  # fmt: skip
    (results / "metrics.json").write_text(json.dumps(metrics))
    gvit_summary("run/evaluation", "run", stage="evaluation")
    saved = json.loads((results / "summary.json").read_text())
    assert saved["files"]["model"] == str(tmp_path / "run" / "model.pt")
    assert saved["files"]["metrics"] == str(results / "metrics.json")
    assert all(Path(p).is_absolute() for p in saved["files"].values())
    assert saved["explanation_files"] == [str(results / "explanations" / "p1-IM0001.png")]
    s = gvit_summary("run/evaluation", "run", stage="training")
    assert shlex.split(s["next"]["evaluate"])[-1] == str(tmp_path / "run")


def test_a_2d_summary_names_its_example_image_by_its_absolute_path(tmp_path, monkeypatch):
    from medgmae.twod.gmae_validation import GMAE2DSummary

    class Listed:  # a validation dataset of files, as gmae2d_validation_dataset's of a folder
        data = [{"image": "slices/a.png"}]

        def __len__(self) -> int:
            return 1

    monkeypatch.chdir(tmp_path)
    summary = GMAE2DSummary("runs/gmae2d", MetricHistory(), example_dataset=Listed())
    commands = summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1)))["next"]
    for tool in ("layers", "segment", "edges"):
        args = shlex.split(commands[f"zero-shot {tool}"])
        assert args[args.index("--image") + 1] == str(tmp_path / "slices" / "a.png")
        assert args[args.index("--checkpoint") + 1] == str(tmp_path / "runs" / "gmae2d" / "model.pt")
