"""Synthetic phantom generator: determinism, label sanity, NIfTI geometry, dataset.json and CLI errors."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medgmae.data.phantom import ORGAN_LABELS, generate_phantom, main, phantom_affine, write_phantom_dataset
from data_helpers import read_only_folder

SMALL = (64, 52, 48)
SPACING = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(3, shape=(96, 80, 72), spacing=2.0)


def test_determinism():
    a, b = generate_phantom(5, SMALL, SPACING), generate_phantom(5, SMALL, SPACING)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    c = generate_phantom(6, SMALL, SPACING)
    assert not np.array_equal(a.label, c.label)
    assert np.abs(a.image - c.image).mean() > 5.0


def test_labels_present_inside_body_and_connected(phantom):
    assert phantom.image.dtype == np.float32 and phantom.label.dtype == np.uint8
    body = phantom.tissue > 0
    for k, name in ORGAN_LABELS.items():
        if k == 0:
            continue
        m = phantom.label == k
        assert m.sum() >= 20, f"{name} has {m.sum()} voxels"
        assert not (m & ~body).any(), f"{name} outside the body"
        if name in ("liver", "spleen", "aorta", "inferior_vena_cava", "stomach"):
            comps, n = ndimage.label(m)
            largest = np.bincount(comps.ravel())[1:].max()
            assert largest >= 0.95 * m.sum(), f"{name} fragmented into {n} parts"
    # volumes relative to the adult reference scaled by the phantom's linear scale
    s3 = phantom.scale**3
    assert 600 * s3 < phantom.organ_volume_ml(6) < 2500 * s3  # liver
    assert 60 * s3 < phantom.organ_volume_ml(1) < 400 * s3  # spleen
    assert 60 * s3 < phantom.organ_volume_ml(2) < 300 * s3  # right kidney


def test_hu_ranges(phantom):
    med = {k: float(np.median(phantom.image[phantom.label == k])) for k in ORGAN_LABELS if k}
    assert 40 <= med[6] <= 70  # liver
    assert 30 <= med[1] <= 65  # spleen
    assert med[14] > 300  # vertebrae
    assert med[16] < -700  # lungs
    fat = np.median(phantom.image[(phantom.tissue == 2) & (phantom.label == 0)])
    assert -130 < fat < -60
    corner = phantom.image[:4, :4, :]
    assert abs(float(np.median(corner)) + 1000) < 15


def test_affine():
    aff = phantom_affine((10, 12, 14), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(np.diag(aff), [1.0, 2.0, 3.0, 1.0])
    centre = aff @ np.array([4.5, 5.5, 6.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-12)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")


def test_dataset_roundtrip(tmp_path):
    path = write_phantom_dataset(tmp_path / "ds", 3, seed=1, shape=(32, 28, 24), spacing=(4.0, 4.0, 5.0), num_validation=1)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["labels"]["0"] == "background" and doc["labels"]["6"] == "liver"
    assert doc["numTraining"] == 2 and len(doc["training"]) == 2 and len(doc["validation"]) == 1
    entry = doc["training"][0]
    assert entry["image"] == "imagesTr/case_0000.nii.gz" and entry["label"] == "labelsTr/case_0000.nii.gz"
    img, lab = nib.load(path.parent / entry["image"]), nib.load(path.parent / entry["label"])
    ph = generate_phantom(doc["case_seeds"][0], (32, 28, 24), (4.0, 4.0, 5.0))
    np.testing.assert_allclose(img.affine, ph.affine)
    np.testing.assert_allclose(img.header.get_zooms(), (4.0, 4.0, 5.0))
    assert lab.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(lab.dataobj), ph.label)
    np.testing.assert_allclose(np.asarray(img.dataobj), np.rint(ph.image), atol=0.5)
    mtime = (path.parent / entry["image"]).stat().st_mtime_ns
    assert write_phantom_dataset(tmp_path / "ds", 3, seed=1, shape=(32, 28, 24), spacing=(4.0, 4.0, 5.0),
                                 num_validation=1) == path
    assert (path.parent / entry["image"]).stat().st_mtime_ns == mtime  # identical dataset not regenerated
    assert not list((tmp_path / "ds").rglob("*.tmp*"))


@pytest.mark.parametrize("argv", [
    ["--num-cases", "2"],
    ["--out", "X", "--num-cases", "0"],
    ["--out", "X", "--num-cases", "2", "--shape", "32", "32"],
    ["--out", "X", "--num-cases", "2", "--spacing", "-1"],
    ["--out", "X", "--num-cases", "2", "--spacing", "1", "2"],
    ["--out", "X", "--num-cases", "2", "--num-validation", "2"],
    ["--out", "X", "--num-cases", "1e9"],  # spent memory on a billion case seeds before anything was said
    ["--out", "X", "--num-cases", "100001"],
])
def test_cli_bad_flags(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert not (tmp_path / "X" / "dataset.json").exists()


def test_cli_writes(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--num-cases", "1", "--shape", "24", "24", "16", "--spacing", "5"]) == 0
    assert "dataset.json" in capsys.readouterr().out
    assert (tmp_path / "d" / "labelsTr" / "case_0000.nii.gz").is_file()


def test_cli_says_kept_when_the_dataset_was_already_generated(tmp_path, capsys):
    """A second run with the same settings keeps the dataset (nothing is generated again): it said 'wrote'."""
    argv = ["--out", str(tmp_path / "d"), "--num-cases", "1", "--shape", "16", "16", "12", "--spacing", "8"]
    last = lambda: capsys.readouterr().out.splitlines()[-1]  # noqa: E731  (after a line per case written)
    assert main(argv) == 0 and last().startswith(f"wrote {tmp_path / 'd' / 'dataset.json'} (1 training")
    assert main(argv) == 0
    assert last().startswith(f"kept {tmp_path / 'd' / 'dataset.json'} (already generated with these settings: 1 training")
    assert main(argv[:-1] + ["6", "--force"]) == 0 and last().startswith("wrote ")  # another spacing, asked for


def test_cli_refuses_to_replace_a_phantom_dataset_of_other_settings_without_force(tmp_path, capsys):
    """A second run with other settings into a folder holding a phantom dataset replaced it (its cases gone, exit 0,
    one warning line); ``medgmae-datalist`` refuses the like without ``--force``, and so does this tool now, naming
    what differs by its flags, the dataset left as it was."""
    ds = tmp_path / "d"
    argv = ["--out", str(ds), "--num-cases", "2", "--shape", "16", "16", "12", "--spacing", "8"]
    assert main(argv) == 0
    before = _tree(ds)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(ds), "--num-cases", "1", "--shape", "16", "16", "12", "--spacing", "8"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert exc.value.code == 2 and _tree(ds) == before
    assert err == (f"medgmae-phantom: error: --out {ds} holds a phantom dataset of other settings (--num-cases: saved "
                   "2, now 1; --num-validation: saved 1, now 0): give --force to replace it, or another --out")
    assert main(argv) == 0 and _tree(ds) == before  # the same settings: kept


def test_cli_refuses_an_empty_out(tmp_path, monkeypatch, capsys):
    """``--out ""`` wrote the dataset into the current folder (``Path("")`` is ``.``)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--out", "", "--num-cases", "1", "--shape", "16", "16", "12"])
    assert exc.value.code == 2 and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.splitlines()[-1] == "medgmae-phantom: error: --out is empty: give the output folder"


def test_cli_holds_out_one_validation_case_of_a_small_set(tmp_path, capsys):
    """3 cases (3 // 5 = 0) still give a validation list, which fine-tuning needs; the help says so."""
    assert main(["--out", str(tmp_path / "d"), "--num-cases", "3", "--shape", "16", "16", "12", "--spacing", "8"]) == 0
    doc = json.loads((tmp_path / "d" / "dataset.json").read_text(encoding="utf-8"))
    assert (len(doc["training"]), len(doc["validation"])) == (2, 1)
    assert "2 training + 1 validation cases" in capsys.readouterr().out
    from medgmae.data.phantom.cli import build_parser

    assert "at least 1" in " ".join(build_parser().format_help().split())


def test_an_empty_validation_list_says_how_to_add_one(tmp_path):
    """The error on a phantom set without validation cases gives a medgmae-phantom command; running it makes the
    same cases' dataset with a validation list."""
    import shlex

    from medgmae.data.datalist import DatasetError, read_datalist

    path = write_phantom_dataset(tmp_path / "ds", 2, seed=4, shape=(16, 16, 12), spacing=(8.0, 8.0, 8.0),
                                 num_validation=0)
    with pytest.raises(DatasetError, match="'validation' list is empty") as err:
        read_datalist(path, "validation")
    command = str(err.value).split("medgmae-phantom ", 1)[1]
    assert main(shlex.split(command)) == 0
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["phantom"]["seed"] == 4 and doc["phantom"]["shape"] == [16, 16, 12] and len(doc["validation"]) == 1
    assert len(read_datalist(path, "validation")) == 1
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}], "validation": []}))
    with pytest.raises(DatasetError, match='add a "validation" list'):
        read_datalist(plain, "validation")


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("existing", ["foreign_json", "unreadable_json", "images_only"])
def test_a_dataset_the_generator_did_not_write_is_never_overwritten(tmp_path, capsys, existing):
    """A folder holding someone's dataset (a BTCV-style dataset.json, or imagesTr/ without one) is refused with the
    folder named, by the CLI (exit 2) and the library alike, and stays byte for byte."""
    ds = tmp_path / "btcv"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "imagesTr" / "case_0000.nii.gz").write_bytes(b"a real scan")
    if existing == "foreign_json":
        (ds / "dataset.json").write_text(json.dumps({"name": "BTCV", "training": [{"image": "imagesTr/case_0000.nii.gz"}]}))
    elif existing == "unreadable_json":
        (ds / "dataset.json").write_text("{not json")
    before = _tree(ds)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(ds), "--num-cases", "2", "--shape", "16", "16", "12", "--spacing", "8"])
    assert exc.value.code == 2 and f"--out: {ds} holds" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not overwritten") as refused:
        write_phantom_dataset(ds, 2, shape=(16, 16, 12), spacing=8.0)
    assert "write the phantoms into another" in str(refused.value) and "delete" not in str(refused.value)
    assert _tree(ds) == before


@pytest.mark.parametrize("damage", ["cut_json", "no_json"])
def test_a_generated_folder_whose_dataset_json_is_damaged_says_to_delete_it(tmp_path, capsys, damage):
    """The generator's own folder whose dataset.json was cut short (or removed) was refused as someone else's
    dataset, with a traceback and the advice to write into another folder (in pre-training: another output_dir,
    losing the checkpoints). It is refused as the toolkit's data error naming the folder to delete; once deleted,
    the same phantoms are generated again. A folder that holds anything else stays someone else's."""
    from medgmae.data.datalist import DatasetError

    ds = tmp_path / "run" / "phantom"
    write_phantom_dataset(ds, 3, seed=2, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    reference = _tree(ds)
    data = (ds / "dataset.json").read_bytes()
    if damage == "cut_json":
        (ds / "dataset.json").write_bytes(data[: len(data) // 2])
    else:
        (ds / "dataset.json").unlink()
    before = _tree(ds)
    with pytest.raises(DatasetError) as refused:
        write_phantom_dataset(ds, 3, seed=2, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    said = str(refused.value)
    assert said.startswith(f"{ds} holds") and "3 phantom cases in imagesTr/ and labelsTr/" in said, said
    assert f"delete {ds} to generate the phantoms again" in said and "another (empty or new) folder" not in said, said
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(ds), "--num-cases", "3", "--seed", "2", "--shape", "16", "16", "12", "--spacing", "8",
              "--num-validation", "1"])
    assert exc.value.code == 2 and f"delete {ds} to generate" in capsys.readouterr().err
    assert _tree(ds) == before
    (ds / "notes.txt").write_text("mine")  # not what the generator leaves: someone's folder
    with pytest.raises(DatasetError, match="another \\(empty or new\\) folder"):
        write_phantom_dataset(ds, 3, seed=2, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    import shutil

    shutil.rmtree(ds)
    write_phantom_dataset(ds, 3, seed=2, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    assert _tree(ds) == reference


def test_damaged_cases_names_the_cut_and_overwritten_files(tmp_path):
    """Of a generated dataset, the case files cut short or overwritten are named (a missing one is not: it is
    generated again); another folder's dataset.json gives nothing to name."""
    from medgmae.data.phantom.writer import damaged_cases

    ds = tmp_path / "ph"
    write_phantom_dataset(ds, 3, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    assert damaged_cases(ds) == []
    image, label = ds / "imagesTr" / "case_0001.nii.gz", ds / "labelsTr" / "case_0002.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    label.write_bytes(bytes(label.stat().st_size))
    (ds / "labelsTr" / "case_0000.nii.gz").unlink()
    found = damaged_cases(ds)
    assert [line.split(": ")[0] for line in found] == [str(image), str(label)], found
    assert "EOFError" in found[0] and "BadGzipFile" in found[1], found
    assert damaged_cases(tmp_path) == []


def test_a_phantom_dataset_is_replaced_whole_and_an_interrupted_one_regenerated(tmp_path, caplog):
    """Other parameters replace the generator's own dataset, naming what changed and leaving no case of the
    earlier, larger set behind; a generation interrupted before its dataset.json is simply run again."""
    import logging

    ds = tmp_path / "ph"
    write_phantom_dataset(ds, 3, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    with caplog.at_level(logging.WARNING, logger="medgmae.data"):
        write_phantom_dataset(ds, 2, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    assert "replacing the phantom dataset" in caplog.text and "num_cases: saved 3, now 2" in caplog.text
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]
    (ds / "dataset.json").unlink()  # as if stopped before its last file: the in-progress record says whose it is
    (ds / ".phantom_in_progress.json").write_text("{}")
    path = write_phantom_dataset(ds, 2, shape=(16, 16, 12), spacing=8.0, num_validation=1)
    assert json.loads(path.read_text(encoding="utf-8"))["numTraining"] == 1 and not (ds / ".phantom_in_progress.json").exists()


def test_an_out_no_file_can_be_created_in_is_refused_before_any_phantom_is_generated(tmp_path, capsys, monkeypatch):
    """``--out`` on a read-only mount (simulated: creating a file there fails with EROFS, as root ignores permission
    bits): exit status 2 naming the folder before any phantom is generated (it generated the first phantom, then
    failed with status 1 and Python's error type)."""
    import medgmae.data.phantom.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("phantoms were generated for an output folder that cannot be written")

    read_only_folder(monkeypatch, tmp_path)
    monkeypatch.setattr(cli, "write_phantom_dataset", never)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "d"), "--num-cases", "2", "--shape", "16", "16", "12"])
    assert exc.value.code == 2 and not (tmp_path / "d").exists()
    assert f"--out {tmp_path / 'd'}: cannot create files in {tmp_path} (Read-only file system)" in capsys.readouterr().err


def test_a_generated_folder_whose_dataset_json_reads_as_null_says_to_delete_it(tmp_path):
    """A ``dataset.json`` holding the JSON text ``null`` parses (to ``None``) yet is no record: the folder's
    damaged-record refusal, not an error of the code."""
    out = tmp_path / "ph"
    write_phantom_dataset(out, num_cases=2, shape=(32, 32, 24), num_validation=1)
    (out / "dataset.json").write_text("null")
    from medgmae.data.datalist import DatasetError

    with pytest.raises(DatasetError, match="damaged dataset.json .*no phantom record.*delete"):
        write_phantom_dataset(out, num_cases=2, shape=(32, 32, 24), num_validation=1)
