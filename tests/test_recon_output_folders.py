"""A ``medgmae-recon`` command that created its output folder (and parents for it) and wrote nothing there that the
user can use leaves none of them when it fails or is interrupted; a folder that existed before is kept, and so is
one holding the run's files."""

import errno

import pytest
from recon_cli_helpers import few_gaussians_args

from medgmae.bundle_errors import Terminated
from recon.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_SAVED = "no state was saved yet (the first is saved at the end of the run, iteration 2); no output was written"


def _stop_in_step(monkeypatch, error: BaseException) -> None:
    """Make the first optimisation step raise ``error`` (after the projector, the FBP and the start were made)."""
    from recon.gaussian_recon import GaussianReconstructor

    def stopped(self):
        raise error

    monkeypatch.setattr(GaussianReconstructor, "step", stopped)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_an_interrupted_reconstruct_leaves_no_folder_it_made(small_parallel_scan, tmp_path, monkeypatch, capsys, stop):
    """Ctrl-C (exit 130) or SIGTERM (143) before the first state: the one line as before, and neither --out nor the
    parents made for it is left."""
    _stop_in_step(monkeypatch, KeyboardInterrupt() if stop == "ctrl-c" else Terminated())
    out = tmp_path / "runs" / "a" / "rec"
    capsys.readouterr()
    assert main(few_gaussians_args(small_parallel_scan[0], out, "--backend", "torch")) == (130 if stop == "ctrl-c" else 143)
    said = "interrupted" if stop == "ctrl-c" else "terminated (SIGTERM)"
    assert capsys.readouterr().err.strip() == f"medgmae-recon reconstruct: {said}: {NOT_SAVED}"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_reconstruct_leaves_no_folder_it_made_after_its_matrix(small_parallel_scan, tmp_path, monkeypatch):
    """A failure after the matrix was saved into a new --out below new parents: the matrix goes with the folder
    (it held nothing else), and so do the parents made for it (they were left, empty)."""
    _stop_in_step(monkeypatch, RuntimeError("device lost"))
    out = tmp_path / "runs" / "a" / "rec"
    with pytest.raises(RuntimeError, match="device lost"):
        main(few_gaussians_args(small_parallel_scan[0], out, "--backend", "matrix"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop", ["ctrl-c", "error"])
def test_folders_that_existed_are_kept(small_parallel_scan, tmp_path, monkeypatch, capsys, stop):
    """An empty --out that existed before the run stays after a Ctrl-C or a failure, and so does the existing parent
    of a new --out (the new folder itself goes)."""
    _stop_in_step(monkeypatch, KeyboardInterrupt() if stop == "ctrl-c" else RuntimeError("device lost"))
    existing, parent = tmp_path / "existing", tmp_path / "parent"
    existing.mkdir()
    parent.mkdir()
    for out in (existing, parent / "rec"):
        try:
            assert main(few_gaussians_args(small_parallel_scan[0], out, "--backend", "torch")) == 130
        except RuntimeError as e:
            assert stop == "error" and str(e) == "device lost"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "parent"]
    assert list(existing.iterdir()) == [] and list(parent.iterdir()) == []


def test_fbp_without_room_leaves_no_folder_it_made(small_parallel_scan, tmp_path, monkeypatch, capsys):
    """``fbp --out`` into new folders on a full disk: the one line as before (exit 1), and no folder made for the
    file is left; an existing folder stays; with room, the new folder holds the file."""
    import nibabel

    scan = small_parallel_scan[0]

    def run(out):
        return main(["fbp", "--projections", str(scan / "projections.npy"), "--geometry", str(scan / "geometry.json"),
                     "--out", str(out), "--device", "cpu"])  # fmt: skip

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    write = nibabel.save
    monkeypatch.setattr(nibabel, "save", full)
    (tmp_path / "existing").mkdir()
    for out in (tmp_path / "new" / "a" / "fbp.nii.gz", tmp_path / "existing" / "fbp.nii.gz"):
        capsys.readouterr()
        assert run(out) == 1
        assert capsys.readouterr().err.strip() == (
            f"medgmae-recon fbp: error: {out} could not be written (No space left on device): is the disk or your "
            "quota full, or a file-size limit (ulimit -f) set? Nothing of it was kept")  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["existing"] and list((tmp_path / "existing").iterdir()) == []
    monkeypatch.setattr(nibabel, "save", write)
    assert run(tmp_path / "new" / "fbp.nii.gz") == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["fbp.nii.gz"]


def test_geometry_without_room_leaves_no_folder_it_made(tmp_path, monkeypatch, capsys):
    """``geometry --rtk ... --out`` into new folders on a full disk: exit 1 naming the file, and no folder made for
    it is left."""
    from pathlib import Path

    import medgmae.files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(medgmae.files.json, "dump", full)  # the disk fills as the file is written
    out = tmp_path / "new" / "a" / "geometry.json"
    xml = Path(__file__).parent / "data" / "rtk_parallel.xml"
    argv = ["geometry", "--rtk", str(xml), "--det-shape", "32", "32", "--det-spacing", "1",
            "--volume-shape", "8", "8", "8", "--voxel-size", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
