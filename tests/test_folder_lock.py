"""One run at a time in an output folder: a second run into a folder a live process holds is refused, naming it and
that process, by the bundles, ``medgmae-recon reconstruct`` / ``simulate``, ``medgmae-phantom`` and
``medgmae-2d``; the lock goes with its process. Two such runs used to both report success while the folder held a mix of their files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medgmae.folder_lock import FolderInUse, folder_held, folder_made, hold_folder, release_folder

from bundle_helpers import BUNDLES, run_bundle


@pytest.fixture()
def other_run(tmp_path):
    """Start another process holding a folder (as a live run does); yields a function taking the folder, and
    ends the process after the test."""
    procs = []

    def hold(folder: Path) -> subprocess.Popen:
        code = textwrap.dedent(f"""
            import sys
            from medgmae.folder_lock import hold_folder
            hold_folder({str(folder)!r})
            print("held", flush=True)
            sys.stdin.read()
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


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


def _writing_run(config: str, root: Path) -> tuple[str, str, list[str]]:
    """An evaluation or inference config that writes files, ready to run on tiny inputs made under ``root``: its run
    id, the key of the folder it writes into, and its other settings."""
    import numpy as np
    import torch

    from data_helpers import nifti_file
    from finetune_helpers import two_case_datalist
    from gvit_helpers import SIZE, shapes_dataset
    from model_helpers import tiny_model_file

    root.mkdir(parents=True)
    if config == "medgmae_pretrain/configs/inference.json":
        image = nifti_file(root / "ct.nii.gz", np.random.default_rng(0).normal(0, 200, (20, 20, 16)).astype(np.float32))
        model = tiny_model_file(root / "model.pt", spacing=2.0)
        return "inferring", "inference_dir", ["--model_path", str(model), "--image", image]
    if config.startswith("gvit_classification/"):
        from medgmae.twod.gvit import GViT

        GViT(1, SIZE, 2, num_gaussians=4, patch_size=4).save(root / "model.pt", class_names=["bar", "disc"])
        shapes, settings = shapes_dataset(root / "shapes"), ["--model_path", str(root / "model.pt")]
        if config.endswith("inference.json"):
            return "inferring", "inference_dir", [*settings, "--image_dir", str(shapes / "bar")]
        return "evaluating", "eval_dir", [*settings, "--dataset_dir", str(shapes), "--num_explanations", "0"]
    datalist, settings = two_case_datalist(root), ["--checkpoint", str(_finetuned_file(root / "best.pt"))]
    if config.endswith("inference.json"):
        return "inferring", "seg_dir", [*settings, "--input_files", f"['{root / 'c0_img.nii.gz'}']"]
    return "evaluating", "eval_dir", [*settings, "--datalist", str(datalist)]


def _finetuned_file(path: Path) -> Path:
    """A tiny fine-tuned UNETR's ``best_model.pt`` (3 classes, 24 x 24 x 12 patches) at ``path``."""
    import torch

    from medgmae.checkpoint import make_checkpoint
    from medgmae.networks.unetr import MedGMAEUNETR
    from medgmae.networks.vit import MaskedViTEncoder
    from medgmae.preprocessing import PreprocessingSpec

    enc = MaskedViTEncoder(img_size=(24, 24, 12), patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    net = MedGMAEUNETR(3, encoder=enc, feature_size=4)
    spec = PreprocessingSpec(spacing=2.0, input_size=(24, 24, 12), patch_size=12)
    torch.save(make_checkpoint("medgmae-unetr", net.config(), net.state_dict(), spec, {"epoch": 1}), path)
    return path


WRITING_CONFIGS = ["medgmae_pretrain/configs/inference.json", "gvit_classification/configs/inference.json",
                   "gvit_classification/configs/evaluate.json", "unetr_finetune/configs/inference.json",
                   "unetr_finetune/configs/evaluate.json"]  # fmt: skip


@pytest.mark.parametrize("config", WRITING_CONFIGS)
def test_an_evaluation_or_inference_refuses_a_folder_another_run_holds(config, tmp_path, other_run):
    """Two evaluations or inferences into one folder wrote at once, each one's files over the other's: the second
    is refused, naming the folder and the run holding it, and writes nothing; once that run has ended it runs."""
    run_id, key, settings = _writing_run(config, tmp_path / "inputs")
    folder = tmp_path / "out"
    holder = other_run(folder)
    refused = run_bundle(run_id, config, *settings, f"--{key}", str(folder), "--device", "cpu")
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --{key} {folder}: another run is writing into it (process "
                           f"{holder.pid}: "), refused.stderr[-2000:]  # fmt: skip
    assert list(folder.iterdir()) == []
    holder.stdin.close()
    holder.wait(timeout=30)
    ran = run_bundle(run_id, config, *settings, f"--{key}", str(folder), "--device", "cpu")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert list(folder.iterdir()) != []


def test_an_export_refuses_a_folder_another_run_holds_and_writes_nothing(tmp_path, other_run):
    """export.json wrote ``model.ts`` into its folder without holding it: a second export, or a training run in that
    folder (a new run there removes an earlier ``model.ts``), went on writing beside it. It is refused, naming the
    folder and the run holding it, with the folder as it was; once that run has ended it exports."""
    folder = tmp_path / "run"
    folder.mkdir()
    _finetuned_file(folder / "best_model.pt")
    holder = other_run(folder)  # as a training run (or another export) holds it
    refused = run_bundle("exporting", "unetr_finetune/configs/export.json", "--output_dir", str(folder))
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --export_path {folder}: another run is writing into it (process "
                           f"{holder.pid}: "), refused.stderr[-2000:]  # fmt: skip
    assert [p.name for p in folder.iterdir()] == ["best_model.pt"]
    holder.stdin.close()
    holder.wait(timeout=30)
    ran = run_bundle("exporting", "unetr_finetune/configs/export.json", "--output_dir", str(folder))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["best_model.pt", "model.ts"]


def test_a_gvit_evaluation_writes_the_phantom_task_only_into_a_run_folder_it_holds(tmp_path, other_run):
    """Without a ``dataset_dir``, GViT's evaluate.json wrote the default phantom task into ``output_dir/data``
    holding only its ``eval_dir``: beside a training run writing that task (which holds ``output_dir``), it cleared
    and rewrote the run's slices. It is refused, naming the folder and the run holding it, with nothing written;
    once that run has ended it writes the task and evaluates; a finished task there is only read, beside a run holding
    the folder."""
    import torch

    from medgmae.twod.gvit import GViT

    run, store = tmp_path / "run", tmp_path / "store"
    torch.manual_seed(0)
    recorded = {"dataset_dir": "", "default_root": str(run / "data"), "num_phantoms": 3, "seed": 0,
                "val_fraction": 0.2, "image_size": 16}  # fmt: skip
    GViT(in_channels=1, img_size=16, num_classes=3, num_gaussians=6, model_size="tiny", patch_size=4).save(
        store / "model.pt", data=recorded)
    holder = other_run(run)  # as a training run into it holds it
    settings = ["--output_dir", str(run), "--model_path", str(store / "model.pt"), "--num_explanations", "0",
                "--device", "cpu"]  # fmt: skip
    refused = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", *settings)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --output_dir {run}: another run is writing into it (process "
                           f"{holder.pid}: "), refused.stderr[-2000:]  # fmt: skip
    assert list(run.iterdir()) == []
    holder.stdin.close()
    holder.wait(timeout=30)
    ran = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", *settings)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (run / "data" / "task.json").is_file() and (run / "eval" / "metrics.json").is_file()
    other_run(run)  # a finished task of these settings is only read: evaluating beside a training run goes on
    again = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", *settings)
    assert again.returncode == 0, again.stderr[-3000:]


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
        signal.setitimer(signal.ITIMER_REAL, 8)
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


def test_an_evaluation_warns_of_a_run_holding_the_folder_of_the_model_it_scores(tmp_path, other_run, caplog):
    """An evaluation run while the fine-tuning still trained scored a best_model.pt that a later epoch then replaced,
    without a word. It warns, one line naming the process, and runs; the training's lock is not taken (the holder
    is told from /proc/locks): a training run starting meanwhile is not refused."""
    from medgmae.finetune.best_model import warn_if_training
    from medgmae.folder_lock import folder_holder

    _, _, settings = _writing_run("unetr_finetune/configs/evaluate.json", tmp_path / "run")
    checkpoint = tmp_path / "run" / "best.pt"
    assert folder_holder(tmp_path / "run") is None and not warn_if_training(checkpoint)
    holder = other_run(tmp_path / "run")
    held = folder_holder(tmp_path / "run")
    assert held[0] == holder.pid and held[1].startswith(f"{sys.executable} -c import sys from medgmae.folder_lock")
    ran = run_bundle("evaluating", "unetr_finetune/configs/evaluate.json", *settings, "--eval_dir",
                     str(tmp_path / "eval"), "--device", "cpu")  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    said = [line for line in (ran.stdout + ran.stderr).splitlines() if "another run holds this run folder" in line]
    assert len(said) == 1 and f"{tmp_path / 'run'}: another run holds this run folder (process {holder.pid}: " in said[0]
    assert said[0].endswith("evaluate again once it has ended") and (tmp_path / "eval" / "metrics.json").is_file()
    with pytest.raises(FolderInUse):  # the evaluation took nothing from the holder
        hold_folder(tmp_path / "run")
    holder.stdin.close()
    holder.wait(timeout=30)
    hold_folder(tmp_path / "run")
    try:  # this process's own hold is no other run's
        assert folder_holder(tmp_path / "run")[0] == os.getpid() and not warn_if_training(checkpoint)
    finally:
        release_folder(tmp_path / "run")
    with pytest.raises(ValueError, match="checkpoint: expected the path"):
        warn_if_training("")


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
