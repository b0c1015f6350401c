"""A write without room (a full disk, a quota, a file-size limit) or refused (a read-only folder or file system) is
named with its file and said in one line by the command-line tools, whichever library was writing; nothing of the
file is kept. The reference is the system
itself: each case runs in a child process under a file-size limit (``RLIMIT_FSIZE``), which refuses writes past it
with ``EFBIG`` as a full disk does with ``ENOSPC``."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medgmae.write_failures import OutputWriteError, write_failure

from recon_cli_helpers import ct, simulated  # noqa: F401 - fixtures

LIMIT_BYTES = 64 * 1024


def _limited(code: str, *args: str, limit_bytes: int = LIMIT_BYTES) -> subprocess.CompletedProcess:
    """Run ``code`` (a Python snippet) or, with ``args``, a command, in a child limited to ``limit_bytes`` a file."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    cmd = list(args) if args else [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, timeout=300)


def test_every_writer_of_the_toolkit_names_the_file_it_could_not_write(tmp_path):
    """``torch.save`` (its C++ stream's ``unexpected pos``, no errno), nibabel's gzip (``EFBIG``), NumPy and the
    staging folder of a command's outputs: each ends in one :class:`OutputWriteError` naming the final file (not the
    temporary or staging name), and the folder holds nothing of it."""
    code = f"""
        import numpy as np, torch
        from medgmae.files import atomic_write, save_nifti_atomic, staged_outputs
        from medgmae.torch_files import save_torch_atomic
        from medgmae.write_failures import OutputWriteError
        out = {str(tmp_path)!r}
        def staged():
            with staged_outputs(out + "/run") as s:
                save_torch_atomic({{"x": torch.zeros(100_000)}}, s / "state.pt")
        def npy():
            with atomic_write(out + "/p.npy") as tmp:
                np.save(tmp, np.zeros(100_000))
        for write in (lambda: save_torch_atomic({{"x": torch.zeros(100_000)}}, out + "/model.pt"),
                      lambda: save_nifti_atomic(np.random.rand(60, 60, 60).astype(np.float32), np.eye(4), out + "/v.nii.gz"),
                      npy, staged):
            try:
                write()
                print("written")
            except OutputWriteError as e:
                print(e.filename, "|", e.strerror)
    """
    lines = _limited(code).stdout.splitlines()
    names = ["model.pt", "v.nii.gz", "p.npy", "run/state.pt"]
    assert [line.split(" | ")[0] for line in lines] == [str(tmp_path / n) for n in names], lines
    for line in lines:
        assert line.endswith("is the disk or your quota full, or a file-size limit (ulimit -f) set? Nothing of it was kept")
    assert "(File too large)" in lines[1] and "write was cut short: [enforce fail" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary, staging or final file, no run folder


def test_other_errors_pass_as_they_are():
    """A bug's RuntimeError is not a full disk; a permission error about another file than the one written (an
    input read while writing it) is not this write's."""
    assert write_failure("a.pt", RuntimeError("shape mismatch")) is None
    assert write_failure("a.pt", PermissionError(errno.EACCES, "Permission denied", "in.nii.gz"), ".tmp-a.pt") is None
    full = write_failure("a.pt", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, OutputWriteError) and full.errno == errno.ENOSPC and full.filename == "a.pt"


REFUSALS = [errno.EACCES, errno.EROFS]


def _refusal(code: int, *names) -> OSError:
    return OSError(code, os.strerror(code), *map(str, names))


@pytest.mark.parametrize("code", REFUSALS)
@pytest.mark.parametrize("where", ["write", "rename", "torch"])
def test_a_refused_write_names_the_final_file_not_the_temporary_one(tmp_path, monkeypatch, code, where):
    """A folder made read-only mid-run, a read-only file system: the write of the temporary file (``open``'s
    ``PermissionError``, ``torch.save``'s ``RuntimeError`` naming no file) or its rename was raised as it was,
    naming the hidden temporary file (``.tmp-<host>.<pid>-...-encoder.pt``); now one :class:`OutputWriteError`
    names the final file and the system's words, and no temporary file is left."""
    from medgmae.files import atomic_write

    final = tmp_path / "encoder.pt"
    if where == "rename":
        monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(_refusal(code, src, dst)))
    with pytest.raises(OutputWriteError) as e:
        with atomic_write(final) as tmp:
            tmp.write_bytes(b"model")
            if where == "write":
                raise _refusal(code, tmp)
            if where == "torch":
                raise RuntimeError(f"[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                                   f"{os.strerror(code)}")
    assert e.value.filename == str(final) and e.value.errno == code
    assert e.value.said == (f"{final} could not be written ({os.strerror(code)}): is its folder read-only, or "
                            "another user's? Nothing of it was kept")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", REFUSALS)
@pytest.mark.parametrize("where", ["staging", "move"])
def test_a_refused_staged_output_names_the_file_it_was_to_become(tmp_path, monkeypatch, code, where):
    """Creating the staging folder beside the output folder, or moving a staged file in (fine-tuning's validation
    folder made read-only), raised ``PermissionError: '.validation.staging-.../metrics.json' -> ...``; now the error
    names the output (folder or file) and no staging folder is left."""
    import tempfile

    from medgmae.files import staged_outputs

    target = tmp_path / "validation"
    if where == "staging":
        monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix, dir: (_ for _ in ()).throw(_refusal(code, f"{dir}/{prefix}x")))
    else:
        monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(_refusal(code, src, dst)))
    with pytest.raises(OutputWriteError) as e:
        with staged_outputs(target) as stage:
            (stage / "metrics.json").write_text("{}")
    named = target if where == "staging" else target / "metrics.json"
    assert e.value.filename == str(named) and f"{named} could not be written ({os.strerror(code)})" in e.value.said
    assert [p for p in tmp_path.rglob(".*")] == []  # no staging folder


def test_a_tool_refused_its_output_says_so_in_one_line(tmp_path, simulated, monkeypatch, capsys):  # noqa: F811
    """``medgmae-recon fbp`` on a read-only file system: the last line names the output file and the reason, the
    status is 1 (a failure while writing), and no temporary file is left."""
    from recon.cli import main

    out = tmp_path / "fbp.nii.gz"
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(_refusal(errno.EROFS, src, dst)))
    assert main(["fbp", "--projections", str(simulated / "projections.npy"), "--geometry",
                 str(simulated / "geometry.json"), "--out", str(out), "--device", "cpu"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medgmae-recon fbp: error: {out} could not be written (Read-only file system): is its folder "
                   "read-only, or another user's? Nothing of it was kept"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["fbp", "medgmae-2d"])
def test_a_tool_without_room_for_its_output_says_so_in_one_line(tmp_path, simulated, ct, command):  # noqa: F811
    """``medgmae-recon fbp`` ended in gzip's ``OSError: [Errno 27] File too large`` traceback and ``medgmae-2d``
    in PIL's, naming no output; now the last line names the file, the status is 1, and no output is left."""
    if command == "fbp":
        out = tmp_path / "fbp.nii.gz"
        args = ["medgmae-recon", "fbp", "--projections", str(simulated / "projections.npy"), "--geometry",
                str(simulated / "geometry.json"), "--out", str(out), "--device", "cpu"]  # fmt: skip
        said = f"medgmae-recon fbp: error: {out} could not be written (File too large)"
    else:
        import numpy as np
        import torch
        from PIL import Image

        from gmae2d_helpers import tiny_gmae2d

        image, model = tmp_path / "in.png", tmp_path / "model.pt"
        Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(image)
        torch.save(tiny_gmae2d(k=48).model_checkpoint(), model)
        out = tmp_path / "layers"
        args = ["medgmae-2d", "layers", "--checkpoint", str(model), "--image", str(image), "--out", str(out),
                "--device", "cpu"]  # fmt: skip
        said = f"medgmae-2d layers: error: {out}/"
    before = set(tmp_path.iterdir())
    run = _limited("", *args, limit_bytes=1024)  # below the smallest output
    assert run.returncode == 1, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(said) and "Nothing of it was kept" in last and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert set(tmp_path.iterdir()) == before


def test_a_write_failure_in_a_data_loader_worker_is_said_in_one_line():
    """A cache file written in a loader worker (epoch 1 of a run, where a full disk most likely shows): PyTorch
    raises a copy of the error built from its text alone, without ``strerror``, and the bundle's last line was
    ``error: None``; it is the worker's message."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from medgmae.files import os_error_message

    class FullDisk(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise write_failure("/cache/abc.pt", OSError(errno.ENOSPC, "No space left on device"))

    with pytest.raises(OutputWriteError) as e:
        next(iter(DataLoader(FullDisk(), num_workers=1)))
    assert e.value.strerror is None  # the copy PyTorch made
    said = os_error_message(e.value)
    assert said == ("/cache/abc.pt could not be written (No space left on device): is the disk or your quota full, or "
                    "a file-size limit (ulimit -f) set? Nothing of it was kept"), str(e.value)
    assert torch.utils.data.get_worker_info() is None


def test_free_room_is_none_where_a_folder_above_cannot_be_entered_and_expands_the_home(tmp_path, monkeypatch):
    """``Path.exists`` raises where a folder above cannot be entered (permission refused): the room cannot be read,
    which is ``None``, not a traceback (``medgmae-info --path``); ``~`` is the home folder, not a folder named ``~``
    below the current one."""
    from pathlib import Path

    from medgmae.write_failures import free_room

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    measured, free = free_room("~/runs/new")
    assert measured == tmp_path and free > 0

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    assert free_room(tmp_path / "locked" / "inner") is None
