"""Tests of 2D GMAE: head activations, masked loss, zero-shot layering / figure-ground / edges, image I/O, CLI."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.twod import layering as L
from medgmae.twod.cli import main
from medgmae.twod.gmae import GMAE2D, SplatGaussians, activate_splat_heads
from medgmae.twod.images import read_image, read_image_source, read_mask, to_model_input
from medgmae.twod.render import render_gaussians_2d


def _tiny(in_channels=1, k=32, size=32, **kw):
    torch.manual_seed(0)
    return GMAE2D(img_size=size, patch_size=8, in_channels=in_channels, model_size="tiny", num_gaussians=k, **kw)


# ------------------------------------------------------------------------------------------------ model
def test_head_activations_formulae():
    g = torch.Generator().manual_seed(0)
    raw = [torch.randn(2, 5, n, generator=g) * 3 for n in (3, 3, 4, 3)] + [torch.randn(2, 5, generator=g) * 3]
    out = activate_splat_heads(*raw, scale_cap=1.5, min_scale=1e-4)
    torch.testing.assert_close(out.means, torch.tanh(raw[0]))
    torch.testing.assert_close(out.scales, (1.5 / (1 + torch.exp(-raw[1]))).clamp_min(1e-4))
    torch.testing.assert_close(out.quats, raw[2] / raw[2].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.colors, 1 / (1 + torch.exp(-raw[3])))
    torch.testing.assert_close(out.opacities, 1 / (1 + torch.exp(-raw[4])))


@pytest.mark.parametrize("channels", [1, 3])
def test_model_heads_are_wired_to_the_activations(channels):
    model = _tiny(channels, k=16, scale_cap=2.0)
    biases = {"head_mean": [0.3, -2.0, 0.7], "head_scale": [-1.0, 0.0, 1.0], "head_rotation": [1.0, 2.0, -2.0, 4.0],
              "head_color": [0.5, -0.5, 1.5][:channels], "head_opacity": [-0.3]}  # fmt: skip
    with torch.no_grad():
        for name, b in biases.items():
            getattr(model, name).weight.zero_()
            getattr(model, name).bias.copy_(torch.tensor(b))
    g = model.predict_gaussians(torch.rand(2, channels, 32, 32))
    assert g.means.shape == (2, 16, 3) and g.colors.shape == (2, 16, channels)
    t = lambda v: torch.tensor(v).expand(2, 16, -1)  # noqa: E731
    torch.testing.assert_close(g.means, torch.tanh(t(biases["head_mean"])))
    torch.testing.assert_close(g.scales, 2.0 * torch.sigmoid(t(biases["head_scale"])))
    torch.testing.assert_close(g.quats, t([0.2, 0.4, -0.4, 0.8]))
    torch.testing.assert_close(g.colors, torch.sigmoid(t(biases["head_color"])))
    torch.testing.assert_close(g.opacities, torch.sigmoid(torch.tensor(-0.3)).expand(2, 16))


@pytest.mark.parametrize("channels", [1, 3])
def test_loss_is_mse_on_masked_pixels_only(channels):
    model = _tiny(channels)
    x = torch.rand(3, channels, 32, 32)
    out = model(x, generator=torch.Generator().manual_seed(1))
    assert out.pred.shape == x.shape and out.mask.shape == (3, 1, 32, 32)
    assert out.patch_mask.sum(1).eq(12).all()  # 75 % of 16 patches
    # the pixel mask is the patch mask, patch by patch
    patches = out.mask.reshape(3, 4, 8, 4, 8).permute(0, 1, 3, 2, 4).reshape(3, 16, 64)
    assert torch.equal(patches.amin(-1), patches.amax(-1)) and torch.equal(patches[..., 0], out.patch_mask)
    err = (out.pred.detach() - x).square()
    expected = (err * out.mask).sum() / (out.mask.sum() * channels)
    torch.testing.assert_close(out.loss.detach(), expected)
    out.pred.retain_grad()
    out.loss.backward()
    visible = out.mask.expand_as(x) == 0
    assert torch.all(out.pred.grad[visible] == 0) and torch.all(out.pred.grad[~visible] != 0)  # visible pixels left out
    assert model.query_tokens.grad.abs().sum() > 0 and model.encoder.patch_embedding.patch_embeddings.weight.grad is not None


def test_number_of_gaussians_does_not_depend_on_the_mask():
    model = _tiny(k=24)
    x = torch.rand(2, 1, 32, 32)
    assert model.predict_gaussians(x).num_gaussians == 24
    assert model.predict_gaussians(x, mask_ratio=0.75, generator=torch.Generator().manual_seed(0)).num_gaussians == 24


def test_bad_model_arguments_and_inputs():
    with pytest.raises(ValueError, match="model_size"):
        GMAE2D(img_size=32, patch_size=8, model_size="huge")
    with pytest.raises(ValueError, match="mask_ratio"):
        GMAE2D(img_size=32, patch_size=8, model_size="tiny", mask_ratio=1.0)
    with pytest.raises(ValueError, match="patch_size"):
        GMAE2D(img_size=30, patch_size=8, model_size="tiny")
    with pytest.raises(ValueError, match="expected input"):
        _tiny(1)(torch.rand(1, 3, 32, 32))


def test_checkpoint_round_trip_and_wrong_kind(tmp_path):
    model = _tiny(3, scale_cap=1.5).eval()
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    loaded = GMAE2D.from_checkpoint(tmp_path / "model.pt").eval()
    assert loaded.config() == model.config()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.predict_gaussians(x).as_tensor(), model.predict_gaussians(x).as_tensor())
    torch.save({"kind": "medgmae", "config": {}, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is a medgmae checkpoint.*expected gmae2d"):
        GMAE2D.from_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        GMAE2D.from_checkpoint(tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------------ layers
def _random_splats(b=2, k=40, c=3, seed=0, max_opacity=1.0):
    g = torch.Generator().manual_seed(seed)
    return SplatGaussians(
        means=torch.rand(b, k, 3, generator=g, dtype=torch.float64) * 2 - 1,
        scales=torch.rand(b, k, 3, generator=g, dtype=torch.float64) * 0.3 + 0.05,
        quats=torch.nn.functional.normalize(torch.randn(b, k, 4, generator=g, dtype=torch.float64), dim=-1),
        colors=torch.rand(b, k, c, generator=g, dtype=torch.float64),
        opacities=torch.rand(b, k, generator=g, dtype=torch.float64) * max_opacity,
    )


@pytest.mark.parametrize("num_layers", [1, 3, 8, 40])
def test_depth_layers_partition_the_gaussians_front_to_back(num_layers):
    g = _random_splats(k=40)
    groups = L.depth_layers(g, num_layers)
    assert len(groups) == num_layers
    sizes = [grp.shape[1] for grp in groups]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 40
    for b in range(2):
        allidx = torch.cat([grp[b] for grp in groups])
        assert torch.equal(allidx.sort().values, torch.arange(40))  # a partition: every Gaussian exactly once
        depth = [g.means[b, grp[b], 2] for grp in groups]
        assert all(d0.max() <= d1.min() for d0, d1 in zip(depth, depth[1:]))  # nearer layers first
    ids = L.layer_ids(g, num_layers)
    for n, grp in enumerate(groups):
        assert ids.gather(1, grp).eq(n).all()
    with pytest.raises(ValueError, match="exceeds"):
        L.depth_layers(g, 41)


def test_full_stack_equals_full_render():
    g = _random_splats(k=40, max_opacity=0.6)
    full, alpha = render_gaussians_2d(*g.tensors(), (20, 24), "torch", return_alpha=True)
    assert alpha.max() < 1 - 1e-3  # no early stop anywhere, so layer-wise compositing is exact
    cumulative = L.cumulative_renders(g, 5, (20, 24), "torch")
    torch.testing.assert_close(cumulative[:, -1], full)
    colors, alphas = L.render_layers(g, 5, (20, 24), "torch")
    torch.testing.assert_close(L.composite_layers(colors, alphas), full, atol=1e-12, rtol=1e-10)
    partial = L.partial_renders(g, [8, 16, 40], (20, 24), "torch")
    torch.testing.assert_close(partial[:, 1], cumulative[:, 1])  # the 16 nearest = layers 0 and 1 of 5
    torch.testing.assert_close(partial[:, 2], full)
    assert L.partial_render_counts(200) == [32, 64, 128, 200] and L.partial_render_counts(64) == [32, 64]


def _figure_ground_scene():
    """Near layer: 4 large dim Gaussians (a smooth background). Far layer: 4 opaque small bright Gaussians along a
    horizontal bar; the reference figure is where the bar's Gaussians alone reach alpha 0.5."""
    near = dict(means=[[-0.5, -0.5, -1], [0.5, -0.5, -1], [-0.5, 0.5, -1], [0.5, 0.5, -1]], scale=0.6, color=0.3, opacity=0.35)
    far = dict(means=[[x, 0.1, 1.0] for x in (-0.45, -0.15, 0.15, 0.45)], scale=0.12, color=1.0, opacity=0.99)
    parts = []
    for p in (near, far):
        k = len(p["means"])
        parts.append(SplatGaussians(
            means=torch.tensor(p["means"], dtype=torch.float64)[None],
            scales=torch.full((1, k, 3), p["scale"], dtype=torch.float64),
            quats=torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(1, k, 4),
            colors=torch.full((1, k, 1), p["color"], dtype=torch.float64),
            opacities=torch.full((1, k), p["opacity"], dtype=torch.float64),
        ))  # fmt: skip
    g = SplatGaussians(*(torch.cat(ts, 1) for ts in zip(parts[0].tensors(), parts[1].tensors())))
    _, far_alpha = render_gaussians_2d(*parts[1].tensors(), (48, 48), "torch", return_alpha=True)
    return g, far_alpha[0, 0] > 0.5


def test_figure_ground_recovers_a_known_figure():
    g, reference = _figure_ground_scene()
    assignment = L.layer_assignment(L.cumulative_renders(g, 2, (48, 48), "torch"), threshold=0.25)
    assert set(assignment.unique().tolist()) <= {-1, 0, 1}
    fg = L.figure_ground(assignment, split=1)[0]
    assert 0.05 < reference.float().mean() < 0.5
    assert L.mask_iou(fg, reference) > 0.85
    # the near background alone gives nothing: no pixel is assigned beyond layer 0 when the far layer is dropped
    near_only = SplatGaussians(*(t[:, :4] for t in g.tensors()))
    assert (L.layer_assignment(L.cumulative_renders(near_only, 1, (48, 48), "torch"), 0.25) <= 0).all()


def test_layer_assignment_rule_on_a_handmade_stack():
    cumulative = torch.zeros(1, 3, 1, 2, 3)
    cumulative[0, 0, 0] = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    cumulative[0, 1, 0] = torch.tensor([[0.5, 0.3, 0.9], [0.52, 0.5, 0.0]])
    cumulative[0, 2, 0] = torch.tensor([[0.1, 0.3, 0.9], [0.52, 0.5, 0.0]])
    expected = torch.tensor([[[2, 1, 1], [0, 0, -1]]])
    assert torch.equal(L.layer_assignment(cumulative, threshold=0.1), expected)


def test_edges_of_an_assignment_map():
    a = torch.zeros(1, 6, 6, dtype=torch.long)
    a[0, 2:4, 2:5] = 3
    edges = L.edges_from_assignment(a)[0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1, 2:5] = expected[3, 2:5] = True  # above the block and its last row
    expected[2:4, 1] = expected[2:4, 4] = True  # left of the block and its last column
    assert torch.equal(edges, expected)
    g, reference = _figure_ground_scene()
    maps = L.zero_shot_edges(g, (48, 48), granularities=(2, 4), threshold=0.25, backend="torch")
    assert set(maps) == {2, 4}
    ref_edges = L.edges_from_assignment(reference.long()[None])[0]
    near = torch.nn.functional.max_pool2d(ref_edges.float()[None, None], 5, 1, 2)[0, 0] > 0
    assert maps[2][0].sum() > 0 and (maps[2][0] & near).sum() / maps[2][0].sum() > 0.9  # edges lie on the figure's outline


def test_mask_iou_values():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True
    b[1:3] = True
    assert float(L.mask_iou(a, b)) == pytest.approx(4 / 12)
    assert float(L.mask_iou(torch.zeros(3, 3), torch.zeros(3, 3))) == 1.0


# ------------------------------------------------------------------------------------------------ I/O
def _write_dicom(path, hu, rgb=False, iop=None, spacing=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if spacing is not None:  # (between rows, between columns) in mm
        ds.PixelSpacing = [float(v) for v in spacing]
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0),
                                 (1, 0, 0, 0, 0, -1), (0, -1, 0, 0, 0, 1)])  # fmt: skip
def test_a_dicom_frame_is_shown_as_the_same_slice_in_nifti(tmp_path, iop):
    """A DICOM frame and a NIfTI of the same pixels in the same place (its affine built from the frame's
    ImageOrientationPatient, LPS -> RAS) read as the same picture: the NIfTI path's radiological view (nibabel's
    reorientation) is the oracle, for axial, flipped, transposed, coronal and sagittal frames of anisotropic pixels."""
    hu = np.zeros((5, 7), np.float32) - 1000
    hu[0, :3], hu[1:4, 0] = 500, 200  # an asymmetric mark: no flip or transpose maps it onto itself
    _write_dicom(tmp_path / "f.dcm", hu, iop=iop, spacing=(0.7, 1.3))  # anisotropic pixels
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)  # the column index steps along the row direction by the column spacing, and vice versa
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = 1.3 * ras @ row, 0.7 * ras @ col, 2.5 * ras @ np.cross(row, col)
    affine[:3, 3] = [12.0, -7.0, 30.0]
    nib.save(nib.Nifti1Image(hu.T[:, :, None], affine), str(tmp_path / "f.nii.gz"))  # (i, j) = (column, row)
    window = (-1000.0, 600.0)
    np.testing.assert_array_equal(read_image(tmp_path / "f.dcm", window=window), read_image(tmp_path / "f.nii.gz", window=window))


def test_a_slice_beyond_a_single_frame_or_slice_is_refused(tmp_path):
    """``--slice 40`` of a single-frame DICOM or a one-slice NIfTI showed slice 0 without a word (a volume's
    slice out of range was refused): refused alike, slice 0 (or none given) read as before."""
    hu = np.zeros((5, 7), np.float32)
    _write_dicom(tmp_path / "f.dcm", hu)
    nib.save(nib.Nifti1Image(hu[:, :, None], np.eye(4)), str(tmp_path / "f.nii.gz"))
    for name, what in (("f.dcm", "frame 40 is outside the file's 1 frame"), ("f.nii.gz", "slice 40 is outside the image's 1 slice")):
        with pytest.raises(ValueError, match=what):
            read_image(tmp_path / name, slice_index=40)
        np.testing.assert_array_equal(read_image(tmp_path / name, slice_index=0), read_image(tmp_path / name))


def test_a_one_slice_reference_is_the_images_slice_whatever_the_index(tmp_path):
    """``--slice 2 --reference mask.dcm`` of a volume with a single-frame mask of that slice was read before the
    single-frame refusal; it still is (the mask has no other slice), and a multi-slice mask keeps to the index."""
    from medgmae.twod.images import read_reference

    vol = np.zeros((7, 5, 4), np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    image = read_image(tmp_path / "vol.nii.gz", slice_index=2)
    mask = np.zeros((5, 7), np.float32)
    mask[1:3, 2:5] = 1  # rows x columns as the image shows them
    _write_dicom(tmp_path / "mask.dcm", mask - 1024)  # stored 0 / 1 under the CT's intercept
    got = read_reference(tmp_path / "mask.dcm", tmp_path / "vol.nii.gz", image.shape[-2:], slice_index=2)
    assert got.shape == image.shape[-2:] and got.sum() == 6
    with pytest.raises(ValueError, match="slice 9 is outside"):
        read_reference(tmp_path / "vol.nii.gz", tmp_path / "vol.nii.gz", image.shape[-2:], slice_index=9)
    labels = np.zeros((7, 5, 4), np.float32)
    labels[2:4, 1:3, 2], labels[0, 0, 0] = 1, np.nan  # a mask's stored NaN is background, as read_mask reads it
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "labels.nii.gz"))
    assert read_reference(tmp_path / "labels.nii.gz", tmp_path / "vol.nii.gz", image.shape[-2:], slice_index=2).sum() == 4


def test_read_image_formats(tmp_path):
    rgb = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    grey16 = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    np.testing.assert_allclose(read_image(tmp_path / "grey16.png")[0], grey16 / 65535.0, atol=1e-6)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    assert read_image(tmp_path / "rgb.jpg").shape == (3, 5, 7)
    # NIfTI volume (RAS): slice k shown radiologically, windowed
    vol = np.zeros((6, 5, 3), np.float32)
    vol[5, 4, 1] = 100.0  # patient's far right, most anterior voxel of slice 1
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    img = read_image(tmp_path / "vol.nii.gz", slice_index=1, window=(0, 100))
    assert img.shape == (1, 5, 6) and img[0, 0, 0] == 1.0 and img.sum() == 1.0
    # DICOM: rescale intercept then the file's window (-160, 240)
    hu = np.array([[-1000, -160, 40], [240, 500, 0]], np.float32)
    _write_dicom(tmp_path / "ct.dcm", hu)
    np.testing.assert_allclose(read_image(tmp_path / "ct.dcm")[0], np.clip((hu + 160) / 400, 0, 1), atol=1e-6)
    # which frame and window were used: the file's centre 40 / width 400, its only frame
    source = read_image_source(tmp_path / "ct.dcm")[1]
    assert source == {"slice": {"axis": "frame", "index": 0, "count": 1}, "window": [-160.0, 240.0],
                      "window_source": "dicom file"}  # fmt: skip
    assert read_image_source(tmp_path / "rgb.png")[1] == {"slice": None, "window": None, "window_source": None}


def test_read_mask_uses_the_stored_values_not_the_rescale(tmp_path):
    """A mask written with a CT's header (RescaleIntercept or scl_inter -1024) stores 0 on its background; after
    the rescale that is -1024, which must not read as foreground."""
    import pydicom

    mask = np.zeros((6, 8), np.float32)
    mask[1:4, 2:7] = 1
    mask[5, 0] = 2  # a second label
    _write_dicom(tmp_path / "mask.dcm", mask - 1024)  # stored values: the mask; RescaleIntercept -1024
    ds = pydicom.dcmread(tmp_path / "mask.dcm")
    assert float(ds.RescaleIntercept) == -1024 and np.array_equal(ds.pixel_array, mask)  # really such a file
    assert (read_image(tmp_path / "mask.dcm", window=(-2000, 0)) > 0).all()  # as an image: -1024 HU everywhere
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.dcm"), mask > 0)
    vol = np.zeros((5, 4, 3), np.int16)
    vol[1:3, 0:2, 1] = 1
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "mask.nii.gz")
    assert nib.load(tmp_path / "mask.nii.gz").dataobj.inter == -1024  # the file keeps the intercept
    expected = vol[:, :, 1][::-1, ::-1].T > 0  # the middle slice, shown radiologically (RAS identity affine)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.nii.gz"), expected)
    assert expected.sum() == 4


def test_read_image_integer_scale_is_the_file_type_maximum(tmp_path):
    """8-bit files are divided by 255 and 16-bit files by 65535, whatever the image's own range: a dark 16-bit
    image is neither stretched to its maximum nor taken for 8-bit because its values stay below 256."""
    dark = np.array([[0, 1, 100], [255, 128, 7]], np.uint16)
    bright = np.array([[0, 1000, 30000], [65535, 12345, 257]], np.uint16)
    for name, values in (("dark", dark), ("bright", bright)):
        for ext in ("png", "tif"):
            Image.fromarray(values).save(tmp_path / f"{name}.{ext}")
            assert Image.open(tmp_path / f"{name}.{ext}").mode.startswith("I;16")  # really a 16-bit file
            np.testing.assert_array_equal(read_image(tmp_path / f"{name}.{ext}")[0], (values / 65535.0).astype(np.float32))
    # 32-bit integer images (PIL mode "I") are read on the same 16-bit scale
    Image.fromarray(dark.astype(np.int32)).save(tmp_path / "dark32.tif")
    assert Image.open(tmp_path / "dark32.tif").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "dark32.tif")[0], (dark / 65535.0).astype(np.float32))
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide\.tif.*outside the 16-bit range"):
        read_image(tmp_path / "wide.tif")
    # the same stored values in an 8-bit file read on the 8-bit scale
    Image.fromarray(dark.astype(np.uint8)).save(tmp_path / "dark8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "dark8.png")[0], (dark / 255.0).astype(np.float32))


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported image type"):
        read_image(tmp_path / "notes.txt")
    nib.save(nib.Nifti1Image(np.full((4, 4), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match="nan.nii.gz.*NaN"):
        read_image(tmp_path / "nan.nii.gz")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(ValueError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")


def test_to_model_input_channels_and_size():
    rgb = np.random.default_rng(0).random((3, 40, 20), dtype=np.float32)
    grey = to_model_input(rgb, 1, (20, 10))
    assert grey.shape == (1, 1, 20, 10)
    luma = (rgb * np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]).sum(0)
    np.testing.assert_allclose(grey[0, 0].numpy(), luma.reshape(20, 2, 10, 2).mean((1, 3)), atol=1e-5)
    assert to_model_input(rgb[:1], 3, (40, 20)).shape == (1, 3, 40, 20)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture()
def cli_files(tmp_path):
    model = _tiny(1, k=48)
    ckpt = tmp_path / "model.pt"
    torch.save(model.model_checkpoint(), ckpt)
    img = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return model, ckpt, tmp_path


def test_cli_layers_segment_edges_end_to_end(cli_files):
    model, ckpt, d = cli_files
    common = ["--checkpoint", str(ckpt), "--image", str(d / "img.png")]
    assert main(["layers", *common, "--out", str(d / "layers"), "--num-layers", "4", "--first-count", "12"]) == 0
    stack = np.asarray(Image.open(d / "layers" / "layer_stack.png"))
    assert stack.shape == (2 + 14 + 160 + 2, 2 + 4 * 162, 3)  # 4 tiles of the image's 40 x 40 enlarged x4, label bands, 2 px gaps
    partial = np.asarray(Image.open(d / "layers" / "partial_renders.png"))
    assert partial.shape[1] == 2 + 4 * 162  # input + K = 12, 24, 48
    assert json.loads((d / "layers" / "layers.json").read_text())["partial_render_counts"] == [12, 24, 48]

    assert main(["segment", *common, "--out", str(d / "seg"), "--num-layers", "4", "--reference", str(d / "mask.png")]) == 0
    summary = json.loads((d / "seg" / "segment.json").read_text())
    fg = np.asarray(Image.open(d / "seg" / "foreground.png")) > 0
    ref = np.zeros((40, 40), bool)
    ref[10:30, 5:25] = True  # the mask on the image's own 40 x 40 grid, where the outputs are rendered
    expected_iou = (fg & ref).sum() / max((fg | ref).sum(), 1)
    assert summary["iou"] == pytest.approx(expected_iou, abs=1e-6)
    # the same computation through the API
    x = to_model_input(read_image(d / "img.png"), 1, (32, 32))
    g = model.eval().predict_gaussians(x)
    api_fg = L.figure_ground(L.layer_assignment(L.cumulative_renders(g, 4, (40, 40), "torch"), 0.05), 2)[0]
    assert np.array_equal(fg, api_fg.numpy())

    assert main(["edges", *common, "--out", str(d / "edges"), "--granularities", "2", "4"]) == 0
    assert sorted(p.name for p in (d / "edges").iterdir()) == ["edges.json", "edges_l2.png", "edges_l4.png"]


def test_cli_paths_with_an_unexpanded_tilde_are_the_home_folder(cli_files, tmp_path, monkeypatch):
    """Quoted ``"~/..."`` paths (the shell leaves them) are the home folder's, for every path flag (``--checkpoint``,
    ``--image``, ``--out``: argparse makes them ``Path`` objects): it had written into a folder called ``~`` here."""
    _, ckpt, d = cli_files
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), elsewhere.mkdir()
    for f in (ckpt, d / "img.png"):
        (home / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    assert main(["edges", "--checkpoint", "~/model.pt", "--image", "~/img.png", "--out", "~/edges", "--granularities", "2"]) == 0
    assert sorted(p.name for p in (home / "edges").iterdir()) == ["edges.json", "edges_l2.png"]
    assert list(elsewhere.iterdir()) == []


def test_cli_bad_inputs_exit_2_and_write_nothing(cli_files, capsys, tmp_path):
    _, ckpt, d = cli_files
    out = tmp_path / "never"
    cases = [
        ["segment", "--checkpoint", str(d / "nope.pt"), "--image", str(d / "img.png")],
        ["segment", "--checkpoint", str(ckpt), "--image", str(d / "missing.png")],
        ["segment", "--checkpoint", str(ckpt), "--image", str(d / "img.png"), "--num-layers", "500"],
        ["segment", "--checkpoint", str(ckpt), "--image", str(d / "img.png"), "--split", "9", "--num-layers", "4"],
        ["layers", "--checkpoint", str(d / "img.png"), "--image", str(d / "img.png")],
    ]
    for argv in cases:
        assert main([*argv, "--out", str(out)]) == 2, argv
        assert not out.exists()
    err = capsys.readouterr().err
    assert "nope.pt" in err and "missing.png" in err and "exceeds" in err
    for argv in (["segment", "--checkpoint", str(ckpt)], ["explode"], ["edges", "--checkpoint", str(ckpt), "--image", "x.png",
                 "--out", str(out), "--granularities", "-3"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    torch.save({"kind": "gvit", "config": {}, "state_dict": {}}, d / "gvit.pt")
    assert main(["edges", "--checkpoint", str(d / "gvit.pt"), "--image", str(d / "img.png"), "--out", str(out)]) == 2
    assert "gvit" in capsys.readouterr().err


def test_cli_device_defaults_to_auto_and_help_shows_defaults(cli_files, monkeypatch, capsys):
    import medgmae.twod.cli as cli

    _, ckpt, d = cli_files
    asked = []
    monkeypatch.setattr(cli, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    argv = ["--checkpoint", str(ckpt), "--image", str(d / "img.png"), "--out", str(d / "auto")]
    assert main(["edges", *argv, "--granularities", "2"]) == 0
    assert asked == ["auto"]  # the bundles' device setting: CUDA when available, else CPU
    for command, shown in (("layers", ("(default: 16, or the model's number of Gaussians when it has fewer)",
                                       "(default: 32, or the model's number of Gaussians when it has fewer)",
                                       "(default: auto)")),
                           ("segment", ("(default: 0.05)",)),
                           ("edges", ("(default: 4 8 16, those up to the model's number of Gaussians)",
                                      "(default: 0.05)"))):  # fmt: skip
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(s in text for s in shown), text


def test_closing_summary_does_not_promise_fine_tuning_of_the_2d_encoder(tmp_path):
    """No bundle fine-tunes a 2D encoder: the 2D summary says what encoder.pt is; the 3D one keeps fine-tuning."""
    from medgmae.engine import MetricHistory
    from medgmae.mae_training.summary import PretrainSummary
    from medgmae.twod.gmae_validation import GMAE2DSummary

    files = {n: str(tmp_path / n) for n in ("model.pt", "encoder.pt", "best_model.pt", "pictures", "curves", "tensorboard")}
    s = {"epochs": 1, "model_kind": "gmae2d", "best_val_psnr": None, "best_epoch": None, "last_val_ssim": None,
         "files": files, "next": {}}  # fmt: skip
    line = [ln for ln in GMAE2DSummary(tmp_path, MetricHistory()).text(s).splitlines() if "encoder.pt" in ln][0]
    assert "fine-tuning" not in line and "2D ViT encoder" in line
    line3d = [ln for ln in PretrainSummary(tmp_path, MetricHistory(), "medgmae").text(s).splitlines()
              if "encoder.pt" in ln][0]  # fmt: skip
    assert "fine-tuning" in line3d  # unetr_finetune reads the 3D encoder.pt


def test_a_folder_with_several_unreadable_images_names_them_all(tmp_path):
    """The 2D GMAE dataset's cache stops at the first bad file; the error then names every unreadable image of the
    folder (read again only on that failure), as the 3D pre-check does."""
    from medgmae.twod.data2d import gmae2d_dataset

    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        gmae2d_dataset(tmp_path, image_size=(16, 16), log=False)
    msg = str(err.value)
    assert msg.startswith(f"2 unreadable image(s) in dataset_dir {tmp_path}") and "cut.png" in msg and "empty.png" in msg
    assert "ok0.png" not in msg
    assert len(gmae2d_dataset(tmp_path, image_size=(16, 16), log=False, cache=False)) == 5  # read lazily: no check
