"""``medgmae-phantom`` runs started together into one ``--out`` (the tasks of a job array, each making the dataset
before it trains) take turns: a run finding the folder held waits for it (``--wait-seconds``, one line when it
starts and one a minute after), then keeps the dataset the other run wrote with its settings, or refuses one of
other settings. They used to exit with status 2 on ``another run is writing into it``, all but the first."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgmae import terminal
from medgmae.data.phantom.writer import damaged_cases, write_phantom_dataset
from medgmae.folder_lock import FolderInUse, folder_held, hold_folder, release_folder

fcntl = pytest.importorskip("fcntl")

SETTINGS = ["--num-cases", "3", "--shape", "24", "24", "16", "--spacing", "4"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    """``medgmae-phantom --out out`` with :data:`SETTINGS`, started (not awaited), with Ctrl-C's default action
    (a test session started in the background, as CI may start it, passes SIGINT on ignored)."""
    return subprocess.Popen(["medgmae-phantom", "--out", str(out), *SETTINGS, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _until_waiting(proc: subprocess.Popen) -> str:
    """The command's first line on stdout, once it has started waiting for the folder."""
    line = proc.stdout.readline()
    assert " waiting for another run (process " in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return line


def test_runs_started_together_wait_for_the_writer_and_keep_its_dataset(tmp_path):
    out = tmp_path / "ph1"
    hold_folder(out)  # a run that has just started writing the dataset: this process
    try:
        procs = [_start(out), _start(out)]
        lines = [_until_waiting(p) for p in procs]
        time.sleep(1.0)
        assert all(p.poll() is None for p in procs)  # still waiting, not refused
    finally:
        release_folder(out)
    runs = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in runs] == [0, 0], runs
    assert all(line.startswith(f"--out {out}: waiting for another run (process {os.getpid()}") for line in lines)
    ends = sorted(so.strip().splitlines()[-1].split(" ", 1)[0] for _, so, _ in runs)
    assert ends == ["kept", "wrote"], runs  # one wrote it, the other found it made with its settings
    doc = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert doc["numTraining"] + doc["numValidation"] == 3 and damaged_cases(out) == []
    reference = write_phantom_dataset(tmp_path / "ref", 3, shape=(24, 24, 16), spacing=4.0).parent  # one run alone
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(reference) for p in reference.rglob("*"))
    for entry in doc["training"] + doc["validation"]:
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.asarray(nib.load(out / entry[key]).dataobj),
                                          np.asarray(nib.load(reference / entry[key]).dataobj))


def test_a_run_of_other_settings_is_refused_once_the_writer_is_done(tmp_path):
    """The settings check before the wait saw no dataset; after it, the one the other run wrote is kept, not
    replaced by the waiting run's phantoms."""
    out = tmp_path / "ph1"
    hold_folder(out)
    try:
        proc = _start(out)
        _until_waiting(proc)
        written = write_phantom_dataset(out, 2, shape=(24, 24, 16), spacing=4.0)  # the run this one waited for
        before = written.read_bytes()
    finally:
        release_folder(out)
    assert proc.wait(timeout=300) == 2
    err = proc.stderr.read()
    assert f"medgmae-phantom: error: --out {out} holds a phantom dataset of other settings (--num-cases: " in err, err
    assert written.read_bytes() == before and damaged_cases(out) == []


def test_wait_seconds_0_refuses_at_once_and_a_bound_refuses_after_it(tmp_path):
    out = tmp_path / "ph1"
    hold_folder(out)
    try:
        for extra, waited in ((["--wait-seconds", "0"], False), (["--wait-seconds", "1.5"], True)):
            t0 = time.monotonic()
            run = subprocess.run(["medgmae-phantom", "--out", str(out), *SETTINGS, *extra], capture_output=True,
                                 text=True, timeout=300)  # fmt: skip
            assert run.returncode == 2, run.stderr
            said = run.stderr.strip().splitlines()[-1]
            assert said.startswith(f"medgmae-phantom: error: --out {out}: another run is writing into it (process "
                                   f"{os.getpid()}")  # fmt: skip
            ended = said.split("run this one when that run has ended", 1)[-1]  # a loaded machine overshoots a little
            assert (re.fullmatch(r" \(waited 1\.[5-9] s\)", ended) is not None) if waited else ended == "", said
            assert ("waiting for another run" in run.stdout) == waited and time.monotonic() - t0 >= (1.5 if waited else 0)
            assert list(out.iterdir()) == []
    finally:
        release_folder(out)


@pytest.mark.parametrize("signum, said", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_ends_the_wait_in_one_line(tmp_path, signum, said):
    out = tmp_path / "ph1"
    hold_folder(out)
    try:
        proc = _start(out)
        _until_waiting(proc)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == -signum
    finally:
        release_folder(out)
    err = proc.stderr.read()
    assert err.strip().splitlines()[-1].startswith(f"medgmae-phantom: {said}: ") and "Traceback" not in err, err
    assert list(out.iterdir()) == []


def test_the_wait_says_so_every_line_seconds_and_gives_up_at_its_bound(tmp_path, monkeypatch):
    """In-process: another descriptor's ``flock`` on the folder (as another process's) holds it."""
    monkeypatch.setattr(terminal, "LINE_SECONDS", 0.4)
    out = tmp_path / "ph1"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        with pytest.raises(FolderInUse, match=r"run this one when that run has ended \(waited 1\.\d s\)$"):
            with folder_held(out, wait=1.2, say=lines.append):
                pass
        assert 1.2 <= time.monotonic() - t0 < 10
    finally:
        os.close(fd)
    assert lines[0] == f"--out {out}: waiting for another run (process {os.getpid()}) writing into it (at most 1.2 s)" \
        or lines[0].startswith(f"--out {out}: waiting for another run (process {os.getpid()}: ")
    assert 2 <= len(lines) <= 4 and all(line.startswith(f"--out {out}: still waiting for another run") for line in lines[1:])
    with folder_held(out, wait=1.0, say=lines.append):  # free now: taken at once, nothing said
        pass
    assert 2 <= len(lines) <= 4
    with pytest.raises(ValueError, match="wait"):
        with folder_held(out, wait=-1):
            pass
