"""GViT evaluation finds the data the model was trained on (recorded in model.pt), warns when told otherwise,
never replaces training's phantom task, and leaves no stale explanation PNGs, each named after its image; the
confusion matrix's column labels are whole."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from medgmae.engine.figures import figure_font
from medgmae.twod.classification_data import resolve_classification_data
from medgmae.twod.phantom_task import write_phantom_slice_task
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_eval import evaluate_model_file
from medgmae.twod.gvit_figures import save_confusion_matrix_png
from medgmae.twod.gvit_summary import evaluate_command

EVAL = dict(device="cpu", batch_size=8, render_backend="torch")


def _classes(root):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _model(num_classes=2):
    torch.manual_seed(0)
    return GViT(in_channels=1, img_size=16, num_classes=num_classes, num_gaussians=6, model_size="tiny", patch_size=4)


def test_evaluation_uses_training_data_settings(tmp_path, caplog):
    run = tmp_path / "run"
    data = resolve_classification_data(_classes(tmp_path / "classes"), run / "data", image_size=16, seed=1, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    m = evaluate_model_file(run / "model.pt", None, run / "eval", default_root=run / "data", num_explanations=-1, **EVAL)
    assert m["split"] == "val" and m["data"]["dataset_dir"] == str((tmp_path / "classes").resolve())
    assert m["data"]["seed"] == 1 and m["num_images"] == len(data.val) == 4
    assert not (run / "data").exists()  # no phantom task was generated
    assert json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))["data"]["seed"] == 1
    cmd = evaluate_command(run)  # the data come from model.pt, as the evaluation above found them without flags
    assert cmd.endswith(f"--output_dir {run}") and "--seed" not in cmd and "--dataset_dir" not in cmd

    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        m = evaluate_model_file(run / "model.pt", None, run / "eval", seed=0, num_explanations=1, **EVAL)
    assert "evaluating with seed 0, not training's 1" in caplog.text and "overlap" in caplog.text
    assert sorted(p.name for p in (run / "eval" / "explanations").iterdir()) == [  # the 4 earlier PNGs are gone
        next((run / "eval" / "explanations").iterdir()).name]
    assert m["explanations"] == 1


def test_evaluation_names_the_models_channels_for_a_mixed_dataset(tmp_path, caplog):
    """A grey model evaluated on a dataset of grey and colour images converts every image to its 1 channel; the
    warning says so, not the 3 channels of the dataset's first colour image (training's rule)."""
    root = _classes(tmp_path / "classes")
    rng = np.random.default_rng(1)
    for name in ("a", "b"):  # colour images that sort first in each class
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / name / "0.png")
    run = tmp_path / "run"
    _model().save(run / "model.pt", class_names=["a", "b"], data={"dataset_dir": str(root), "seed": 0, "val_fraction": 0.5})
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        m = evaluate_model_file(run / "model.pt", None, run / "eval", seed=0, split="all", num_explanations=0, **EVAL)
    assert m["num_images"] == 8
    assert "mixes grey and colour images" in caplog.text
    assert "converted to 1 channel (the model's)" in caplog.text and "converted to 3 channels" not in caplog.text


def test_evaluation_never_replaces_the_training_phantom_task(tmp_path, caplog):
    run = tmp_path / "run"
    write_phantom_slice_task(run / "data", num_cases=3, seed=0, image_size=16)
    task = (run / "data" / "task.json").read_text(encoding="utf-8")
    settings = {"dataset_dir": "", "default_root": str(run / "data"), "num_phantoms": 3, "seed": 0,
                "val_fraction": 0.2, "image_size": 16}  # fmt: skip
    _model(3).save(run / "model.pt", class_names=None, data=settings)
    evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=0, **EVAL)  # reuses the task
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        try:
            evaluate_model_file(run / "model.pt", None, run / "eval", seed=5, num_explanations=0, **EVAL)
        except ValueError as e:  # another seed may give other classes; the point is where it wrote
            assert "classes" in str(e)
    assert (run / "data" / "task.json").read_text(encoding="utf-8") == task
    assert json.loads((run / "eval" / "data" / "task.json").read_text(encoding="utf-8"))["params"]["seed"] == 5
    assert "leaving it untouched" in caplog.text


def test_a_failed_evaluation_keeps_the_earlier_explanations(tmp_path, monkeypatch, folder_state):
    """Explanations are staged: an evaluation that fails while writing them (here at the second PNG) leaves the
    earlier evaluation's PNGs, confusion matrix and metrics as they were, and no staging folder behind."""
    import medgmae.twod.gvit_eval as gvit_eval

    run = tmp_path / "run"
    data = resolve_classification_data(_classes(tmp_path / "classes"), run / "data", image_size=16, seed=1, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=-1, **EVAL)
    before, outputs = folder_state(run / "eval" / "explanations"), folder_state(run / "eval")
    assert len(before) == 4
    calls, save = [], gvit_eval.save_explanation_png

    def fail_on_second(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise OSError("disk full")
        return save(*args, **kwargs)

    monkeypatch.setattr(gvit_eval, "save_explanation_png", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=-1, **EVAL)
    assert len(calls) == 2 and folder_state(run / "eval" / "explanations") == before
    assert folder_state(run / "eval") == outputs  # the confusion matrix and metrics.json too: the earlier pair
    assert not [p.name for p in (run / "eval").iterdir() if p.name.startswith(".")]


def test_explanation_names_carry_the_source_file(tmp_path):
    run = tmp_path / "run"
    data = resolve_classification_data(_classes(tmp_path / "classes"), run / "data", image_size=16, seed=1, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=-1, **EVAL)
    names = sorted(p.name for p in (run / "eval" / "explanations").iterdir())
    stems = sorted(Path(it["image"]).stem for it in data.val)
    assert len(names) == len(stems) == 4
    assert sorted(name.split("_")[1] for name in names) == stems  # <n>_<source>_<true>_pred-<predicted>.png


def test_explanation_names_tell_apart_files_of_one_name_in_patient_folders(tmp_path):
    """Class folders of patient folders each holding an IM0001.png: each explanation names its patient's folder
    (p1-IM0001), where the file name alone would name all of them IM0001."""
    rng = np.random.default_rng(0)
    rels = ("a/p1/IM0001.png", "a/p2/IM0001.png", "b/p3/IM0001.png", "b/p3/other.png")
    for rel in rels:
        (tmp_path / "classes" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "classes" / rel)
    run = tmp_path / "run"
    data = resolve_classification_data(tmp_path / "classes", run / "data", image_size=16, seed=0, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    evaluate_model_file(run / "model.pt", None, run / "eval", split="all", num_explanations=-1, **EVAL)
    sources = sorted(p.name.split("_")[1] for p in (run / "eval" / "explanations").iterdir())
    assert sources == ["p1-IM0001", "p2-IM0001", "p3-IM0001", "p3-other"]


@pytest.mark.parametrize("seed", range(6))
def test_evaluation_keeps_training_split_when_images_were_added(tmp_path, caplog, seed):
    """Images added to the class folders after training would re-draw the seeded split and move training images
    into validation; the evaluation keeps the split model.pt records, added images in neither split."""
    run, root = tmp_path / "run", _classes(tmp_path / "classes")
    data = resolve_classification_data(root, run / "data", image_size=16, seed=seed, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    validated = sorted(Path(it["image"]).relative_to(root).as_posix() for it in data.val)
    rng = np.random.default_rng(seed)
    for name in ("a", "b"):
        for i in range(4, 7):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    (root / "b" / "0.png").unlink()
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        m = evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=-1, **EVAL)
    kept = [v for v in validated if v != "b/0.png"]
    assert m["num_images"] == len(kept)
    shown = sorted(p.name.split("_")[1] for p in (run / "eval" / "explanations").iterdir())
    assert shown == sorted(Path(v).stem for v in kept)  # training's validation images, none added, none trained on
    assert "changed since training (6 images added, 1 missing)" in caplog.text


def test_the_redrawn_split_would_leak_training_images(tmp_path):
    """The case the recorded split guards against happens: for most seeds, the seeded split of the grown folder
    puts images that were trained on into validation."""
    leaked = 0
    for seed in range(6):
        root = _classes(tmp_path / f"c{seed}")
        data = resolve_classification_data(root, tmp_path / "d", image_size=16, seed=seed, val_fraction=0.5)
        trained = {it["image"] for it in data.train}
        rng = np.random.default_rng(seed)
        for name in ("a", "b"):
            for i in range(4, 7):
                Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
        redrawn = resolve_classification_data(root, tmp_path / "d", image_size=16, seed=seed, val_fraction=0.5)
        leaked += bool({it["image"] for it in redrawn.val} & trained)
    assert leaked >= 3


def test_a_split_the_dataset_fixes_is_the_datasets_own(tmp_path, caplog):
    """train/ and val/ folders fix the split (training images cannot move into val): nothing is recorded, and images
    added to val/ after training are evaluated."""
    root = tmp_path / "fixed"
    _classes(root / "train"), _classes(root / "val")
    run = tmp_path / "run"
    data = resolve_classification_data(root, run / "data", image_size=16)
    assert not data.seeded_split and "split_files" not in data.settings
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "val" / "a" / "new.png")
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        m = evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=0, **EVAL)
    assert m["num_images"] == 9 and "changed since training" not in caplog.text


def test_evaluation_of_a_moved_dataset_keeps_training_split(tmp_path, caplog):
    run = tmp_path / "run"
    data = resolve_classification_data(_classes(tmp_path / "classes"), run / "data", image_size=16, seed=2, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    (tmp_path / "classes").rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        m = evaluate_model_file(run / "model.pt", tmp_path / "moved", run / "eval", num_explanations=0, **EVAL)
    assert m["num_images"] == 4 and "changed since training" not in caplog.text
    with pytest.raises(ValueError, match=r"model.pt records its training data at .*classes, which is not found .*--dataset_dir"):
        evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=0, **EVAL)
    assert "split_files" not in m["data"]  # metrics.json shows the settings, not the file lists


def _ink(img: Image.Image) -> int:
    return int((np.asarray(img.convert("L")) < 128).sum())


def test_confusion_matrix_title_is_whole_for_two_short_classes(tmp_path):
    save_confusion_matrix_png(np.array([[3, 1], [0, 2]]), ["a", "b"], tmp_path / "cm.png")
    img = Image.open(tmp_path / "cm.png")
    font = figure_font()
    title = "true (rows) vs predicted (columns)"
    whole = Image.new("L", (400, 20), 255)
    ImageDraw.Draw(whole).text((4, 4), title, fill=0, font=font)
    assert img.width >= font.getlength(title) + 4
    assert _ink(img.crop((0, 0, img.width, 20))) >= _ink(whole)


def test_accented_class_names_read_in_the_pictures(tmp_path):
    """A letter the pictures' font has no glyph for (ü in Pillow's built-in font, used where DejaVu Sans is not
    installed) would be the empty box of a missing glyph: class names are drawn with their plain letters, so that
    'Läsion' reads as 'Lasion', not 'L?sion' with a box; a font that has ü draws it."""
    from medgmae.engine.figures import drawable, label_tile

    tile = np.zeros((16, 180, 3), np.uint8)
    font = figure_font()
    lacks = bytes(font.getmask("ü")) == bytes(font.getmask("\uffff"))
    shown, u = ("Lasion", "u") if lacks else ("Läsion", "ü")
    assert drawable("Läsion") == shown
    np.testing.assert_array_equal(label_tile(tile, "true Läsion / predicted Niere ü"),
                                  label_tile(tile, f"true {shown} / predicted Niere {u}"))
    save_confusion_matrix_png(np.array([[3, 1], [0, 2]]), ["Läsion", "Niere"], tmp_path / "accented.png")
    save_confusion_matrix_png(np.array([[3, 1], [0, 2]]), [shown, "Niere"], tmp_path / "shown.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "accented.png")), np.asarray(Image.open(tmp_path / "shown.png")))


def test_confusion_matrix_column_labels_are_whole(tmp_path):
    names = ["disk", "rare class"]
    save_confusion_matrix_png(np.array([[3, 1], [0, 2]]), names, tmp_path / "cm.png")
    img = Image.open(tmp_path / "cm.png")
    label_w, top, cell = 8 + 7 * max(map(len, names)), 24, 48
    font = figure_font()
    for j, name in enumerate(names):  # the header above column j holds the whole name's ink
        header = img.crop((label_w + j * cell, top, label_w + (j + 1) * cell, top + label_w))
        whole = Image.new("L", (200, 30), 255)
        ImageDraw.Draw(whole).text((1, 1), name, fill=0, font=font)
        assert _ink(header) >= 0.9 * _ink(whole), name


def test_each_explanation_panel_has_a_caption_of_its_own(tmp_path):
    """The image's title and the ellipses' colour key stand over their own panels, apart (they ran together as one
    line across the first two panels): each caption's ink lies within its panel's columns, with blank columns
    between the captions of the image panel and of the ellipse panel."""
    from medgmae.twod.gvit import Gaussians2D
    from medgmae.twod.gvit_figures import save_explanation_png

    torch.manual_seed(0)
    g = Gaussians2D(torch.rand(1, 5, 2), torch.full((1, 5, 2), 0.1), torch.zeros(1, 5), torch.rand(1, 5, 1), torch.ones(1, 5))
    path = save_explanation_png(torch.rand(1, 16, 16), g, tmp_path / "e.png", torch.rand(1, 16, 16),
                                title="true left / predicted right", size=256)  # fmt: skip
    pic = np.asarray(Image.open(path).convert("RGB")).astype(int)
    band = pic[2 : 2 + 14]  # tile_grid's 2-pixel margin, then label_tile's 14-pixel band over every panel
    inked = np.flatnonzero((band > 40).any(axis=(0, 2)))
    first, second = inked[inked < 2 + 256], inked[inked >= 2 + 256]
    assert first.size and first.max() < 2 + 200  # "true left / predicted right" ends well inside panel 1
    assert second.min() >= 2 + 256 + 2  # the ellipse key starts on its own panel: 58 blank columns at least between
    assert pic.shape[0] == 2 + 14 + 256 + 2  # one row of captioned panels


def test_a_dataset_of_other_classes_is_refused_as_the_users_input(tmp_path):
    """Evaluating on a dataset with a class the model does not know is a refusal of what the user gave (printed
    alone by the bundle), naming that class and the model's classes."""
    from medgmae.bundle_errors import InputRefusal
    from medgmae.twod.gvit_eval import evaluate_model_file

    run = tmp_path / "run"
    data = resolve_classification_data(_classes(tmp_path / "classes"), run / "data", image_size=16, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    other = _classes(tmp_path / "other")
    (other / "a").rename(other / "zebra")
    with pytest.raises(InputRefusal, match=r"dataset folder .*other has class 'zebra', which the model does not know: it was trained on classes \['a', 'b'\]$"):
        evaluate_model_file(run / "model.pt", other, run / "eval", **EVAL)


def test_another_folder_is_evaluated_whole_and_all_means_every_image(tmp_path, caplog):
    """An external test set whose file names happen to match some of training's (``2.png`` and ``3.png`` of each
    class) is not split by training's record, which would keep only the matching names: every one of its images is
    evaluated, whichever split, said in one line and recorded as split "all". On the training folder itself, grown since, "val" stays training's
    and "all" is every image, the added ones too."""
    run, root = tmp_path / "run", _classes(tmp_path / "classes")
    data = resolve_classification_data(root, run / "data", image_size=16, seed=1, val_fraction=0.5)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    rng = np.random.default_rng(7)
    for name in ("a", "b"):
        (tmp_path / "external" / name).mkdir(parents=True)
        for i in range(2, 7):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "external" / name / f"{i}.png")
    with caplog.at_level(logging.INFO, logger="medgmae.gvit"):
        m = evaluate_model_file(run / "model.pt", tmp_path / "external", run / "ext", num_explanations=0, **EVAL)
    assert m["split"] == "all" and m["num_images"] == 10  # recorded as what was evaluated: every image
    assert "is not the folder the model was trained on" in caplog.text and "every one of its 10 images" in caplog.text
    assert "changed since training" not in caplog.text
    for i in (4, 5):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / "a" / f"{i}.png")
    assert evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=0, **EVAL)["num_images"] == 4
    assert evaluate_model_file(run / "model.pt", None, run / "eval", split="all", num_explanations=0, **EVAL)["num_images"] == 10


def test_an_empty_split_is_a_dataset_error_naming_the_folder(tmp_path):
    """A split without images (training held none out: val_fraction 0) is refused as a dataset problem, which the
    bundle prints in one line, naming the dataset and the split."""
    from medgmae.data.datalist import DatasetError

    run, root = tmp_path / "run", _classes(tmp_path / "classes")
    data = resolve_classification_data(root, run / "data", image_size=16, val_fraction=0.0)
    _model().save(run / "model.pt", class_names=data.class_names, data=data.settings)
    with pytest.raises(DatasetError, match=r"the 'val' split of dataset .*classes has no images"):
        evaluate_model_file(run / "model.pt", None, run / "eval", num_explanations=0, **EVAL)
