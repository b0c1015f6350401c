"""One run at a time in an output folder: the lock itself (held until its process ends; folders made; file systems)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medgmae.folder_lock import FolderInUse, folder_held, folder_made, hold_folder, release_folder

from folder_lock_helpers import other_run  # noqa: F401 - fixtures


def test_a_folder_another_process_holds_is_refused_until_it_ends(tmp_path, other_run):
    folder = tmp_path / "run"
    proc = other_run(folder)
    with pytest.raises(FolderInUse) as e:
        hold_folder(folder)
    said = str(e.value)
    assert said.startswith(f"--output_dir {folder}: another run is writing into it (process {proc.pid}: ")
    assert "give another --output_dir, or run this one when that run has ended" in said
    proc.stdin.close()
    proc.wait(timeout=30)  # its lock ended with it, however it ended
    hold_folder(folder)
    hold_folder(folder)  # again in the holding process: nothing to do
    release_folder(folder)


def test_a_made_folder_goes_when_the_block_leaves_it_empty(tmp_path):
    """folder_made: the folders it created (the folder and its new parents) go when a failure leaves them empty; one
    given a file stays, and a folder that existed stays, empty."""
    nested = tmp_path / "a" / "b" / "run"
    with pytest.raises(OSError, match="full"), folder_made(nested) as created:
        assert nested.is_dir() and created == tmp_path / "a"
        raise OSError("full")
    assert list(tmp_path.iterdir()) == []
    with folder_made(nested):
        (nested / "out.nii.gz").write_text("x")
    assert (nested / "out.nii.gz").is_file()
    kept = tmp_path / "existing"
    kept.mkdir()
    with pytest.raises(KeyboardInterrupt), folder_made(kept) as created:
        assert created is None
        raise KeyboardInterrupt
    assert kept.is_dir()


def test_a_held_block_removes_only_the_empty_folders_it_created(tmp_path):
    """A command refused after taking the lock leaves no folder it made (nor the parents it made for it); one that
    wrote keeps it; a folder that existed stays."""
    nested = tmp_path / "a" / "b" / "run"
    with folder_held(nested):
        assert nested.is_dir()
    assert not (tmp_path / "a").exists()
    with folder_held(nested):
        (nested / "out.txt").write_text("x")
    assert (nested / "out.txt").is_file()
    kept = tmp_path / "existing"
    kept.mkdir()
    with folder_held(kept):
        pass
    assert kept.is_dir()
    below_a_file = tmp_path / "file.txt"
    below_a_file.write_text("x")
    with folder_held(below_a_file / "run"):  # not held: the command's own check names the problem
        pass


def test_one_folder_under_two_spellings_is_one_hold_and_a_forked_child_keeps_no_lock(tmp_path):
    """A folder held again through a link or ``..`` was a second lock the process refused itself with; a child forked
    while a command held its folder (a data loader worker) kept the lock after the command let it go."""
    real = tmp_path / "real"
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with folder_held(real):
        with folder_held(tmp_path / "link"), folder_held(tmp_path / "x" / ".." / "real"):
            pass
    assert not (tmp_path / "x").exists()
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from medgmae.folder_lock import folder_held
        with folder_held({str(real)!r}):
            child = os.fork()
            if child == 0:
                time.sleep(5)
                os._exit(0)
        probe = "from medgmae.folder_lock import hold_folder; hold_folder({str(real)!r}); print('taken')"
        print(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip())
        os.kill(child, 9)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "taken", run.stderr[-2000:]


def test_a_folder_another_process_makes_meanwhile_is_not_removed_as_ours(tmp_path, monkeypatch):
    """Between seeing a folder missing and making it, another writer may make it: it is not this call's, and
    removing it when this call's write fails could pull it from under that writer's file."""
    from pathlib import Path

    from medgmae.folder_lock import folder_made

    outer, inner = tmp_path / "shared", tmp_path / "shared" / "mine"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):
        if self == outer and not outer.exists():
            real_mkdir(outer)  # the other writer wins the race for the shared folder
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    with folder_made(inner) as created:
        assert created == inner
    assert outer.is_dir() and not inner.exists()


@pytest.mark.parametrize("errno_name", ["ENOLCK", "EOPNOTSUPP"])
def test_a_file_system_without_folder_locks_runs_unguarded(tmp_path, monkeypatch, errno_name):
    """Some NFS and FUSE mounts refuse ``flock`` on a folder (ENOLCK, EOPNOTSUPP): the run goes on without the lock
    (runs into the folder are not kept apart there), as it did before waiting for a holder was added; the error is
    not raised, and the folder is made and used as usual."""
    import errno

    import medgmae.folder_lock as folder_lock

    def no_locks(fd, operation):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))

    monkeypatch.setattr(folder_lock.fcntl, "flock", no_locks)
    with folder_held(tmp_path / "out", "--out") as held:
        (tmp_path / "out" / "result.txt").write_text("written")
    assert held is not None and (tmp_path / "out" / "result.txt").read_text() == "written"
    with folder_held(tmp_path / "waited", "--out", wait=5.0):
        assert (tmp_path / "waited").is_dir()
