"""GViT's training phases (what each freezes), image folders and CSV lists, the phantom slice task,
classification metrics, explanation figures, and the joint phase on CUDA."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from PIL import Image
from torch.utils.data import DataLoader

from medgmae.twod.classification_data import load_classification_data, make_dataset, read_csv_list, scan_image_folder
from medgmae.twod.phantom_task import write_phantom_slice_task
from medgmae.twod.gvit import GViT, sample_gaussian_tokens
from medgmae.twod.gvit_eval import classification_metrics
from medgmae.twod.gvit_phases import default_phase_handlers
from medgmae.twod.gvit_figures import ellipse_points
from medgmae.twod.gvit_step import PHASES
from medgmae.twod.gvit_train import build_phase_trainer
from medgmae.twod.guidance import ReconstructionLoss, guided_backward

from gvit_helpers import SIZE, gvit_workflow, perturb_head, shapes_dataset


def _loader(n=4, channels=1, num_classes=3):
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(channels, SIZE, SIZE, generator=gen), "label": torch.tensor(i % num_classes)} for i in range(n)]
    return DataLoader(items, batch_size=n)


@pytest.mark.parametrize("phase", PHASES)
def test_phase_freezes_what_it_should(phase):
    torch.manual_seed(0)
    model = GViT(1, SIZE, 3, num_gaussians=6, patch_size=4)
    perturb_head(model.encoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = build_phase_trainer(phase, model, _loader(), max_epochs=1, device="cpu", lr=1e-2, render_backend="torch")
    trainer.run()
    trains_enc, trains_cls = phase in ("warmup", "joint"), phase in ("classifier", "joint")
    assert all(p.requires_grad == trains_enc for p in model.encoder.parameters())
    assert all(p.requires_grad == trains_cls for p in model.classifier.parameters())
    assert model.encoder.training == trains_enc  # frozen Gaussians: deterministic g0 in the classifier phase
    after = model.state_dict()
    for prefix, trained in (("encoder.", trains_enc), ("classifier.", trains_cls)):
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(after[k], before[k])]
        if trained:
            assert len(changed) > 0.8 * sum(1 for k in after if k.startswith(prefix) and after[k].is_floating_point())
        else:
            assert changed == []
    out = trainer.state.output
    assert torch.isfinite(out["loss"])
    assert (out["loss_rec"] is None) == (phase == "classifier") and (out["loss_cls"] is None) == (phase == "warmup")


def test_the_warm_up_is_a_fraction_of_the_phases_optimiser_steps():
    """``warmup_fraction`` is of the phase's optimiser steps (epochs x batches), not of its epochs: a 4-epoch phase of
    10 batches warms up over 4 of its 40 steps, and after its first step the rate is MONAI's linear warm-up from 0.1
    of the rate, ``lr * (0.1 + 0.9 * 1 / 4)`` (warming up over int(0.1 * 4) = 0 steps gave the cosine's ~lr)."""
    torch.manual_seed(0)
    model = GViT(1, SIZE, 3, num_gaussians=6, patch_size=4)
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(1, SIZE, SIZE, generator=gen), "label": torch.tensor(i % 3)} for i in range(10)]
    contexts, rates = [], []
    handlers = [*default_phase_handlers(progress_bar=False), contexts.append]  # a factory seeing the phase's context
    trainer = build_phase_trainer("classifier", model, DataLoader(items, batch_size=1), max_epochs=4, lr=1e-2,
                                  warmup_fraction=0.1, render_backend="torch", handlers=handlers)  # fmt: skip

    @trainer.on(Events.ITERATION_COMPLETED(once=1))  # after the handlers' schedule step
    def first_step(engine):
        rates.append([group["lr"] for group in engine.optimizer.param_groups])
        engine.terminate()

    trainer.run()
    schedule = contexts[0].lr_scheduler
    assert (schedule.warmup_steps, schedule.t_total) == (4, 40)
    assert rates[0] == pytest.approx([1e-2 * (0.1 + 0.9 / 4)] * len(rates[0]))


def _write_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(tmp_path, classes=("a", "b"), n=3, rgb_first=False):
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(n):
            shape = (20, 20, 3) if (rgb_first and c == classes[0]) else (20, 20)
            _write_png(tmp_path / "data" / c / f"{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))
    return tmp_path / "data"


def test_a_dataset_path_with_an_unexpanded_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """``--dataset_dir "~/data"`` (quoted) reads the home folder's dataset, and the run records the expanded path
    (it recorded ``<cwd>/~/data``, which the evaluation then could not find)."""
    from medgmae.twod.classification_data import resolve_classification_data

    home = tmp_path / "home"
    _folder(home, n=3)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    data = resolve_classification_data("~/data", default_root=str(tmp_path / "unused"), val_fraction=0.34)
    assert data.class_names == ["a", "b"] and data.settings["dataset_dir"] == str((home / "data").resolve())
    assert not (tmp_path / "~").exists()


def test_a_mixed_folder_gives_the_same_channels_for_every_seed(tmp_path, caplog):
    """One colour image among grey ones: the model takes 3 channels whichever seed draws the split (it took the
    channels of the first training image after the seeded shuffle, 1 or 3 by the seed), and the warning says why."""
    root = _folder(tmp_path, n=4)
    _write_png(root / "a" / "2.png", np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8))
    with caplog.at_level("WARNING", logger="medgmae"):
        found = {load_classification_data(root, val_fraction=0.5, seed=seed).channels for seed in range(6)}
    assert found == {3}
    assert "converted to 3 channels (colour, as the dataset holds colour images)" in caplog.text


def test_image_folder_and_channels(tmp_path, caplog):
    root = _folder(tmp_path, rgb_first=True)
    with caplog.at_level("WARNING", logger="medgmae"):
        data = load_classification_data(root, val_fraction=0.34, seed=0)
    assert data.class_names == ["a", "b"] and data.channels == 3
    # class a is colour, class b grey: the model could tell them apart by the channels alone
    assert (f"dataset {root} mixes grey and colour images (a: 3 of 3 channels; b: 3 of 1 channel): every image is "
            "converted to 3 channels") in caplog.text  # fmt: skip
    assert len(data.train) == 4 and len(data.val) == 2 and {it["label"] for it in data.val} == {0, 1}
    rgb = root / "a" / "0.png"
    ref = np.asarray(Image.open(rgb), dtype=np.float32) / 255.0
    one = make_dataset([{"image": str(rgb), "label": 0}], 20, 1)[0]
    np.testing.assert_allclose(one["image"][0].numpy(), ref @ np.array([0.299, 0.587, 0.114]), atol=1e-6)  # ITU-R 601 luma
    assert one["label"].dtype == torch.long and int(one["label"]) == 0 and one["path"] == str(rgb)
    gray = root / "b" / "0.png"
    three = make_dataset([{"image": str(gray), "label": 1}], 20, 3)[0]["image"]
    ref_g = np.asarray(Image.open(gray), dtype=np.float32) / 255.0
    for ch in range(3):
        np.testing.assert_allclose(three[ch].numpy(), ref_g, atol=1e-6)
    small = make_dataset([{"image": str(gray), "label": 1}], 8, 1)[0]["image"]
    assert small.shape == (1, 8, 8)
    # 20 -> 10 halves: area resampling is the mean of each 2 x 2 block
    half = make_dataset([{"image": str(gray), "label": 1}], 10, 1)[0]["image"]
    np.testing.assert_allclose(half[0].numpy(), ref_g.reshape(10, 2, 10, 2).mean((1, 3)), atol=1e-6)


def test_class_folders_hold_images_in_their_sub_folders(tmp_path):
    """A class folder of patients' folders (root/<class>/<patient>/<image>, torchvision's ImageFolder layout): every
    image below the class folder is one of its class, none left out."""
    rng = np.random.default_rng(0)
    layout = {"a/0.png": 0, "a/p1/1.png": 0, "a/p1/2.png": 0, "a/p2/s/3.png": 0, "b/0.png": 1, "b/p3/1.png": 1}
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / rel)
    items, classes = scan_image_folder(tmp_path)
    assert classes == ["a", "b"]
    assert {str(Path(it["image"]).relative_to(tmp_path)): it["label"] for it in items} == layout


def test_split_folders_are_no_classes(tmp_path, caplog):
    """A dataset of train/ and test/ (or valid/) folders of class folders, without val/, is refused: read as two
    classes 'test' and 'train' (with their class folders' images below them) it would train a model to tell the
    splits apart. Beside train/ and val/, a test/ folder is left out, in a log line."""
    for split in ("train", "test"):
        _folder(tmp_path / "tt" / split)
        (tmp_path / "tt" / split / "data").rename(tmp_path / "tt" / split / "cls")  # tt/<split>/cls/<a|b>/<i>.png
    with pytest.raises(ValueError, match=r"holds split folders \(test/, train/\), not class folders"):
        load_classification_data(tmp_path / "tt")
    root = tmp_path / "tv"
    for split in ("train", "val", "test"):
        _folder(root / split)
        for c in ("a", "b"):
            (root / split / "data" / c).rename(root / split / c)
        (root / split / "data").rmdir()
    with caplog.at_level("INFO", logger="medgmae"):
        data = load_classification_data(root)
    assert data.class_names == ["a", "b"] and len(data.train) == len(data.val) == 6
    assert f"dataset {root}: test/ left out" in caplog.text


def test_data_errors_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        scan_image_folder(tmp_path / "empty")
    single = _folder(tmp_path / "s", classes=("only",))
    with pytest.raises(ValueError, match="at least 2 classes.*only"):
        load_classification_data(single)
    root = _folder(tmp_path / "e", classes=("a", "b"))
    (root / "c").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*c holds no images"):
        scan_image_folder(root)
    (root / "d").mkdir()
    with pytest.raises(ValueError, match=rf"class folders {root / 'c'}, {root / 'd'} hold no images"):
        scan_image_folder(root)  # both named at once
    root = _folder(tmp_path / "u")
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n garbage")
    (root / "a" / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"bad\.png: not a readable image") as err:
        load_classification_data(root)
    assert str(err.value).startswith(f"2 unreadable images in dataset {root}") and "text.png" in str(err.value)
    with pytest.raises(ValueError, match="not found"):
        load_classification_data(tmp_path / "missing")


def test_csv_lists_and_errors(tmp_path):
    root = _folder(tmp_path)
    good = tmp_path / "list.csv"
    with open(good, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for c in ("a", "b"):
            for i in range(3):
                w.writerow([f"data/{c}/{i}.png", f"class_{c}", "val" if i == 0 else "train"])
    items, classes = read_csv_list(good)
    assert classes == ["class_a", "class_b"] and len(items) == 6
    data = load_classification_data(good)
    assert len(data.val) == 2 and len(data.train) == 4
    cases = {
        "short.csv": ("data/a/0.png\n", "line 1: expected 'path,label'"),
        "missing.csv": ("path,label\ndata/a/0.png,a\nnope.png,b\n", r"line 3: image not found: .*nope\.png"),
        "one.csv": ("data/a/0.png,a\ndata/a/1.png,a\n", "at least 2 classes"),
        "split.csv": ("data/a/0.png,a,test\ndata/b/0.png,b\n", "split must be"),
        "blank.csv": ("path,label\n", "lists no images"),
        "several.csv": ("data/a/0.png,a,test\nnope.png,b\ndata/b/0.png\n",  # every bad row at once
                        r"line 1: split must be .*; line 2: image not found: .*nope\.png; line 3: expected 'path,label'"),
        # one image in two rows (as written and through ./): it would count twice, be in both splits or have two labels
        "twice.csv": ("path,label,split\ndata/a/0.png,a,train\ndata/b/0.png,b\n./data/a/0.png,b,val\n",
                      r"lines 2, 4: image listed more than once .*data/a/0\.png"),
        # a header of other names: read as an image ("image not found: .../file"), or its third column as the split
        "names.csv": ("file,class\ndata/a/0.png,a\ndata/b/0.png,b\n", r"line 1 reads as a header \(file,class\): a header "
                      r"must be path,label or path,label,split \(split: train or val\), or left out$"),
        "patient.csv": ("path,label,patient\ndata/a/0.png,a,p0\ndata/b/0.png,b,p1\n", r"line 1 reads as a header \(path,label,patient\)"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=msg) as info:
            read_csv_list(tmp_path / name)
        assert name in str(info.value)


def test_class_folders_that_differ_only_in_case_are_warned_about(tmp_path, caplog):
    """Class folders 'Liver' and 'liver' are two classes (a file system that tells case apart keeps both): the log
    says so, as for a CSV's labels; 'a' and 'b' alone: nothing."""
    root = _folder(tmp_path, classes=("Liver", "liver", "spleen"), n=1)
    with caplog.at_level("WARNING", logger="medgmae"):
        _, classes = scan_image_folder(root)
    if len(classes) == 3:  # a case-insensitive file system holds one folder of the two
        assert f"dataset folder {root}: class folders that differ only in case are classes of their own: 'Liver' / " \
               "'liver'; write each class one way if they are one" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medgmae"):
        scan_image_folder(_folder(tmp_path / "plain"))
    assert "differ only in case" not in caplog.text


def test_csv_labels_that_differ_only_in_case_are_warned_about(tmp_path, caplog):
    """'Disk' and 'disk' are two classes (labels are kept as written), which a typo makes: the log says so."""
    root = _folder(tmp_path)
    (tmp_path / "case.csv").write_text("path,label\ndata/a/0.png,disk\ndata/a/1.png,Disk\ndata/b/0.png,square\n")
    with caplog.at_level("WARNING", logger="medgmae"):
        _, classes = read_csv_list(tmp_path / "case.csv")
    assert classes == ["Disk", "disk", "square"]
    assert "labels that differ only in case are classes of their own: 'Disk' / 'disk'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medgmae"):
        (tmp_path / "plain.csv").write_text("path,label\ndata/a/0.png,disk\ndata/b/0.png,square\n")
        read_csv_list(tmp_path / "plain.csv")
    assert "differ only in case" not in caplog.text


def test_a_label_written_composed_and_decomposed_is_one_class(tmp_path):
    """'Läsion' typed on one machine (composed, NFC) and on macOS (decomposed, NFD: 'a' and a combining diaeresis)
    were two classes that print alike. Oracle: unicodedata's NFC of each spelling is one string."""
    import unicodedata

    root = _folder(tmp_path)
    nfc, nfd = unicodedata.normalize("NFC", "Läsion"), unicodedata.normalize("NFD", "Läsion")
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    (tmp_path / "mixed.csv").write_text(f"path,label\ndata/a/0.png,{nfc}\ndata/a/1.png,{nfd} \ndata/b/0.png,square\n",
                                        encoding="utf-8")
    items, classes = read_csv_list(tmp_path / "mixed.csv")
    assert classes == [nfc, "square"] and [it["label"] for it in items] == [0, 0, 1]
    assert root.is_dir()
    folders = tmp_path / "folders"  # class folders named both ways: one class too
    for name, value in ((nfc, 10), (nfd, 20), ("b", 30)):
        _write_png(folders / name / f"{value}.png", np.full((8, 8), value, np.uint8))
    items, classes = scan_image_folder(folders)
    assert classes == [nfc, "b"] or classes == ["b", nfc], classes
    by_value = {int(Path(it["image"]).stem): classes[it["label"]] for it in items}
    assert by_value == {10: nfc, 20: nfc, 30: "b"}


def test_phantom_slice_task_is_ordered_by_body_region(tmp_path):
    out = write_phantom_slice_task(tmp_path / "task", num_cases=3, num_val_cases=1, image_size=16, volume_shape=(32, 32, 32))
    data = load_classification_data(out)
    assert {"liver", "lungs"} <= set(data.class_names) and data.channels == 1
    assert all("case2_" in it["image"] for it in data.val) and not any("case2_" in it["image"] for it in data.train)
    # anatomy: the lung bases lie above the liver (slice index z grows towards superior)
    z = {c: np.mean([int(it["image"].rsplit("_z", 1)[1][:3]) for it in data.train if it["label"] == i])
         for i, c in enumerate(data.class_names)}  # fmt: skip
    assert z["lungs"] > z["liver"]
    assert Image.open(data.train[0]["image"]).size == (16, 16)
    mtime = (out / "task.json").stat().st_mtime_ns
    write_phantom_slice_task(tmp_path / "task", num_cases=3, num_val_cases=1, image_size=16, volume_shape=(32, 32, 32))
    assert (out / "task.json").stat().st_mtime_ns == mtime  # same parameters: reused, not rewritten


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 1, 0, 1, 1, 0])
    m = classification_metrics(labels, preds, ["x", "y", "z", "w"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"x": pytest.approx(2 / 3), "y": 1.0, "z": 0.0, "w": None}
    assert m["confusion_matrix"][0] == [2, 1, 0, 0] and m["confusion_matrix"][2] == [1, 0, 0, 0]


def test_ellipse_points_are_two_sigma():
    mean, scales, angle = (0.2, -0.3), (0.1, 0.05), 0.7
    pts = np.array(ellipse_points(mean, scales, angle, (64, 64)))
    p = pts / 32.0 - 1.0 - np.array(mean)  # back to the [-1, 1] frame, centred
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    prec = rot @ np.diag(1 / np.square(scales)) @ rot.T
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", p, prec, p), 4.0, rtol=1e-9)


@pytest.mark.gpu
@pytest.mark.usefixtures("gsplat_cuda")
def test_joint_phase_on_cuda_with_gsplat_and_amp():
    torch.manual_seed(0)
    model = GViT(3, 32, 3, num_gaussians=16, patch_size=4).cuda()
    perturb_head(model.encoder)
    x = torch.rand(4, 3, 32, 32, device="cuda")
    y = torch.tensor([0, 1, 2, 0], device="cuda")
    # eq. (1) through the gsplat renderer: the one-pass guided gradient equals the separate gradients
    g0 = sample_gaussian_tokens(4, 16, 3, generator=torch.Generator().manual_seed(0), device="cuda")
    rec = ReconstructionLoss()

    def losses():
        g = model.encoder(x, g0=g0)
        return g, rec(model.encoder.decode(g).render((32, 32), backend="gsplat"), x), F.cross_entropy(model.classifier(g), y)

    g, l_rec, l_cls = losses()
    ref = torch.autograd.grad(l_rec, g, retain_graph=True)[0] + 0.1 * torch.autograd.grad(l_cls, g)[0]
    g, l_rec, l_cls = losses()
    guided = guided_backward(l_rec, l_cls, g, model.classifier.parameters(), 0.1)
    torch.testing.assert_close(guided, ref, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [{"image": x.cpu(), "label": y.cpu()}]
    trainer = build_phase_trainer("joint", model, loader, 1, "cuda", amp=True, render_backend="gsplat")
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    assert not torch.equal(model.state_dict()["encoder.head.2.weight"], before["encoder.head.2.weight"])
    assert not torch.equal(model.state_dict()["classifier.head.weight"], before["classifier.head.weight"])


def test_a_run_without_validation_images_warns_that_it_is_scored_on_training_images(tmp_path, caplog):
    """With val_fraction 0 the closing evaluation has only the training images: metrics.json says so (split
    "train") and the log warns that this accuracy overstates the model's on new images."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.0)
    assert not data.val
    workflow = gvit_workflow(data, tmp_path / "run", resume=False)
    workflow.epochs = {"warmup": 1, "classifier": 1, "joint": 0}
    with caplog.at_level("WARNING", logger="medgmae.gvit"):
        metrics = workflow.run()
    assert metrics["split"] == "train" and metrics["num_images"] == len(data.train)
    assert "no validation images" in caplog.text and "evaluated on its training images" in caplog.text
