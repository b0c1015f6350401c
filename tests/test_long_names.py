"""Names near the file system's 255-byte limit: a legal output name is written (its temporary file and staging
folder fit too, and still name their writer), and the names the toolkit makes from its inputs' names (segmentations,
GViT explanations, zero-shot outputs) fit and stay distinct for distinct inputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medgmae.temp_names import (
    STAGING_NAME, TEMP_NAME, host_tag, remove_dead_writes_of, remove_interrupted_writes, staging_prefix, temp_name,
)  # fmt: skip
from recon.cli import main

from recon_cli_helpers import ct, simulated  # noqa: F401 - fixtures

LIMIT = 255


def _size(name: str) -> int:
    return len(name.encode("utf-8"))


def _as_written_by(pid: int, make, name: str) -> str:
    """``make(name)`` (:func:`temp_name`, :func:`staging_prefix`) as the process ``pid`` would have made it."""
    saved = os.getpid
    os.getpid = lambda: pid
    try:
        return make(name)
    finally:
        os.getpid = saved


def test_a_temporary_name_of_a_long_name_fits_and_names_this_process(tmp_path, dead_pid):
    """A 250-byte final name: its temporary name fits 255 bytes, is read back as this host's and process's, keeps its
    ending (``remove_interrupted_writes`` knows it by it), and a dead writer's is removed beside its output."""
    final = "数" * 80 + "abc.nii.gz"
    assert _size(final) == 250
    name = temp_name(final)
    found = TEMP_NAME.match(name)
    assert _size(name) <= LIMIT and found and found["host"] == host_tag() and int(found["pid"]) == os.getpid()
    assert name.endswith(".nii.gz") and found["name"].startswith("数" * 40)
    assert temp_name(final) != name and _size(temp_name("a.pt")) < 80  # short names stay as they were
    (tmp_path / name).write_bytes(b"partial")
    assert remove_interrupted_writes(tmp_path) == [tmp_path / name]
    dead = tmp_path / _as_written_by(dead_pid, temp_name, final)  # its pid may have more digits than ours
    dead.write_bytes(b"partial")
    then = time.time() - 120
    os.utime(dead, (then, then))
    assert remove_dead_writes_of(tmp_path / final, folder=False) is not None and not dead.exists()


def test_a_staging_folder_of_a_long_folder_name_fits_and_is_told_from_its_neighbours(tmp_path, dead_pid):
    from medgmae.files import staged_outputs

    out = tmp_path / ("s" * 250)
    with staged_outputs(out) as stage:
        found = STAGING_NAME.match(stage.name)
        assert _size(stage.name) <= LIMIT and found and int(found["pid"]) == os.getpid() and found["host"] == host_tag()
        (stage / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x"
    dead = tmp_path / (_as_written_by(dead_pid, staging_prefix, out.name) + "abcdefgh")
    other = tmp_path / (_as_written_by(dead_pid, staging_prefix, "t" * 100 + out.name[100:]) + "abcdefgh")
    for folder in (dead, other):
        folder.mkdir()
        then = time.time() - 120
        os.utime(folder, (then, then))
    said = remove_dead_writes_of(out, folder=True)
    assert said is not None and not dead.exists() and other.exists()  # another folder's (another hash) stays


def test_fbp_writes_a_legal_241_byte_name_and_refuses_a_256_byte_one_before_work(tmp_path, simulated, capsys):  # noqa: F811
    args = ["fbp", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"),
            "--device", "cpu", "--out"]  # fmt: skip
    legal = tmp_path / "long" / ("数" * 78 + ".nii.gz")
    assert _size(legal.name) == 241
    assert main([*args, str(legal)]) == 0 and nib.load(legal).shape[:2] == (16, 16)
    assert sorted(p.name for p in legal.parent.iterdir()) == [legal.name]
    capsys.readouterr()
    too_long = tmp_path / "long" / ("数" * 83 + ".nii.gz")
    assert main([*args, str(too_long)]) != 0
    err = capsys.readouterr().err
    assert "a name in it is 256 bytes long, longer than the 255" in err and "FBP of" not in err
    assert sorted(p.name for p in legal.parent.iterdir()) == [legal.name]


def test_segmentations_of_long_input_names_fit_and_stay_apart(tmp_path):
    """Two inputs named ``'s' * 225 + '.nii.gz'`` in 200-character folders (their output names are prefixed with
    the folders), and a third differing from one only in its last character: three files, each within 255 bytes."""
    from monai.data import MetaTensor

    from medgmae.finetune import SaveSegmentationd
    from medgmae.finetune.segment_inputs import unique_case_names

    inputs = [tmp_path / ("a" * 200) / ("s" * 225 + ".nii.gz"), tmp_path / ("b" * 200) / ("s" * 225 + ".nii.gz"),
              tmp_path / ("s" * 224 + "t.nii.gz")]  # fmt: skip
    names = unique_case_names(inputs)
    assert len(set(names)) == 3
    save = SaveSegmentationd(output_dir=tmp_path / "seg", label_names=["background", "liver"])
    labels = MetaTensor(torch.zeros((1, 3, 3, 2)), affine=torch.eye(4))
    paths = [Path(save({"pred": labels, "name": n})["pred_path"]) for n in names]
    written = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert len(set(paths)) == 3 and sorted([*(p.name for p in paths), "labels.ctbl"]) == written
    assert all(_size(p.name) <= LIMIT and p.name.endswith("_seg.nii.gz") for p in paths)
    assert all(p.name.startswith(n[:100]) for p, n in zip(paths, names))


def test_gvit_explanations_of_long_image_names_fit_and_stay_apart(tmp_path):
    """Images ``<class>/<i>_数×80.png`` (246 bytes, legal): the evaluation writes one explanation each."""
    from PIL import Image

    from medgmae.twod.classification_data import resolve_classification_data
    from medgmae.twod.gvit import GViT
    from medgmae.twod.gvit_eval import evaluate_model_file

    rng = np.random.default_rng(0)
    for cls in ("liver", "kidney"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "img" / cls / f"{i}_{'数' * 80}.png")
    run = tmp_path / "run"
    data = resolve_classification_data(tmp_path / "img", run / "data", image_size=16, seed=1, val_fraction=0.5)
    torch.manual_seed(0)
    model = GViT(in_channels=1, img_size=16, num_classes=2, num_gaussians=6, model_size="tiny", patch_size=4)
    model.save(run / "model.pt", class_names=data.class_names, data=data.settings)
    m = evaluate_model_file(run / "model.pt", None, run / "eval", split="all", num_explanations=-1, device="cpu",
                            batch_size=8, render_backend="torch")  # fmt: skip
    names = [p.name for p in (run / "eval" / "explanations").iterdir()]
    assert m["explanations"] == len(names) == len(set(names)) == 4 and (run / "eval" / "metrics.json").is_file()
    assert all(_size(n) <= LIMIT and "_pred-" in n and n.endswith(".png") for n in names)
    sources = {n.split("_")[1] for n in names}  # <n>_<i>_<stem>-<hash>_<true>_pred-<predicted>.png
    assert sources == {"0", "1"} and all(f"_{'数' * 60}" in n for n in names)


def test_zero_shot_outputs_of_a_long_input_name_fit(tmp_path):
    from medgmae.mae_training.inference import GaussianInference

    image = tmp_path / ("数" * 80 + ".nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(image))
    stem = GaussianInference(tmp_path / "model.pt", image, tmp_path / "out", device="cpu")._stem()
    assert all(_size(f"{stem}{end}") <= LIMIT for end in ("_rendered.nii.gz", "_slices.png", "_gaussians.ply",
                                                         "_ellipsoids.vtk"))
    assert stem.startswith("数" * 70)
