"""The data layer's shared bookkeeping: one per-file fingerprint (pre-check ledger, disk-cache keys, resume
records), one rule for the folder a datalist's relative paths resolve against, and a disk cache that writes
nothing before its first item is loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, RandSpatialCropd

from medgmae.data import DatasetError, LoadVolumed, training_dataset
from medgmae.data.cache import item_hash
from medgmae.data.sources import datalist_base
from medgmae.data.fingerprint import file_fingerprint
from medgmae.data.precheck import _fingerprint
from medgmae.engine.records import CasesRecord
from medgmae.preprocessing import PreprocessingSpec


def test_a_series_folder_is_fingerprinted_by_its_files(tmp_path):
    """A slice of a series folder rewritten in place (the folder's own stat unchanged) changes the fingerprint the
    pre-check, the cache and the resume record all read; a missing path has none."""
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"slice_{i}.dcm").write_bytes(b"x" * (10 + i))
    os.utime(series / "slice_1.dcm", ns=(1_000_000_000, 1_000_000_000))
    before = file_fingerprint(series)
    assert before is not None and before[0] == 10 + 11 + 12
    folder_stat = os.stat(series)
    item = {"image": str(series)}
    prints = (_fingerprint(item, ["image"]), item_hash(item), CasesRecord([item]).state_dict())
    (series / "slice_1.dcm").write_bytes(b"y" * 40)  # edited in place: the folder's mtime does not move
    os.utime(series, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))
    assert file_fingerprint(series) != before and file_fingerprint(series)[0] == 10 + 40 + 12
    after = (_fingerprint(item, ["image"]), item_hash(item), CasesRecord([item]).state_dict())
    assert all(a != b for a, b in zip(prints, after))
    file = tmp_path / "v.nii.gz"
    file.write_bytes(b"abc")
    assert file_fingerprint(file) == (3, os.stat(file).st_mtime_ns)
    assert file_fingerprint(tmp_path / "missing.nii.gz") is None
    assert _fingerprint({"image": str(tmp_path / "missing.nii.gz")}, ["image"]) == [[str(tmp_path / "missing.nii.gz"), None, None]]


def test_a_slice_replaced_by_a_same_size_file_of_an_older_time_changes_a_series_fingerprint(tmp_path):
    """``os.replace`` of a slice by one of the same size whose modification time is the old slice's (a copy
    keeping its time): no file's size or time changed, only the folder's (a name was replaced in it)."""
    series = tmp_path / "series"
    series.mkdir()
    past = 1_000_000_000_000_000_000
    for i in range(3):
        (series / f"slice_{i}.dcm").write_bytes(b"x" * 10)
        os.utime(series / f"slice_{i}.dcm", ns=(past + i, past + i))
    os.utime(series, ns=(past, past))
    before = file_fingerprint(series)
    assert before == (30, past + 2)
    fresh = tmp_path / "fresh.dcm"
    fresh.write_bytes(b"y" * 10)
    os.utime(fresh, ns=(past + 1, past + 1))
    os.replace(fresh, series / "slice_1.dcm")
    assert [(f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(series.iterdir())] == [
        (10, past), (10, past + 1), (10, past + 2)]
    assert os.stat(series).st_mtime_ns > past + 2
    assert file_fingerprint(series) == (30, os.stat(series).st_mtime_ns) != before


def test_datalist_base_rule(tmp_path):
    """A dataset_dir beside a named datalist is the base of its relative paths; otherwise the datalist's folder."""
    dl = tmp_path / "lists" / "d.json"
    dl.parent.mkdir()
    dl.write_text(json.dumps({"training": []}))
    assert datalist_base(str(tmp_path), str(dl)) == tmp_path
    assert datalist_base("", str(dl)) is None
    assert datalist_base(str(dl), "") is None and datalist_base(str(tmp_path), "") is None
    with pytest.raises(DatasetError, match="is a file: with a datalist"):
        datalist_base(str(dl), str(dl))
    with pytest.raises(DatasetError, match="does not exist: with a datalist"):
        datalist_base(str(tmp_path / "nope"), str(dl))


def test_the_disk_cache_writes_nothing_before_its_first_item(tmp_path):
    """Building the dataset (as a bundle does before its resume check) leaves the cache root absent; the first item
    creates the folder with its preprocessing.json."""
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 200, (12, 10, 8)).astype(np.float32), np.eye(4)), str(path))
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    chain = Compose([LoadVolumed("image")] + spec.transforms(["image"]) + [RandSpatialCropd("image", roi_size=4)])
    ds = training_dataset([{"image": str(path)}], chain, tmp_path / "cache", spec=spec.to_dict())
    assert not (tmp_path / "cache").exists()
    ds[0]
    record = json.loads((Path(ds.cache_dir) / "preprocessing.json").read_text(encoding="utf-8"))
    assert record["spec"] == json.loads(json.dumps(spec.to_dict())) and len(list(Path(ds.cache_dir).glob("*.pt"))) == 1


def _write_mhd(folder: Path, values: np.ndarray) -> Path:
    """A MetaImage header and its raw data file (little-endian int16), written by hand as the format says."""
    (folder / "vol.raw").write_bytes(values.astype("<i2").tobytes())
    header = folder / "vol.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                      "ElementSpacing = 1 1 1\nElementDataFile = vol.raw\n", encoding="ascii")  # fmt: skip
    return header


def test_a_detached_headers_data_file_is_part_of_its_fingerprints(tmp_path):
    """A MetaImage whose raw voxels are rewritten at the same size (its header untouched) changes both the cheap
    fingerprint (the pre-check ledger, the cache) and the content one (records, resume), as SimpleITK reads other
    voxels; the content one is hashlib's SHA-256 of the two files' lines."""
    import hashlib

    from medgmae.data.fingerprint import path_fingerprint

    header = _write_mhd(tmp_path, np.zeros(64))
    stat_before, content_before = file_fingerprint(header), path_fingerprint(header)
    header_sha = hashlib.sha256(header.read_bytes()).hexdigest()
    raw = tmp_path / "vol.raw"
    values = np.zeros(64)
    values[5] = 900
    raw.write_bytes(values.astype("<i2").tobytes())
    os.utime(raw, ns=(stat_before[1] + 10**9, stat_before[1] + 10**9))
    assert file_fingerprint(header) != stat_before
    after = path_fingerprint(header)
    assert after["sha256"] != content_before["sha256"] and after["path"] == str(header.resolve())
    lines = f"vol.mhd\t{header_sha}\nvol.raw\t{hashlib.sha256(raw.read_bytes()).hexdigest()}\n"
    assert after["sha256"] == hashlib.sha256(lines.encode()).hexdigest()



def test_a_run_on_metaimages_resumes_across_the_data_file_being_fingerprinted(tmp_path):
    """The resume record keeps a header file's own size, as runs recorded before the data file was fingerprinted
    hold it: their resume is not refused as other data."""
    header = _write_mhd(tmp_path, np.zeros(64))
    state = CasesRecord([{"image": str(header)}]).state_dict()
    assert state["cases"][0]["image"][1] == len(header.read_bytes())  # the header's bytes, not with its 128 of data
    CasesRecord([{"image": str(header)}]).load_state_dict(state)  # the same data: no refusal


def test_a_series_folders_content_fingerprint_is_its_slices_alone(tmp_path):
    """A DICOM folder's content fingerprint covers the files the reader reads (its top level): outputs written in a
    subfolder (a simulation's ``--out`` inside it) leave it as it was."""
    from medgmae.data.fingerprint import path_fingerprint

    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"slice_{i}.dcm").write_bytes(bytes([i]) * 100)
    before = path_fingerprint(series)
    (series / "sim").mkdir()
    (series / "sim" / "projections.npy").write_bytes(b"\1" * 50)
    assert path_fingerprint(series) == before
    (series / "slice_1.dcm").write_bytes(b"\7" * 100)
    assert path_fingerprint(series) != before


def test_a_local_metaimage_is_fingerprinted_without_reading_its_voxels(tmp_path):
    """``ElementDataFile = LOCAL`` (the voxels follow the header in one file): no data file, and only the header is
    read (the lookup runs for every cached item in every epoch; decoding 4 MB of voxels as text took seconds and
    hundreds of MB for a CT)."""
    import tracemalloc

    from medgmae.data.fingerprint import detached_data_file

    path = tmp_path / "local.mhd"
    voxels = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 128 128 128\nElementType = MET_SHORT\n"
                     b"ElementDataFile = LOCAL\n" + voxels + b"\nElementDataFile = other.raw\n")  # fmt: skip
    tracemalloc.start()
    try:
        assert detached_data_file(path) is None
        assert file_fingerprint(path) == (os.stat(path).st_size, os.stat(path).st_mtime_ns)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_a_metaimage_data_file_with_a_space_in_its_name_is_fingerprinted(tmp_path):
    """A data file named with a space (MetaIO takes it whole, as SimpleITK reads it) is part of the fingerprints;
    a ``%`` pattern or a ``LIST`` names several files (the header alone is fingerprinted)."""
    from medgmae.data.fingerprint import detached_data_file

    (tmp_path / "scan 01.raw").write_bytes(np.zeros(64, "<i2").tobytes())
    header = tmp_path / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                      "ElementDataFile = scan 01.raw\n", encoding="ascii")  # fmt: skip
    assert detached_data_file(header) == tmp_path / "scan 01.raw"
    before = file_fingerprint(header)
    (tmp_path / "scan 01.raw").write_bytes(np.full(64, 9, "<i2").tobytes())
    os.utime(tmp_path / "scan 01.raw", ns=(before[1] + 10**9, before[1] + 10**9))
    assert file_fingerprint(header) != before
    for value in ("slice%03d.raw 1 4 1", "LIST 2D"):
        header.write_text(f"NDims = 3\nElementDataFile = {value}\n", encoding="ascii")
        assert detached_data_file(header) is None
