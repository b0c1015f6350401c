"""A GViT is evaluated on a test set holding a part of its classes: the dataset's labels are mapped onto the model's
class indices by name (not by the test set's own sorted order), the classes without images are n/a, and only a
label the model does not know is refused; training still needs two classes."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.data.datalist import DatasetError
from medgmae.twod.classification_data import load_classification_data, make_dataset
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_eval import evaluate_model_file
from medgmae.twod.gvit_summary import gvit_summary

EVAL = dict(device="cpu", batch_size=8, render_backend="torch", num_explanations=0, split="all")
MODEL_CLASSES = ["a", "b", "c"]


def _images(root, names, per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _saved_model(run):
    torch.manual_seed(0)
    model = GViT(in_channels=1, img_size=16, num_classes=3, num_gaussians=6, model_size="tiny", patch_size=4)
    model.save(run / "model.pt", class_names=MODEL_CLASSES, data={"dataset_dir": "", "num_phantoms": 10, "seed": 0,
                                                                  "val_fraction": 0.2})  # fmt: skip
    return model


def _direct_predictions(model, paths):
    """The model's class name for each image, run on it directly (the reference the evaluation is held to)."""
    ds = make_dataset([{"image": str(p), "label": 0} for p in paths], model.img_size, model.in_channels, cache=False)
    model.eval()
    with torch.no_grad():
        return [MODEL_CLASSES[int(model(ds[i]["image"][None]).argmax(-1))] for i in range(len(ds))]


def test_a_test_set_of_a_part_of_the_classes_is_evaluated_by_class_name(tmp_path, caplog):
    """Folders ``a/`` and ``c/`` (no ``b/``): ``c``'s images are the model's class 2 (the test set's own order would
    make them class 1, ``b``); ``b`` is n/a in metrics.json and in the summary's per-class accuracy."""
    run = tmp_path / "run"
    run.mkdir()
    model = _saved_model(run)
    test = _images(tmp_path / "test", ["a", "c"])
    with caplog.at_level(logging.INFO):
        m = evaluate_model_file(run / "model.pt", test, run / "eval", **EVAL)
    assert m["class_names"] == MODEL_CLASSES and m["num_images"] == 6
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum(1).tolist() == [3, 0, 3]  # rows = true class by name: none of b
    for true in ("a", "c"):
        predicted = _direct_predictions(model, sorted((test / true).glob("*.png")))
        row = cm[MODEL_CLASSES.index(true)]
        assert row.tolist() == [predicted.count(name) for name in MODEL_CLASSES]
        assert m["per_class_accuracy"][true] == pytest.approx(predicted.count(true) / 3)
    assert m["per_class_accuracy"]["b"] is None
    assert "holds no images of the model's class 'b': its accuracy is n/a" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        gvit_summary(run / "eval", run, stage="evaluation")
    assert "b n/a" in caplog.text


def test_a_one_class_csv_test_set_is_evaluated_and_an_unknown_label_refused(tmp_path):
    """A CSV test set of class ``c`` alone is evaluated (training's two-class minimum does not apply); a row of a
    label the model does not know is refused, naming it and the model's classes."""
    run = tmp_path / "run"
    run.mkdir()
    model = _saved_model(run)
    _images(tmp_path, ["c"])
    (tmp_path / "test.csv").write_text("path,label\nc/0.png,c\nc/1.png,c\nc/2.png,c\n", encoding="utf-8")
    m = evaluate_model_file(run / "model.pt", tmp_path / "test.csv", run / "eval", **EVAL)
    predicted = _direct_predictions(model, [tmp_path / "c" / f"{i}.png" for i in range(3)])
    assert np.asarray(m["confusion_matrix"])[2].tolist() == [predicted.count(name) for name in MODEL_CLASSES]
    assert m["per_class_accuracy"]["a"] is None and m["per_class_accuracy"]["b"] is None

    (tmp_path / "zebra.csv").write_text("c/0.png,c\nc/1.png,zebra\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"zebra\.csv has class 'zebra', which the model does not know: it was "
                                           r"trained on classes \['a', 'b', 'c'\]$"):  # fmt: skip
        evaluate_model_file(run / "model.pt", tmp_path / "zebra.csv", run / "eval", **EVAL)


def test_training_still_needs_two_classes(tmp_path):
    """Without a model's classes, a one-class folder or CSV is refused as before."""
    _images(tmp_path / "one", ["c"])
    with pytest.raises(DatasetError, match="classification needs at least 2 classes, found only class"):
        load_classification_data(tmp_path / "one")
    assert load_classification_data(tmp_path / "one", class_names=MODEL_CLASSES).class_names == MODEL_CLASSES
