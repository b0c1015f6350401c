"""How a bundle ends when it fails or is stopped: the toolkit's one-line reason last, how to resume after Ctrl-C
or SIGTERM, and under torchrun rank 0 alone printing the traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def _under_the_hook(body: str, twice: bool = False, resumable: bool = False, rank: int | None = None, runner: bool = False,
                    env: dict | None = None, ctrl_c: bool = False):
    """Run ``body`` in a fresh Python with :func:`summarise_errors` installed (twice: installed twice; resumable:
    by a bundle with a ``resume`` setting; runner: in a process started as MONAI's bundle runner; ctrl_c: with
    Python's own Ctrl-C handler, as a process started from a shell has it, which a test worker may have ignored);
    returns the finished process and its non-blank stderr lines."""
    import subprocess
    import sys

    install = f"summarise_errors(resumable={resumable})"
    install = f"summarise_errors(); {install}" if twice else install
    argv = "import sys; sys.argv[0] = '/env/lib/python3/site-packages/monai/bundle/__main__.py'\n" if runner else ""
    argv += "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" if ctrl_c else ""
    code = f"{argv}from medgmae.bundle_errors import summarise_errors\n{install}\n{body}"
    env = {**os.environ, **(env or {}), **({} if rank is None else {"RANK": str(rank), "WORLD_SIZE": "2"})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    return proc, [line for line in proc.stderr.splitlines() if line.strip()]


def test_rank_0_losing_another_process_says_so_and_how_to_resume():
    """Under torchrun, a process killed mid-epoch leaves rank 0 failing in a collective with gloo's "Connection
    reset by peer": after that reason, rank 0 says another process stopped first and how to continue; an error of
    its own (a bad file) gets no such line, nor does a bundle without a resume."""
    from medgmae.bundle_errors import LOST_PEER

    lost = ("try:\n    raise RuntimeError('[gloo/transport/tcp/pair.cc:534] Connection reset by peer [127.0.0.1]:5')\n"
            "except RuntimeError as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(lost, resumable=True, rank=0)
    assert lines[-2].startswith("error: RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection reset by peer")
    assert lines[-1] == LOST_PEER and proc.returncode == 1
    assert LOST_PEER not in _under_the_hook(lost, resumable=False, rank=0)[0].stderr
    own = "raise ValueError('/data/x.nii.gz: cannot read the volume')\n"
    assert LOST_PEER not in _under_the_hook(own, resumable=True, rank=0)[0].stderr
    piped = "raise BrokenPipeError(32, 'Broken pipe')\n"  # one process whose output went to `head`: no peer
    assert LOST_PEER in _under_the_hook(piped, resumable=True, rank=0)[0].stderr
    assert LOST_PEER not in _under_the_hook(piped, resumable=True)[0].stderr
    # an NCCL failure of its own GPU (out of memory) is no lost peer, whatever its type (DistBackendError)
    oom = ("class DistBackendError(RuntimeError):\n    pass\n"
           "raise DistBackendError('NCCL error: unhandled cuda error, ncclUnhandledCudaError: Cuda failure out of memory')\n")
    assert LOST_PEER not in _under_the_hook(oom, resumable=True, rank=0)[0].stderr


def test_summarise_errors_ends_a_wrapped_failure_with_its_reason():
    """MONAI wraps a config expression's error (``RuntimeError: Failed to evaluate ...``): the hook keeps the whole
    traceback and repeats the reason as the last line; installed twice, it prints it once."""
    proc, lines = _under_the_hook(
        "try:\n"
        "    raise ValueError('--max_epochs: expected a positive whole number, got -3')\n"
        "except ValueError as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n",
        twice=True,
    )
    assert proc.returncode == 1
    assert lines[-1] == "error: ValueError: --max_epochs: expected a positive whole number, got -3"
    assert "RuntimeError: Failed to evaluate ConfigExpression" in proc.stderr  # the traceback is kept
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_a_refusal_of_the_users_input_is_printed_alone():
    """A bad setting, datalist or checkpoint (an InputRefusal, however deep MONAI wraps it) ends the run with its
    message alone: no traceback, no MONAI wrapper; MEDGMAE_TRACEBACK=1 keeps the traceback above it. Its subclasses
    are the toolkit's refusals, still ValueErrors for callers that catch those."""
    from medgmae.bundle_checks import BundleSettingError
    from medgmae.checkpoint_checks import TrainingStateError
    from medgmae.data.datalist import DatasetError

    from medgmae.bundle_errors import InputRefusal
    from medgmae.checkpoint_checks import CheckpointRefused
    from medgmae.engine.restore import ResumeRefused

    refusals = (BundleSettingError, DatasetError, TrainingStateError, CheckpointRefused, ResumeRefused)
    assert all(issubclass(c, InputRefusal) and issubclass(c, ValueError) for c in refusals)
    body = ("from medgmae.data.datalist import DatasetError\n"
            "try:\n"
            "    raise DatasetError('/data/dataset.json: the datalist lists no training cases')\n"
            "except ValueError as e:\n"
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(body, resumable=True)
    assert lines == ["error: DatasetError: /data/dataset.json: the datalist lists no training cases"], proc.stderr
    assert proc.returncode == 1
    for keep in ("1", "yes"):
        proc, lines = _under_the_hook(body, resumable=True, env={"MEDGMAE_TRACEBACK": keep})
        assert "Traceback (most recent call last):" in lines and "RuntimeError: Failed to evaluate ConfigExpression" in lines
        assert lines[-1] == "error: DatasetError: /data/dataset.json: the datalist lists no training cases"
    assert _under_the_hook(body, env={"MEDGMAE_TRACEBACK": "0"})[1] == lines[-1:]


def test_a_path_too_long_to_look_up_is_named_alone(tmp_path):
    """An input path with a name over the file system's 255 bytes (``--image``, ``--dataset_dir``) stopped a bundle
    with MONAI's traceback around ``OSError: [Errno 36] File name too long``: the run now ends with one line naming
    the path and its length; MEDGMAE_TRACEBACK=1 keeps the traceback. Other OS errors keep theirs."""
    long = tmp_path / ("x" * 300 + ".nii.gz")
    body = ("from pathlib import Path\n"
            "try:\n"
            f"    Path({str(long)!r}).exists()\n"
            "except OSError as e:\n"
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(body, resumable=True)
    assert lines == [f"error: {long}: a name in it is 307 bytes long, longer than the 255 the file system takes "
                     "(File name too long)"], proc.stderr
    assert proc.returncode == 1
    proc, lines = _under_the_hook(body, env={"MEDGMAE_TRACEBACK": "1"})
    assert "Traceback (most recent call last):" in lines and lines[-1].startswith("error: OSError: [Errno 36]")
    other = "raise PermissionError(13, 'Permission denied', '/data/x.nii.gz')\n"
    assert "Traceback (most recent call last):" in _under_the_hook(other)[1]


def test_a_transforms_failure_ends_with_the_file_it_could_not_read():
    """MONAI's ``apply_transform`` wraps a loader's error in ``RuntimeError: applying transform <object at 0x..>``
    (a 2D image folder holding a corrupt PNG): the last line is the loader's message naming the file."""
    proc, lines = _under_the_hook(
        "from monai.transforms import apply_transform\n"
        "def load(d):\n"
        "    raise ValueError('/data/pngs/bad.png: not a readable image')\n"
        "try:\n"
        "    apply_transform(load, {'image': '/data/pngs/bad.png'})\n"
        "except RuntimeError as e:\n"
        "    raise RuntimeError('Failed to instantiate component') from e\n",
    )
    assert proc.returncode == 1 and "applying transform" in proc.stderr, proc.stderr
    assert lines[-1] == "error: ValueError: /data/pngs/bad.png: not a readable image", lines[-3:]


def test_the_last_line_is_the_toolkits_message_not_the_library_error_under_it():
    """The toolkit's error names the file and wraps the library's (a private reader error, an EOFError, pickle's
    advice to load with weights_only=False): the last line is the toolkit's, however deep MONAI's wrappers go."""
    _, lines = _under_the_hook(
        "def wrapped():\n"
        "    try:\n"
        "        try:\n"
        "            raise EOFError('Compressed file ended before the end-of-stream marker was reached')\n"
        "        except EOFError as e:\n"
        "            raise ValueError('/data/ct.nii.gz: cannot read the volume (truncated?)') from e\n"
        "    except ValueError as e:\n"
        "        raise RuntimeError('Failed to instantiate component x') from e\n"
        "try:\n"
        "    wrapped()\n"
        "except RuntimeError as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    assert lines[-1] == "error: ValueError: /data/ct.nii.gz: cannot read the volume (truncated?)", lines[-3:]


def test_an_interrupted_bundle_ends_saying_how_to_resume():
    """Ctrl-C (a KeyboardInterrupt, wrapped by MONAI or not) ends with the resume command in a training bundle (one
    with a ``resume`` setting, even when a later install does not say so), with no such advice in the others
    (inference, evaluation), not a bare ``KeyboardInterrupt`` nor a traceback; the exit status stays the interrupt's."""
    import signal

    from medgmae.bundle_errors import INTERRUPTED, INTERRUPTED_NO_RESUME

    wrapped = (
        "try:\n"
        "    raise KeyboardInterrupt\n"
        "except KeyboardInterrupt as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    assert _under_the_hook(wrapped, resumable=True)[1][-1] == INTERRUPTED and "--resume true" in INTERRUPTED
    assert _under_the_hook("summarise_errors()\n" + wrapped, resumable=True)[1][-1] == INTERRUPTED
    proc, lines = _under_the_hook("raise KeyboardInterrupt\n")
    assert lines == [INTERRUPTED_NO_RESUME] and proc.returncode in (128 + signal.SIGINT, -signal.SIGINT)  # no traceback
    assert "--resume" not in INTERRUPTED_NO_RESUME
    # a batch segmentation, whose --resume true skips the inputs it wrote: its own line, as check_settings installs it
    body = ("from medgmae.bundle_checks import check_settings\n"
            "check_settings({'resume': (False, 'bool')}, output_dirs={}, hold='seg_dir')\nraise KeyboardInterrupt\n")
    proc, lines = _under_the_hook(body, runner=True)
    assert lines == ["interrupted: run the same command with --resume true to go on with the inputs not written yet (no "
                     "file is left half-written)"], proc.stderr


def test_ctrl_c_before_training_started_says_whether_there_is_a_checkpoint_to_resume(tmp_path, monkeypatch):
    """Ctrl-C where the checkpoint handler does not speak (a training bundle generating its phantoms, GViT between
    phases or in its closing evaluation, the closing steps after the last epoch) advised ``--resume true`` whatever
    the folder held. Now, from what the folder held at the start (no clock): none: say so, run again; this run's
    own (GViT's per-phase folders too) or a resumed run's: the resume line; only an earlier run's, in a fresh run:
    they are as they were; this run's checkpoint_final.pt (its last completion step): it ended, nothing to resume."""
    from medgmae.bundle_errors import INTERRUPTED

    out = tmp_path / "run"
    out.mkdir()
    body = lambda resume: (f"summarise_errors(resumable=True, output_dir={str(out)!r}, resume={resume})\n"  # noqa: E731
                           "import os; p = os.environ['WRITE']\nif p: open(p, 'w').write('this run')\n"
                           "raise KeyboardInterrupt\n")  # fmt: skip

    def line(resume, written: str = "") -> list:  # the run writes WRITE (a checkpoint of its own) before the interrupt
        monkeypatch.setenv("WRITE", written)
        return _under_the_hook(body(resume))[1]

    assert line(False) == [f"interrupted before training started: there is no checkpoint_epoch=N.pt in {out} to "
                           "continue from, so run the same command again (with or without --resume true) to start"]
    earlier = out / "checkpoints" / "warmup" / "checkpoint_epoch=3.pt"  # GViT's layout, an earlier run's
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"x")
    assert line(True) == [INTERRUPTED]
    assert line(False)[0].startswith(f"interrupted before this run saved a checkpoint: the earlier run's checkpoints in {out}")
    assert line(False, str(out / "checkpoint_epoch=1.pt")) == [INTERRUPTED]  # one saved by this run
    assert line(False, str(earlier)) == [INTERRUPTED]  # rewritten by this run (the same name, the same second)
    closing = line(False, str(out / "checkpoint_final.pt"))[0]
    assert closing.startswith("interrupted after the run ended (checkpoint_final.pt") and "nothing left to do" in closing


def test_sigterm_stops_a_bundle_as_ctrl_c_does_and_ends_by_sigterm():
    """SIGTERM (a batch system's time limit) killed a training run at once, its log ending mid-epoch with no word:
    it now stops as Ctrl-C does (a ``KeyboardInterrupt``, which the checkpoint handler saves on, wrapped by MONAI
    here), the last line says how to resume, and the process ends by SIGTERM (143 in a shell)."""
    import signal

    from medgmae.bundle_errors import INTERRUPTED, INTERRUPTED_NO_RESUME

    body = ("import os, signal, time\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "except KeyboardInterrupt as e:\n"
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(body, resumable=True, runner=True)
    assert lines == ["terminated (SIGTERM)" + INTERRUPTED[len("interrupted"):]], proc.stderr
    assert proc.returncode == -signal.SIGTERM
    proc, lines = _under_the_hook(body, runner=True)
    assert lines == ["terminated (SIGTERM)" + INTERRUPTED_NO_RESUME[len("interrupted"):]] and proc.returncode == -signal.SIGTERM
    proc, lines = _under_the_hook(body, resumable=True, rank=1, runner=True)  # under torchrun: rank 0 alone says it
    assert lines == [] and proc.returncode == -signal.SIGTERM
    # a handler the program set itself is kept; a bundle run in-process (a notebook, pytest) leaves SIGTERM alone
    proc, lines = _under_the_hook("import os, signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
                                  "summarise_errors()\nos.kill(os.getpid(), signal.SIGTERM)\n", runner=True)  # fmt: skip
    assert proc.returncode == 7 and lines == []
    proc, lines = _under_the_hook("import signal\nassert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n")
    assert proc.returncode == 0, proc.stderr
    # a second SIGTERM within the grace period (srun and torchrun both signal) lets the stop finish; a later one, the
    # stop swallowed or stuck, ends the process at once
    twice = ("import os, signal, sys, time\n"
             "import medgmae.bundle_errors as errors\n"
             "errors.SIGTERM_GRACE_SECONDS = float(sys.argv[1])\n"
             "try:\n"
             "    os.kill(os.getpid(), signal.SIGTERM)\n"
             "    time.sleep(30)\n"
             "except KeyboardInterrupt as e:\n"
             "    os.kill(os.getpid(), signal.SIGTERM)\n"
             "    time.sleep(0.5)\n"
             "    print('still running', flush=True)\n"
             "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    for grace, survives in (("10", True), ("0", False)):
        proc, lines = _under_the_hook(twice.replace("sys.argv[1]", grace), resumable=True, runner=True)
        assert proc.returncode == -signal.SIGTERM and ("still running" in proc.stdout) is survives, (grace, proc.stdout)
        assert lines == (["terminated (SIGTERM)" + INTERRUPTED[len("interrupted"):]] if survives else []), lines


def test_a_sigterm_right_after_ctrl_c_lets_the_stop_finish():
    """torchrun given a second signal while it passes Ctrl-C on to its workers sends them SIGTERM at once: that
    SIGTERM cut short the save of the interrupted state (a pre-training epoch stopped in its validation was lost,
    and the line said "terminated (SIGTERM)"). Within the grace period after Ctrl-C it is ignored as a repeat: the
    stop finishes and ends as Ctrl-C does."""
    import signal

    from medgmae.bundle_errors import INTERRUPTED

    body = ("import os, signal, time\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n"
            "except KeyboardInterrupt as e:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(0.5)\n"
            "    print('saved', flush=True)\n"
            "    raise\n")  # fmt: skip
    proc, lines = _under_the_hook(body, resumable=True, runner=True, ctrl_c=True)
    assert "saved" in proc.stdout and lines == [INTERRUPTED], (proc.stdout, proc.stderr)
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT)


def test_an_interrupt_without_an_epoch_checkpoint_ends_with_its_handlers_advice():
    """The checkpoint handler sets ``resume_advice`` on the interrupt when there is no epoch checkpoint to continue
    from: that line replaces "continue from the newest checkpoint_epoch=N.pt"."""
    body = ("e = KeyboardInterrupt()\n"
            "e.resume_advice = 'interrupted before the first epoch finished: there is no checkpoint_epoch=N.pt'\n"
            "try:\n"
            "    raise e\n"
            "except KeyboardInterrupt as k:\n"
            "    raise RuntimeError('Failed to evaluate ConfigExpression') from k\n")  # fmt: skip
    _, lines = _under_the_hook(body, resumable=True)
    assert lines == ["interrupted before the first epoch finished: there is no checkpoint_epoch=N.pt"]


def test_under_torchrun_only_rank_0_prints_the_traceback_and_the_ctrl_c_line():
    """Every rank printed the Ctrl-C line, and a refusal's ~40-line traceback once per rank, burying the reason:
    a rank other than 0 (torchrun's RANK) prints one line naming the reason and nothing after Ctrl-C."""
    wrapped = ("try:\n"
               "    raise ValueError('checkpoint_epoch=2.pt was written by another kind of run\\nsecond line')\n"
               "except ValueError as e:\n"
               "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")  # fmt: skip
    proc, lines = _under_the_hook(wrapped, rank=1)
    assert lines == ["rank 1 stopped: ValueError: checkpoint_epoch=2.pt was written by another kind of run second line; see rank 0"]
    assert proc.returncode == 1
    _, lines = _under_the_hook(wrapped, rank=0)
    assert "Traceback (most recent call last):" in lines and lines[-1] == "second line"
    proc, lines = _under_the_hook("raise KeyboardInterrupt\n", resumable=True, rank=1)
    assert lines == [] and proc.returncode != 0
    # a rank whose collective lost its peer does not send the reader to rank 0, which may be the process that went
    _, lines = _under_the_hook("raise RuntimeError('[../gloo/transport/tcp/pair.cc:534] Connection closed by peer')\n",
                               rank=1)  # fmt: skip
    assert lines == ["rank 1 stopped: another process stopped first and this one lost its connection to it "
                     "(RuntimeError: [../gloo/transport/tcp/pair.cc:534] Connection closed by peer); that process's "
                     "lines or torchrun's summary say why"], lines  # fmt: skip
    # an NCCL failure of this rank's own (its GPU out of memory) is its own reason: rank 0 may know nothing of it
    oom = ("class DistBackendError(RuntimeError):\n    pass\n"
           "raise DistBackendError('NCCL error in ProcessGroupNCCL.cpp:3356, unhandled cuda error (run with "
           "NCCL_DEBUG=INFO for details), NCCL version 2.27.3 ncclUnhandledCudaError: Cuda failure out of memory')\n")
    _, lines = _under_the_hook(oom, rank=1)
    assert len(lines) == 1 and lines[0].startswith("rank 1 stopped: DistBackendError: NCCL error") and \
        lines[0].endswith("; see rank 0"), lines  # fmt: skip
    _, lines = _under_the_hook("raise KeyboardInterrupt\n", resumable=True, rank=0)
    assert lines[-1].startswith("interrupted: run the same command with --resume true")


_WORKER_FAILS = (
    "import torch\n"
    "from monai.transforms import apply_transform\n"
    "def read(_):\n"
    "    raise {error}('/data/ct/vol1.nii.gz: cannot read the volume (EOFError: Compressed file ended)')\n"
    "class Volumes(torch.utils.data.Dataset):\n"
    "    def __len__(self):\n        return 1\n"
    "    def __getitem__(self, i):\n        return {load}\n"
    "next(iter(torch.utils.data.DataLoader(Volumes(), num_workers=1)))\n"
)


def test_a_data_loader_workers_error_ends_with_the_workers_reason_on_every_rank():
    """A file unreadable in a data-loader worker is re-raised by torch as ``Caught RuntimeError in DataLoader worker
    process 0.`` followed by the worker's whole traceback as its message: the last line (rank 0) and a non-zero
    rank's one line name the worker's own error, the file, not torch's wrapper (rank 1's 300 characters held only
    the start of the traceback); a refusal raised in a worker is printed as its message alone."""
    said = "ValueError: /data/ct/vol1.nii.gz: cannot read the volume (EOFError: Compressed file ended)"
    wrapped = _WORKER_FAILS.format(error="ValueError", load="apply_transform(read, i)")  # MONAI's 'applying transform'
    proc, lines = _under_the_hook(wrapped, resumable=True, rank=0)
    assert proc.returncode == 1 and lines[-1] == f"error: {said} (in DataLoader worker process 0)", proc.stderr[-2000:]
    proc, lines = _under_the_hook(wrapped, resumable=True, rank=1)
    assert lines[-1] == f"rank 1 stopped: {said} (in DataLoader worker process 0); see rank 0", proc.stderr[-2000:]
    refusal = _WORKER_FAILS.format(error="DatasetError", load="read(i)")
    refusal = "from medgmae.data.datalist import DatasetError\n" + refusal
    proc, lines = _under_the_hook(refusal)
    assert lines == [f"error: {said.replace('ValueError', 'DatasetError')} (in DataLoader worker process 0)"], proc.stderr[-2000:]


def test_a_sigterm_while_a_stopped_run_exits_raises_nothing_into_the_exit():
    """torchrun sends SIGTERM to the ranks still running when one fails: a rank that had reported its own error and
    was running its exit callbacks got the handler's exception inside one (``Exception ignored in atexit callback
    ... Terminated``); the stop is reported, so the signal is taken as the start of the grace period."""
    body = ("import atexit, os, signal, time\n"
            "def late():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.2)\n"
            "atexit.register(late)\n"
            "raise ValueError(\"the run's own error\")\n")  # fmt: skip
    proc, lines = _under_the_hook(body, runner=True)
    assert lines[-1] == "ValueError: the run's own error", proc.stderr[-2000:]
    assert "Exception ignored" not in proc.stderr and "Terminated" not in proc.stderr, proc.stderr[-2000:]
