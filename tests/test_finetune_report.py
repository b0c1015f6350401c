"""What fine-tuning reports: the validation picture (``segmentation.png``) in the patient's frame, the colour table
beside segmentations, Dice tables and files, and the closing summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medgmae.preprocessing import PreprocessingSpec

from data_helpers import nifti_file
from finetune_helpers import REPO, bundle_in_this_process


class _Engine:
    def __init__(self, output):
        self.state = type("State", (), {"output": output, "epoch": 3})()


def _ras_index_of(affine: np.ndarray, shape: tuple, world: np.ndarray) -> np.ndarray:
    """Where the RAS-ordered copy of an array holds the voxel nearest ``world`` (mm): the index along each RAS
    axis counts voxels from the lowest coordinate, worked out from the world positions of all voxels."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    points = grid @ affine[:3, :3].T + affine[:3, 3]
    nearest = points[np.argmin(np.linalg.norm(points - world, axis=1))]
    return np.array([np.unique(np.round(points[:, k], 6)).searchsorted(np.round(nearest[k], 6)) for k in range(3)])


def test_segmentation_picture_is_drawn_in_the_patients_frame_with_its_directions(tmp_path):
    """A validation case in an LPS-like, permuted, anisotropic array order (a spec orientation other than RAS) was
    drawn as if it were RAS: left and right, front and back swapped under "sagittal / coronal / axial" titles. The
    picture reorients it by its affine (a structure at the patient's right-anterior-superior corner is at the high
    end of every RAS axis of the drawn arrays) and marks the edges with the directions; an array without an affine
    is drawn as it is, without letters."""
    from medgmae.engine.figures import LETTER_COLOUR
    from medgmae.finetune.report import SegmentationPicture

    shape = (20, 24, 16)
    affine = np.array([[0.0, -1.5, 0.0, 40.0], [-0.8, 0.0, 0.0, 30.0], [0.0, 0.0, 2.5, -20.0], [0, 0, 0, 1]])
    label = np.zeros(shape, np.int64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    corner = world.reshape(-1, 3).max(0)  # the right-anterior-superior corner of the scan
    label[np.linalg.norm(world - corner, axis=-1) < 6.0] = 1
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    for with_affine in (True, False):
        picture = SegmentationPicture(tmp_path / str(with_affine))
        (tmp_path / str(with_affine)).mkdir()
        img = torch.from_numpy(image)[None]
        item = {"image": MetaTensor(img, affine=torch.from_numpy(affine)) if with_affine else img,
                "pred": torch.from_numpy(label)[None], "label": torch.from_numpy(label)[None]}  # fmt: skip
        engine = _Engine([item])
        picture._capture(engine)
        picture(engine)
        drawn = picture._case["label"]
        blob = np.argwhere(drawn > 0).mean(0)
        png = np.asarray(Image.open(tmp_path / str(with_affine) / "segmentation.png").convert("RGB"))
        yellow = np.all(png == LETTER_COLOUR, axis=-1).sum()
        if with_affine:
            expected = _ras_index_of(affine, shape, corner)
            assert drawn.shape == (shape[1], shape[0], shape[2])
            assert np.all(np.abs(blob - expected) < 3), (blob, expected)  # the high end of every RAS axis
            assert yellow > 50  # R/L, A/P, S/I at each of six tiles' edges
        else:
            assert drawn.shape == shape and yellow == 0


def test_the_segmentation_picture_is_drawn_every_picture_interval_epochs_and_at_the_last(tmp_path):
    """It was drawn at every validation (about 200 kB of TensorBoard events each at CT size): now at the
    validations of epochs 5, 10 (``interval`` 5) and 12 (the last) of 12, each to ``segmentation.png`` and to
    TensorBoard at its epoch's step; a bad interval is refused with the bundle key's name."""
    from medgmae.finetune.report import SegmentationPicture

    shape = (12, 10, 8)
    label = np.zeros(shape, np.int64)
    label[4:8, 3:7, 2:6] = 1
    item = {"image": torch.rand(1, *shape), "pred": torch.from_numpy(label)[None], "label": torch.from_numpy(label)[None]}
    steps = []
    writer = SimpleNamespace(add_image=lambda tag, img, global_step, dataformats: steps.append((tag, global_step)),
                             flush=lambda: None)  # fmt: skip
    picture = SegmentationPicture(tmp_path, writer, global_step=lambda epoch: 100 * epoch, interval=5, last_epoch=12)
    drawn = []
    for epoch in range(1, 13):
        engine = _Engine([item])
        engine.state.epoch = epoch
        picture._reset(engine)
        picture._capture(engine)
        picture(engine)
        if (tmp_path / "segmentation.png").exists():
            drawn.append(epoch)
            (tmp_path / "segmentation.png").unlink()
    assert drawn == [5, 10, 12] and steps == [("val/segmentation", 500), ("val/segmentation", 1000), ("val/segmentation", 1200)]
    # validations every 3 epochs of 20, pictures every 10: no validation falls on 10 or 20, none was drawn; now the
    # first validation after 10 (12) and the last (18), as an independent count of the validated epochs says
    sparse = SegmentationPicture(tmp_path, interval=10, last_epoch=20, val_interval=3)
    validated = list(range(3, 21, 3))
    expected = [next(e for e in validated if e >= m) for m in (10, 20) if any(e >= m for e in validated)] + [validated[-1]]
    assert [e for e in validated if sparse.due(e)] == sorted(set(expected)) == [12, 18]
    quarterly = SegmentationPicture(tmp_path, interval=10, last_epoch=40, val_interval=4)
    assert [e for e in range(4, 41, 4) if quarterly.due(e)] == [12, 20, 32, 40]
    every = SegmentationPicture(tmp_path)  # the handler's default: every validation
    assert all(every.due(epoch) for epoch in range(1, 8))
    for bad in (0, -3, 2.5, "ten"):
        with pytest.raises(ValueError, match="picture_interval"):
            SegmentationPicture(tmp_path, interval=bad)


def test_the_picture_and_the_slicer_colour_table_colour_a_class_alike(tmp_path):
    """A structure has one colour in ``segmentation.png`` and ``labels.ctbl``: class 1 is the first of the 20
    distinct colours (230, 25, 75), class 21 wraps to it, and a full-strength overlay shows the table's colours."""
    from medgmae.finetune.color_table import write_color_table
    from medgmae.finetune.report import overlay

    names = ["background"] + [f"organ {c}" for c in range(1, 22)]
    write_color_table(tmp_path / "labels.ctbl", names)
    rows = [line.split() for line in (tmp_path / "labels.ctbl").read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    table = {int(r[0]): tuple(int(v) for v in r[-4:-1]) for r in rows}
    assert table[0] == (0, 0, 0) and table[1] == (230, 25, 75) and table[21] == table[1] and table[20] == (128, 128, 128)
    labels = np.arange(22).reshape(2, 11)
    shown = overlay(np.full(labels.shape, 0.5), labels, alpha=1.0)
    assert all(tuple(shown[i, j]) == table[int(labels[i, j])] for i in range(2) for j in range(11) if labels[i, j])
    assert tuple(shown[0, 0]) == (128, 128, 128)  # background stays grey (0.5 of 255, rounded)


def test_segmentations_get_a_slicer_colour_table_of_the_class_names(tmp_path):
    """``labels.ctbl`` beside the segmentations: 3D Slicer's colour table (``index name R G B A``, spaces in names as
    ``_``, background transparent), written once; every label value of the NIfTI written is an index of it."""
    from monai.data import MetaTensor

    from medgmae.finetune import SaveSegmentationd

    names = ["background", "liver", "left kidney"]
    labels = np.zeros((6, 5, 4), np.float32)
    labels[1:3, 1:3, 1:3], labels[4, 4, 3] = 1, 2
    save = SaveSegmentationd(output_dir=tmp_path, label_names=names)
    for case in ("a", "b"):
        save({"pred": MetaTensor(torch.from_numpy(labels)[None], affine=torch.eye(4)), "name": case})
    rows = [line.split() for line in (tmp_path / "labels.ctbl").read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert {int(r[0]): r[1] for r in rows} == {0: "background", 1: "liver", 2: "left_kidney"}
    assert [int(v) for v in rows[0][2:]] == [0, 0, 0, 0] and all(int(r[5]) == 255 for r in rows[1:])
    assert len({tuple(r[2:5]) for r in rows}) == 3  # one colour per class
    assert (tmp_path / "labels.ctbl").read_text(encoding="utf-8").startswith("# Color table file")
    written = np.unique(np.asarray(nib.load(tmp_path / "b_seg.nii.gz").dataobj)).tolist()
    assert written == [0, 1, 2] and set(written) <= {int(r[0]) for r in rows}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_seg.nii.gz", "b_seg.nii.gz", "labels.ctbl"]


def test_segmentation_report_analytic_dice(tmp_path, caplog):
    from monai.data import MetaTensor

    from medgmae.finetune.evaluate import SegmentationReport, check_num_classes

    def onehot(labels):
        return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 3).permute(3, 0, 1, 2).float()

    ref, pred = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1  # overlap 3x4x4 of two 64-voxel cubes: Dice 2*48/128
    pred[8:, 8:, 8:] = 2  # class 2 is absent from the reference: no Dice (NaN), not 0
    image = MetaTensor(torch.zeros(1, 10, 10, 10), meta={"filename_or_obj": "/data/case_0042.nii.gz"})
    report = SegmentationReport(tmp_path, ["background", "liver", "spleen"], extra={"checkpoint": "best_model.pt"})

    class State:  # what a SupervisedEvaluator hands its handlers after decollation
        output = [{"image": image, "pred": onehot(pred), "label": onehot(ref)}]

    class Engine:
        state = State()

    report._collect(Engine())
    with caplog.at_level("INFO"):
        metrics = report.write()
    assert f"mean Dice 0.75000 over 1 case -> {tmp_path}" in caplog.text  # 5 decimals, as each case's line
    assert metrics["mean_dice"] == pytest.approx(0.75) and metrics["dice_per_class"] == {"liver": pytest.approx(0.75), "spleen": None}
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["checkpoint"] == "best_model.pt"
    with open(tmp_path / "per_case_dice.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"case": "case_0042", "image": "/data/case_0042.nii.gz", "mean_dice": "0.750000", "liver": "0.750000",
                     "spleen": "", "predicted_but_absent": "spleen"}]  # fmt: skip
    # a second case whose reference is all background adds nothing to the mean: the log and metrics.json say so
    State.output = [{"image": image, "pred": onehot(pred), "label": onehot(np.zeros((10, 10, 10)))}]
    report._collect(Engine())
    with caplog.at_level("INFO"):
        metrics = report.write()
    assert f"mean Dice 0.75000 over 1 of 2 cases (1 with no labelled class in its reference, not counted) -> " in caplog.text
    assert metrics["num_cases"] == 2 and metrics["num_cases_scored"] == 1 and metrics["mean_dice"] == pytest.approx(0.75)
    # a third case lacking spleen in reference and prediction alike is no false positive
    State.output = [{"image": image, "pred": onehot(ref), "label": onehot(ref)}]
    report._collect(Engine())
    with caplog.at_level("INFO"):
        metrics = report.write()
    assert metrics["absent_class_predictions"] == {"liver": {"cases_absent": 1, "predicted_in": 1},
                                                   "spleen": {"cases_absent": 3, "predicted_in": 2}}  # fmt: skip
    assert ("false positives, in no Dice): liver in 1 of the 1 case lacking it, spleen in 2 of the 3 cases lacking "
            "it") in caplog.text
    with open(tmp_path / "per_case_dice.csv") as f:
        assert [r["predicted_but_absent"] for r in csv.DictReader(f)] == ["spleen", "liver;spleen", ""]
    with pytest.raises(ValueError, match="predicts 2 classes but the datalist has 3"):
        check_num_classes(SimpleNamespace(out_channels=2), 3)


def test_an_evaluation_ends_with_the_per_class_dice_table_training_prints(tmp_path, caplog):
    """``show_table`` (evaluate.json): after the mean Dice line the per-class table, the one function training's
    closing summary uses; the validation of every epoch prints none."""
    from monai.data import MetaTensor

    from medgmae.finetune.evaluate import SegmentationReport
    from medgmae.finetune.report import per_class_dice_text

    def onehot(labels):
        return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 3).permute(3, 0, 1, 2).float()

    ref, pred = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    ref[2:6, 2:6, 2:6], ref[0:2, 0:2, 0:2] = 1, 2
    pred[2:6, 2:6, 2:4] = 1  # half the 64-voxel liver cube: Dice 2*32/96
    pred[0:2, 0:2, 0:2] = 2  # spleen exact: Dice 1
    image = MetaTensor(torch.zeros(1, 10, 10, 10), meta={"filename_or_obj": "/data/case_0042.nii.gz"})
    item = {"image": image, "pred": onehot(pred), "label": onehot(ref)}
    engine = SimpleNamespace(state=SimpleNamespace(output=[item]))
    for show, folder in ((True, "eval"), (False, "validation")):
        report = SegmentationReport(tmp_path / folder, ["background", "liver", "spleen"], show_table=show)
        report._collect(engine)
        caplog.clear()
        with caplog.at_level("INFO"):
            report.write()
        liver, mean = 2 * 32 / 96, (2 * 32 / 96 + 1.0) / 2
        expected = ["per-class Dice of the evaluation (1 case):", "| class | Dice |", "| --- | --- |",
                    f"| liver | {liver:.4f} |", "| spleen | 1.0000 |",
                    f"| **mean over cases** (each case's mean over the classes in its reference) | {mean:.4f} |"]  # fmt: skip
        assert ("\n".join(expected) in caplog.text) is show
    assert caplog.text.rstrip().endswith(str(tmp_path / "validation"))  # the validation's log ends with its mean line
    summary = per_class_dice_text({"dice_per_class": {"liver": liver}, "mean_dice": liver, "num_cases": 2}, "x")
    assert summary.splitlines()[0] == "per-class Dice of x (2 cases):"
    with pytest.raises(ValueError, match="show_table must be true or false"):
        SegmentationReport(tmp_path, ["background", "liver"], show_table="yes")


def test_cases_sharing_a_file_name_get_unique_names_in_the_csv(tmp_path):
    """Two folders' ct.nii.gz were both 'ct' in the CSV's case column: named as their segmentations are."""
    import csv

    from monai.data import MetaTensor

    from medgmae.finetune.evaluate import SegmentationReport

    onehot = torch.nn.functional.one_hot(torch.zeros(4, 4, 4).long(), 2).permute(3, 0, 1, 2).float()
    report = SegmentationReport(tmp_path, ["background", "liver"])
    for folder in ("siteA", "siteB", "siteC"):
        name = "ct.nii.gz" if folder != "siteC" else "other.nii.gz"
        image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": f"/data/{folder}/{name}"})

        class Engine:
            state = type("S", (), {"output": [{"image": image, "pred": onehot, "label": onehot}]})()

        report._collect(Engine())
    report.write()
    with open(tmp_path / "per_case_dice.csv") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ["siteA_ct", "siteB_ct", "other"]


def test_segmentation_report_mean_is_monais_mean_dice(tmp_path):
    """The report's mean Dice is MONAI's (the validation key metric) to the last bit: the mean over cases of each
    case's mean over its classes present in the reference, in float32; not the mean of all case/class values."""
    from monai.metrics import DiceMetric

    from medgmae.finetune.evaluate import SegmentationReport

    rng = np.random.default_rng(7)
    onehot = lambda a: torch.nn.functional.one_hot(torch.as_tensor(a).long(), 4).permute(3, 0, 1, 2).float()  # noqa: E731
    refs = [rng.integers(0, 4, (9, 8, 7)) for _ in range(3)]
    refs[0][refs[0] == 3] = 0  # class 3 absent from one reference: NaN there, ignored
    preds = [np.where(rng.random(r.shape) < 0.6, r, rng.integers(0, 4, r.shape)) for r in refs]
    items = [{"pred": onehot(p), "label": onehot(r)} for p, r in zip(preds, refs)]
    report = SegmentationReport(tmp_path, ["background", "a", "b", "c"])
    report._collect(SimpleNamespace(state=SimpleNamespace(output=items)))
    monai_dice = DiceMetric(include_background=False, reduction="mean")  # what MeanDice computes
    for item in items:
        monai_dice(item["pred"][None], item["label"][None])
    assert report.write()["mean_dice"] == monai_dice.aggregate().item()


def test_summary_counts_one_validation_case_in_the_singular(tmp_path):
    from medgmae.finetune.report import FinetuneSummary

    report = SimpleNamespace(metrics={"mean_dice": 0.5, "dice_per_class": {"liver": 0.5}, "num_cases": 1},
                             output_dir=tmp_path / "validation")
    saver = SimpleNamespace(best=0.5, best_epoch=1, path=tmp_path / "best_model.pt")
    text, _ = FinetuneSummary(tmp_path, report, saver).text(1)
    assert "(1 case):" in text
    assert "  segmentation   none: no validation has drawn one" in text.splitlines()  # no segmentation.png named
    (tmp_path / "segmentation.png").write_bytes(b"drawn")
    assert f"  segmentation   {tmp_path / 'segmentation.png'}" in FinetuneSummary(tmp_path, report, saver).text(1)[0]
    report.metrics["num_cases"] = 2
    assert "(2 cases):" in FinetuneSummary(tmp_path, report, saver).text(1)[0]


def test_summary_names_the_export_command_of_the_run(tmp_path):
    import shlex

    from monai.bundle import ConfigParser

    from medgmae.finetune.report import FinetuneSummary

    report = SimpleNamespace(metrics={"mean_dice": 0.5, "dice_per_class": {"liver": 0.5}, "num_cases": 1},
                             output_dir=tmp_path / "validation")
    saver = SimpleNamespace(best=0.5, best_epoch=1, path=tmp_path / "best_model.pt")
    text, _ = FinetuneSummary(tmp_path, report, saver).text(1)
    line = next(line for line in text.splitlines() if line.strip().startswith("export:"))
    args = shlex.split(line.split("export:", 1)[1])
    assert args[:5] == ["python", "-m", "monai.bundle", "run", "exporting"]
    config = REPO / args[args.index("--config_file") + 1]
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["output_dir"] = args[args.index("--output_dir") + 1]
    # the command exports this run's best_model.pt to model.ts beside it
    assert Path(parser.get_parsed_content("checkpoint")) == tmp_path / "best_model.pt"
    assert Path(parser.get_parsed_content("export_path")) == tmp_path / "model.ts"
    assert "exporting" in parser.config


def test_a_label_stored_in_a_rotated_axis_order_is_brought_to_its_images_voxels(tmp_path):
    """Native-space Dice's label (:class:`NativeLabeld`) of a label file stored with its axes in a 3-cycle
    (file axes = image axes j, k, i; not its own inverse, unlike a reversal) and one of them flipped, with the affine
    saying so: re-indexed, it is the image-ordered array voxel for voxel, on the image's affine."""
    from medgmae.finetune.native_space import NativeLabeld

    lab = np.zeros((30, 28, 14), np.uint8)
    lab[4:20, 5:22, 2:9], lab[18:28, 3:12, 6:13], lab[8:14, 15:26, 9:13] = 1, 2, 3
    affine = np.array([[-1.2, 0, 0, 40], [0, 1.2, 0, -20], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    stored = np.flip(lab.transpose(1, 2, 0), axis=0)  # file voxel (p, q, r) is image voxel (r, 27 - p, q)
    to_image = np.array([[0, 0, 1, 0], [-1, 0, 0, 27], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    p, q, r = 5, 9, 17
    assert stored[p, q, r] == lab[r, 27 - p, q] and stored.shape == (28, 14, 30)
    label = nifti_file(tmp_path / "ct_label.nii.gz", np.ascontiguousarray(stored), affine @ to_image)
    pred = MetaTensor(torch.zeros(4, *lab.shape), affine=torch.from_numpy(affine), meta={"filename_or_obj": "ct.nii.gz"})
    d = NativeLabeld("label")({"pred": pred, "label": MetaTensor(torch.zeros(1, 1, 1, 1), meta={"filename_or_obj": label})})
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    np.testing.assert_allclose(d["label"].affine.numpy(), affine, atol=1e-6)
    np.testing.assert_allclose(nib.load(label).affine, affine @ to_image, atol=1e-6)


def test_native_space_dice_is_dice_in_the_label_files_voxels(tmp_path):
    """``evaluate.json --native_space true`` scores the prediction brought back to the image's grid (as the
    segmentation writes it) against the label file's own voxels: per class it equals a NumPy Dice of the segmentation
    file against the label file, for an anisotropic, flipped image whose label is stored in another axis order (which
    is re-indexed, not interpolated); the default Dice, on the pre-processed grid, is a different number."""
    from medgmae.checkpoint import make_checkpoint as mk
    from medgmae.finetune import build_unetr
    from medgmae.finetune.best_model import FINETUNED_KIND

    out = tmp_path / "run"
    out.mkdir()
    torch.manual_seed(3)  # random weights: argmax regions of several classes, so that Dice is not trivially 0 or 1
    enc = {"patch_size": 12, "hidden_size": 48, "num_layers": 1, "num_heads": 4, "mlp_ratio": 2.0}
    net = build_unetr(4, 24, encoder=enc, feature_size=4)
    spec = PreprocessingSpec(spacing=2.0, input_size=24, patch_size=12)
    torch.save(mk(FINETUNED_KIND, net.config(), net.state_dict(), spec, extra={"epoch": 1}), out / "best_model.pt")
    rng = np.random.default_rng(0)
    img = rng.normal(0, 30, (30, 28, 14)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[4:20, 5:22, 2:9], lab[18:28, 3:12, 6:13], lab[8:14, 15:26, 9:13] = 1, 2, 3
    img += 60.0 * lab
    affine = np.array([[-1.2, 0, 0, 40], [0, 1.2, 0, -20], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    image = nifti_file(tmp_path / "data" / "ct.nii.gz", img, affine)
    # the label stored with its axes reversed: voxel (k, j, i) of the file is voxel (i, j, k) of the image
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    label = nifti_file(tmp_path / "data" / "ct_label.nii.gz", lab.transpose(2, 1, 0), affine @ swap)
    datalist = tmp_path / "data" / "dataset.json"
    names = {"0": "background", "1": "a", "2": "b", "3": "c"}
    datalist.write_text(json.dumps({"labels": names, "training": [{"image": image, "label": label}],
                                    "validation": [{"image": image, "label": label}]}))  # fmt: skip
    common = {"output_dir": str(out), "device": "cpu", "datalist": str(datalist)}  # runs of the configs, not of the command line
    bundle_in_this_process("evaluating", "evaluate.json", **common, native_space=True)
    native = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    bundle_in_this_process("inferring", "inference.json", output_dir=str(out), device="cpu", input_files=[image])
    seg = np.asarray(nib.load(out / "segmentations" / "ct_seg.nii.gz").dataobj)
    expected = {}
    for c, name in ((1, "a"), (2, "b"), (3, "c")):
        p, r = seg == c, lab == c
        expected[name] = 2.0 * (p & r).sum() / (p.sum() + r.sum())
    assert native["dice_space"] == "label files voxels"
    assert native["dice_per_class"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 < max(expected.values()) < 1.0, expected  # a non-trivial prediction
    bundle_in_this_process("evaluating", "evaluate.json", **common)
    grid = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert grid["dice_space"] == "pre-processed grid" and grid["dice_per_class"] != pytest.approx(expected, abs=1e-6)
    # metrics.json says which model and which pre-processing gave it: the recorded spec, or an override named
    assert grid["model"]["epoch"] == 1 and grid["model"]["size_bytes"] == (out / "best_model.pt").stat().st_size
    assert grid["preprocessing"]["spacing"] == [2.0, 2.0, 2.0] and grid["preprocessing_overrides"] == []
    bundle_in_this_process("evaluating", "evaluate.json", **common, pixdim=3.0, eval_dir=str(out / "eval3"))
    coarse = json.loads((out / "eval3" / "metrics.json").read_text(encoding="utf-8"))
    assert coarse["preprocessing"]["spacing"] == [3.0, 3.0, 3.0] and coarse["preprocessing_overrides"] == ["pixdim"]


def test_a_datalist_naming_the_classes_otherwise_than_the_model_is_warned_about(caplog):
    """Dice is scored by class number: a model of BTCV's label order scored on AMOS's first 14 classes reports its
    portal-vein Dice as the pancreas's. The names the model records are compared with the datalist's: a difference
    is warned about, naming each class; spelling (case, ``_``) and the generic ``class_<i>`` are no difference."""
    from medgmae.finetune.evaluate import check_num_classes

    btcv = ["background", "spleen", "right kidney", "portal and splenic veins"]
    amos = ["background", "Spleen", "right_kidney", "pancreas"]
    with caplog.at_level("WARNING", logger="medgmae"):
        said = check_num_classes(SimpleNamespace(out_channels=4, class_names=btcv), 4, "best_model.pt", amos)
    assert said == ["3: 'pancreas' in the datalist, 'portal and splenic veins' for the model"]
    assert ("the datalist names classes otherwise than best_model.pt (class 3: 'pancreas' in the datalist, 'portal "
            "and splenic veins' for the model)") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medgmae"):
        generic = ["background", "class_1", "class_2", "class_3"]
        assert check_num_classes(SimpleNamespace(out_channels=4, class_names=generic), 4, "m", amos) == []
        assert check_num_classes(SimpleNamespace(out_channels=4, class_names=btcv), 4, "m", generic) == []
        assert check_num_classes(SimpleNamespace(out_channels=4), 4, "m", amos) == []
    assert not caplog.records
