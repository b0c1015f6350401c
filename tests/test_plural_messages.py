"""Messages that count something say "1 image" / "3 images", not "image(s)"; a count a record lacks keeps "(s)"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgmae.bundle_checks import BundleSettingError, check_settings
from medgmae.checkpoint import _accepted_kinds
from medgmae.data.case_pairing import _by_case
from medgmae.data.datalist import DatasetError
from medgmae.engine.devices import resolve_device
from medgmae.words import plural_noun
from medgmae.files import skipped_files_note
from medgmae.twod.gvit.tokens import decode_gaussians_2d
from medgmae.twod.gvit_settings import guidance_note
from medgmae.twod.gvit_summary import training_line


def test_one_and_several_are_counted_in_words(tmp_path):
    assert [plural_noun(w) for w in ("epoch", "joint epoch", "patch", "class", "image")] == [
        "epochs", "joint epochs", "patches", "classes", "images"]  # fmt: skip
    assert skipped_files_note([tmp_path / "README.txt"], tmp_path) == "skipped 1 file that is not an image: README.txt"
    two = skipped_files_note([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path, what="volumes")
    assert two == "skipped 2 files that are not volumes: a.txt, b.txt"
    assert guidance_note("joint", 0.1, 1) == ", with guidance (gamma 0.1 every 1 iteration)"
    assert guidance_note("joint", 0.1, 4) == ", with guidance (gamma 0.1 every 4 iterations)"
    with pytest.raises(ValueError, match=r"^unknown checkpoint kinds \['a', 'b'\]"):
        _accepted_kinds(["a", "b"])
    with pytest.raises(ValueError, match=r"for 1 channel, got"):
        decode_gaussians_2d(torch.zeros(1, 2, 3), channels=1)
    with pytest.raises(BundleSettingError, match=r"^2 bad settings, nothing was written:"):
        check_settings({"n": (-3, "positive_int"), "m": ("x", "positive_int")}, output_dirs={})


def test_a_recorded_training_is_said_with_its_counts_and_a_missing_count_keeps_the_hedge():
    record = {"guidance": True, "gamma": 0.1, "guidance_interval": 1, "epochs": {"joint": 3}, "pixel_loss": "mse",
              "perceptual_weight": 0.2}  # fmt: skip
    assert training_line(record).startswith("with guidance (gamma 0.1 every 1 iteration of 3 joint epochs), loss mse")
    record.update(guidance=False, epochs={})
    assert training_line(record).startswith("without guidance (gamma 0.1, None joint epoch(s))")


def test_case_names_given_twice_are_counted(tmp_path):
    paths = [Path(tmp_path / name) for name in ("a.nii.gz", "a.nii", "b.nii.gz")]
    with pytest.raises(DatasetError, match=r": 1 case name given by more than one file \(a\.nii\.gz, a\.nii\)"):
        _by_case(paths, tmp_path)


def test_a_missing_cuda_device_counts_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"^device 'cuda:3' does not exist: 1 CUDA device found$"):
        resolve_device("cuda:3")
