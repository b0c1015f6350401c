"""A folder another run holds refused by the command-line tools, a training bundle, every torchrun rank and run()."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from bundle_helpers import BUNDLES, run_bundle

from folder_lock_helpers import other_run  # noqa: F401 - fixtures


def test_the_tools_refuse_a_folder_another_run_holds_and_write_nothing(tmp_path, other_run):
    """``medgmae-phantom`` (two generations into one folder mixed their phantoms under one dataset.json),
    ``medgmae-recon simulate`` and ``medgmae-2d`` (two mixed their PNGs and JSON, one's removal of stale
    ``edges_l*.png`` taking the other's) exit with status 2 naming the folder; nothing is written into it."""
    folder = tmp_path / "busy"
    other_run(folder)
    volume = tmp_path / "missing.nii.gz"  # never read: the folder is refused first
    for cmd in (["medgmae-phantom", "--out", str(folder), "--num-cases", "2", "--shape", "24", "24", "16",
                 "--wait-seconds", "0"],  # without it, it waits for the folder
                ["medgmae-recon", "simulate", "--volume", str(volume), "--geometry", "parallel", "--out", str(folder)],
                ["medgmae-2d", "edges", "--checkpoint", str(tmp_path / "model.pt"), "--image", str(volume), "--out",
                 str(folder)]):  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr[-2000:]
        assert f"--out {folder}: another run is writing into it (process " in run.stderr and "Traceback" not in run.stderr
        assert list(folder.iterdir()) == []


def test_a_training_bundle_refuses_an_output_dir_another_run_holds(tmp_path, other_run):
    folder = tmp_path / "pretrain"
    other_run(folder)
    run = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(folder),
                     "--max_epochs", "1", "--device", "cpu")  # fmt: skip
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --output_dir {folder}: another run is writing into it"), run.stderr[-2000:]
    assert list(folder.iterdir()) == []


def test_every_torchrun_rank_stops_at_once_on_a_folder_another_run_holds(tmp_path, other_run):
    """Rank 0 alone tried the lock, before the process group: the other rank waited in the group's start for a rank
    0 that had left, until torchrun killed it 30 s later (SIGKILL in its summary). Rank 0 now holds the folder once
    the group exists and every rank stops with the refusal."""
    import time

    from pretrain_helpers import MULTI, SMALL

    folder = tmp_path / "pretrain"
    other_run(folder)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", MULTI, *SMALL, "--max_epochs", "1", "--output_dir", str(folder)]  # fmt: skip
    start = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode != 0
    assert f"error: FolderInUse: --output_dir {folder}: another run is writing into it" in run.stderr, run.stderr[-3000:]
    assert "rank 1 stopped: FolderInUse: --output_dir" in run.stderr and "forcefully" not in run.stderr, run.stderr[-3000:]
    assert time.monotonic() - start < 30 + 60  # no 30 s wait for torchrun's kill on top of the start-up
    assert list(folder.iterdir()) == []


def test_a_bundle_run_from_python_holds_its_folder_while_it_runs_and_no_longer(tmp_path, other_run):
    """``monai.bundle.run(...)`` in a notebook took no lock: it trained into the folder of a live command-line run
    (two TensorBoard logs, one model file of each), and a command line could start in a folder a notebook was
    training into. The folder is now held while the workflow runs and let go when its run ends (here by Ctrl-C),
    while the process goes on (removed if the run made it and wrote nothing); a notebook's own errors are not taken
    over by the bundles' excepthook."""
    folder = tmp_path / "gmae2d"
    other = other_run(folder)
    code = textwrap.dedent(f"""
        import signal, subprocess, sys
        from monai.bundle import run
        folder, config = {str(folder)!r}, {str(BUNDLES / "gmae2d_pretrain/configs/train.json")!r}
        small = dict(num_phantoms=2, slices_per_case=4, val_images=2, num_gaussians=16, batch_size=8,
                     picture_layers=2, device="cpu")
        probe = f"from medgmae.folder_lock import hold_folder; hold_folder({{folder!r}})"
        taken = lambda: subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
        try:
            run("training", config_file=config, output_dir=folder, max_epochs=1, **small)
        except Exception as e:
            print("@@ refused:", type(e).__name__, flush=True)  # raised as the run starts, not wrapped by MONAI
        else:
            print("@@ trained", flush=True)
        sys.stdin.readline()  # the other run ends
        def stop(signum, frame):
            print("@@ taken while it runs:", taken(), flush=True)
            raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, stop)
        def strike_in_training():  # not at a fixed time: a loaded machine can take seconds more to start the run
            import pathlib, threading, time
            end = time.monotonic() + 240
            while not list(pathlib.Path(folder).glob("checkpoint_epoch=*.pt")) and time.monotonic() < end:
                time.sleep(0.2)
            signal.setitimer(signal.ITIMER_REAL, 0.5)
        import threading
        threading.Thread(target=strike_in_training, daemon=True).start()
        try:
            run("training", config_file=config, output_dir=folder, max_epochs=500, **small)
        except KeyboardInterrupt as stop:
            print("@@ note:", getattr(stop, "__notes__", ["(none)"])[-1], flush=True)
        print("@@ taken after it:", taken(), "hook kept:", sys.excepthook is sys.__excepthook__, flush=True)
        import pathlib
        empty, failed = pathlib.Path(folder + "_data"), pathlib.Path(folder + "_failed")
        empty.mkdir()
        try:  # a run that fails before it writes leaves no folder it made
            run("training", config_file=config, output_dir=str(failed), dataset_dir=str(empty), **small)
        except Exception as e:
            print("@@ failed, left:", failed.exists(), flush=True)
    """)
    notebook = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        said = next((line for line in notebook.stdout if line.startswith("@@ ")), "")  # past MONAI's log lines
        assert said.strip() == "@@ refused: FolderInUse", said
        assert list(folder.iterdir()) == []
        other.stdin.close()
        other.wait(timeout=30)
        out = notebook.communicate("\n", timeout=300)[0]
    finally:
        notebook.kill()
    said = [line for line in out.splitlines() if line.startswith("@@ ")]
    assert len(said) == 4, out[-3000:]
    note, said[1] = said[1], "@@ note: ..."  # the advice depends on where the interrupt struck (an epoch, a save)
    assert said == ["@@ taken while it runs: False", "@@ note: ...", "@@ taken after it: True hook kept: True",
                    "@@ failed, left: False"], out[-3000:]  # fmt: skip
    if sys.version_info >= (3, 11):  # exception notes
        assert note.startswith("@@ note: interrupted") and "--resume true" in note, note
        assert note.endswith("(from Python: the same call, with `--key value` as `key=value`)"), note
