"""The pre-check's ledger of files that passed: each file read once, records of other settings and runs kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import medgmae.data.precheck as precheck_mod
from medgmae.data import DatasetError, check_datalist

from data_helpers import nifti_file, varied_volume as _varied


def test_precheck_ledger_reads_each_file_once(tmp_path, monkeypatch):
    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(3)]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    reads.clear()
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == []  # checked before, unchanged
    nifti_file(tmp_path / "v1.nii.gz", _varied((8, 8, 9), 7))  # edited: new size
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == ["v1.nii.gz"]
    reads.clear()
    check_datalist(items, label_key="label", num_classes=2, ledger_dir=tmp_path / "cache")  # other settings: all again
    assert len(reads) == 3


def test_checks_of_other_settings_sharing_a_cache_keep_their_records(tmp_path, monkeypatch):
    """A fine-tuning run (labels checked) and a pre-training run (images only) sharing one ``--cache_dir``: each
    keeps its own record of the files that passed, so neither reads its files again the next time (one record
    replaced the other's, and each start read every file again); a ledger of the earlier one-record form is read
    as that record."""
    import json

    cases = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", _varied((8, 8, 8), i)),
              "label": nifti_file(tmp_path / f"l{i}.nii.gz", np.zeros((8, 8, 8), np.uint8))} for i in range(2)]  # fmt: skip
    images = [{"image": c["image"]} for c in cases]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    labelled = dict(label_key="label", num_classes=2, ledger_dir=tmp_path / "cache")
    check_datalist(cases, **labelled)
    check_datalist(images, ledger_dir=tmp_path / "cache")
    assert len(reads) == 6  # 2 images and 2 label maps, then the 2 images under the other settings
    reads.clear()
    check_datalist(cases, **labelled)
    check_datalist(images, ledger_dir=tmp_path / "cache")
    assert reads == []
    path = tmp_path / "cache" / "precheck.json"
    records = json.loads(path.read_text(encoding="utf-8"))["records"]
    assert len(records) == 2
    path.write_text(json.dumps(records[1]), encoding="utf-8")  # the earlier form: one record, the images-only one
    check_datalist(images, ledger_dir=tmp_path / "cache")
    assert reads == []
    # ledgers of other shapes are no records (the files are read again), never a crash of the pre-check
    odd = [{"records": None}, {"records": 5}, [1, 2], {"records": [{"settings": records[0]["settings"], "passed": [["p"]]},
           {"settings": None, "passed": []}, {**records[1], "passed": [5, [[1, 2, 3]], *records[1]["passed"]]}]}]  # fmt: skip
    for ledger in odd:
        path.write_text(json.dumps(ledger), encoding="utf-8")
        reads.clear()
        check_datalist(images, ledger_dir=tmp_path / "cache")
        assert len(reads) == (0 if isinstance(ledger, dict) and isinstance(ledger["records"], list) else 2), ledger
    # a rewrite keeps other settings' records of this version that hold passes, the latest four, and no older
    # version's (other "checks"): those never match again
    other = [{"settings": {**records[0]["settings"], "num_classes": n}, "passed": records[0]["passed"]} for n in range(3, 9)]
    older = {"settings": {**records[0]["settings"], "checks": 1}, "passed": records[0]["passed"]}
    path.write_text(json.dumps({"records": [older, *other]}), encoding="utf-8")
    nifti_file(tmp_path / "v0.nii.gz", _varied((8, 8, 9), 3))  # edited: read again, the ledger rewritten
    check_datalist(images, ledger_dir=tmp_path / "cache")
    kept = json.loads(path.read_text(encoding="utf-8"))["records"]
    assert [r["settings"].get("num_classes") for r in kept] == [5, 6, 7, 8, None]


def test_runs_sharing_a_cache_keep_each_others_passes(tmp_path, monkeypatch):
    """Two runs on different data sharing one ``--cache_dir`` (one ledger): each run's check keeps what the other's
    passed, so neither reads its files again the next time (the ledger held the last run's files alone, and the
    other run's next start read all of its files again)."""
    a = [{"image": nifti_file(tmp_path / f"a{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(2)]
    b = [{"image": nifti_file(tmp_path / f"b{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(2)]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    check_datalist(a, ledger_dir=tmp_path / "cache")
    check_datalist(b, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["a0.nii.gz", "a1.nii.gz", "b0.nii.gz", "b1.nii.gz"]
    reads.clear()
    check_datalist(a, ledger_dir=tmp_path / "cache")
    check_datalist(b, ledger_dir=tmp_path / "cache")
    assert reads == []
    nifti_file(tmp_path / "a1.nii.gz", _varied((8, 8, 9), 7))  # edited: read again, b's passes kept
    check_datalist(a + b[:1], ledger_dir=tmp_path / "cache")
    check_datalist(b, ledger_dir=tmp_path / "cache")
    assert reads == ["a1.nii.gz"]
    # an entry per file, whatever the edits: those of a file since changed or removed are not kept
    import json
    import os

    for i in range(4):
        nifti_file(tmp_path / "a0.nii.gz", _varied((8, 8, 8 + i), i))
        os.utime(tmp_path / "a0.nii.gz", ns=(10**18 + i, 10**18 + i))
        check_datalist(a, ledger_dir=tmp_path / "cache")
    (tmp_path / "b1.nii.gz").unlink()  # dropped at the next rewrite (a run that read a file)
    nifti_file(tmp_path / "a1.nii.gz", _varied((8, 8, 8), 5))
    os.utime(tmp_path / "a1.nii.gz", ns=(10**18 + 9, 10**18 + 9))
    check_datalist(a, ledger_dir=tmp_path / "cache")
    ledger = json.loads((tmp_path / "cache" / "precheck.json").read_text(encoding="utf-8"))["records"][0]["passed"]
    assert sorted(Path(f[0]).name for fp in ledger for f in fp) == ["a0.nii.gz", "a1.nii.gz", "b0.nii.gz"]


def test_precheck_ledger_keeps_the_passing_files_when_one_fails(tmp_path, monkeypatch):
    """One bad file among several: the error names it, the files that passed are remembered all the same (written
    atomically, no temporary file left), and the run after fixing it reads only that file and any other that
    changed; a file that fails is never remembered."""
    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(5)]
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nifti_file(tmp_path / "v3.nii.gz", nan)
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    with pytest.raises(DatasetError):  # a first run's folder: not created by a failure (no output folder left)
        check_datalist(items, ledger_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    reads.clear()
    (tmp_path / "cache").mkdir()  # a folder there already (a resumed run's, or the user's --cache_dir)
    for _ in range(2):  # still bad the second time: only it is read again
        with pytest.raises(DatasetError, match=r"^1 problem in.*\n.*v3\.nii\.gz.*NaN"):
            check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz", "v4.nii.gz", "v3.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["precheck.json"]
    reads.clear()
    nifti_file(tmp_path / "v3.nii.gz", _varied((8, 8, 8), 3))  # fixed
    nifti_file(tmp_path / "v0.nii.gz", _varied((8, 8, 9), 7))  # and another edited: new size
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["v0.nii.gz", "v3.nii.gz"]
    reads.clear()
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == []
