"""Zero-shot inference's inputs: bad scans, specs, models and settings refused or warned about, model files loaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.preprocessing import PreprocessingSpec
from medgmae.zeroshot import zero_shot_gaussians

from zeroshot_helpers import (
    Probe as _Probe,
    SHAPE,
    SPACING,
    SPEC,
    blob_hu as _blob_hu,
    scan_affine as _affine,
    scan_centre as _centre,
    world_points as _world_points,
)


def test_bad_inputs_are_named():
    probe = _Probe()
    with pytest.raises(ValueError, match="3D"):
        zero_shot_gaussians(np.zeros((4, 4)), np.eye(4), probe, spec=SPEC, decode=probe.decode)
    with pytest.raises(ValueError, match="non-singular"):
        zero_shot_gaussians(np.zeros((4, 4, 4)), np.zeros((4, 4)), probe, spec=SPEC, decode=probe.decode)
    bad = np.zeros((4, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        zero_shot_gaussians(bad, np.eye(4), probe, spec=SPEC, decode=probe.decode)
    with pytest.raises(ValueError, match="overlap"):
        zero_shot_gaussians(np.zeros((4, 4, 4)), np.eye(4), probe, spec=SPEC, overlap=24, decode=probe.decode)


def test_the_spec_may_be_given_as_its_dict():
    """A checkpoint's ``preprocessing`` entry as saved (a dict) is the spec it describes; another type is named."""
    from types import SimpleNamespace

    from medgmae.preprocessing import DEFAULT_SPEC
    from medgmae.zeroshot import _spec_and_window

    model = SimpleNamespace(img_size=(96, 96, 96), preprocessing=None)
    assert _spec_and_window(model, DEFAULT_SPEC.to_dict(), 0, 1) == (DEFAULT_SPEC, (96, 96, 96))
    with pytest.raises(ValueError, match="spec must be a PreprocessingSpec"):
        _spec_and_window(model, "RAS", 0, 1)


def test_a_spec_of_another_window_and_a_fractional_overlap_are_refused():
    """A spec whose input size is not the model's window was run with the model's window while the result's spec
    said the other size; an overlap of 4.7 voxels was cut to 4 without a word."""
    from types import SimpleNamespace

    from medgmae.preprocessing import DEFAULT_SPEC
    from medgmae.zeroshot import _spec_and_window

    model = SimpleNamespace(img_size=(48, 48, 48), preprocessing=None)
    with pytest.raises(ValueError, match=r"input_size \(96, 96, 96\) is not the model's window \(48, 48, 48\)"):
        _spec_and_window(model, DEFAULT_SPEC, 0, 1)
    for overlap in (4.7, True, -1, 48):
        with pytest.raises(ValueError, match="overlap must be a whole number of voxels in \\[0, 48\\)"):
            _spec_and_window(model, None, overlap, 1)
    assert _spec_and_window(model, None, 4.0, 1)[1] == (48, 48, 48)


def test_no_gaussians_in_a_full_window_blames_the_scan_not_its_size():
    """A scan filling the window, with no Gaussian, points at its content and the HU window the model sees."""
    from medgmae.zeroshot import ZeroShotResult

    g = Gaussians3D(torch.zeros(1, 0, 3), torch.ones(1, 0, 3), torch.zeros(1, 0, 4), torch.zeros(1, 0))
    res = ZeroShotResult(g, g, (30, 30, 30), np.eye(4), SPEC, np.eye(4)[None], grid=(30, 30, 30), window=(24, 24, 24))
    assert res.no_gaussians_reason() == ("is the scan empty? (the model sees HU in [-175, 250]; a scan all below or "
                                         "all above it is one value to the model)")  # fmt: skip


def test_what_the_python_api_is_given_instead_of_a_scan_and_a_medgmae_is_named():
    """Paths, a voxel-MAE (no Gaussian decoder) and a 2D GMAE ended in an AttributeError, a float conversion error
    or an IndexError (the 2D one after advice to record its pre-processing, which 2D files refuse)."""
    from medgmae.networks import MedGMAE, VoxelMAE
    from medgmae.twod.gmae import GMAE2D

    scan, affine = np.zeros((20, 20, 20), np.float32), np.eye(4)
    medgmae = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, render_backend="torch")
    cases = [
        (("ct.nii.gz", affine, medgmae), r"volume must be an \(I, J, K\) array, got the path 'ct.nii.gz'.*read_volume"),
        ((scan, affine, "runs/model.pt"), r"got the path 'runs/model.pt'.*MedGMAE.from_checkpoint"),
        ((scan, affine, VoxelMAE(img_size=16, patch_size=8, model_size="tiny")), "got a VoxelMAE, which predicts none"),
        ((scan, affine, GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)),
         r"need a 3D MedGMAE model; this GMAE2D takes 2D inputs \(16, 16\)"),
    ]  # fmt: skip
    for args, said in cases:
        with pytest.raises(ValueError, match=said):
            zero_shot_gaussians(*args)


def test_a_model_in_another_dtype_decodes_a_scan_or_is_refused_naming_what_to_do():
    """A model turned to float64 was fed float32 windows, and the refusal advised converting an input the caller
    never sees; the windows now come in the weights' dtype and the Gaussians in float32, placed as the float32
    model places them. A model turned to bf16, whose heads compute in float32, is refused naming autocast."""
    from medgmae.networks import MedGMAE

    torch.manual_seed(0)
    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=6, render_backend="torch").eval()
    spec = PreprocessingSpec(spacing=2.0, input_size=16, patch_size=8)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    scan = np.random.default_rng(0).normal(0, 300, (24, 20, 16)).astype(np.float32)
    ref = zero_shot_gaussians(scan, affine, model, spec=spec, min_intensity=-1e9)
    other = zero_shot_gaussians(scan, affine, model.double(), spec=spec, min_intensity=-1e9)
    assert other.world.means.dtype == torch.float32 and other.world.num_gaussians == ref.world.num_gaussians > 0
    assert torch.allclose(other.world.means, ref.world.means, atol=1e-4)
    with pytest.raises(ValueError, match=r"weights are torch.bfloat16: .*\(model.float\(\)\), under torch.autocast"):
        zero_shot_gaussians(scan, affine, model.to(torch.bfloat16), spec=spec)


def test_the_base_class_loads_a_model_file_as_the_kind_it_records(tmp_path):
    """``MaskedAutoencoder.from_checkpoint`` (the class the package exports beside MedGMAE and VoxelMAE) refused
    every file as not of kind 'masked-autoencoder'; it now builds the model the file records."""
    from medgmae.checkpoint import make_checkpoint
    from medgmae.networks import MaskedAutoencoder, MedGMAE, VoxelMAE

    for model in (MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, render_backend="torch"),
                  VoxelMAE(img_size=16, patch_size=8, model_size="tiny")):  # fmt: skip
        path = tmp_path / f"{model.kind}.pt"
        torch.save(make_checkpoint(model.kind, model.config(), model.state_dict(), None), path)
        loaded = MaskedAutoencoder.from_checkpoint(path)
        assert type(loaded) is type(model)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_bad_settings_and_scans_are_named_before_any_work():
    """``batch_size=1.5`` ran as 1, ``min_intensity=nan`` dropped every Gaussian, an affine whose last row is
    ``[0, 0, 0, 5]`` was taken and an empty scan failed inside MONAI's ``Spacingd``."""
    probe = _Probe()
    affine = _affine("ras")
    scan = _blob_hu(_world_points(affine, SHAPE), _centre(affine)).astype(np.float32)
    run = lambda vol=scan, aff=affine, **kw: zero_shot_gaussians(vol, aff, probe, spec=SPEC, decode=probe.decode, **kw)  # noqa: E731
    for batch_size in (1.5, 0, True, "2", float("nan")):
        with pytest.raises(ValueError, match=r"batch_size must be a positive whole number, got "):
            run(batch_size=batch_size)
    for low in (float("nan"), math.inf, "0.1", None):
        with pytest.raises(ValueError, match=r"min_intensity must be a number below infinity"):
            run(min_intensity=low)
    with pytest.raises(ValueError, match=r"overlap must be a whole number of voxels in \[0, 24\), got nan"):
        run(overlap=float("nan"))
    scaled = affine.copy()
    scaled[3, 3] = 5.0
    with pytest.raises(ValueError, match=r"the affine's last row must be \[0, 0, 0, 1\], got \[0\.0, 0\.0, 0\.0, 5\.0\]"):
        run(aff=scaled)
    with pytest.raises(ValueError, match=r"volume must be a 3D \(I, J, K\) scan with voxels, got shape \(0, 30, 22\)$"):
        run(vol=scan[:0])
    with pytest.raises(ValueError, match=r"got shape \(1, 40, 30, 22\) \(a channel-first \(1, I, J, K\) volume: give "
                                         r"volume\[0\]\)"):  # fmt: skip
        run(vol=scan[None])  # as MONAI's loaders give it
    with pytest.raises(ValueError, match=r"got shape \(2, 40, 30, 22\)$"):
        run(vol=np.stack([scan, scan]))
    assert probe.windows == []
    assert run(batch_size=np.int64(2), min_intensity=-math.inf, overlap=2.0).voxel.num_gaussians > 0


def test_a_given_spec_unlike_the_models_recorded_one_is_warned_about(caplog):
    """A model recording 2 mm, HU [-175, 250] and RAS given a spec of 1.5 mm, HU [-1000, 1000] and LPS: one line per
    differing field naming the given and the recorded values; the model's own spec given back warns of nothing."""
    import dataclasses
    import logging

    probe = _Probe()
    probe.preprocessing = SPEC
    scan, affine = np.zeros(SHAPE, np.float32), np.diag([*SPACING, 1.0])
    other = dataclasses.replace(SPEC, spacing=(1.5, 1.5, 1.5), hu_window=(-1000.0, 1000.0), orientation="LPS")
    with caplog.at_level(logging.WARNING):
        zero_shot_gaussians(scan, affine, probe, spec=other, decode=probe.decode)
    lines = [r.getMessage() for r in caplog.records if "differs from" in r.getMessage()]
    assert len(lines) == 3, caplog.text
    assert "spacing [1.5, 1.5, 1.5] differs from the spacing [2.0, 2.0, 2.0] recorded in" in lines[0]
    assert "HU window [-1000.0, 1000.0] differs from the HU window [-175.0, 250.0] recorded in" in lines[1]
    assert "orientation LPS differs from the orientation RAS recorded in the model" in lines[2]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        zero_shot_gaussians(scan, affine, probe, spec=SPEC, decode=probe.decode)
    assert "differs from" not in caplog.text
