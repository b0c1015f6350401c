"""Gaussian container, frames, head activations and PLY round trips."""

import math

import numpy as np
import pytest
import torch

from medgmae.gaussians import INTENSITY_BIAS_INIT, SCALE_BIAS_INIT, Gaussians3D, activate_gaussian_heads
from medgmae.ply import load_ply, save_ply
from medgmae.render import render_volume
from medgmae.rotations import (
    covariance_matrices,
    precision_matrices,
    quaternion_to_rotation_matrix,
    rotation_matrix_to_quaternion,
)


def _random(b=2, k=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return Gaussians3D(
        torch.rand(b, k, 3, generator=g, dtype=dtype),
        0.02 + 0.2 * torch.rand(b, k, 3, generator=g, dtype=dtype),
        torch.randn(b, k, 4, generator=g, dtype=dtype),
        torch.rand(b, k, generator=g, dtype=dtype),
    )


def test_quaternion_rotation_matches_axis_angle():
    theta = 0.7
    q = torch.tensor([math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)], dtype=torch.float64) * 3.0  # unnormalised
    r = quaternion_to_rotation_matrix(q)
    c, s = math.cos(theta), math.sin(theta)
    expected = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(r, expected, atol=1e-12)


def test_rotations_are_proper_and_invertible():
    g = _random(3, 50)
    r = g.rotation_matrices()
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(3, 50, dtype=torch.float64), atol=1e-12)
    q = rotation_matrix_to_quaternion(r)
    assert torch.allclose(quaternion_to_rotation_matrix(q), r, atol=1e-10)


def test_covariance_and_precision_are_inverse():
    g = _random()
    cov, prec = covariance_matrices(g.scales, g.quats), precision_matrices(g.scales, g.quats)
    eye = torch.eye(3, dtype=torch.float64).expand_as(cov)
    assert torch.allclose(cov @ prec, eye, atol=1e-9)
    evals = torch.linalg.eigvalsh(cov)
    assert torch.allclose(evals, g.scales.square().sort(-1).values, rtol=1e-9, atol=1e-12)


def test_head_activations_and_bias_inits():
    b, k = 2, 7
    raw = torch.randn(b, k, 11, dtype=torch.float64) * 3
    g = activate_gaussian_heads(raw[..., :3], raw[..., 3:6], raw[..., 6:10], raw[..., 10:], scale_cap=0.5)
    assert torch.allclose(g.means, torch.sigmoid(raw[..., :3]))
    assert torch.allclose(g.scales, 0.5 * torch.sigmoid(raw[..., 3:6]))
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(b, k, dtype=torch.float64))
    assert torch.allclose(g.intensities, torch.sigmoid(raw[..., 10]))
    assert abs(torch.sigmoid(torch.tensor(SCALE_BIAS_INIT)).item() - 0.2) < 1e-3
    assert abs(torch.sigmoid(torch.tensor(INTENSITY_BIAS_INIT)).item() - 0.4) < 1e-3


def test_container_validation_and_tensor_roundtrip():
    g = _random()
    assert torch.equal(Gaussians3D.from_tensor(g.as_tensor()).as_tensor(), g.as_tensor())
    with pytest.raises(ValueError, match="scales"):
        Gaussians3D(g.means, g.scales[:, :2], g.quats, g.intensities)
    with pytest.raises(ValueError, match="intensities"):
        Gaussians3D(g.means, g.scales, g.quats, g.intensities[..., None])
    both = Gaussians3D.cat([g, g[0:2]], dim=1)
    assert both.num_gaussians == 10 and both.batch_size == 2
    assert g[1].batch_size == 1


@pytest.mark.parametrize("shape", [(12, 12, 12), (10, 14, 7)])
def test_normalized_to_voxel_frame_renders_the_same_function(shape):
    """A Gaussian in the normalised frame, moved to voxels and rendered, equals its density at voxel centres."""
    g = _random(1, 4, seed=3)
    g = Gaussians3D(0.3 + 0.4 * g.means, 0.05 + 0.1 * g.scales, g.quats, g.intensities)
    vol = g.to_voxel(shape).render(shape, cutoff=50.0, backend="torch")
    n = torch.tensor(shape, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"), -1)
    u = (grid.reshape(-1, 3) + 0.5) / n  # voxel centres in the normalised frame
    d = u[None] - g.means[0][:, None]
    q = torch.einsum("kna,kab,knb->kn", d, g.precisions()[0], d)
    expected = (g.intensities[0][:, None] * torch.exp(-0.5 * q)).sum(0).reshape(shape)
    assert torch.allclose(vol[0], expected, atol=1e-9)
    back = g.to_voxel(shape).to_normalized(shape)
    assert torch.allclose(back.means, g.means, atol=1e-12)
    assert torch.allclose(back.covariances(), g.covariances(), atol=1e-12)


def test_ply_roundtrip_is_lossless(tmp_path):
    g = _random(1, 33, dtype=torch.float32)
    g = Gaussians3D(g.means * 96, g.scales * 96, g.quats, g.intensities)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    path = save_ply(tmp_path / "g.ply", g, frame="voxel", shape=(96, 96, 80), affine=affine)
    back, meta = load_ply(path)
    for a, b in zip(g.tensors(), back.tensors()):
        assert torch.equal(a, b)
    assert meta["frame"] == "voxel" and meta["shape"] == (96, 96, 80)
    assert np.array_equal(meta["affine"], affine)
    text = path.read_bytes().split(b"end_header")[0].decode()
    for prop in ("x", "scale_0", "rot_3", "opacity", "f_dc_0", "intensity"):
        assert f"property float {prop}\n" in text


def test_ply_records_the_cutoff_its_volume_was_rendered_with(tmp_path):
    """The header's ``cutoff`` (the Mahalanobis distance of the rendering that made the volume) is read back, absent
    where none was given; a renderer cutting a Gaussian there keeps the share of its mass a chi distribution of 3
    degrees of freedom puts within it (scipy's), about 97 %, which is what a viewer drawing whole Gaussians adds."""
    from scipy.stats import chi2

    g = Gaussians3D(torch.tensor([[[32.0, 32.0, 32.0]]]), torch.tensor([[[4.0, 5.0, 6.0]]]),
                    torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), torch.tensor([[1.0]]))  # fmt: skip
    assert load_ply(save_ply(tmp_path / "a.ply", g, cutoff=2.5))[1]["cutoff"] == 2.5
    assert load_ply(save_ply(tmp_path / "b.ply", g))[1]["cutoff"] is None
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        save_ply(tmp_path / "c.ply", g, cutoff=0)
    assert not (tmp_path / "c.ply").exists()
    cut, whole = (float(g.render((64, 64, 64), cutoff=c).sum()) for c in (3.0, 12.0))
    assert abs(cut / whole - chi2.cdf(9.0, 3)) < 2e-3, (cut / whole, chi2.cdf(9.0, 3))


def _slicer_space(path) -> str:
    """The frame 3D Slicer reads a PLY's vertices in: the first header comment holding ``SPACE=``, else LPS
    (``vtkMRMLModelStorageNode::ReadDataInternal``)."""
    header = path.read_bytes().split(b"end_header")[0].decode().splitlines()
    found = [line.split("SPACE=")[1].split()[0] for line in header if line.startswith("comment ") and "SPACE=" in line]
    return found[0] if found else "LPS"


def test_world_ply_is_read_as_ras_by_slicer(tmp_path):
    """The toolkit's world frame is RAS: a world-frame PLY says so in Slicer's comment (without it Slicer mirrors
    x and y); voxel-frame files carry no claim."""
    g = _random(1, 5, dtype=torch.float32)
    assert _slicer_space(save_ply(tmp_path / "w.ply", g, frame="world")) == "RAS"
    assert _slicer_space(save_ply(tmp_path / "v.ply", g, frame="voxel")) == "LPS"
    assert load_ply(tmp_path / "w.ply")[1]["frame"] == "world"


def test_ply_from_3dgs_layout_and_errors(tmp_path):
    # a file with only the 3DGS attributes: log-scales and f_dc give scales and intensity
    k = 4
    fields = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    data = np.zeros(k, dtype=[(f, "<f4") for f in fields])
    data["scale_0"] = np.log(2.0)
    data["rot_0"] = 1.0
    data["f_dc_0"] = (0.75 - 0.5) / 0.28209479177387814
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 4\n" + "".join(f"property float {f}\n" for f in fields) + "end_header\n"
    (tmp_path / "gs.ply").write_bytes(header.encode() + data.tobytes())
    g, _ = load_ply(tmp_path / "gs.ply")
    assert torch.allclose(g.scales[0, :, 0], torch.full((k,), 2.0))
    assert torch.allclose(g.intensities, torch.full((1, k), 0.75))
    (tmp_path / "trunc.ply").write_bytes(header.encode() + data.tobytes()[:10])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "trunc.ply")
    (tmp_path / "ascii.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        load_ply(tmp_path / "ascii.ply")
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        load_ply(tmp_path / "missing.ply")
    with pytest.raises(ValueError, match="batch size 2"):
        save_ply(tmp_path / "b2.ply", _random(2, 3))
    assert not (tmp_path / "b2.ply").exists()
    with pytest.raises(ValueError, match=r"frame must be one of \('voxel', 'normalized', 'world'\)"):
        save_ply(tmp_path / "lps.ply", _random(1, 3), frame="lps")  # a header no reader of ours would place right
    bad = _random(1, 3)
    bad.means[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="means must be finite"):
        save_ply(tmp_path / "nan.ply", bad)
    assert not (tmp_path / "lps.ply").exists() and not (tmp_path / "nan.ply").exists()


@pytest.mark.parametrize("seed", range(6))
def test_transformed_maps_centres_and_covariances_exactly(seed):
    """``x -> L x + t`` for random (non-orthogonal, some reflecting) L: centres L m + t and covariances
    L Sigma L^T against a float64 numpy oracle, and the density at mapped points is the original density."""
    rng = np.random.default_rng(seed)
    g = _random(1, 7, seed)
    lin = rng.normal(size=(3, 3)) + 2 * np.eye(3)
    if seed % 2:
        lin[:, 0] *= -1  # a reflection (e.g. LPS <-> RAS)
    t = rng.normal(size=3) * 10
    h = g.transformed(torch.from_numpy(lin), torch.from_numpy(t))
    m, cov = g.means[0].numpy(), covariance_matrices(g.scales, g.quats)[0].numpy()
    np.testing.assert_allclose(h.means[0].numpy(), m @ lin.T + t, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(covariance_matrices(h.scales, h.quats)[0].numpy(), lin @ cov @ lin.T, rtol=1e-9, atol=1e-10)
    assert torch.equal(h.intensities, g.intensities)


def test_numpy_arrays_are_taken_as_tensors():
    g = _random(1, 4)
    arrays = [t.numpy() for t in g.tensors()]
    built = Gaussians3D(*arrays)
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in built.tensors())
    assert torch.equal(built.means, g.means)
    params = np.random.default_rng(0).random((1, 4, 11))
    assert torch.equal(Gaussians3D.from_tensor(params).as_tensor(), torch.from_numpy(params))


def test_container_refuses_other_types_integer_dtypes_and_mixed_devices():
    g = _random(1, 4)
    with pytest.raises(TypeError, match="means must be a torch.Tensor or NumPy array, got list"):
        Gaussians3D(g.means.tolist(), g.scales, g.quats, g.intensities)
    with pytest.raises(TypeError, match="means must be a floating-point tensor, got dtype torch.int64"):
        Gaussians3D(torch.ones(1, 4, 3, dtype=torch.int64), g.scales, g.quats, g.intensities)
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):
        Gaussians3D(g.means, g.scales.to("meta"), g.quats, g.intensities)


def test_frame_changes_refuse_fractional_shapes():
    g = _random(1, 4)
    assert torch.equal(g.to_voxel((np.int64(8), 8, torch.tensor(8))).means, g.to_voxel((8, 8, 8)).means)
    for method in (g.to_voxel, g.to_normalized):
        with pytest.raises(ValueError, match=r"shape must be three positive whole sizes .*got \(8\.5, 8, 8\)"):
            method((8.5, 8, 8))


def test_head_activations_refuse_a_non_positive_scale_cap():
    raw = torch.randn(1, 3, 11)
    for cap in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale_cap must be a positive finite number"):
            activate_gaussian_heads(raw[..., :3], raw[..., 3:6], raw[..., 6:10], raw[..., 10], scale_cap=cap)


def test_transformed_refuses_a_singular_or_non_finite_matrix():
    g = _random(1, 4)
    singular = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])
    for linear in (torch.zeros(3, 3), singular, torch.full((3, 3), float("inf"))):
        with pytest.raises(ValueError, match="linear must be a finite non-singular"):
            g.transformed(linear, torch.zeros(3))
    small = g.transformed(1e-3 * torch.eye(3), torch.zeros(3))  # a small but regular matrix is fine
    assert torch.allclose(small.scales.sort(-1).values, 1e-3 * g.scales.sort(-1).values)


def test_an_integer_index_selects_one_entry_or_is_out_of_range():
    """``g[5]`` of a batch of 3 gave an empty batch and ``g[np.int64(1)]`` was not taken as an int; an index past
    either end is now an ``IndexError`` as a list's, and a NumPy integer selects the entry a Python int does."""
    g = _random(3, 4)
    entries = [g.means[i : i + 1] for i in range(3)]  # what each entry is, sliced from the tensor itself
    for index, expected in ((0, 0), (2, 2), (-1, 2), (-3, 0), (np.int64(1), 1), (np.int32(-2), 1)):
        picked = g[index]
        assert picked.batch_size == 1 and torch.equal(picked.means, entries[expected]), index
    for index in (3, -4, np.int64(5)):
        with pytest.raises(IndexError, match=rf"index {int(index)} is out of range for a batch of 3"):
            g[index]
    assert g[1:].batch_size == 2  # slices as before


@pytest.mark.parametrize("index, expected", [
    (torch.tensor(0), 0), (torch.tensor(2), 2), (torch.tensor(-1), 2), (torch.tensor(1, dtype=torch.int32), 1),
    (torch.tensor(1, dtype=torch.uint8), 1), (np.array(1), 1), (np.array(-3, dtype=np.int16), 0),
])  # fmt: skip
def test_a_0d_integer_tensor_or_array_indexes_as_its_int(index, expected):
    """``g[torch.tensor(0)]`` was refused with a shape message (``means must be (B, K, 3), got (4, 3)``: torch drops
    the batch dimension for a 0-d tensor, as for an int); it selects one entry with its batch dimension, as ``g[0]``
    does, and so does a 0-d NumPy array."""
    g = _random(3, 4)
    picked = g[index]
    assert picked.batch_size == 1
    for mine, whole in zip(picked.tensors(), g.tensors()):
        assert torch.equal(mine, whole[expected : expected + 1])  # the entry, sliced from the tensor itself


def test_a_0d_tensor_past_either_end_is_out_of_range_and_other_tensors_index_as_torchs():
    g = _random(3, 4)
    for index in (torch.tensor(3), torch.tensor(-4), np.array(7)):
        with pytest.raises(IndexError, match=rf"index {int(index)} is out of range for a batch of 3"):
            g[index]
    assert torch.equal(g[torch.tensor([2, 0])].means, torch.stack([g.means[2], g.means[0]]))  # a tensor of indices
    assert torch.equal(g[torch.tensor([True, False, True])].means, g.means[[0, 2]])  # a mask


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_in_the_toolkits_words(tmp_path):
    """``load_ply(p, device="cuda")`` and ``Gaussians3D.to("cuda")`` ended in torch's bare ``AssertionError``
    (``Torch not compiled with CUDA enabled``); they give the toolkit's ``--device cuda`` refusal."""
    g = _random(1, 3, dtype=torch.float32)
    path = save_ply(tmp_path / "g.ply", g)
    said = "device 'cuda' was requested but CUDA is not available on this machine; use 'cpu' or 'auto'"
    for move in (lambda: load_ply(path, device="cuda"), lambda: g.to("cuda"), lambda: g.to(device="cuda"),
                 lambda: g.to("cuda", torch.float64)):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            move()
    assert g.to(torch.float64).means.dtype == torch.float64 and load_ply(path, device="auto")[0].means.device.type == "cpu"


def test_the_ply_shape_is_three_positive_whole_numbers(tmp_path):
    """``save_ply(..., shape=(3, 4))`` wrote a header of two sizes that ``load_ply`` read back as the volume's shape;
    a shape that is not three positive whole numbers is refused before anything is written."""
    g = _random(1, 3, dtype=torch.float32)
    for shape in ((3, 4), (3, 4, 0), (3, 4.5, 5), "345"):
        with pytest.raises(ValueError, match=r"shape \(the volume's three sizes\) must be 3 positive whole numbers"):
            save_ply(tmp_path / "bad.ply", g, shape=shape)
        assert not (tmp_path / "bad.ply").exists()
    assert load_ply(save_ply(tmp_path / "g.ply", g, shape=(np.int64(3), 4.0, 5)))[1]["shape"] == (3, 4, 5)
