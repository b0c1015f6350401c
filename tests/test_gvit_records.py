"""GViT: what a run records of its training (guidance included) and what a resume must share with it."""

from __future__ import annotations

import json
import logging
import platform

import pytest
import torch
from gvit_helpers import shapes_dataset, gvit_workflow

from medgmae.twod.classification_data import load_classification_data
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_summary import gvit_summary


@pytest.fixture
def shapes(tmp_path):
    return load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)


def test_model_metrics_and_summary_record_the_guidance(tmp_path, shapes, caplog):
    """model.pt (still read with weights_only=True), metrics.json and summary.json say how the model was trained:
    the settings given to the workflow, written out here by hand."""
    flow = gvit_workflow(shapes, tmp_path / "run", resume=False)
    flow.epochs = {"warmup": 1, "classifier": 1, "joint": 1}
    flow.kwargs.update(gamma=0.05, guidance_interval=3)
    flow.rec_loss.pixel, flow.rec_loss.perceptual_weight = "mse", 0.25
    flow.run()
    expected = {"epochs": {"warmup": 1, "classifier": 1, "joint": 1}, "lr": 0.001, "weight_decay": 0.05,
                "pixel_loss": "mse", "perceptual_weight": 0.25, "gamma": 0.05, "guidance_interval": 3, "guidance": True}
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["extra"]["training"] == expected
    assert GViT.from_checkpoint(tmp_path / "run" / "model.pt").training_settings == expected
    assert json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))["training"] == expected
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        summary = gvit_summary(tmp_path / "run")
    assert summary["training"] == expected
    assert json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))["training"] == expected
    assert "trained with guidance (gamma 0.05 every 3 iterations of 1 joint epoch), loss mse + 0.25 D-SSIM" in caplog.text


def test_metrics_and_summary_record_the_loader_workers_and_the_software(tmp_path, shapes):
    """A seed reproduces a run only with the same data loader workers and software: metrics.json records the
    training loader's num_workers beside the seed, and metrics.json and summary.json the software (torch's version
    as torch itself gives it); model.pt the seed and the workers, so that the file alone says them."""
    flow = gvit_workflow(shapes, tmp_path / "run", resume=False, epochs={"warmup": 1, "classifier": 1, "joint": 0}, seed=4)
    flow.train_loader.num_workers, flow.train_loader.prefetch_factor = 1, 2  # one worker process
    flow.run()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["data"]["num_workers"] == 1
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["extra"]["run"] == {"seed": 4, "num_workers": 1}
    assert GViT.from_checkpoint(tmp_path / "run" / "model.pt").run_settings == {"seed": 4, "num_workers": 1}
    assert metrics["software"]["packages"]["torch"] == torch.__version__
    assert metrics["software"]["python"] == platform.python_version()
    gvit_summary(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["software"]["packages"]["torch"] == torch.__version__


def test_no_guidance_is_recorded_as_such(tmp_path, shapes):
    flow = gvit_workflow(shapes, tmp_path / "run", resume=False)
    flow.epochs = {"warmup": 1, "classifier": 1, "joint": 1}
    flow.kwargs["gamma"] = 0.0
    flow.run()
    training = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["extra"]["training"]
    assert training["gamma"] == 0.0 and training["guidance"] is False


def test_phase_checkpoints_record_the_losses_they_trained_on(tmp_path, shapes):
    gvit_workflow(shapes, tmp_path / "run", resume=False).run()  # warmup 1, classifier 1, joint 2, gamma 0.1

    def settings(phase):
        ckpt = torch.load(tmp_path / "run" / "checkpoints" / phase / "checkpoint_final.pt", weights_only=True)
        return ckpt["objects"]["settings"]["settings"]

    assert settings("warmup")["loss"] == {"pixel_loss": "bce", "perceptual_weight": 0.1} and "guidance" not in settings("warmup")
    assert "loss" not in settings("classifier") and "guidance" not in settings("classifier")
    assert settings("joint")["guidance"] == {"gamma": 0.1, "guidance_interval": 1}
    assert settings("joint")["loss"] == {"pixel_loss": "bce", "perceptual_weight": 0.1}


@pytest.mark.parametrize("change, named", [
    ({"gamma": 0.0}, r"guidance\.gamma: saved 0\.1, now 0\.0"),
    ({"guidance_interval": 10}, r"guidance\.guidance_interval: saved 1, now 10"),
    ({"pixel_loss": "mse"}, r"loss\.pixel_loss: saved 'bce', now 'mse'"),
    ({"perceptual_weight": 0.0}, r"loss\.perceptual_weight: saved 0\.1, now 0\.0"),
])  # fmt: skip
def test_resume_with_other_guidance_or_loss_is_refused(tmp_path, shapes, folder_state, change, named):
    """As a changed learning rate is: the run stops before any phase trains, naming the setting, nothing written."""
    gvit_workflow(shapes, tmp_path / "run", resume=False).run()
    before = folder_state(tmp_path / "run")
    again = gvit_workflow(shapes, tmp_path / "run", resume=True)
    if "pixel_loss" in change or "perceptual_weight" in change:
        again.rec_loss.pixel = change.get("pixel_loss", again.rec_loss.pixel)
        again.rec_loss.perceptual_weight = change.get("perceptual_weight", again.rec_loss.perceptual_weight)
    else:
        again.kwargs.update(change)
    with pytest.raises(ValueError, match=r"GViT training with other settings \(" + named + r"\)\. Resume with the saved"):
        again.run()
    assert folder_state(tmp_path / "run") == before


def test_a_refused_resume_names_every_phases_differences_in_one_error(tmp_path, shapes, folder_state):
    """Another learning rate (every phase records it) and another gamma (the joint phase alone records it): the error
    named the warm-up's learning rate alone; it names each phase's checkpoint with its differences, a line each."""
    gvit_workflow(shapes, tmp_path / "run", resume=False).run()  # warmup 1, classifier 1, joint 2, lr 1e-3, gamma 0.1
    before = folder_state(tmp_path / "run")
    again = gvit_workflow(shapes, tmp_path / "run", resume=True)
    again.kwargs.update(lr=0.01, gamma=0.05)
    with pytest.raises(ValueError) as refused:
        again.run()
    lines = str(refused.value).splitlines()
    assert [line.split("checkpoints")[1].split("checkpoint_")[0].strip("/\\") for line in lines] == ["warmup", "classifier", "joint"]
    assert all("(optimiser.lr: saved 0.001, now 0.01" in line for line in lines)
    assert "guidance.gamma: saved 0.1, now 0.05" in lines[2] and not any("gamma" in line for line in lines[:2])
    assert folder_state(tmp_path / "run") == before


def test_guidance_may_change_before_the_joint_phase_has_trained(tmp_path, shapes):
    """Only the phases that used a setting hold it: a run stopped after its classifier phase resumes with another
    gamma, which its joint phase then trains with."""
    first = gvit_workflow(shapes, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 1, "joint": 0}
    first.run()
    again = gvit_workflow(shapes, tmp_path / "run", resume=True)
    again.kwargs["gamma"] = 0.02
    again.run()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "joint" / "checkpoint_final.pt", weights_only=True)
    assert saved["objects"]["settings"]["settings"]["guidance"]["gamma"] == 0.02


def test_resuming_the_last_phase_names_no_later_phases(tmp_path, shapes, caplog):
    """A resume that trains the joint phase further says the earlier results no longer hold, and nothing about
    phases after it (there are none)."""
    gvit_workflow(shapes, tmp_path / "run", resume=False).run()  # joint 2
    longer = gvit_workflow(shapes, tmp_path / "run", resume=True)
    longer.epochs = {"warmup": 1, "classifier": 1, "joint": 3}
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        longer.run()
    warning = [r.getMessage() for r in caplog.records if "this run trains the" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith("this run trains the 'joint' phase, so earlier results no longer hold")
    assert "phases after it" not in warning[0]


def test_the_joint_phase_logs_both_loss_terms_and_the_guidance(tmp_path, shapes, caplog):
    """The joint phase's epoch line shows the means of L_rec and L_cls, which add up to its loss, its start line
    whether guidance is on, and with log_every its iteration lines show both terms."""
    import re

    from medgmae.twod.gvit_phases import default_phase_handlers

    flow = gvit_workflow(shapes, tmp_path / "run", resume=False)
    flow.epochs = {"warmup": 1, "classifier": 0, "joint": 1}
    flow.kwargs.update(gamma=0.05, guidance_interval=2, handlers=default_phase_handlers(log_every=1, progress_bar=False))
    with caplog.at_level(logging.INFO):
        flow.run()
    text = caplog.text
    assert "GViT phase 'joint': 1 epoch, with guidance (gamma 0.05 every 2 iterations)" in text
    line = re.search(r"epoch 1/1: joint_loss ([\d.]+) \(rec ([\d.]+) \+ cls ([\d.]+); \d+ iterations", text)
    assert line is not None, text
    total, rec, cls = (float(v) for v in line.groups())
    assert rec > 0 and cls > 0 and total == pytest.approx(rec + cls, abs=2e-5)
    assert re.search(r"warmup_loss [\d.]+ \(\d+ iterations", text)  # the other phases' lines as they were
    assert re.search(r"joint_cls: [\d.]+ .*joint_loss: [\d.]+ .*joint_rec: [\d.]+", text), text
    flow = gvit_workflow(shapes, tmp_path / "plain", resume=False)
    flow.epochs = {"warmup": 0, "classifier": 0, "joint": 1}
    flow.kwargs["gamma"] = 0.0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        flow.run()
    assert "GViT phase 'joint': 1 epoch, without guidance (gamma 0" in caplog.text


class _FixedClass(torch.nn.Module):
    """Logits whose argmax is ``cls`` for every image (a classifier that has collapsed to one class), or the
    image's own label read from its mean when ``cls`` is None."""

    def __init__(self, cls: int | None, num_classes: int = 3) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        index = torch.full((x.shape[0],), self.cls) if self.cls is not None else x.flatten(1).mean(1).round().long()
        return torch.nn.functional.one_hot(index, self.num_classes).float()


def _images(labels):
    return [{"image": torch.full((1, 4, 4), float(y)), "label": y} for y in labels]


@pytest.mark.parametrize("cls, labels, warned, predicted", [
    (1, [0, 1, 2, 0], True, 1),  # one class for every image, three present: warned
    (None, [0, 1, 2, 0], False, 3),  # the right class for each
    (1, [1, 1], False, 1),  # one class present: nothing to tell apart
])  # fmt: skip
def test_evaluation_flags_a_model_predicting_one_class_for_every_image(tmp_path, caplog, cls, labels, warned, predicted):
    from monai.data import DataLoader

    from medgmae.twod.gvit_eval import evaluate_gvit

    loader = DataLoader(_images(labels), batch_size=3)
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        metrics = evaluate_gvit(_FixedClass(cls), loader, ["a", "b", "c"], tmp_path, num_explanations=0)
    assert metrics["predicted_classes"] == predicted
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["predicted_classes"] == predicted
    flagged = [r.getMessage() for r in caplog.records if "degenerate" in r.getMessage()]
    assert flagged == (["the model predicts 'b' for every one of the 4 images evaluated, of 3 classes: a degenerate "
                        "classifier (metrics.json: predicted_classes 1)"] if warned else [])


def test_evaluation_writes_each_image_prediction_beside_its_true_class(tmp_path):
    """``predictions.csv``: one row per image in the loader's order, its file (empty for an image made in memory),
    true and predicted class, each class's probability (softmax of one-hot logits: e / (e + 2) for the predicted
    one, 1 / (e + 2) for the others, by hand) and whether it is right; the accuracy of its rows is metrics.json's."""
    import csv
    import math

    from monai.data import DataLoader

    from medgmae.twod.gvit_eval import evaluate_gvit

    items = _images([0, 1, 2, 0])
    for i, item in enumerate(items[:3]):
        item["path"] = f"/data/class/{i}.png"
    items[3]["path"] = torch.zeros(1)  # an image without a file
    metrics = evaluate_gvit(_FixedClass(1), DataLoader(items, batch_size=3), ["a", "b", "c"], tmp_path, num_explanations=0)
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "true_class", "predicted_class", "probability_a", "probability_b",
                             "probability_c", "correct"]  # fmt: skip
    assert [r["image"] for r in rows] == ["/data/class/0.png", "/data/class/1.png", "/data/class/2.png", ""]
    assert [(r["true_class"], r["predicted_class"], r["correct"]) for r in rows] == [
        ("a", "b", "false"), ("b", "b", "true"), ("c", "b", "false"), ("a", "b", "false")]
    high, low = math.e / (math.e + 2), 1 / (math.e + 2)
    for r in rows:
        assert [float(r[f"probability_{n}"]) for n in "abc"] == pytest.approx([low, high, low], abs=1e-6)
    assert sum(r["correct"] == "true" for r in rows) / len(rows) == metrics["accuracy"]
