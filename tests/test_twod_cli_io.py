"""medgmae-2d input and output handling: NIfTI orientation, reference masks at the image's slice, ``--out``
checks, stale outputs and the messages of bad options."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.twod.cli import main
from medgmae.twod.gmae import GMAE2D
from medgmae.twod import images
from medgmae.twod.images import read_image, read_mask

#: voxel (i, j) -> world (x, y) = (2 j, -2 i): rows run posterior, columns run right (not RAS voxel order)
AFFINE = np.array([[0, 2, 0, 0], [-2, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]], dtype=float)


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    model = GMAE2D(img_size=32, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=48)
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    return tmp_path / "model.pt"


def _nifti(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def test_nifti_2d_one_slice_and_volume_share_one_orientation(tmp_path):
    plane = np.random.default_rng(1).random((24, 20)).astype(np.float32)
    plane[0, 19] = 5.0  # the most anterior (i = 0) and most right (j = 19) voxel
    flat = read_image(_nifti(tmp_path / "flat.nii.gz", plane))
    one = read_image(_nifti(tmp_path / "one.nii.gz", plane[:, :, None]))
    vol = read_image(_nifti(tmp_path / "vol.nii.gz", np.repeat(plane[:, :, None], 3, 2)))
    np.testing.assert_array_equal(one, vol)
    np.testing.assert_array_equal(flat, vol)
    assert vol.shape == (1, 24, 20) and np.unravel_index(vol[0].argmax(), vol[0].shape) == (0, 0)  # anterior up, right left
    # with an identity affine too: one radiological picture whatever the number of slices
    ident = [read_image(_nifti(tmp_path / f"id{n}.nii.gz", np.repeat(plane[:, :, None], n, 2), np.eye(4))) for n in (1, 3)]
    np.testing.assert_array_equal(ident[0], ident[1])


def test_segment_reads_the_reference_at_the_image_slice(model_file, tmp_path):
    image = np.random.default_rng(2).normal(0, 100, (32, 32, 8))
    mask = np.zeros((32, 32, 8))
    mask[:, :, 3] = 1  # only slice 3 is foreground; the middle slice (4) is empty
    img = _nifti(tmp_path / "ct.nii.gz", image)
    ref = _nifti(tmp_path / "mask.nii.gz", mask)
    assert read_mask(ref, 3).all() and not read_mask(ref).any()
    out = tmp_path / "seg"
    argv = ["segment", "--checkpoint", str(model_file), "--image", str(img), "--slice", "3", "--reference", str(ref)]
    assert main([*argv, "--out", str(out), "--num-layers", "4", "--threshold", "0"]) == 0
    summary = json.loads((out / "segment.json").read_text(encoding="utf-8"))
    assert summary["foreground_fraction"] > 0
    assert summary["iou"] == pytest.approx(summary["foreground_fraction"])  # the reference is the whole slice


def test_a_reference_off_the_image_grid_is_refused(model_file, tmp_path, capsys):
    img = _nifti(tmp_path / "ct.nii.gz", np.random.default_rng(2).normal(0, 100, (32, 32, 8)))
    smaller = _nifti(tmp_path / "small.nii.gz", np.ones((30, 32, 8)))
    moved = np.array(AFFINE, dtype=np.float64)
    moved[0, 3] += 30.0  # the same grid 30 mm to the side
    shifted = _nifti(tmp_path / "shifted.nii.gz", np.ones((32, 32, 8)), moved)
    png = tmp_path / "ref.png"
    Image.fromarray(np.full((20, 24), 255, np.uint8)).save(png)
    cases = ((smaller, "shape 30 x 32 x 8 vs 32 x 32 x 8"),
             (shifted, "voxels up to 30 mm apart (tolerance 0.02 mm)"),  # 2 mm voxels
             (png, "shape 20 x 24 vs 32 x 32 (no affine to compare)"))  # fmt: skip
    for ref, why in cases:
        out = tmp_path / f"seg_{ref.name.split('.')[0]}"
        argv = ["segment", "--checkpoint", str(model_file), "--image", str(img), "--reference", str(ref), "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: reference {ref} is not on the voxel grid of image {img}: {why}" in err and not out.exists()


def test_segment_reads_a_png_reference_once(model_file, tmp_path, monkeypatch):
    """The --reference is read once: checked against the image and then used for the IoU."""
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "ref.png")
    reads = []
    real = images._read_pil
    monkeypatch.setattr(images, "_read_pil", lambda p: reads.append(p.name) or real(p))
    out = tmp_path / "seg"
    argv = ["segment", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--reference", str(tmp_path / "ref.png")]
    assert main([*argv, "--out", str(out), "--num-layers", "4"]) == 0
    assert sorted(reads) == ["img.png", "ref.png"]
    assert 0.0 <= json.loads((out / "segment.json").read_text(encoding="utf-8"))["iou"] <= 1.0


def test_outputs_lie_on_the_images_pixel_grid(model_file, tmp_path, capsys):
    """A 30 x 50 image is squashed to the model's 32 x 32 input, and the outputs are rendered back on its own grid
    (aspect ratio kept), so they overlay it; --render-size still chooses; --slice on a picture file is refused."""
    Image.fromarray((np.random.default_rng(1).random((30, 50)) * 255).astype(np.uint8)).save(tmp_path / "wide.png")
    common = ["--checkpoint", str(model_file), "--image", str(tmp_path / "wide.png")]
    assert main(["segment", *common, "--out", str(tmp_path / "s"), "--num-layers", "4"]) == 0
    assert np.asarray(Image.open(tmp_path / "s" / "foreground.png")).shape[:2] == (30, 50)
    assert json.loads((tmp_path / "s" / "segment.json").read_text(encoding="utf-8"))["render_size"] == [30, 50]
    assert main(["edges", *common, "--out", str(tmp_path / "e"), "--render-size", "16", "24"]) == 0
    assert all(np.asarray(Image.open(p)).shape[:2] == (16, 24) for p in (tmp_path / "e").glob("edges_l*.png"))
    capsys.readouterr()
    assert main(["layers", *common, "--slice", "3", "--out", str(tmp_path / "l")]) == 2
    assert "--slice applies to NIfTI volumes and multi-frame DICOM" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()


def test_a_large_image_renders_at_most_512_on_its_longer_edge():
    from medgmae.twod.zero_shot_command import default_render_size

    assert default_render_size((30, 50)) == (30, 50) and default_render_size((512, 512)) == (512, 512)
    assert default_render_size((2048, 2048)) == (512, 512) and default_render_size((1000, 3000)) == (171, 512)


def test_out_below_a_file_exits_2_before_computing(model_file, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["edges", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(afile / "sub")]
    assert main(argv) == 2
    assert "not a folder" in capsys.readouterr().err and afile.is_file()


def test_edges_replace_the_files_of_an_earlier_run(model_file, tmp_path):
    out = tmp_path / "edges"
    argv = ["edges", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(out)]
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--granularities", "2", "4"]) == 0
    assert main([*argv, "--granularities", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["edges.json", "edges_l8.png", "notes.txt"]


def test_a_failing_output_leaves_the_earlier_run_whole(model_file, tmp_path, monkeypatch):
    """The outputs are staged and moved in only when all were written: a writer that fails part-way leaves the
    earlier run's files as they were and no new one beside them."""
    import medgmae.twod.zero_shot_command as cli

    out = tmp_path / "edges"
    argv = ["edges", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(out)]
    assert main([*argv, "--granularities", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing(x, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        cli_save_png(x, path)

    cli_save_png = cli.save_png
    monkeypatch.setattr(cli, "save_png", failing)
    with pytest.raises(OSError, match="disk full"):
        main([*argv, "--granularities", "4", "8"])
    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_option_messages_name_the_option(model_file, tmp_path, capsys):
    common = ["--image", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]
    assert main(["edges", "--checkpoint", str(model_file), *common, "--granularities", "64"]) == 2
    assert "--granularities 64 exceeds" in capsys.readouterr().err
    assert main(["edges", "--checkpoint", str(tmp_path), *common]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "model.pt" in err
    assert not (tmp_path / "o").exists()
    # a render far larger than the model's input (5000 x 5000 took 5 CPU minutes without a word) is refused; one
    # over 1024 pixels on the CPU gets a note
    assert main(["layers", "--checkpoint", str(model_file), *common, "--render-size", "5000", "64"]) == 2
    assert "--render-size 5000 64: at most 4096 pixels on an edge (the model sees a 32 x 32 input" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    from medgmae.twod.zero_shot_command import _check_render_size

    _check_render_size((1500, 40), (32, 32), torch.device("cpu"))
    assert "rendering 1500 x 40 pixels on the CPU takes minutes" in capsys.readouterr().err
    _check_render_size((1024, 1024), (32, 32), torch.device("cpu"))
    assert capsys.readouterr().err == ""


def test_the_json_and_stdout_record_the_slice_and_window_of_a_nifti(model_file, tmp_path, capsys):
    """layers.json and segment.json record which slice (axis, index) and which window were used, read back from
    the file; without --window the window is the slice's 0.5/99.5 percentiles (numpy's, computed here)."""
    volume = np.random.default_rng(3).normal(0, 100, (32, 32, 8))
    img = _nifti(tmp_path / "ct.nii.gz", volume, np.eye(4))  # RAS already: slice k of the file is slice k shown
    common = ["--checkpoint", str(model_file), "--image", str(img), "--num-layers", "4"]
    assert main(["layers", *common, "--slice", "5", "--window", "-150", "250", "--out", str(tmp_path / "l")]) == 0
    image = json.loads((tmp_path / "l" / "layers.json").read_text(encoding="utf-8"))["image"]
    assert image["slice"] == {"axis": "axial", "index": 5, "count": 8}
    assert image["window"] == [-150.0, 250.0] and image["window_source"] == "--window"
    assert "axial slice 5 of 8 (numbered from 0), window -150 250 (--window)" in capsys.readouterr().out

    assert main(["segment", *common, "--out", str(tmp_path / "s")]) == 0
    image = json.loads((tmp_path / "s" / "segment.json").read_text(encoding="utf-8"))["image"]
    assert image["slice"] == {"axis": "axial", "index": 4, "count": 8}  # the middle slice by default
    expected = np.percentile(volume[:, :, 4].astype(np.float32), [0.5, 99.5])
    np.testing.assert_allclose(image["window"], expected, rtol=1e-5)
    assert image["window_source"] == "percentiles 0.5/99.5" and image["path"] == str(img)


def test_layer_stack_tiles_are_labelled_with_layer_and_gaussian_count(model_file, tmp_path):
    """Each layer_stack.png tile has a label band above it; layers.json gives the Gaussians per layer (48 in 5
    depth groups: 10 10 10 9 9)."""
    out = tmp_path / "l"
    argv = ["layers", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(out)]
    assert main([*argv, "--num-layers", "5"]) == 0
    summary = json.loads((out / "layers.json").read_text(encoding="utf-8"))
    assert summary["gaussians_per_layer"] == [10, 10, 10, 9, 9] and summary["image"]["slice"] is None
    stack = np.asarray(Image.open(out / "layer_stack.png").convert("RGB"))
    # 5 tiles in one row, the image's 40 px enlarged x4 to 160 px, a 14 px band above each, 2 px gaps
    assert stack.shape == (2 + 14 + 160 + 2, 2 + 5 * (160 + 2), 3)
    band = stack[2 : 2 + 14, 2 : 2 + 160]
    assert (band > 128).any() and (band[:, 150:] == 0).all()  # white text on black at the band's left
    # "layer 1: 10 Gaussians": the words stand apart, each space wider than any gap between the letters of a word
    inked = np.flatnonzero(band.max(axis=(0, 2)) > 60)
    gaps = np.diff(inked) - 1
    words = np.flatnonzero(gaps >= 4)
    assert len(words) == 3, gaps  # "layer" | "1:" | "10" | "Gaussians"
    assert gaps[words].min() >= 2 * np.delete(gaps, words).max()


@pytest.mark.parametrize("command, says", [("layers", "layer_stack.png"), ("segment", "figure-ground"),
                                           ("edges", "edges_l<L>.png")])  # fmt: skip
def test_each_command_help_describes_what_it_writes(command, says, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert says in help_text and "Writes" in help_text


def test_an_image_over_pils_size_guard_is_refused_naming_the_file(tmp_path, monkeypatch):
    """PIL refuses images over twice its MAX_IMAGE_PIXELS with DecompressionBombError, which is neither OSError
    nor ValueError: the reader turns it into the toolkit's ValueError naming the file (the CLI's exit 2, the
    bundles' data error) instead of a traceback."""
    from PIL import Image

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 pixels is over twice the limit
    with pytest.raises(ValueError, match=f"{path}: image too large for PIL to open"):
        read_image(path)


def test_layer_defaults_fit_a_model_with_few_gaussians(tmp_path):
    """The defaults (16 layers; granularities 4 8 16) run on a model of 12 Gaussians: 12 layers, granularities 4 8;
    a value given beyond the model's count is still refused."""
    torch.manual_seed(0)
    model = GMAE2D(img_size=16, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=12)
    torch.save(model.model_checkpoint(), tmp_path / "small.pt")
    Image.fromarray((np.random.default_rng(1).random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    common = ["--checkpoint", str(tmp_path / "small.pt"), "--image", str(tmp_path / "img.png")]
    assert main(["layers", *common, "--out", str(tmp_path / "l")]) == 0
    assert json.loads((tmp_path / "l" / "layers.json").read_text(encoding="utf-8"))["num_layers"] == 12
    assert main(["segment", *common, "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "segment.json").read_text(encoding="utf-8"))["num_layers"] == 12
    assert main(["edges", *common, "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "edges.json").read_text(encoding="utf-8"))["granularities"] == [4, 8]
    assert main(["layers", *common, "--out", str(tmp_path / "x"), "--num-layers", "13"]) == 2
    assert json.loads((tmp_path / "l" / "layers.json").read_text(encoding="utf-8"))["partial_render_counts"] == [12]


def test_layers_refuses_a_first_count_beyond_the_model_and_has_no_threshold(model_file, tmp_path, capsys):
    """``--first-count`` beyond the model's Gaussians is refused as ``--num-layers`` is (it was cut to the model's
    count without a word); ``--threshold``, which ``layers`` does not use, is not one of its options."""
    argv = ["layers", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--first-count", "1000"]) == 2
    assert "error: --first-count 1000 exceeds the model's 48 Gaussians" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([*argv, "--first-count", "48"]) == 0
    assert json.loads((tmp_path / "o" / "layers.json").read_text(encoding="utf-8"))["partial_render_counts"] == [48]
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--threshold", "0.1"])
    assert refused.value.code == 2 and "unrecognized arguments: --threshold 0.1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["layers", "--help"])
    assert "--threshold" not in capsys.readouterr().out
    for command in ("segment", "edges"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--threshold" in capsys.readouterr().out
        other = [command, *argv[1:]]
        with pytest.raises(SystemExit) as refused:  # a change of 1 or more never happens on the 0-1 scale: all 0
            main([*other, "--threshold", "5"])
        assert refused.value.code == 2 and "--threshold: expected a number in [0, 1), got '5'" in capsys.readouterr().err


def test_gsplat_on_the_cpu_is_refused_in_the_tools_own_flags(model_file, tmp_path, capsys):
    """``--backend gsplat`` with a CPU ``--device`` names ``--backend torch`` (not the Python API's
    ``backend='torch'``), before anything is read or written."""
    out = tmp_path / "o"
    argv = ["layers", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(out)]
    assert main([*argv, "--backend", "gsplat", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error: --backend gsplat: gsplat renders on CUDA devices only and --device cpu runs on cpu: use --backend torch" in err
    assert "backend='torch'" not in err and not out.exists()


def test_a_killed_runs_staging_folder_beside_out_is_removed_by_the_next_run(model_file, tmp_path, capsys, dead_pid):
    """SIGKILL while the outputs were staged left ``.<out>.staging-...`` for good; the next run into ``--out``
    removes a dead writer's (named in one line) and leaves this live process's."""
    import os
    import time

    from medgmae.temp_names import host_tag

    out = tmp_path / "l"
    dead, live = (tmp_path / f".l.staging-{host_tag()}.{pid}-{tail}" for pid, tail in ((dead_pid, "abcd_123"), (os.getpid(), "efgh_456")))
    for folder in (dead, live):
        folder.mkdir()
        (folder / "input.png").write_bytes(b"partial")
        for p in (folder / "input.png", folder):
            os.utime(p, (time.time() - 120, time.time() - 120))
    capsys.readouterr()
    assert main(["layers", "--checkpoint", str(model_file), "--image", str(tmp_path / "img.png"), "--out", str(out)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "killed write" in line]
    assert said == [f"medgmae-2d layers: note: removed what 1 killed write left of {out}: {dead} (their writer no "
                    "longer runs on this host, or they were unchanged for 24 hours)"]
    assert not dead.exists() and live.exists()
