"""The 2D bundles' ``flip`` and ``window`` settings, what their logs and summaries say, and the refusals of files
that are not what ``medgmae-2d`` and GViT's evaluation need."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandFlipd
from gmae2d_helpers import BUNDLES, GMAE_TRAIN, GVIT_TRAIN, gmae_parser  # noqa: F401
from PIL import Image

from medgmae.bundle_checks import BundleSettingError, check_settings
from medgmae.checkpoint import load_checkpoint
from medgmae.engine import MetricHistory
from medgmae.mae_training import save_pretrained
from medgmae.mae_training.validation import save_best_model
from medgmae.twod.classification_data import make_dataset, resolve_classification_data
from medgmae.twod.cli import main as cli_main
from medgmae.twod.data2d import gmae2d_dataset
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gmae_validation import GMAE2DSummary, GMAE2DValidationHandler
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_phases import resume_records
from medgmae.twod.images import read_image, save_png, to_model_input
from medgmae.twod.windows import window_setting



def _marker(path: Path) -> np.ndarray:
    """A PNG that is not left-right symmetric (a bright block at the top left); returns it in ``[0, 1]``."""
    arr = np.zeros((32, 32), np.uint8)
    arr[2:12, 2:8] = 255
    Image.fromarray(arr).save(path)
    return arr / 255.0


def _ct_slices(folder: Path) -> Path:
    """Two CT slices in HU that differ only in their brightest pixel (400 vs 1500 HU); water (0 HU) in the middle."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, hi in (("a", 400.0), ("b", 1500.0)):
        v = np.full((32, 32, 1), -1000.0, np.float32)
        v[8:24, 8:24] = 0.0
        v[:4, :4] = hi
        nib.save(nib.Nifti1Image(v, np.eye(4)), str(folder / f"{name}.nii.gz"))
    return folder


# ----------------------------------------------------------------------------------------------- flip
def test_gmae2d_training_images_are_not_mirrored_unless_flip_is_set(tmp_path):
    (tmp_path / "data").mkdir()
    stored = _marker(tmp_path / "data" / "a.png")
    default = gmae_parser(tmp_path).get_parsed_content("train#dataset")
    assert not any(isinstance(t, RandFlipd) for t in default.transform.transforms)
    for seed in range(4):  # RandFlipd would mirror about half of these
        torch.manual_seed(seed)
        np.testing.assert_allclose(np.asarray(default[0]["image"])[0], stored, atol=1e-6)
    flipped = gmae_parser(tmp_path, flip="true").get_parsed_content("train#dataset")
    assert any(isinstance(t, RandFlipd) for t in flipped.transform.transforms)


def test_flip_and_window_settings_are_checked_up_front(tmp_path):
    parser = gmae_parser(tmp_path, flip="maybe", window="[400, -1000]")
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
    assert "--flip" in str(err.value) and "expected true or false, got 'maybe'" in str(err.value)
    assert "--window" in str(err.value) and "high > low" in str(err.value)


@pytest.mark.parametrize("value, expected", [(None, None), ("null", None), ("", None), ([-1000, 1000], (-1000.0, 1000.0)),
                                             ("[-350, 400]", (-350.0, 400.0))])  # fmt: skip
def test_window_setting_spellings(value, expected):
    assert window_setting(value) == expected


def test_window_setting_refuses_nonsense():
    for bad in ("abc", [1], [5, 5], [1, 2, 3]):
        with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
            window_setting(bad)


# ----------------------------------------------------------------------------------------------- window
def test_gmae2d_window_maps_one_hu_to_one_value_in_every_image(tmp_path, caplog):
    _ct_slices(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        per_image = gmae_parser(tmp_path).get_parsed_content("train#dataset")
    assert "2 NIfTI/DICOM images are scaled each by its own" in caplog.text and "--window" in caplog.text
    water = [float(per_image[i]["image"][0, 14:18, 14:18].median()) for i in range(2)]
    assert abs(water[0] - water[1]) > 0.1  # the default: each slice scaled by its own percentiles

    windowed = gmae_parser(tmp_path, window="[-1000, 1000]")
    for key in ("train#dataset", "val#dataset"):
        ds = windowed.get_parsed_content(key)
        for i in range(2):
            assert float(ds[i]["image"][0, 14:18, 14:18].median()) == pytest.approx(0.5, abs=1e-3)


def test_a_window_for_a_folder_of_pictures_is_said_to_map_none(tmp_path, caplog):
    """--window maps NIfTI/DICOM images only: given for a folder of PNGs it is named as mapping none of them (the
    model records it); a folder with NIfTI slices is not warned about."""
    (tmp_path / "pngs").mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(tmp_path / "pngs" / f"p{i}.png")
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        gmae2d_dataset(tmp_path / "pngs", (16, 16), window=[-1000, 1000], cache=False)
    assert f"dataset_dir {tmp_path / 'pngs'} holds no NIfTI/DICOM images: --window -1000..1000 maps none" in caplog.text
    caplog.clear()
    _ct_slices(tmp_path / "ct")
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        gmae2d_dataset(tmp_path / "ct", (16, 16), window=[-1000, 1000], cache=False)
    assert "maps none" not in caplog.text


def test_window_is_the_same_mapping_as_medgmae_2d(tmp_path):
    path = _ct_slices(tmp_path / "data") / "b.nii.gz"
    ds = gmae2d_dataset(tmp_path / "data", (32, 32), 1, window=(-350, 400), cache=False, log=False)
    torch.testing.assert_close(ds[1]["image"], torch.as_tensor(read_image(path, window=(-350, 400))))


def test_gvit_window_is_recorded_and_used(tmp_path, caplog):
    for cls in ("x", "y"):
        _ct_slices(tmp_path / "data" / cls)
    data = resolve_classification_data(tmp_path / "data", tmp_path / "root", val_fraction=0.5, window="[-1000, 1000]")
    assert data.settings["window"] == [-1000.0, 1000.0]
    ds = make_dataset(data.train, 32, 1, window=data.settings["window"])
    assert float(ds[0]["image"][0, 14:18, 14:18].median()) == pytest.approx(0.5, abs=1e-3)
    assert "window" not in resolve_classification_data(tmp_path / "data", tmp_path / "root", val_fraction=0.5).settings

    parser = ConfigParser()
    parser.read_config(GVIT_TRAIN)
    parser.update({"dataset_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "run"), "image_size": 16,
                   "val_fraction": 0.5, "window": "[-1000, 1000]"})  # fmt: skip
    assert parser.get_parsed_content("data").settings["window"] == [-1000.0, 1000.0]
    assert parser.get_parsed_content("validate#dataset").transform.transforms[1].window == (-1000.0, 1000.0)


def test_gvit_warns_about_a_class_without_validation_images(tmp_path, caplog):
    for cls, n in (("a", 1), ("b", 4)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            _marker(tmp_path / "data" / cls / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        data = resolve_classification_data(tmp_path / "data", tmp_path / "root", val_fraction=0.5)
    assert data.counts["val"] == {"b": 2}
    assert "class 'a' has no validation image" in caplog.text


# ----------------------------------------------------------------------------------------------- medgmae-2d
@pytest.fixture()
def gmae_file(tmp_path):
    torch.manual_seed(0)
    model = GMAE2D(img_size=32, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=16)
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def test_window_on_a_png_is_refused(gmae_file, tmp_path, capsys):
    _marker(tmp_path / "img.png")
    code = cli_main(["layers", "--checkpoint", str(gmae_file), "--image", str(tmp_path / "img.png"),
                     "--window", "0", "100", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert f"--window applies to NIfTI and DICOM images in HU; {tmp_path / 'img.png'} is a PNG" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gmae2d_model_files_record_the_training_window(tmp_path):
    parser = gmae_parser(tmp_path, model_size="tiny", num_gaussians=8, window="[-1000, 1000]")
    model = parser.get_parsed_content("network_def")
    save_pretrained(model, tmp_path / "run")
    save_best_model(model, tmp_path / "run")
    recorded = {"flip": False, "window": [-1000.0, 1000.0]}
    for name in ("model.pt", "best_model.pt"):
        assert GMAE2D.from_checkpoint(tmp_path / "run" / name).data_settings == recorded, name
    assert load_checkpoint(tmp_path / "run" / "encoder.pt").extra["data"] == recorded
    resumed = parser.get_parsed_content("resume_records#settings").state_dict()["settings"]
    assert {k: resumed[k] for k in recorded} == recorded  # and the optimiser's and validation's, checked on resume
    assert resumed["optimiser"] == {"learning_rate": 0.0005, "weight_decay": 0.05} and resumed["step"] == {"grad_clip": 1.0}
    assert resumed["validation"] == {"val_images": 4}
    # phantom slices are mapped by the window given (-350..400 HU without one): that is what a phantom model records
    phantom = gmae_parser(tmp_path, dataset_dir="", window="[-1000, 1000]").get_parsed_content("data_settings")
    assert phantom == {"flip": False, "window": [-1000.0, 1000.0]}


def _layers_input(checkpoint: Path, image: Path, out: Path, *extra: str) -> bytes:
    """``medgmae-2d layers`` on ``image``; returns the bytes of its ``input.png``."""
    argv = ["layers", "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out), "--num-layers", "4"]
    assert cli_main([*argv, *extra]) == 0
    return (out / "input.png").read_bytes()


def test_medgmae_2d_windows_a_nifti_by_the_recorded_window(tmp_path, capsys):
    image = _ct_slices(tmp_path / "data") / "b.nii.gz"  # 1500 HU in a corner: its percentiles are not -350..400
    torch.manual_seed(0)
    model = GMAE2D(img_size=32, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=16)
    torch.save(model.model_checkpoint(), tmp_path / "old.pt")  # as written before the window was recorded
    assert "data" not in torch.load(tmp_path / "old.pt", weights_only=True)["extra"]
    payload = model.model_checkpoint()  # the same weights, trained with window [-350, 400]
    payload["extra"]["data"] = {"flip": False, "window": [-350.0, 400.0]}
    torch.save(payload, tmp_path / "model.pt")

    implicit = _layers_input(tmp_path / "model.pt", image, tmp_path / "implicit")
    explicit = _layers_input(tmp_path / "model.pt", image, tmp_path / "explicit", "--window", "-350", "400")
    assert implicit == explicit and "note" not in capsys.readouterr().err
    old = _layers_input(tmp_path / "old.pt", image, tmp_path / "old")
    assert old != implicit
    assert GMAE2D.from_checkpoint(tmp_path / "old.pt").data_settings is None
    # the old file keeps today's mapping: each image by its own 0.5/99.5 percentiles
    save_png(to_model_input(read_image(image), 1, (32, 32))[0], tmp_path / "percentiles.png")
    assert old == (tmp_path / "percentiles.png").read_bytes()

    other = _layers_input(tmp_path / "model.pt", image, tmp_path / "other", "--window", "-1000", "1000")
    assert other != implicit
    err = capsys.readouterr().err
    assert "note: using --window -1000 1000, not the window -350 400 the model was trained with" in err
    assert len([line for line in err.splitlines() if "note" in line]) == 1
    _layers_input(tmp_path / "old.pt", image, tmp_path / "old_given", "--window", "-1000", "1000")
    assert "note" not in capsys.readouterr().err

    # a PNG is not windowed: the recorded window neither applies nor is noted
    _marker(tmp_path / "img.png")
    _layers_input(tmp_path / "model.pt", tmp_path / "img.png", tmp_path / "png")
    assert "note" not in capsys.readouterr().err


def test_medgmae_2d_refuses_an_unusable_recorded_window(gmae_file, tmp_path, capsys):
    payload = torch.load(gmae_file, weights_only=True)
    payload["extra"]["data"] = {"window": [400.0, -1000.0]}
    torch.save(payload, gmae_file)
    image = _ct_slices(tmp_path / "data") / "a.nii.gz"
    code = cli_main(["layers", "--checkpoint", str(gmae_file), "--image", str(image), "--out", str(tmp_path / "o")])
    assert code == 2 and f"{gmae_file}: the recorded training window is unusable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_medgmae_2d_help_names_the_recorded_window(capsys):
    with pytest.raises(SystemExit):
        cli_main(["layers", "--help"])
    assert "recorded in the checkpoint" in " ".join(capsys.readouterr().out.split())


def _gvit_phase_checkpoint(path: Path) -> Path:
    """What a GViT phase's CheckpointHandler writes: the phase's state, its settings record, no model record."""
    model = GViT(1, 16, 2, num_gaussians=4, patch_size=4)
    optimizer = torch.optim.AdamW(model.parameters())
    objects = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": {},
               "settings": resume_records({"model": model.config(), "data": {"seed": 0}}, None)["settings"].state_dict()}  # fmt: skip
    torch.save({"engine": {"epoch": 1}, "objects": objects}, path)
    return path


def test_a_gvit_phase_checkpoint_is_named_as_such(tmp_path, capsys):
    ckpt = _gvit_phase_checkpoint(tmp_path / "checkpoint_epoch=1.pt")
    _marker(tmp_path / "img.png")
    code = cli_main(["layers", "--checkpoint", str(ckpt), "--image", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "checkpoint_epoch=1.pt is a gvit training checkpoint (GViT classifier); expected gmae2d" in capsys.readouterr().err

    with pytest.raises(ValueError) as err:
        GViT.from_checkpoint(ckpt)
    assert "a GViT training checkpoint" in str(err.value) and "give the GViT run's model.pt" in str(err.value)
    assert "best_model" not in str(err.value)


# ----------------------------------------------------------------------------------------------- wording
def test_gmae2d_validation_counts_images_and_one_epoch_is_singular(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    _marker(tmp_path / "data" / "a.png")
    _marker(tmp_path / "data" / "b.png")
    parser = gmae_parser(tmp_path, model_size="tiny", num_gaussians=8, val_images=2)
    handler = parser.get_parsed_content("val#handler")
    assert isinstance(handler, GMAE2DValidationHandler)
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1, max_epochs=1, iteration=4))
    with caplog.at_level(logging.INFO, logger="medgmae"):
        handler(engine)
    assert "epoch 1 validation (2 images, fixed masks)" in caplog.text

    summary = GMAE2DSummary(tmp_path, MetricHistory(best_metric="val_psnr", mode="max"))
    one = summary.text(summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=1))))
    assert "2D GMAE pre-training finished: 1 epoch of gmae2d" in one
    two = summary.text(summary.summary(SimpleNamespace(state=SimpleNamespace(epoch=2))))
    assert "2D GMAE pre-training finished: 2 epochs of gmae2d" in two


@pytest.mark.parametrize("source", ["folder", "phantom"])
def test_gmae2d_summary_commands_name_an_image_that_exists(tmp_path, source):
    """The closing summary's medgmae-2d commands work when pasted: they name the first validation image's file, or,
    for generated phantom slices, that slice written as example_slice.png (the pixels the model was shown)."""
    (tmp_path / "data").mkdir()
    _marker(tmp_path / "data" / "a.png")
    _marker(tmp_path / "data" / "b.png")
    parser = gmae_parser(tmp_path, model_size="tiny", num_gaussians=8, val_images=2,
                          dataset_dir=str(tmp_path / "data") if source == "folder" else "")  # fmt: skip
    (tmp_path / "run").mkdir()
    summary = parser.get_parsed_content("val#summary")
    images = {cmd.split("--image ")[1].split()[0] for cmd in summary.commands().values()}
    assert len(images) == 1
    image = Path(images.pop())
    assert image.is_file(), image
    if source == "folder":
        assert image == tmp_path / "data" / "a.png"
    else:
        assert image == tmp_path / "run" / "example_slice.png"
        shown = parser.get_parsed_content("val#dataset")[0]["image"]
        np.testing.assert_allclose(read_image(image), shown.numpy(), atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("settings, refused", [({"max_epochs": 0}, True), ({"max_epochs": "0"}, True),
                                               ({"max_epochs": 3, "warmup_epochs": 0, "classifier_epochs": 0, "joint_epochs": 0}, True),
                                               ({"max_epochs": 0, "joint_epochs": 1}, False), ({"max_epochs": 1}, False)])  # fmt: skip
def test_gvit_refuses_no_epoch_in_any_phase_with_the_settings(settings, refused):
    """``--max_epochs 0`` passed the settings check (a non-negative integer), wrote the default task's images and
    then failed in the workflow ('every phase has 0 epochs'): refused with the other settings, before anything is
    written, naming the phases' epochs; a phase given its own epochs still trains."""
    parser = ConfigParser()
    parser.read_config(GVIT_TRAIN)
    parser.update(settings)
    if not refused:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
        return
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
    if settings["max_epochs"] in (0, "0"):
        assert ("--max_epochs: every phase has 0 epochs (--warmup_epochs 0, --classifier_epochs 0, --joint_epochs 0; "
                "each is --max_epochs unless given): nothing to train; give --max_epochs 1 or more") in str(err.value)
    else:  # --max_epochs is fine: the phases' own epochs are what to change
        assert ("every phase's own epochs are 0 (--warmup_epochs 0, --classifier_epochs 0, --joint_epochs 0): nothing "
                "to train, whatever --max_epochs; give one of them 1 or more") in str(err.value)


# ----------------------------------------------------------------------------------------------- window on phantoms
def _rewindowed(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of a slice at -350..400 HU that window left unclipped, and their values at -1000..1000 HU."""
    inside = (image > 0.01) & (image < 0.99)
    return inside, (-350 + 750 * image[inside] + 1000) / 2000


def test_gmae2d_maps_its_phantom_slices_by_the_window_given(tmp_path, caplog):
    """--window was ignored on the generated phantom slices (always -350..400 HU), silently; the slices are generated
    in HU, so the window maps them as the 3D bundles' HU window maps their phantoms, is logged and recorded, and the
    validation slices follow it."""
    common = dict(dataset_dir="", image_size=96, patch_size=8, num_phantoms=1, slices_per_case=1, val_images=1)
    default = gmae_parser(tmp_path, **common)
    wide = gmae_parser(tmp_path, window="[-1000, 1000]", **common)
    for key in ("train#dataset", "val#dataset"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medgmae.twod"):
            wide_image = np.asarray(wide.get_parsed_content(key)[0]["image"])[0]
        logged = "phantom slices mapped from the window -1000..1000 HU to 0..1 (clipped)" in caplog.text
        assert logged == (key == "train#dataset")  # once, for the training slices
        inside, expected = _rewindowed(np.asarray(default.get_parsed_content(key)[0]["image"])[0])
        assert inside.sum() > 100
        np.testing.assert_allclose(wide_image[inside], expected, atol=1e-4)
    assert default.get_parsed_content("data_settings")["window"] == [-350.0, 400.0]
    assert wide.get_parsed_content("data_settings")["window"] == [-1000.0, 1000.0]


@pytest.mark.parametrize("value", ["1", "abc", "-4"])
def test_gvit_evaluation_checks_its_number_of_phantoms_as_a_setting(tmp_path, value):
    """--num_phantoms 1 / abc / -4 given to the evaluation stopped in two tracebacks whose last line named no key
    (num_val_cases, int()); it is a bad setting named at start, as in training."""
    from bundle_helpers import run_bundle, setting_error_text

    proc = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", "--output_dir", str(tmp_path / "run"),
                      "--device", "cpu", "--num_phantoms", value)
    shown = repr(int(value)) if value.lstrip("-").isdigit() else repr(value)
    assert proc.returncode != 0 and f"--num_phantoms: expected an integer of at least 3 (the last 2 phantoms are the " \
        f"validation split), got {shown}" in setting_error_text(proc.stdout + proc.stderr)
