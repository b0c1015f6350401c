"""The cone-beam matrix projector's matrix kept in the run's folder: read back by ``--resume`` and later runs on the
same scan grid, not used (with a note) when built for another scan or unreadable."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from recon_cli_helpers import with_defaults

from medgmae.data.phantom import generate_phantom
from recon.cli import main
from recon.geometry import CTGeometry
from recon.projectors import RayMatrixProjector
from recon.projectors.matrix_cache import MATRIX_FILE, cached_matrix_projector
from data_helpers import read_only_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 6-view cone-beam scan of a 10 x 12 x 8 phantom."""
    d = tmp_path_factory.mktemp("cone")
    ph = generate_phantom(1, shape=(10, 12, 8), spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(d / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(d / "ct.nii.gz"), "--geometry", "cone", "--views", "6", "--out", str(d / "scan"), "--device", "cpu"]) == 0
    return d / "scan"


def _args(scan: Path, out: Path, *extra, geometry: Path | None = None) -> list[str]:
    return ["reconstruct", *with_defaults(["--projections", str(scan / "projections.npy"), "--geometry",
            str(geometry or scan / "geometry.json"), "--out", str(out), "--no-progress", "--device", "cpu", "--backend",
            "matrix", "--num-gaussians", "50", "--iterations", "2"], extra)]  # fmt: skip


def test_the_matrix_is_saved_and_read_back(scan, tmp_path):
    """The file holds the matrix a fresh build gives (same arrays); the projector read from it is that matrix, for
    another affine too (it does not enter the matrix), and rebuilt for another step."""
    geom = CTGeometry.load(scan / "geometry.json")
    built, note = cached_matrix_projector(geom, tmp_path)
    assert note.startswith(f"saved the matrix in {tmp_path / MATRIX_FILE} (")
    fresh = RayMatrixProjector(geom).a
    read, note = cached_matrix_projector(CTGeometry.from_dict({**geom.to_dict(), "affine": None}), tmp_path)
    assert note == f"read the matrix from {tmp_path / MATRIX_FILE} (built for this scan)"
    for m in (built.a, read.a):
        assert m.dtype == np.float32 and (m != fresh).nnz == 0 and np.array_equal(m.indptr, fresh.indptr)
    x = torch.rand(1, *geom.volume_shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(read(x), built(x), rtol=0, atol=0)
    _, note = cached_matrix_projector(geom, tmp_path, step=0.25)
    assert "not used: it was built for another geometry, volume grid or projector setting; saved the matrix" in note


def test_resume_and_later_runs_read_the_matrix(scan, tmp_path, capsys):
    """A run saves the matrix; --resume and a new run in the folder read it (the same volume as the run that built
    it); a geometry with other angles or a damaged file is not used, with a note, and the matrix is rebuilt."""
    out = tmp_path / "rec"
    capsys.readouterr()
    assert main(_args(scan, out)) == 0
    assert f"saved the matrix in {out / MATRIX_FILE}" in capsys.readouterr().out and (out / MATRIX_FILE).is_file()
    first = nib.load(str(out / "recon.nii.gz")).get_fdata()
    assert main(_args(scan, out, "--resume", "--iterations", "3")) == 0
    assert f"read the matrix from {out / MATRIX_FILE} (built for this scan)" in capsys.readouterr().out
    assert main(_args(scan, out)) == 0
    assert f"read the matrix from {out / MATRIX_FILE}" in capsys.readouterr().out
    np.testing.assert_array_equal(nib.load(str(out / "recon.nii.gz")).get_fdata(), first)
    g = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))
    turned = tmp_path / "turned.json"
    turned.write_text(json.dumps({**g, "angles": [a + 0.1 for a in g["angles"]]}))
    assert main(_args(scan, out, geometry=turned)) == 0
    assert "not used: it was built for another geometry, volume grid or projector setting; saved the matrix" in capsys.readouterr().out
    (out / MATRIX_FILE).write_bytes((out / MATRIX_FILE).read_bytes()[:1000])
    assert main(_args(scan, out, geometry=turned)) == 0
    assert f"{out / MATRIX_FILE} not used: it cannot be read (" in capsys.readouterr().out


@pytest.mark.parametrize("shared", [False, True])
def test_ctrl_c_before_a_state_names_the_kept_matrix(scan, tmp_path, monkeypatch, capsys, shared):
    """Ctrl-C before the first state: the one line says no output was written and that the matrix stays for the
    next run, which is all the folder holds (with --matrix-dir: the file there, and no run folder)."""
    from recon.gaussian_recon import GaussianReconstructor

    def interrupted_step(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(GaussianReconstructor, "step", interrupted_step)
    out, folder = tmp_path / "rec", tmp_path / ("matrices" if shared else "rec")
    capsys.readouterr()
    assert main(_args(scan, out, *(("--matrix-dir", str(folder)) if shared else ()))) == 130
    err = capsys.readouterr().err
    (name,) = (p.name for p in folder.iterdir())
    assert name == MATRIX_FILE or shared
    assert (f"no output was written (the projector's matrix {folder / name} stays for the next run to read)" in err
            and len(err.strip().splitlines()) == 1), err  # fmt: skip
    assert out.exists() != shared


def test_the_key_follows_the_builds_version(monkeypatch):
    """The key of a kept matrix changes with ray_matrix.BUILD_VERSION (bumped when the build changes)."""
    from recon.projectors import ray_matrix
    from recon.projectors.matrix_cache import matrix_key

    geom = CTGeometry.cone((8, 10, 12), (2.0, 1.0, 1.5), num_angles=4, source_origin=100.0, source_detector=150.0)
    key = matrix_key(geom, 0.5, torch.float32)
    monkeypatch.setattr(ray_matrix, "BUILD_VERSION", ray_matrix.BUILD_VERSION + 1)
    assert matrix_key(geom, 0.5, torch.float32) != key


@pytest.mark.parametrize("with_state", [False, True])
def test_a_failed_run_removes_the_matrix_it_alone_left(scan, tmp_path, monkeypatch, with_state):
    """A run failing after building the matrix into the folder it created, before its first state, leaves no folder
    (it held projector_matrix.pt alone); once a state is saved the matrix stays beside it for --resume."""
    from recon.gaussian_recon import GaussianReconstructor

    real, calls = GaussianReconstructor.step, []

    def failing_step(self):
        calls.append(1)
        if len(calls) > (2 if with_state else 0):
            raise RuntimeError("device lost")
        return real(self)

    monkeypatch.setattr(GaussianReconstructor, "step", failing_step)
    out = tmp_path / "rec"
    with pytest.raises(RuntimeError, match="device lost"):
        main(_args(scan, out, "--iterations", "4", "--checkpoint-every", "2"))
    if with_state:
        assert {MATRIX_FILE, "recon_state.pt"} <= {p.name for p in out.iterdir()}
    else:
        assert not out.exists()


@pytest.mark.parametrize("damage", ["index out of range", "short indptr", "decreasing indptr", "float64 data"])
def test_a_file_whose_arrays_do_not_form_the_matrix_is_rebuilt(scan, tmp_path, damage):
    """A file with this scan's key whose arrays are damaged is not used: the note says why and the matrix is
    rebuilt (equal to a fresh build) and saved over it."""
    geom = CTGeometry.load(scan / "geometry.json")
    cached_matrix_projector(geom, tmp_path)
    saved = torch.load(tmp_path / MATRIX_FILE)
    if damage == "index out of range":
        saved["indices"][0] = int(np.prod(geom.volume_shape))
    elif damage == "short indptr":
        saved["indptr"] = saved["indptr"][:-1]
    elif damage == "decreasing indptr":
        saved["indptr"][1] = saved["indptr"][-1] + 1
    else:
        saved["data"] = saved["data"].double()
    torch.save(saved, tmp_path / MATRIX_FILE)
    projector, note = cached_matrix_projector(geom, tmp_path)
    assert "not used: its arrays do not form the matrix of this scan; saved the matrix" in note
    assert (projector.a != RayMatrixProjector(geom).a).nnz == 0
    assert cached_matrix_projector(geom, tmp_path)[1].startswith("read the matrix from")


def _shared_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("projector_matrix"))


def test_runs_sharing_a_matrix_dir_build_the_matrix_once(scan, tmp_path, capsys):
    """Candidates of select with other settings and their own --out share --matrix-dir: the first saves the matrix
    there (under a name with its key, equal to a fresh build), the second reads it and writes the volume of a run
    that built its own; select and --resume take them as runs of one scan with the same settings."""
    shared, holdout = tmp_path / "matrices", ("--holdout-views", "1", "--eval-every", "1")
    capsys.readouterr()
    assert main(_args(scan, tmp_path / "a", *holdout, "--matrix-dir", str(shared))) == 0
    (name,) = _shared_files(shared)
    assert f"saved the matrix in {shared / name} (" in capsys.readouterr().out
    assert name.startswith("projector_matrix-") and len(name) == len("projector_matrix-.pt") + 16
    assert not (tmp_path / "a" / MATRIX_FILE).exists()
    saved = torch.load(shared / name)
    fresh = RayMatrixProjector(CTGeometry.load(scan / "geometry.json")).a
    assert np.array_equal(saved["indptr"].numpy(), fresh.indptr) and np.array_equal(saved["indices"].numpy(), fresh.indices)
    assert np.array_equal(saved["data"].numpy(), fresh.data)
    assert main(_args(scan, tmp_path / "b", *holdout, "--tv", "1e-3", "--matrix-dir", str(shared))) == 0
    assert f"read the matrix from {shared / name} (built for this scan)" in capsys.readouterr().out
    assert main(_args(scan, tmp_path / "c", *holdout, "--tv", "1e-3")) == 0
    assert f"saved the matrix in {tmp_path / 'c' / MATRIX_FILE}" in capsys.readouterr().out
    volume = {run: nib.load(str(tmp_path / run / "recon.nii.gz")).get_fdata() for run in "bc"}
    np.testing.assert_array_equal(volume["b"], volume["c"])
    assert _shared_files(shared) == [name] and not (tmp_path / "b" / MATRIX_FILE).exists()
    assert main(["select", "--runs", *(str(tmp_path / run) for run in "abc")]) == 0
    assert main(_args(scan, tmp_path / "c", *holdout, "--tv", "1e-3", "--resume", "--iterations", "3", "--matrix-dir", str(shared))) == 0
    assert f"read the matrix from {shared / name}" in capsys.readouterr().out


def test_another_scan_builds_its_own_file_in_the_matrix_dir(scan, tmp_path, capsys):
    """A scan with other angles saves its matrix beside the first scan's, which stays as it was; a damaged shared
    file is not used (a note says why), rebuilt and read by the next run."""
    shared = tmp_path / "matrices"
    assert main(_args(scan, tmp_path / "a", "--matrix-dir", str(shared))) == 0
    (first,) = _shared_files(shared)
    before = (shared / first).read_bytes()
    g = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))
    turned = tmp_path / "turned.json"
    turned.write_text(json.dumps({**g, "angles": [a + 0.1 for a in g["angles"]]}))
    capsys.readouterr()
    assert main(_args(scan, tmp_path / "b", "--matrix-dir", str(shared), geometry=turned)) == 0
    (second,) = set(_shared_files(shared)) - {first}
    assert f"saved the matrix in {shared / second}" in capsys.readouterr().out
    assert (shared / first).read_bytes() == before
    (shared / first).write_bytes(before[:1000])
    assert main(_args(scan, tmp_path / "c", "--matrix-dir", str(shared))) == 0
    assert f"{shared / first} not used: it cannot be read (" in capsys.readouterr().out
    assert main(_args(scan, tmp_path / "d", "--matrix-dir", str(shared))) == 0
    assert f"read the matrix from {shared / first}" in capsys.readouterr().out
    assert _shared_files(shared) == sorted([first, second])


@pytest.mark.parametrize("problem", ["a file", "below a file", "read-only", "backend torch"])
def test_a_matrix_dir_that_cannot_be_used_is_refused_before_any_work(scan, tmp_path, monkeypatch, capsys, problem):
    """--matrix-dir that is a file, below one, in a folder where no file can be created, or given with a backend
    that builds no matrix: exit 2 with a message naming the flag, nothing written."""

    shared, extra = tmp_path / "matrices", ()
    if problem in ("a file", "below a file"):
        shared.write_text("not a folder")
        shared = shared / "sub" if problem == "below a file" else shared
    elif problem == "read-only":
        shared = tmp_path / "read_only" / "matrices"
        shared.parent.mkdir()
        read_only_folder(monkeypatch, shared.parent)
    else:
        extra = ("--backend", "torch")
    listing = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(_args(scan, tmp_path / "rec", "--matrix-dir", str(shared), *extra)) == 2
    err = capsys.readouterr().err
    assert "error: --matrix-dir" in err and "building the projector" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_a_failed_run_never_removes_the_shared_matrix(scan, tmp_path, monkeypatch):
    """A run failing before its first state removes the folder it created, never the matrix it saved in the
    --matrix-dir it created too."""
    from recon.gaussian_recon import GaussianReconstructor

    def failing_step(self):
        raise RuntimeError("device lost")

    monkeypatch.setattr(GaussianReconstructor, "step", failing_step)
    shared = tmp_path / "matrices"
    with pytest.raises(RuntimeError, match="device lost"):
        main(_args(scan, tmp_path / "rec", "--matrix-dir", str(shared)))
    assert not (tmp_path / "rec").exists() and len(_shared_files(shared)) == 1


def test_a_matrix_dir_unused_by_the_backend_auto_chose_is_named(tmp_path, capsys):
    """--backend auto choosing a backend without a matrix (parallel beam on the CPU): a note says --matrix-dir is
    not used, the run completes and the folder is not created."""
    ph = generate_phantom(1, shape=(10, 12, 8), spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(tmp_path / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "parallel", "--views", "4", "--out",
                 str(tmp_path / "scan"), "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    shared = tmp_path / "matrices"
    assert main(_args(tmp_path / "scan", tmp_path / "rec", "--backend", "auto", "--matrix-dir", str(shared))) == 0
    assert f"note: --matrix-dir {shared} is not used: --backend auto chose the " in capsys.readouterr().err
    assert not shared.exists()


def test_a_run_removes_the_temporary_matrix_files_of_killed_writers_alone(scan, tmp_path, capsys, dead_pid):
    """SIGKILL while a run writes the shared matrix left its temporary file for good (another run might have been
    writing it). Temporary names carry their writer's host and process: a run in --matrix-dir removes those of
    processes no longer running on its host, and leaves a live writer's, another host's, a file of an older
    version's name, a file changed in the last minute and anything but a matrix."""
    import os
    import time

    from medgmae.files import atomic_write
    from medgmae.temp_names import host_tag

    shared, host, dead = tmp_path / "matrices", host_tag(), dead_pid
    shared.mkdir()
    killed = f".tmp-{host}.{dead}-0123456789ab-projector_matrix-0123456789abcdef.pt"
    kept = [f".tmp-{host}.{os.getpid()}-0123456789ab-projector_matrix-0123456789abcdef.pt",  # a live writer
            f".tmp-{host}x.{dead}-0123456789ab-projector_matrix-0123456789abcdef.pt",  # another host
            ".tmp-0123456789ab-projector_matrix-0123456789abcdef.pt",  # no writer in the name
            f".tmp-{host}.{dead}-0123456789ab-notes.pt"]  # fmt: skip
    old = time.time() - 3600
    for name in [killed, *kept]:
        (shared / name).write_bytes(b"partial")
        os.utime(shared / name, (old, old))
    recent = f".tmp-{host}.{dead}-ba9876543210-projector_matrix-fedcba9876543210.pt"
    (shared / recent).write_bytes(b"partial")
    kept.append(recent)
    with atomic_write(shared / "x.json") as t:  # the writers' own names say who writes
        assert t.name.startswith(f".tmp-{host}.{os.getpid()}-") and t.name.endswith("-x.json")
        t.write_text("{}")
    capsys.readouterr()
    assert main(_args(scan, tmp_path / "a", "--matrix-dir", str(shared))) == 0
    said = f"removed what killed runs left in {shared} ({killed}: their writer no longer runs on this host, or they "
    assert said + "were unchanged for 24 hours); saved the matrix in" in capsys.readouterr().out
    assert sorted(p.name for p in shared.iterdir() if p.name.startswith(".")) == sorted(kept)


def test_a_matrix_that_cannot_be_saved_leaves_the_run_going(scan, tmp_path, monkeypatch):
    """The matrix file is a cache: a full disk where it is saved (a shared --matrix-dir's) stopped the whole run;
    the projector built is used and the note says the matrix was not saved. The --matrix-dir made for it is not left
    behind, empty."""
    import errno

    import medgmae.torch_files as torch_files
    from medgmae.write_failures import OutputWriteError

    def full(obj, path):
        raise OutputWriteError(errno.ENOSPC, f"{path} could not be written (No space left on device)", str(path))

    monkeypatch.setattr(torch_files, "save_torch_atomic", full)
    geom = CTGeometry.load(scan / "geometry.json")
    built, note = cached_matrix_projector(geom, tmp_path / "shared", shared=True)
    assert note.startswith("the matrix was not saved, later runs build it again: ") and "No space left" in note
    assert (built.a != RayMatrixProjector(geom).a).nnz == 0
    assert list(tmp_path.iterdir()) == []
