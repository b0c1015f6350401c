"""GViT inference: unlabelled images classified by a trained model into predictions.csv (configs/inference.json)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from gvit_helpers import run_gvit_bundle, gvit_bundle_command, shapes_dataset, gvit_workflow

from medgmae.twod.classification_data import load_classification_data, make_dataset
from medgmae.twod.gvit import GViT


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small GViT trained on discs and bars (warm-up and classifier phases), and its data."""
    root = tmp_path_factory.mktemp("gvit_infer")
    data = load_classification_data(shapes_dataset(root / "shapes"), val_fraction=0.25)
    flow = gvit_workflow(data, root / "run", resume=False)
    flow.epochs = {"warmup": 1, "classifier": 1, "joint": 0}
    flow.run()
    return root / "run", data


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_inference_matches_the_models_own_probabilities(trained, tmp_path, capfd):
    """Images given by name and by folder: one row each, the class and the probabilities the model gives the same
    images read by the evaluation's data pipeline (softmax of its logits)."""
    run, data = trained
    listed = [data.val[0]["image"], data.val[1]["image"]]
    folder = shapes_dataset(tmp_path / "new") / "bar"
    run_gvit_bundle("inference.json", run_id="inferring", output_dir=str(run), images=listed, image_dir=str(folder),
            inference_dir=str(tmp_path / "out"), device="cpu")  # fmt: skip
    log = "".join(capfd.readouterr())
    rows = _rows(tmp_path / "out" / "predictions.csv")
    names = data.class_names
    assert rows[0] == ["image", "slice", "predicted_class", *(f"probability_{n}" for n in names), "window"]
    files = listed + sorted(str(p) for p in folder.glob("*.png"))
    assert [r[0] for r in rows[1:]] == files
    model = GViT.from_checkpoint(run / "model.pt").eval()
    loader = DataLoader(make_dataset([{"image": f, "label": 0} for f in files], 16, 1), batch_size=len(files))
    with torch.no_grad():
        expected = torch.softmax(model(next(iter(loader))["image"]), -1)
    got = torch.tensor([[float(v) for v in r[3:-1]] for r in rows[1:]])
    assert torch.allclose(got, expected, atol=1e-5)
    assert [r[2] for r in rows[1:]] == [names[int(i)] for i in expected.argmax(-1)]
    assert [[r[1], r[-1]] for r in rows[1:]] == [["", ""]] * len(files)  # pictures: no slice to name, not windowed
    assert f" - {files[0]}: {rows[1][2]} (probability {float(expected[0].max()):.3f})\n" in log  # each logged
    assert not list((tmp_path / "out").glob(".tmp-*"))  # written aside and renamed


def _multi_frame_dicom(path, frames: np.ndarray) -> None:
    """A multi-frame secondary-capture DICOM of ``frames`` ``(F, H, W)`` uint16, without a window."""
    from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage

    from tests.data_helpers import pydicom_dataset

    ds = pydicom_dataset(MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
    ds.Rows, ds.Columns, ds.NumberOfFrames = frames.shape[1], frames.shape[2], frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_inference_names_the_slice_of_a_volume_and_the_frame_of_a_cine(trained, tmp_path, capfd):
    """A 3D NIfTI volume is classified by its middle axial slice and a multi-frame DICOM by its middle frame, as
    training reads them; the CSV's ``slice`` column and the log say which (numbered as ``medgmae-2d --slice``)."""
    run, data = trained
    rng = np.random.default_rng(1)
    volume = rng.uniform(0, 100, (16, 16, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(volume[:, :, 2:3], np.eye(4)), str(tmp_path / "slice2.nii.gz"))  # the same slice alone
    _multi_frame_dicom(tmp_path / "cine.dcm", rng.integers(0, 4000, (3, 16, 16)))
    images = [str(tmp_path / n) for n in ("vol.nii.gz", "cine.dcm", "slice2.nii.gz")] + [data.val[0]["image"]]
    run_gvit_bundle("inference.json", run_id="inferring", output_dir=str(run), images=images,
            inference_dir=str(tmp_path / "out"), device="cpu")  # fmt: skip
    log = "".join(capfd.readouterr())
    rows = _rows(tmp_path / "out" / "predictions.csv")[1:]
    assert [r[1] for r in rows] == ["axial slice 2 of 5 (numbered from 0)", "frame 1 of 3 (numbered from 0)", "", ""]
    assert rows[0][2:] == rows[2][2:]  # the volume is classified as its middle slice alone is
    assert f" - {images[0]}, axial slice 2 of 5 (numbered from 0): {rows[0][2]} (probability" in log
    assert f" - {images[1]}, frame 1 of 3 (numbered from 0): {rows[1][2]} (probability" in log
    assert ("4 images classified by" in log and "; 1 of them a 3D NIfTI volume, contributing its middle axial "
            "slice; 1 of them a multi-frame DICOM file, contributing its middle frame\n" in log)


def _refused(**settings) -> BaseException:
    """The error under MONAI's wrapping of a failed inference run."""
    with pytest.raises(RuntimeError) as e:
        run_gvit_bundle("inference.json", run_id="inferring", device="cpu", **settings)
    return e.value.__cause__


def test_inference_errors_name_the_problem(trained, tmp_path):
    run, data = trained
    image = data.val[0]["image"]
    out = str(tmp_path / "out")
    from medgmae.bundle_errors import InputRefusal

    # a missing model and a phase's checkpoint are bad settings (InputRefusal: the message alone, no traceback)
    missing = _refused(output_dir=str(tmp_path / "none"), images=[image], inference_dir=out)
    assert isinstance(missing, InputRefusal) and f"--model_path: {tmp_path / 'none' / 'model.pt'}: no such file" in str(missing)
    phase = _refused(model_path=str(run / "checkpoints" / "warmup" / "checkpoint_final.pt"), images=[image], inference_dir=out)
    assert isinstance(phase, InputRefusal) and "checkpoint_final.pt: a GViT training checkpoint" in str(phase)
    assert "no images to classify" in str(_refused(output_dir=str(run), inference_dir=out))
    (tmp_path / "empty").mkdir()
    empty = _refused(output_dir=str(run), image_dir=str(tmp_path / "empty"), inference_dir=out)
    assert f"--image_dir {tmp_path / 'empty'} holds no images" in str(empty)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    unreadable = str(_refused(output_dir=str(run), images=[image, str(broken)], inference_dir=out))
    assert unreadable.startswith(f"1 image cannot be read, nothing was written:\n  {broken}: "), unreadable
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_inference_command_line_fails_with_the_reason(trained, tmp_path):
    run, _ = trained
    proc = gvit_bundle_command("inference.json", "--output_dir", str(run), "--inference_dir", str(tmp_path / "out"),
                       "--device", "cpu", "--batch_size", "0", run_id="inferring")  # fmt: skip
    assert proc.returncode != 0 and "--batch_size: expected a positive integer, got" in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()
    for config, run_id in (("inference.json", "inferring"), ("evaluate.json", "evaluating")):  # ended in tracebacks
        proc = gvit_bundle_command(config, "--output_dir", str(tmp_path / "none"), "--device", "cpu", run_id=run_id)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f"--model_path: {tmp_path / 'none' / 'model.pt'}: no such file (the model.pt of a GViT training run)" in proc.stderr


def test_images_are_listed_as_given_without_hidden_files(tmp_path, monkeypatch):
    """The CSV names each image as the user gave it (a relative path stays relative, a link is a name of its own, not
    resolved); macOS's ``._x.png`` files in a folder are no images (one made the whole run fail as unreadable)."""
    from medgmae.twod.gvit_infer import inference_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes(b"png")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "link.png").symlink_to(folder / "a.png")
    monkeypatch.chdir(tmp_path)
    listed = inference_images(["link.png"], "imgs")
    assert [str(p) for p in listed] == ["link.png", "imgs/a.png", "imgs/b.png"]


def test_a_file_named_by_a_number_is_an_image_path(tmp_path, monkeypatch):
    """DICOM exports name files 1, 2, ...; the command line reads ``--images 1`` as the number 1 and ``--images
    "[1, 2]"`` as numbers: each is the file of that name (``--images 1`` stopped on a TypeError)."""
    from medgmae.twod.gvit_infer import inference_images

    for name in ("1", "2"):
        (tmp_path / name).write_bytes(b"dicom")
    monkeypatch.chdir(tmp_path)
    assert [str(p) for p in inference_images(1, None)] == ["1"]
    assert [str(p) for p in inference_images([1, 2], None)] == ["1", "2"]


@pytest.mark.parametrize("images, image_dir", [(["imgs/b.png", "a.png", "./imgs/b.png"], None), (["imgs/b.png"], "imgs")])
def test_an_image_given_twice_is_refused_naming_it(tmp_path, monkeypatch, images, image_dir):
    """A file given twice (two spellings of one path, or listed and found again in the folder) is refused, naming it,
    as fine-tuning's segmentation refuses an input given twice: it was classified once, one row fewer than given."""
    from medgmae.twod.gvit_infer import inference_images

    (tmp_path / "imgs").mkdir()
    for name in ("imgs/b.png", "a.png"):
        (tmp_path / name).write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        inference_images(images, image_dir)
    assert str(e.value).startswith("these images are given more than once")
    assert str(e.value).endswith(f": {tmp_path / 'imgs' / 'b.png'}")


def test_missing_and_unreadable_images_are_named_in_one_error_each_once(trained, tmp_path):
    """Every image that cannot be used is named in one error, missing ones with the unreadable ones, each path once."""
    run, data = trained
    broken, empty, missing = tmp_path / "broken.png", tmp_path / "empty.png", tmp_path / "missing.png"
    broken.write_bytes(b"not a png")
    empty.write_bytes(b"")
    images = [data.val[0]["image"], str(broken), str(missing), str(empty)]
    message = str(_refused(output_dir=str(run), images=images, inference_dir=str(tmp_path / "out")))
    lines = message.split("\n")
    assert lines[0] == "3 images cannot be read, nothing was written:"
    assert lines[1].startswith(f"  {broken}: not a readable image (")
    assert lines[2] == f"  image not found: {missing}"
    assert lines[3].startswith(f"  {empty}: not a readable image (an empty file, 0 bytes)")
    assert all(line.split(" (")[0].count(str(tmp_path)) == 1 for line in lines[1:])  # not "{path}: {path}: ..."
    assert not (tmp_path / "out").exists()


def test_refused_images_are_printed_alone_as_the_users_input(trained, tmp_path):
    """Images that cannot be classified (none given, a folder without images, an unreadable file) are a refusal of
    what the user gave, as fine-tuning's segmentation refuses its inputs: the run ends with the message alone,
    ``error: DatasetError: ...``, not under MONAI's traceback of tens of lines."""
    from medgmae.bundle_errors import InputRefusal

    run, data = trained
    out = str(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    for settings in ({}, {"image_dir": str(tmp_path / "empty")}, {"images": [data.val[0]["image"], str(broken)]}):
        assert isinstance(_refused(output_dir=str(run), inference_dir=out, **settings), InputRefusal), settings
    proc = gvit_bundle_command("inference.json", "--output_dir", str(run), "--inference_dir", out, "--device", "cpu",
                               "--images", f"['{broken}']", run_id="inferring")  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in said, said[-3000:]
    assert f"error: DatasetError: 1 image cannot be read, nothing was written:\n  {broken}: not a readable image" in said


def test_a_folder_given_as_images_or_a_file_as_image_dir_is_refused_saying_which_flag(tmp_path, monkeypatch):
    """A folder among ``--images`` is refused pointing to ``--image_dir``; an image file as ``--image_dir``, to
    ``--images``; a missing ``--image_dir`` is said to be missing."""
    from medgmae.twod.gvit_infer import inference_images

    (tmp_path / "imgs").mkdir()
    (tmp_path / "a.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^--images lists 1 folder \(imgs\): give image files there, and a folder of "
                                         r"images as --image_dir FOLDER$"):
        inference_images(["a.png", "imgs"], None)
    with pytest.raises(ValueError, match=r"^--image_dir a\.png: a file, not a folder: give it with --images$"):
        inference_images(None, "a.png")
    with pytest.raises(ValueError, match=r"^--image_dir gone: not found$"):
        inference_images(None, "gone")
