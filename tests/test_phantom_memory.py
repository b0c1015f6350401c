"""Phantom shapes whose generation needs more memory than the machine has are refused before anything is written, and
a generation that fails removes what it created (only that)."""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser
from bundle_helpers import BUNDLES
from host_memory_helpers import MEMORY_LIMIT_CASES, patch_memory_limits

import medgmae.data.phantom.generator as generator_mod
import medgmae.data.phantom.writer as writer_mod
from medgmae.bundle_checks import BundleSettingError, check_settings
from medgmae.data.phantom import main

HUGE = ["100000", "100000", "100000"]


def test_a_shape_beyond_the_machines_memory_is_refused_up_front(tmp_path, capsys):
    """It printed a raw _ArrayMemoryError traceback, exited 1 and left imagesTr/, labelsTr/ and the marker."""
    out = tmp_path / "new"
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--num-cases", "1", "--shape", *HUGE])
    assert e.value.code == 2
    err = capsys.readouterr().err
    # 48 bytes a voxel: 48e15 bytes, 48e15 / 2**50 = 42.63 PiB
    assert "--shape: a phantom of shape 100000 x 100000 x 100000 needs about 42.6 PiB of memory" in err
    assert "Traceback" not in err and not out.exists()


def test_the_bound_is_the_machines_physical_memory(monkeypatch, tmp_path):
    """Both sizes in binary units: 48 * 64 * 64 * 48 bytes = 9 MiB exactly; a 49th slice needs 9.1875 MiB (the
    message said "0.0 GiB" of both)."""
    patch_memory_limits(monkeypatch, tmp_path, 48 * 64 * 64 * 48, "max\n", None, None)
    assert generator_mod.shape_memory_problem((64, 64, 48)) is None
    said = generator_mod.shape_memory_problem((64, 64, 49))
    assert "needs about 9.19 MiB of memory while it is generated" in said
    assert "more than the 9.00 MiB this process may use" in said


@pytest.mark.parametrize("v2, v1, rlimit, expected", MEMORY_LIMIT_CASES)
def test_the_bound_is_the_smallest_memory_limit(monkeypatch, tmp_path, v2, v1, rlimit, expected):
    """A cgroup or address-space limit below the machine's memory bounds the shape (only the machine's counted)."""
    patch_memory_limits(monkeypatch, tmp_path, 16 << 30, v2, v1, rlimit)
    voxels = expected // 48
    assert generator_mod.shape_memory_problem((voxels // 64, 8, 8)) is None
    assert "needs about" in generator_mod.shape_memory_problem((voxels // 64 + 1, 8, 8))


def _fail_on_second_case(monkeypatch, nth: int = 2):
    real, calls = writer_mod.generate_phantom, []

    def generate(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise MemoryError("Unable to allocate 3.7 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_mod, "generate_phantom", generate)


def test_a_failed_generation_removes_the_folders_it_created(tmp_path, capsys, monkeypatch):
    _fail_on_second_case(monkeypatch)
    out = tmp_path / "a" / "b"
    code = main(["--out", str(out), "--num-cases", "2", "--shape", "16", "16", "16"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MemoryError: Unable to allocate 3.7 GiB" in err[0], err
    assert list(tmp_path.iterdir()) == []  # a/ and a/b/ were this run's


def test_ctrl_c_during_generation_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    """It printed a KeyboardInterrupt traceback."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_mod, "generate_phantom", interrupted)
    out = tmp_path / "a" / "b"
    assert main(["--out", str(out), "--num-cases", "2", "--shape", "16", "16", "16"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medgmae-phantom: interrupted: what this run had written to {out} was removed"]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_generation_leaves_what_was_there_before(tmp_path, monkeypatch):
    _fail_on_second_case(monkeypatch)
    out = tmp_path / "data"
    (out / "imagesTr").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / ".phantom_in_progress.json").write_text("{}")  # an earlier interrupted generation
    with pytest.raises(MemoryError):
        writer_mod.write_phantom_dataset(out, 2, shape=(16, 16, 16), num_validation=0)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        ".phantom_in_progress.json", "imagesTr", "notes.txt"]  # fmt: skip
    assert json.loads((out / ".phantom_in_progress.json").read_text(encoding="utf-8"))["num_cases"] == 2  # still marks it interrupted


def test_a_replacement_failing_partway_is_not_read_as_the_earlier_dataset(tmp_path, monkeypatch, caplog):
    """Seed 0's dataset replaced by seed 5, failing at case 2 after cases 0 and 1 were overwritten: a later run with
    seed 0 took the mixed folder (seed 0's dataset.json) for complete; it generates seed 0's cases again."""
    import logging

    import nibabel as nib
    import numpy as np

    def images(folder):
        return [np.asarray(nib.load(folder / "imagesTr" / f"case_{i:04d}.nii.gz").dataobj) for i in range(3)]

    reference, out = tmp_path / "reference", tmp_path / "data"
    writer_mod.write_phantom_dataset(reference, 3, seed=0, shape=(16, 16, 12), num_validation=0)
    writer_mod.write_phantom_dataset(out, 3, seed=0, shape=(16, 16, 12), num_validation=0)
    with monkeypatch.context() as m:
        _fail_on_second_case(m, nth=3)
        with pytest.raises(MemoryError):
            writer_mod.write_phantom_dataset(out, 3, seed=5, shape=(16, 16, 12), num_validation=0)
    assert not (out / "dataset.json").exists() and (out / ".phantom_in_progress.json").is_file()
    assert not np.array_equal(images(out)[0], images(reference)[0])  # case 0 is seed 5's
    with caplog.at_level(logging.WARNING, logger="medgmae.data"):
        writer_mod.write_phantom_dataset(out, 3, seed=0, shape=(16, 16, 12), num_validation=0)
    assert "its generation was interrupted" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(images(out), images(reference)))
    assert not (out / ".phantom_in_progress.json").exists()


def test_an_interrupted_generation_leaves_no_case_of_a_larger_one_behind(tmp_path):
    """An interrupted generation's cases beyond the new dataset's are removed (they stayed as strays)."""
    out = tmp_path / "data"
    writer_mod.write_phantom_dataset(out, 3, shape=(16, 16, 12), num_validation=0)
    (out / "dataset.json").unlink()
    (out / ".phantom_in_progress.json").write_text("{}")
    writer_mod.write_phantom_dataset(out, 2, shape=(16, 16, 12), num_validation=0)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]


@pytest.mark.parametrize("bundle, extra", [("medgmae_pretrain", {}), ("unetr_finetune", {"pretrained_path": ""})])
def test_the_bundles_refuse_such_a_phantom_shape_with_the_other_settings(tmp_path, bundle, extra):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update({"output_dir": str(tmp_path / "run"), "phantom_shape": [100000] * 3, **extra})
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), {})
    assert "--phantom_shape: a phantom of shape 100000 x 100000 x 100000 needs about" in str(err.value)
    (tmp_path / "data").mkdir()
    parser.update({"dataset_dir": str(tmp_path / "data")})  # the user's data: no phantoms are generated
    check_settings(parser.get_parsed_content("checked_settings"), {})
