"""Telling HU from linear attenuation (1/mm): the shared range test, and the warnings of zero-shot inference and
UNETR segmentation when a model of HU is given an attenuation volume."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.preprocessing import DEFAULT_SPEC, PreprocessingSpec
from medgmae.volume_units import looks_like_attenuation, looks_like_hu, warn_if_not_hu, window_expects_hu

from model_helpers import tiny_model_file

MU_WATER = 0.0192  # 1/mm


def _phantom_hu(shape=(16, 16, 16)) -> np.ndarray:
    """Air around a water ball with a bone core, in HU."""
    grid = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum((g - (n - 1) / 2) ** 2 for g, n in zip(grid, shape)))
    return np.where(r < 3, 1000.0, np.where(r < 6, 0.0, -1000.0)).astype(np.float32)


def _to_attenuation(hu: np.ndarray) -> np.ndarray:
    return np.clip(MU_WATER * (1 + hu / 1000.0), 0, None).astype(np.float32)


def test_range_tests_tell_hu_from_attenuation():
    hu = _phantom_hu()
    mu = _to_attenuation(hu)
    assert looks_like_hu(hu) and not looks_like_attenuation(hu)
    assert looks_like_attenuation(mu) and not looks_like_hu(mu)
    assert looks_like_attenuation(torch.from_numpy(mu)) and looks_like_hu(torch.from_numpy(hu))
    # an FBP of attenuation undershoots a little below 0 and stays attenuation
    assert looks_like_attenuation(np.array([-0.01, 0.05])) and not looks_like_hu(np.array([-0.01, 0.05]))
    with pytest.raises(ValueError, match="empty"):
        looks_like_attenuation(np.zeros((0, 3)))


def test_only_ct_windows_expect_hu():
    assert window_expects_hu(DEFAULT_SPEC)  # [-175, 250]
    assert window_expects_hu(PreprocessingSpec(hu_window=(-1000, 400)))
    assert not window_expects_hu(PreprocessingSpec(hu_window=(0, 1000)))  # MRI intensities
    assert not window_expects_hu(PreprocessingSpec(hu_window=(-1, 1)))  # normalised intensities


def test_warning_names_the_file_only_for_attenuation_given_to_a_model_of_hu(caplog):
    mu, hu = _to_attenuation(_phantom_hu()), _phantom_hu()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_not_hu(mu, DEFAULT_SPEC, "/data/mu.nii.gz")
        assert not warn_if_not_hu(hu, DEFAULT_SPEC, "/data/ct.nii.gz")
        assert not warn_if_not_hu(mu, PreprocessingSpec(hu_window=(0, 1000)), "/data/mri.nii.gz")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and "/data/mu.nii.gz" in messages[0] and "attenuation" in messages[0]


def test_a_label_map_given_as_an_image_is_warned_about_by_name(caplog):
    """A segmentation (few integer values in [0, 255]) listed as an image goes through the HU window to an almost
    constant input: warned about, for NumPy and torch and large volumes (counted on a sample); a CT in HU, a
    noiseless CT with air, and the same map for a model of another modality are not."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (40, 40, 40)).astype(np.uint8)
    big = np.zeros((256, 256, 40), np.float32)
    big[50:200, 60:180, 5:35] = 13.0
    noiseless = np.full((30, 30, 30), -1000.0, np.float32)
    noiseless[5:25, 5:25, 5:25] = 40.0
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_not_hu(labels, DEFAULT_SPEC, "/data/seg.nii.gz")
        assert warn_if_not_hu(torch.from_numpy(big), DEFAULT_SPEC, "/data/big_seg.nii.gz")
        for ct in (_phantom_hu(), noiseless):
            assert not warn_if_not_hu(ct, DEFAULT_SPEC, "/data/ct.nii.gz")
        assert not warn_if_not_hu(labels, PreprocessingSpec(hu_window=(0, 1000)), "/data/mri_seg.nii.gz")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages[0].startswith("/data/seg.nii.gz looks like a label map (5 distinct integer values in 0 .. 4)")
    assert messages[1].startswith("/data/big_seg.nii.gz looks like a label map (2 distinct") and len(messages) == 2
    # TotalSegmentator's 117 classes still count; an all-zero volume is named as constant, not as attenuation
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_not_hu(np.arange(118, dtype=np.uint8).repeat(100), DEFAULT_SPEC, "/data/total.nii.gz")
        assert warn_if_not_hu(np.zeros((8, 8, 8), np.float32), DEFAULT_SPEC, "/data/zero.nii.gz")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "looks like a label map (118 distinct" in messages[0]
    assert messages[1] == "/data/zero.nii.gz is constant (every voxel 0): an empty or blanked volume?"


def _save(array: np.ndarray, path) -> str:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
    return str(path)


def test_segmentation_transforms_warn_about_an_attenuation_volume(tmp_path, caplog):
    from medgmae.finetune import inference_transforms

    spec = PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8)
    mu = _save(_to_attenuation(_phantom_hu()), tmp_path / "mu.nii.gz")
    ct = _save(_phantom_hu(), tmp_path / "ct.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        out = inference_transforms(spec)({"image": mu})
        inference_transforms(spec)({"image": ct})
    warned = [r.getMessage() for r in caplog.records if "attenuation" in r.getMessage()]
    assert len(warned) == 1 and "mu.nii.gz" in warned[0]
    assert tuple(out["image"].shape[1:]) != (0, 0, 0)  # the image still goes through


def test_the_segmentation_pre_check_warns_about_a_label_map_input_once_before_any_work(tmp_path, caplog):
    """``inference_cases`` given the model's spec names a label map listed as an image while it checks the inputs,
    before the model runs; the bundle's pipeline (``warn_not_hu=False``) does not name it a second time."""
    import json

    from medgmae.finetune import inference_cases, inference_transforms

    spec = PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8)
    seg = _save(np.random.default_rng(0).integers(0, 5, (16, 16, 16)).astype(np.uint8), tmp_path / "seg.nii.gz")
    ct = _save(_phantom_hu(), tmp_path / "ct.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        cases = inference_cases([ct, seg], spec=spec)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"{seg} looks like a label map (5 distinct integer values")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        inference_cases([ct, seg])  # no spec: no judgement of the values
        pipeline = inference_transforms(spec, warn_not_hu=False, warn_padding=False)  # the HU warnings only
        for case in cases:
            pipeline(dict(case))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    config = json.loads((Path(__file__).parents[1] / "bundles/unetr_finetune/configs/inference.json").read_text(encoding="utf-8"))
    assert "spec=@preprocessing_spec" in config["dataset"]["data"] and "warn_not_hu=False" in config["preprocessing"]


def test_zero_shot_warns_about_attenuation_and_titles_its_grey_window(tmp_path, caplog, monkeypatch):
    import medgmae.mae_training.inference as zero_shot

    titles = []
    monkeypatch.setattr(zero_shot, "slices_png", lambda volumes, path, spacing, names, title: titles.append(title))
    model = str(tiny_model_file(tmp_path / "model.pt", spacing=1.5, num_gaussians=8))
    image = _save(_to_attenuation(_phantom_hu()), tmp_path / "mu.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        zero_shot.GaussianInference(model, image, tmp_path / "out", device="cpu").run()
    warned = [r.getMessage() for r in caplog.records if "attenuation" in r.getMessage()]
    assert len(warned) == 1 and "mu.nii.gz" in warned[0]
    assert len(titles) == 1 and "grey window [-175, 250] HU" in titles[0]


def test_a_ct_stored_as_hu_plus_1024_is_warned_about(caplog):
    """The phantom stored as HU + 1024 (air 24, bone 2024: unsigned storage without its rescale intercept) has no
    air under the window: warned about by name; the phantom in HU, a soft-tissue crop that reaches no 1000 and the
    same volume for a model of another modality are not."""
    hu = _phantom_hu()
    shifted = hu + 1024.0
    soft = np.full((16, 16, 16), 40.0, np.float32)
    soft[4:12, 4:12, 4:12] = 300.0
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_not_hu(shifted, DEFAULT_SPEC, "/data/stored.nii.gz")
        assert not warn_if_not_hu(hu, DEFAULT_SPEC, "/data/ct.nii.gz")
        assert not warn_if_not_hu(soft, DEFAULT_SPEC, "/data/crop.nii.gz")
        assert not warn_if_not_hu(shifted, PreprocessingSpec(hu_window=(0, 3000)), "/data/mri.nii.gz")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and messages[0].startswith("/data/stored.nii.gz has no value below 24 but reaches 2024")
    assert "stored as HU + 1024 without its rescale intercept" in messages[0]


def test_a_ct_shifted_down_by_1024_hu_is_warned_about(caplog):
    """A CT whose rescale intercept was applied twice (HU - 1024: air -2024, water -1024) gave an all-background
    segmentation without a word about its values. Warned by name when it reaches no soft tissue (the soft-tissue
    crop, maximum -724) or when most of it lies far below air (the phantom, whose bone reaches -24); the phantom in
    HU, the same with -3024 outside a circular field of view, and a model of another modality are not."""
    hu = _phantom_hu()
    soft = np.full((16, 16, 16), 40.0, np.float32)
    soft[4:12, 4:12, 4:12] = 300.0
    padded = hu.copy()
    yy, xx = np.indices(hu.shape[1:])
    padded[:, (yy - 7.5) ** 2 + (xx - 7.5) ** 2 > 8**2] = -3024.0
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_not_hu(hu - 1024.0, DEFAULT_SPEC, "/data/twice.nii.gz")
        assert warn_if_not_hu(torch.from_numpy(soft - 1024.0), DEFAULT_SPEC, "/data/crop_twice.nii.gz")
        assert not warn_if_not_hu(hu, DEFAULT_SPEC, "/data/ct.nii.gz")
        assert not warn_if_not_hu(padded, DEFAULT_SPEC, "/data/fov.nii.gz")
        assert not warn_if_not_hu(soft, DEFAULT_SPEC, "/data/crop.nii.gz")
        assert not warn_if_not_hu(hu - 1024.0, PreprocessingSpec(hu_window=(0, 3000)), "/data/mri.nii.gz")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2, messages
    assert messages[0].startswith("/data/twice.nii.gz looks like a CT shifted down by 1024 HU (values -2024 .. -24")
    assert messages[1].startswith("/data/crop_twice.nii.gz looks like a CT shifted down by 1024 HU (values -984 .. -724")
    assert all("rescale intercept applied twice (HU - 1024)" in m and "add 1024" in m for m in messages)


def test_simulate_says_a_volume_without_air_is_simulated_as_it_is(capsys):
    """medgmae-recon's HU check warns about a volume stored as HU + 1024 (it simulates it, air as tissue) and stays
    silent for the phantom in HU."""
    from recon.unit_checks import check_units

    check_units(_phantom_hu() + 1024.0, "stored.nii.gz", "--volume", "hu")
    assert "warning: --volume stored.nii.gz has no air (values 24 .. 2024" in capsys.readouterr().out
    check_units(_phantom_hu(), "ct.nii.gz", "--volume", "hu")
    assert capsys.readouterr().out == ""
    check_units(_phantom_hu() - 1024.0, "twice.nii.gz", "--volume", "hu")  # intercept applied twice: tissue as air
    out = capsys.readouterr().out
    assert out.startswith("warning: --volume twice.nii.gz looks like a CT shifted down by 1024 HU") and "add 1024" in out
    labels = np.zeros((8, 16, 16), np.int16)
    labels[2:6, 4:12, 4:12], labels[3:5, 6:9, 6:9] = 3, 7
    check_units(labels, "seg.nii.gz", "--volume", "hu")
    assert "warning: --volume seg.nii.gz looks like a label map (3 distinct integer values" in capsys.readouterr().out


def test_a_binary_mask_given_as_an_image_is_named_a_label_map_not_attenuation(caplog):
    """A 0/1 mask lies within attenuation's range too: it was warned about as linear attenuation in 1/mm, with the
    advice to convert it to HU. Whole numbers in a few values are a label map, whatever their range."""
    spec = PreprocessingSpec()
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    with caplog.at_level("WARNING", logger="medgmae"):
        assert warn_if_not_hu(mask, spec, "gt.nii.gz")
    assert "gt.nii.gz looks like a label map (2 distinct integer values in 0 .. 1)" in caplog.text
    assert "attenuation" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medgmae"):  # real attenuation still is
        assert warn_if_not_hu(_to_attenuation(np.linspace(-1000, 1000, 512).reshape(8, 8, 8)), spec, "mu.nii.gz")
    assert "mu.nii.gz looks like linear attenuation" in caplog.text


_PROBE_SPEC = PreprocessingSpec(spacing=2.0, input_size=8, patch_size=4)


class _ZeroShotProbe(torch.nn.Module):
    """A stand-in decoder: one Gaussian in the middle of every window."""

    img_size = _PROBE_SPEC.input_size

    def decode(self, windows: torch.Tensor, _affines) -> Gaussians3D:
        b = windows.shape[0]
        return Gaussians3D(torch.full((b, 1, 3), 0.5), torch.full((b, 1, 3), 0.1), torch.tensor([[[1.0, 0, 0, 0]]]).expand(b, 1, 4),
                           torch.ones(b, 1))  # fmt: skip


@pytest.mark.parametrize("unit", ["attenuation", "normalised"])
def test_the_zero_shot_api_warns_about_a_scan_not_in_hu_once(caplog, unit):
    """``zero_shot_gaussians`` given attenuation in 1/mm, or a scan normalised to [0, 1], said nothing (only the
    bundle's inference warned)."""
    from medgmae.zeroshot import zero_shot_gaussians

    hu = _phantom_hu()
    scan = _to_attenuation(hu) if unit == "attenuation" else (hu - hu.min()) / (hu.max() - hu.min())
    model = _ZeroShotProbe()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        zero_shot_gaussians(scan, np.eye(4), model, spec=_PROBE_SPEC, decode=model.decode, source="scan.nii.gz")
    warned = [r.getMessage() for r in caplog.records if "not a CT in HU" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("scan.nii.gz looks like linear attenuation in 1/mm")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        zero_shot_gaussians(hu, np.eye(4), model, spec=_PROBE_SPEC, decode=model.decode)
    assert "not a CT in HU" not in caplog.text


def test_the_zero_shot_start_warns_about_an_fbp_volume_in_hu(caplog):
    """``medgmae_init`` given a volume in HU where attenuation (1/mm) is expected said nothing: it reads it as
    attenuation, converting it to HU a second time."""
    from recon.initialisation import medgmae_init

    model = _ZeroShotProbe()
    model.predict_gaussians = lambda x, mask_ratio: model.decode(x, None)
    with caplog.at_level(logging.WARNING, logger="recon"):
        medgmae_init(torch.from_numpy(_phantom_hu()), np.eye(4), model, spec=_PROBE_SPEC, calibrate=False)
    warned = [r.getMessage() for r in caplog.records if r.name == "recon"]
    assert len(warned) == 1 and warned[0].startswith("fbp_volume looks like a CT in HU")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        medgmae_init(torch.from_numpy(_to_attenuation(_phantom_hu())), np.eye(4), model, spec=_PROBE_SPEC, calibrate=False)
    assert "looks like" not in caplog.text


def test_the_fbp_and_random_starts_warn_about_an_fbp_volume_in_hu_as_the_zero_shot_start_does(caplog):
    """``fbp_init`` took a volume in HU without a word (its Gaussians then carry HU intensities) while
    ``medgmae_init`` warned; the three starts that read ``fbp_volume`` as attenuation warn in the same words, naming
    themselves, and not of a volume in 1/mm."""
    from recon.initialisation import fbp_init, random_init

    hu = torch.from_numpy(_phantom_hu())
    for init, start in ((fbp_init, "FBP start"), (random_init, "random start")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="recon"):
            init(hu, 20)
        warned = [r.getMessage() for r in caplog.records if r.name == "recon"]
        lo, hi = float(hu.min()), float(hu.max())
        assert warned == [f"fbp_volume looks like a CT in HU (values {lo:.4g} .. {hi:.4g}), not linear attenuation in "
                          f"1/mm (water 0.0192): the {start} reads it as attenuation; convert with mu = 0.0192 (1 + HU / "
                          "1000), clipped at 0"], warned  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="recon"):
            init(torch.from_numpy(_to_attenuation(_phantom_hu())), 20)
        assert "looks like" not in caplog.text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int64])
def test_the_unit_checks_take_tensors_of_any_dtype(dtype, caplog):
    """bf16 has no NumPy type: a bf16 label map listed as an image is told all the same, and a bf16 CT in HU is not
    warned about."""
    from medgmae.volume_units import looks_like_label_map

    labels = torch.arange(5).repeat_interleave(200).reshape(10, 10, 10).to(dtype)
    assert looks_like_label_map(labels) == 5
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_not_hu(labels, DEFAULT_SPEC, "mask.nii.gz")
        assert not warn_if_not_hu((torch.linspace(-1000, 1500, 1000) * 1).reshape(10, 10, 10).to(dtype), DEFAULT_SPEC, "ct")
    assert "mask.nii.gz looks like a label map (5 distinct integer values" in caplog.text


def test_the_label_map_sample_of_a_fortran_volume_is_taken_without_copying_it():
    """NIfTI volumes read in Fortran order: the million-voxel sample was taken from a C-order copy of the whole
    volume (seconds and a volume's worth of memory on a full CT). The same voxels, every step-th of the C-order
    flattening, are sampled without it, and the judgement is unchanged."""
    import tracemalloc

    from medgmae.volume_units import looks_like_label_map

    labels = np.asfortranarray(np.random.default_rng(0).integers(0, 7, (200, 200, 200)).astype(np.float32))
    step = labels.size // 1_000_000
    expected = np.unique(np.ascontiguousarray(labels).reshape(-1)[::step]).size
    tracemalloc.start()
    try:
        found = looks_like_label_map(labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == expected and peak < labels.nbytes / 2, (found, expected, peak)  # the sample and its checks
    ct = np.asfortranarray(np.random.default_rng(1).normal(40, 300, (120, 100, 90)).round().astype(np.float32))
    assert looks_like_label_map(ct) == 0 and looks_like_label_map(np.ascontiguousarray(labels)) == expected
