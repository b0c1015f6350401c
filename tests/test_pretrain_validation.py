"""Pre-training validation: masked-voxel PSNR / SSIM against independent references, fixed masks, the split of
the data, the pictures and the metric history."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medgmae.engine import MetricHistory
from medgmae.mae_training import (
    MaskedValidationHandler,
    build_model,
    check_pretrain_split,
    masked_psnr,
    masked_psnr_per_sample,
    masked_ssim,
    pretrain_split,
)
from medgmae.networks import MAEOutput
from medgmae.mae_training.pictures import reconstruction_figure


@pytest.mark.parametrize("seed", range(6))
def test_masked_ssim_matches_scikit_image_on_the_masked_voxels(seed):
    rng = np.random.default_rng(seed)
    shape = (1, 1, 24, 22, 20) if seed % 2 else (1, 1, 30, 26)
    target = rng.random(shape)
    pred = np.clip(target + rng.normal(0, 0.1 + 0.1 * seed, shape), -0.2, 1.2)
    mask = (rng.random(shape) < 0.6).astype(np.float64)
    got = masked_ssim(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    # skimage: Gaussian window sigma 1.5 (11 wide), population covariances, as Wang et al.; its map is valid where
    # the whole window fits, i.e. 5 voxels in from each border
    _, smap = structural_similarity(pred[0, 0], target[0, 0], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)  # fmt: skip
    inner = (slice(5, -5),) * (len(shape) - 2)
    ref = (smap[inner] * mask[0, 0][inner]).sum() / mask[0, 0][inner].sum()
    assert float(got[0]) == pytest.approx(ref, abs=2e-4)


@pytest.mark.parametrize("spatial", [(23, 31, 40), (96, 96, 96)])
@pytest.mark.parametrize("seed", range(3))
def test_masked_ssim_without_a_mask_is_scikit_images_mean_over_the_valid_region(seed, spatial):
    rng = np.random.default_rng(100 + seed)
    shape = (2, 2) + spatial  # two items of two channels, each channel an image of its own
    target = rng.random(shape)
    pred = np.clip(target + rng.normal(0, 0.05 + 0.15 * seed, shape), -0.2, 1.2)
    got = masked_ssim(torch.from_numpy(pred), torch.from_numpy(target), torch.zeros((2, 1) + spatial))
    inner = (slice(5, -5),) * 3  # where skimage's 11-wide window fits whole
    for b in range(2):
        maps = [structural_similarity(pred[b, c], target[b, c], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, full=True)[1][inner] for c in range(2)]  # fmt: skip
        assert float(got[b]) == pytest.approx(np.mean(maps), abs=1e-5)


def test_masked_ssim_is_float32_under_autocast():
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 1, 24, 20, 18, generator=g)
    pred = target + 0.05 * torch.randn(target.shape, generator=g)
    mask = (torch.rand(target.shape, generator=g) < 0.5).float()
    p64, t64 = pred[0, 0].double().numpy(), target[0, 0].double().numpy()
    _, smap = structural_similarity(p64, t64, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)  # fmt: skip
    m = mask[0, 0, 5:-5, 5:-5, 5:-5].numpy()
    ref = (smap[5:-5, 5:-5, 5:-5] * m).sum() / m.sum()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = masked_ssim(pred, target, mask)
    assert got.dtype == torch.float32
    assert float(got[0]) == pytest.approx(ref, abs=2e-4)


@pytest.mark.gpu
def test_masked_ssim_on_cuda_is_the_cpus():
    g = torch.Generator().manual_seed(6)
    target = torch.rand(2, 1, 40, 36, 30, generator=g)
    pred = target + 0.1 * torch.randn(target.shape, generator=g)
    mask = (torch.rand(target.shape, generator=g) < 0.5).float()
    cpu = masked_ssim(pred, target, mask)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cuda = masked_ssim(pred.cuda(), target.cuda(), mask.cuda())
    assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_masked_ssim_map_is_monais(dims):
    from monai.metrics.regression import KernelType, compute_ssim_and_cs

    g = torch.Generator().manual_seed(dims)
    shape = (2, 1) + (19,) * dims
    target = torch.rand(shape, generator=g)
    pred = target + 0.2 * torch.randn(shape, generator=g)
    mask = (torch.rand(shape, generator=g) < 0.5).float()
    smap, _ = compute_ssim_and_cs(pred, target, dims, [11] * dims, [1.5] * dims, 1.0, KernelType.GAUSSIAN)
    m = mask[(slice(None), slice(None)) + (slice(5, -5),) * dims]
    ref = (smap * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    assert torch.allclose(masked_ssim(pred, target, mask), ref, atol=1e-5)
    # no masked voxel where the map is defined: the mean over all of it
    assert torch.allclose(masked_ssim(pred, target, torch.zeros_like(mask)), smap.flatten(1).mean(1), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_masked_psnr_per_sample_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    target, pred = rng.random((3, 1, 8, 8, 8)), rng.random((3, 1, 8, 8, 8))
    mask = (rng.random((3, 1, 8, 8, 8)) < 0.5).astype(np.float64)
    got = masked_psnr_per_sample(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    for i in range(3):
        mse = ((pred[i] - target[i]) ** 2)[mask[i] > 0].mean()
        assert float(got[i]) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_masked_psnr_pools_the_batch_like_numpy(seed):
    """The trainer's ``psnr_masked``: one MSE over every masked voxel of the batch, channels included."""
    rng = np.random.default_rng(seed)
    channels = 1 + seed % 2
    target, pred = rng.random((3, channels, 6, 7, 5)), rng.random((3, channels, 6, 7, 5))
    mask = (rng.random((3, 1, 6, 7, 5)) < 0.3).astype(np.float64)
    out = MAEOutput(loss=torch.tensor(0.0), pred=torch.from_numpy(pred), mask=torch.from_numpy(mask), patch_mask=None)
    mse = ((pred - target) ** 2)[np.broadcast_to(mask, pred.shape) > 0].mean()
    assert float(masked_psnr(out, torch.from_numpy(target))) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-5)
    assert float(masked_psnr(out, torch.from_numpy(target), data_range=2.0)) == pytest.approx(
        10 * math.log10(4.0 / mse), rel=1e-5
    )


@pytest.mark.parametrize("kind", ["voxel-mae", "medgmae"])
def test_validation_uses_fixed_masks_and_leaves_training_randomness_alone(kind, tmp_path):
    torch.manual_seed(0)
    model = build_model(kind, "tiny", img_size=16, patch_size=8, num_gaussians=4)
    crops = [{"image": torch.rand(1, 16, 16, 16)} for _ in range(3)]
    history = MetricHistory()
    val = MaskedValidationHandler(model, crops, history, tmp_path, seed=3)
    state = torch.get_rng_state()
    first = val.evaluate()
    assert torch.equal(torch.get_rng_state(), state)  # masks come from the handler's own generators
    assert val.evaluate() == first and all(math.isfinite(v) for v in first.values())
    assert model.training  # restored after evaluation
    # the reference: each crop under its own seeded mask, scored on the masked voxels
    x, out = val.masked_output(1)
    m = out.mask[0, 0].bool()
    mse = float((out.pred[0, 0] - x[0, 0])[m].double().square().mean())
    assert float(masked_psnr_per_sample(out.pred, x, out.mask)[0]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert 0 < float(out.mask.mean()) < 1


def test_history_best_and_state_roundtrip():
    h = MetricHistory("val_psnr", "max")
    assert h.update_best(1, 10.0) and not h.update_best(2, float("nan")) and not h.update_best(3, 9.0)
    h.record("val_psnr", 1, 10.0)
    h.record("val_psnr", 1, 11.0)  # same epoch again: replaced
    other = MetricHistory("val_psnr")
    other.load_state_dict(h.state_dict())
    assert other.get("val_psnr") == ([1], [11.0]) and (other.best_epoch, other.best_value) == (1, 10.0)
    with pytest.raises(ValueError, match="val_loss"):
        MetricHistory("val_loss").load_state_dict(h.state_dict())


def _volumes(folder, names):
    import nibabel as nib

    folder.mkdir()
    for n in names:
        nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), str(folder / n))  # not blank


def test_split_holds_out_validation_volumes(tmp_path):
    names = [f"v{i}.nii.gz" for i in range(10)]
    _volumes(tmp_path / "vols", names)
    s = pretrain_split(str(tmp_path / "vols"), tmp_path, val_fraction=0.2, seed=1)
    assert len(s["validation"]) == 2 and len(s["training"]) == 8
    assert not {i["image"] for i in s["validation"]} & {i["image"] for i in s["training"]}
    assert s == pretrain_split(str(tmp_path / "vols"), tmp_path, val_fraction=0.2, seed=1)  # seeded draw
    # a Decathlon validation list wins over the fraction
    data = {"training": [{"image": f"vols/{n}"} for n in names[:7]], "validation": [{"image": f"vols/{names[9]}"}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    s = pretrain_split(str(tmp_path / "d.json"), tmp_path, val_fraction=0.5)
    assert len(s["training"]) == 7 and [i["image"].split("/")[-1] for i in s["validation"]] == ["v9.nii.gz"]
    with pytest.raises(ValueError, match="val_fraction"):
        pretrain_split(str(tmp_path / "vols"), tmp_path, val_fraction=1.0)


def test_split_generates_held_out_phantoms(tmp_path):
    s = pretrain_split("", tmp_path, num_phantoms=2, num_val_phantoms=1, phantom_shape=[24, 24, 20], phantom_spacing=4.0)
    assert [i["image"].split("/")[-1] for i in s["training"]] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    assert [i["image"].split("/")[-1] for i in s["validation"]] == ["case_0002.nii.gz"]


def test_a_resume_with_other_phantom_settings_is_refused_before_writing(tmp_path, folder_state):
    """With a checkpoint in the run folder, phantoms generated there with other settings refuse the resume and are
    left as they were (they would otherwise be generated again before the resume check sees the data); with the
    same settings, or without a checkpoint, the split is made as before. The pre-check writes no ledger until it
    is called (after the resume check)."""
    kwargs = {"num_phantoms": 2, "num_val_phantoms": 1, "phantom_spacing": 4.0, "validate": False}
    first = pretrain_split("", tmp_path, phantom_shape=[24, 24, 20], **kwargs)
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    before = folder_state(tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(phantom_shape: saved \[24, 24, 20\], now \[24, 24, 22\]\)"):
        pretrain_split("", tmp_path, phantom_shape=[24, 24, 22], resume=True, **kwargs)
    with pytest.raises(ValueError, match=r"num_phantoms \+ num_val_phantoms: saved 3, now 4; num_val_phantoms: saved 1"):
        pretrain_split("", tmp_path, phantom_shape=[24, 24, 20], resume=True, **{**kwargs, "num_val_phantoms": 2})
    assert folder_state(tmp_path) == before
    assert pretrain_split("", tmp_path, phantom_shape=[24, 24, 20], resume=True, **kwargs) == first
    assert folder_state(tmp_path) == before
    checked = check_pretrain_split(first, ledger_dir=tmp_path / "cache")
    assert checked is first and (tmp_path / "cache" / "precheck.json").is_file()
    (tmp_path / "checkpoint_epoch=1.pt").unlink()  # no checkpoint: a fresh start, phantoms generated anew
    other = pretrain_split("", tmp_path, phantom_shape=[24, 24, 22], resume=True, **kwargs)
    assert nib.load(other["training"][0]["image"]).shape == (24, 24, 22)


def test_label_maps_some_volumes_lack_are_not_read(tmp_path, caplog):
    """Pre-training draws its crops with label maps only when every volume has one (the bundle's has_labels): where
    some lack one, the others' maps are not read, so a corrupt one does not stop the run, and a line says so; where
    every volume has one, a corrupt map is refused naming it."""
    from medgmae.data.datalist import DatasetError

    split = pretrain_split("", tmp_path, num_phantoms=2, num_val_phantoms=1, phantom_shape=[24, 24, 20],
                           phantom_spacing=4.0, validate=False)  # fmt: skip
    items = split["training"] + split["validation"]
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    mixed = {**split, "training": [{"image": items[0]["image"], "label": str(tmp_path / "broken.nii.gz")}, *(
        {"image": it["image"]} for it in items[1:2])], "validation": [{"image": items[2]["image"]}]}  # fmt: skip
    with caplog.at_level("INFO", logger="medgmae.mae_training"):
        assert check_pretrain_split(mixed) is mixed
    assert "1 of the 3 volumes have a label map: crops are drawn over each volume's foreground box, without the label maps" in caplog.text
    every = {**mixed, "training": [mixed["training"][0], {"image": items[1]["image"], "label": items[1]["label"]}],
             "validation": [{"image": items[2]["image"], "label": items[2]["label"]}]}  # fmt: skip
    with pytest.raises(DatasetError, match="broken.nii.gz"):
        check_pretrain_split(every)


def test_reconstruction_figure_layout():
    t = np.random.default_rng(0).random((20, 24, 16))
    mask = np.zeros_like(t)
    mask[:10] = 1
    centres = np.array([[10.0, 12.0, 8.0], [4.0, 3.0, 3.0]])
    img = reconstruction_figure(t, t * 0.5, mask, centres, np.array([0.2, 0.9]), title="x")
    # rotated mid-slices are 16x24, 16x20 and 24x20 voxels, enlarged f = ceil(160 / 24) = 7 times; cells take the
    # largest tile under a 14-pixel label, 2-pixel gaps, a 14-pixel title band on top
    f = 7
    cell_h, cell_w = 24 * f + 14, 24 * f
    assert img.shape == (14 + 4 * (cell_h + 2) + 2, 3 * (cell_w + 2) + 2, 3)
    assert reconstruction_figure(t, t, mask).shape[0] == 14 + 3 * (cell_h + 2) + 2  # voxel-MAE: no centres row
    assert img.astype(float).var() > 100.0


def test_validation_pictures_mark_the_patient_directions_of_a_ras_crop_only(tmp_path):
    """Pre-training's validation pictures carry R/L, A/P, S/I at each tile's edges (yellow) when the run's crops are
    in RAS order, the order the slices are drawn for; a run whose spec orientation is another (``LPS``) is drawn
    unmarked rather than with directions that would be wrong."""
    from medgmae.engine.figures import LETTER_COLOUR
    from medgmae.mae_training.pictures import ValidationPictureHandler

    t = np.zeros((20, 24, 16))  # no yellow in a grey image
    yellow = lambda img: int(np.all(img == LETTER_COLOUR, axis=-1).sum())  # noqa: E731
    assert yellow(reconstruction_figure(t, t, t, np.zeros((1, 3)), np.ones(1), letters=False)) == 0
    assert yellow(reconstruction_figure(t, t, t, np.zeros((1, 3)), np.ones(1))) > 12 * 4 * 10  # 12 tiles, 4 letters
    assert ValidationPictureHandler(None, tmp_path, orientation="ras").letters is True
    assert ValidationPictureHandler(None, tmp_path, orientation="LPS").letters is False


def test_best_model_records_the_epoch_and_psnr_it_was_chosen_by(tmp_path):
    """``best_model.pt`` had an empty ``extra``: nothing in the file said which epoch or PSNR made it the best (the
    summary did). It records both, and stays a ``model.pt`` of the same kind, weights and pre-processing."""
    from medgmae.checkpoint import load_checkpoint
    from medgmae.mae_training.validation import save_best_model
    from medgmae.networks.medgmae import MedGMAE

    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    path = save_best_model(model, tmp_path / "new" / "run", epoch=7, psnr=23.5)
    ckpt = load_checkpoint(path, "medgmae")
    assert ckpt.extra["best"] == {"epoch": 7, "val_psnr": 23.5}
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "new" / "run").iterdir()) == ["best_model.pt"]  # no stray encoder


def test_the_picture_is_titled_with_its_own_crops_psnr(tmp_path, monkeypatch):
    """The picture shows the first validation crop; its title gave that crop's PSNR as if it were the validation
    PSNR, which is the mean over the crops: the title names the crop."""
    from types import SimpleNamespace

    import medgmae.mae_training.pictures as pictures

    x = torch.full((1, 1, 8, 8, 8), 0.5)
    out = SimpleNamespace(pred=x - 0.1, mask=torch.ones_like(x), gaussians=None)  # MSE 0.01: 20 dB
    validator = SimpleNamespace(masked_output=lambda i: (x, out), crops=lambda: [x[0], x[0]])
    titles = []
    monkeypatch.setattr(pictures, "reconstruction_figure", lambda *a, title="", **k: titles.append(title))
    pictures.ValidationPictureHandler(validator, tmp_path).figure(3)
    assert titles == ["epoch 3: validation crop 1 of 2: masked PSNR 20.00 dB"]
    assert pictures.picture_title(1, 10.357, 1) == "epoch 1: validation crop 1: masked PSNR 10.36 dB"
