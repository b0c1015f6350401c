"""The medgmae_pretrain bundle: training runs through ``python -m monai.bundle``, exact resume, 2-process DDP on
CPU (gloo), bad data, zero-shot inference; and the pre-training engine's clipping and non-finite-loss stop."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.gaussians import Gaussians3D
from medgmae.networks import MaskedViTEncoder, MedGMAE, VoxelMAE
from medgmae.ply import load_ply
from medgmae.mae_training import MaskedAutoencoderTrainer, build_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "medgmae_pretrain" / "configs"
TRAIN = str(CONFIGS / "train.json")
MULTI = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
SMALL = [
    "--roi_size", "32", "--patch_size", "8", "--num_gaussians", "8", "--num_phantoms", "2",
    "--phantom_shape", "[48,48,40]", "--phantom_spacing", "3.0", "--pixdim", "3.0", "--num_samples", "1",
    "--batch_size", "1", "--lr_schedule_epochs", "3", "--device", "cpu",
]  # fmt: skip


def _env(threads: int | None = None) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # the bundles run from temporary folders: this checkout's package first on the path (not another installed copy)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if threads is not None or os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = str(threads or 1)
    return env


def _bundle(*args: str, cwd: Path, threads: int | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(threads), capture_output=True, encoding="utf-8", errors="replace", timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # every file the bundle writes is plain data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run generating phantoms (then resumed to 2 epochs) and an uninterrupted 2-epoch run."""
    root = tmp_path_factory.mktemp("pretrain_bundle")
    resumed, straight = root / "resumed", root / "straight"
    first = _ok(_bundle("run", "training", "--config_file", TRAIN, *SMALL, "--output_dir", str(resumed), "--max_epochs", "1", cwd=root))
    after_first = {
        "epoch_ckpt": sorted(p.name for p in resumed.glob("checkpoint_epoch=*.pt")),
        "encoder": _ckpt(resumed / "encoder.pt"),
        "model": _ckpt(resumed / "model.pt"),
        "log": first.stdout + first.stderr,
    }
    dataset = resumed / "phantom" / "dataset.json"
    second = _ok(
        _bundle("run", "training", "--config_file", TRAIN, *SMALL, "--output_dir", str(resumed), "--max_epochs", "2",
                "--resume", "true", cwd=root)
    )  # fmt: skip
    # the default run id ("run") of the same config, from the same phantom data, without interruption (with the
    # loader workers of the phantom run: the default for a given dataset_dir is 4)
    _ok(_bundle("run", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(dataset), "--output_dir", str(straight),
                "--max_epochs", "2", "--num_workers", "0", cwd=root))  # fmt: skip
    return {"root": root, "resumed": resumed, "straight": straight, "dataset": dataset, "first": after_first,
            "resume_log": second.stdout + second.stderr}  # fmt: skip


def test_smoke_run_writes_checkpoint_encoder_and_model(runs):
    first = runs["first"]
    assert first["epoch_ckpt"] == ["checkpoint_epoch=1.pt"]
    assert "train_loss" in first["log"]  # StatsHandler progress
    assert list((runs["resumed"] / "tensorboard").glob("events.out.tfevents.*"))
    data = json.loads(runs["dataset"].read_text())
    assert len(data["training"]) == 2 and (runs["dataset"].parent / data["training"][0]["image"]).is_file()
    enc = first["encoder"]
    assert enc["kind"] == "medgmae-encoder" and enc["extra"]["source"] == "medgmae"
    encoder = MaskedViTEncoder(**enc["config"])
    encoder.load_state_dict(enc["state_dict"])  # strict
    assert encoder.img_size == (32, 32, 32) and encoder.patch_size == (8, 8, 8)
    model = first["model"]
    assert model["kind"] == "medgmae" and model["config"]["num_gaussians"] == 8
    # model.pt's encoder weights are encoder.pt's
    for k, v in enc["state_dict"].items():
        assert torch.equal(model["state_dict"][f"encoder.{k}"], v)
    # both record the pre-processing the run used (SMALL sets --pixdim 3.0, --roi_size 32, --patch_size 8)
    want = {"orientation": "RAS", "spacing": [3.0] * 3, "hu_window": [-175.0, 250.0], "intensity_range": [0.0, 1.0],
            "clip": True, "input_size": [32] * 3, "patch_size": [8] * 3}  # fmt: skip
    assert model["preprocessing"] == enc["preprocessing"] == want


#: third-party notices the bundle filters or avoids (none may reach the console)
FILTERED = ("nvImageCodec", "torch.meshgrid", "Orientationd.__init__:labels")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_validation_best_model_pictures_tensorboard_and_summary(runs):
    straight = runs["straight"]
    log = runs["first"]["log"]
    assert not any(text in log for text in FILTERED), [t for t in FILTERED if t in log]
    assert "validation (2 crops, fixed masks)" in log and "pre-training finished: 1 epoch of" in log
    # the start line: SMALL runs a 32^3 crop of 8^3 patches (64, 16 visible), one crop per volume, on the CPU
    assert ("pre-training runs on cpu, AMP off (amp true has no effect on the CPU), renderer torch, model medgmae tiny ("
            in log and "K=8 Gaussians, mask ratio 0.75 (16 of 64 patches visible per crop), global batch 1 crop per step "
            "(1 process x 1 volume x 1 crop)" in log)  # fmt: skip
    # best_model.pt: model.pt's format, loadable without unpickling code, rebuilds the model
    best = torch.load(straight / "best_model.pt", map_location="cpu", weights_only=True)
    assert set(best) == set(_ckpt(straight / "model.pt")) and best["kind"] == "medgmae"
    assert MedGMAE.from_checkpoint(straight / "best_model.pt").num_gaussians == 8
    # validation metrics: finite, in TensorBoard per validated epoch, and the best one in summary.json
    acc = _tensorboard(straight / "tensorboard")
    psnr = [e.value for e in acc.Scalars("val/psnr")]
    ssim = [e.value for e in acc.Scalars("val/ssim")]
    assert [e.step for e in acc.Scalars("val/psnr")] == [2, 4] and np.isfinite(psnr + ssim).all()  # the iterations
    # the learning rate each step used: 2 epochs of 2 volumes, rising from 0 towards 1.5e-4 over the schedule's
    # 3 epochs of 2 steps (MONAI's WarmupCosineSchedule shortens the 10 warm-up steps to the 6 it has)
    lr = acc.Scalars("train/lr")
    assert [e.step for e in lr] == [1, 2, 3, 4] and [e.value for e in lr] == pytest.approx([1.5e-4 * i / 6 for i in range(4)])
    assert all(-1.0 <= v <= 1.0 for v in ssim)
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["best_val_psnr"] == pytest.approx(max(psnr), abs=1e-4) and summary["best_epoch"] == 1 + int(np.argmax(psnr))
    assert str(straight / "encoder.pt") in summary["next"]["fine-tune"] and "--init medgmae" in summary["next"]["reconstruction init"]
    # the run's settings, to compare runs from their folders: as given on the command line (SMALL) and the defaults
    settings = summary["settings"]
    assert settings["model"]["num_gaussians"] == 8 and settings["model"]["img_size"] == [32, 32, 32]
    assert settings["preprocessing"]["spacing"] == [3.0, 3.0, 3.0]
    assert {k: settings["training"][k] for k in ("batch_size", "num_samples", "learning_rate", "seed", "processes")} == {
        "batch_size": 1, "num_samples": 1, "learning_rate": 1.5e-4, "seed": 0, "processes": 1}
    assert "val/reconstruction" in acc.Tags()["images"] and "curves" in acc.Tags()["images"]
    pictured = {e.step for e in acc.Images("val/reconstruction")}  # at iterations ending validated epochs, as val/psnr
    assert pictured and pictured <= {e.step for e in acc.Scalars("val/psnr")}, pictured
    # pictures: 4 rows (masked input, rendering, target, centres) x 3 slices of the 32^3 crop enlarged 5x
    pic = _png(straight / "pictures" / "epoch_0002.png")
    tile = 5 * 32
    assert pic.shape == (14 + 4 * (tile + 14 + 2) + 2, 3 * (tile + 2) + 2, 3)
    assert pic.astype(float).var() > 100.0
    curves = _png(straight / "curves.png")
    assert curves.shape == (300, 3 * 420, 3) and curves.astype(float).var() > 100.0
    assert sorted(p.name for p in (runs["resumed"] / "pictures").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]


def test_resume_keeps_history_and_best_model(runs):
    a, b = _ckpt(runs["resumed"] / "checkpoint_epoch=2.pt"), _ckpt(runs["straight"] / "checkpoint_epoch=2.pt")
    ha, hb = a["objects"]["history"], b["objects"]["history"]
    assert ha == hb  # curves and best epoch of the resumed run are the uninterrupted run's, bit for bit
    assert ha["series"]["val_psnr"]["epoch"] == [1, 2] and ha["series"]["train_loss"]["epoch"] == [1, 2]
    buf = io.BytesIO()
    torch.save(ha, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == ha
    wa = torch.load(runs["resumed"] / "best_model.pt", weights_only=True)["state_dict"]
    wb = torch.load(runs["straight"] / "best_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_bit_for_bit(runs):
    resumed, straight = runs["resumed"], runs["straight"]
    assert "resumed from" in runs["resume_log"] and "checkpoint_epoch=1.pt" in runs["resume_log"]
    a, b = _ckpt(resumed / "checkpoint_epoch=2.pt"), _ckpt(straight / "checkpoint_epoch=2.pt")
    assert a["engine"] == b["engine"] == {"epoch": 2, "iteration": 4, "max_epochs": 2}
    wa, wb = a["objects"]["model"], b["objects"]["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # training moved the weights after the resume
    w1 = runs["first"]["model"]["state_dict"]
    assert any(not torch.equal(w1[k], wa[k]) for k in wa)
    oa, ob = a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)
    assert a["objects"]["lr_scheduler"]["last_epoch"] == b["objects"]["lr_scheduler"]["last_epoch"] == 4
    # the full training checkpoint rebuilds the model
    model = MedGMAE.from_checkpoint(resumed / "checkpoint_epoch=2.pt")
    assert all(torch.equal(model.state_dict()[k], wa[k]) for k in wa)


def test_a_run_stopped_in_its_closing_steps_resumes_to_write_them(runs, tmp_path):
    """SIGTERM after the last epoch's checkpoint, while the run wrote model.pt or its summary, advised --resume true,
    which was refused (nothing to train), so the closing outputs were never written. A resume of a run without a
    checkpoint_final.pt (now its last completion step) at its newest epoch trains nothing and writes them from the
    saved state: the uninterrupted run's files."""
    run = tmp_path / "run"
    shutil.copytree(runs["straight"], run)
    closing = ["model.pt", "encoder.pt", "summary.json", "curves.png", "checkpoint_final.pt"]
    for name in closing:
        (run / name).unlink()
    proc = _ok(_bundle("run", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                       str(run), "--max_epochs", "2", "--num_workers", "0", "--resume", "true", cwd=runs["root"]))  # fmt: skip
    assert "has trained all 2 epochs; its run stopped before its closing steps" in proc.stdout + proc.stderr
    assert all((run / name).is_file() for name in closing)
    a, b = _ckpt(run / "model.pt")["state_dict"], _ckpt(runs["straight"] / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _ckpt(run / "checkpoint_final.pt")["engine"] == {"epoch": 2, "iteration": 4, "max_epochs": 2}
    summary, straight = (json.loads((d / "summary.json").read_text()) for d in (run, runs["straight"]))
    assert summary["best_epoch"] == straight["best_epoch"] and summary["best_val_psnr"] == straight["best_val_psnr"]
    again = _bundle("run", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                    str(run), "--max_epochs", "2", "--num_workers", "0", "--resume", "true", cwd=runs["root"])  # fmt: skip
    assert again.returncode != 0 and "nothing to resume" in again.stderr


def test_a_run_stopped_while_validating_keeps_the_epochs_training(runs, tmp_path, stop_while_validating):
    """SIGTERM while epoch 1 was validated (after the masked validation, before its pictures) saved
    checkpoint_interrupted.pt and no epoch checkpoint, so the resume trained epoch 1 again. The epoch's training is
    now saved as checkpoint_epoch=1.pt, marked as not validated; the resume validates epoch 1, trains epoch 2 alone
    and ends as the uninterrupted run: weights, optimiser, scheduler, metric history, best model and summary."""
    run, straight = tmp_path / "run", runs["straight"]
    args = [*SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir", str(run), "--max_epochs", "2", "--num_workers", "0"]
    stop = stop_while_validating(TRAIN, tmp_path, epoch=1)
    stopped = _bundle("run", "--config_file", f"['{TRAIN}','{stop}']", *args, cwd=runs["root"])
    assert stopped.returncode == -15, stopped.stderr[-3000:]
    assert stopped.stderr.rstrip().splitlines()[-1] == (
        "terminated (SIGTERM) while validating epoch 1: its training is saved in checkpoint_epoch=1.pt; run the same "
        "command with --resume true to validate it and train on")
    assert not (run / "checkpoint_interrupted.pt").exists()
    assert _ckpt(run / "checkpoint_epoch=1.pt")["engine"] == {"epoch": 1, "iteration": 2, "max_epochs": 2, "pending": "validation"}
    resumed = _ok(_bundle("run", "--config_file", TRAIN, *args, "--resume", "true", cwd=runs["root"]))
    log = resumed.stdout + resumed.stderr
    assert "validating epoch 1 before training on" in log and "epoch 1 validation (2 crops" in log
    assert "epoch 1/2: train_loss" not in log and log.count("epoch 2/2: train_loss") == 1  # epoch 1 not trained again
    a, b = _ckpt(run / "checkpoint_epoch=2.pt"), _ckpt(straight / "checkpoint_epoch=2.pt")
    assert a["engine"] == b["engine"] == {"epoch": 2, "iteration": 4, "max_epochs": 2}
    assert a["objects"]["history"] == b["objects"]["history"]  # validation and loss curves, best epoch and value
    assert a["objects"]["lr_scheduler"] == b["objects"]["lr_scheduler"]
    wa, wb = a["objects"]["model"], b["objects"]["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in ("exp_avg", "exp_avg_sq"))
    ba, bb = (torch.load(d / "best_model.pt", weights_only=True) for d in (run, straight))
    assert ba["extra"] == bb["extra"] and all(torch.equal(ba["state_dict"][k], bb["state_dict"][k]) for k in ba["state_dict"])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (run, straight))
    assert (sa["best_epoch"], sa["best_val_psnr"]) == (sb["best_epoch"], sb["best_val_psnr"])
    assert sorted(p.name for p in (run / "pictures").iterdir()) == sorted(p.name for p in (straight / "pictures").iterdir())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def test_a_fresh_run_replaces_every_output_the_bundle_writes(runs):
    """Each file a pre-training run wrote in its folder, its data (phantoms, cache) and checkpoints aside, is among
    the outputs a fresh run in that folder replaces (its CheckpointHandler's ``earlier_outputs``): none of them is
    left beside a new run's checkpoints as if it were the new run's."""
    config = json.loads(Path(TRAIN).read_text())
    handler = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))
    for out in (runs["straight"], runs["resumed"]):
        replaced = {p for pattern in handler["earlier_outputs"] for p in out.glob(pattern)}
        written = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith("checkpoint_")
                   and p.relative_to(out).parts[0] not in ("cache", "phantom")}  # fmt: skip
        assert written and written <= replaced, sorted(str(p.relative_to(out)) for p in written - replaced)


def test_resume_with_another_batch_size_writes_nothing(runs, tmp_path, folder_state):
    """A copy of the 2-epoch run (2 training volumes: 2 iterations per epoch at batch size 1) resumed with batch
    size 2 is refused before its TensorBoard writer exists: the folder is byte for byte as it was, and the error
    names both batch sizes and both epoch lengths. So is a resume with another number of Gaussians."""
    import shutil

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    before = folder_state(out)

    def resume(flag: str, value: str) -> subprocess.CompletedProcess:
        small = SMALL[:]
        small[small.index(flag) + 1] = value
        return _bundle("run", "training", "--config_file", TRAIN, *small, "--dataset_dir", str(runs["dataset"]),
                       "--output_dir", str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", cwd=tmp_path)

    proc = resume("--batch_size", "2")
    assert proc.returncode != 0
    assert ("checkpoint_epoch=2.pt is at epoch 2 after 4 iterations (2 per epoch, batch size 1), but this run has 1 "
            "iterations per epoch (batch size 2)") in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    proc = resume("--num_gaussians", "16")
    assert proc.returncode != 0 and "num_gaussians: saved 8, now 16" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    # the restored optimiser would keep its saved learning rate; other validation crops would score another set
    proc = _bundle("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                   str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", "--learning_rate", "0.001",
                   "--val_crops", "3", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert ("MedGMAE pre-training with other settings (optimiser.learning_rate: saved 0.00015, now 0.001; "
            "validation.val_crops: saved 2, now 3)") in proc.stderr, proc.stderr[-3000:]
    # crops per volume and step, and the gradient clipping, change what is trained without changing the epoch's length
    small = SMALL[:]
    small[small.index("--num_samples") + 1] = "2"
    proc = _bundle("run", "training", "--config_file", TRAIN, *small, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                   str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", "--grad_clip", "0.5", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert ("MedGMAE pre-training with other settings (step.grad_clip: saved 1.0, now 0.5; step.num_samples: "
            "saved 1, now 2)") in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_resume_on_other_data_of_the_same_count_writes_nothing(runs, tmp_path, folder_state):
    """The phantom dataset moved elsewhere resumes (paths compare relative to the data's folder); with one training
    volume edited (same number of cases, so the same epoch length) the resume is refused naming the file, and the
    run's folder, its cache folder (the pre-check's ledger) included, is byte for byte as it was: the pre-check
    runs after the resume check."""
    import shutil

    import nibabel as nib

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    data = shutil.copytree(runs["dataset"].parent, tmp_path / "moved" / "phantom")
    args = ["run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(data / "dataset.json"),
            "--output_dir", str(out), "--num_workers", "0", "--resume", "true"]  # fmt: skip
    moved = shutil.copytree(out, tmp_path / "moved_run", copy_function=shutil.copy2)
    _ok(_bundle(*[str(moved) if a == str(out) else a for a in args], "--max_epochs", "3", cwd=tmp_path))
    before = folder_state(out)
    for path in sorted(data.rglob("*.nii.gz")):  # every image edited: whichever the split trains on
        if "label" not in path.name:
            img = nib.load(path)
            voxels = np.asarray(img.dataobj).copy()
            voxels[:4] = np.random.default_rng(0).integers(-100, 100, voxels[:4].shape)
            nib.save(nib.Nifti1Image(voxels, img.affine, img.header), path)
    proc = _bundle(*args, "--max_epochs", "3", cwd=tmp_path)
    assert proc.returncode != 0 and "MedGMAE pre-training trained on other data: 2 cases then, 2 now" in proc.stderr, proc.stderr[-3000:]
    assert '2 differing (saved {"image": ["imagesTr/' in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_resume_with_another_validation_list_writes_nothing(runs, tmp_path, folder_state):
    """The best model is chosen on the validation volumes: a resume whose datalist lists other ones (training
    unchanged) is refused naming both, and the run's folder is byte for byte as it was."""
    import shutil

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    data = shutil.copytree(runs["dataset"].parent, tmp_path / "data" / "phantom")
    datalist = json.loads((data / "dataset.json").read_text())
    assert datalist["validation"] and datalist["validation"] != datalist["training"][:1]
    datalist["validation"] = datalist["training"][:1]
    (data / "dataset.json").write_text(json.dumps(datalist))
    before = folder_state(out)
    proc = _bundle("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(data / "dataset.json"),
                   "--output_dir", str(out), "--num_workers", "0", "--resume", "true", "--max_epochs", "3", cwd=tmp_path)
    assert proc.returncode != 0 and "MedGMAE pre-training validated on other data" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_a_resumed_run_does_not_show_the_interrupted_steps_twice_in_tensorboard(runs, tmp_path):
    """A run stopped within epoch 3 logged iterations 5-6 (and epoch 3's validation, at iteration 6) before it
    stopped; resumed from checkpoint_epoch=2.pt it logs them again. Its writer's purge_step makes TensorBoard keep
    each step once: the resumed run's (validation was logged at epoch steps, below the purge step: shown twice)."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    stopped = SummaryWriter(str(out / "tensorboard"))  # what the stopped run logged of epoch 3
    for step in (5, 6):
        stopped.add_scalar("train_loss", 99.0, step)
    stopped.add_scalar("val/psnr", 99.0, 6)  # its epoch-3 validation, logged before the checkpoint it never wrote
    stopped.close()
    assert [e.step for e in _tensorboard(out / "tensorboard").Scalars("train_loss")] == [1, 2, 3, 4, 5, 6]
    _ok(_bundle("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]),
                "--output_dir", str(out), "--num_workers", "0", "--resume", "true", "--max_epochs", "3", cwd=tmp_path))
    acc = _tensorboard(out / "tensorboard")
    logged = [(e.step, e.value) for e in acc.Scalars("train_loss")]
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6] and 99.0 not in [v for _, v in logged], logged
    validated = [(e.step, e.value) for e in acc.Scalars("val/psnr")]  # at the iterations ending epochs 1-3
    assert [step for step, _ in validated] == [2, 4, 6] and 99.0 not in [v for _, v in validated], validated


def test_resume_with_other_phantom_settings_writes_nothing(runs, tmp_path, folder_state):
    """A copy of the phantom run resumed with another phantom shape is refused naming the setting, before any
    phantom is generated again: the run's folder (its phantoms and cache included) is byte for byte as it was."""
    import shutil

    out = shutil.copytree(runs["resumed"], tmp_path / "run", copy_function=shutil.copy2)
    before = folder_state(out)
    small = SMALL[:]
    small[small.index("--phantom_shape") + 1] = "[48,48,44]"
    proc = _bundle("run", "training", "--config_file", TRAIN, *small, "--output_dir", str(out), "--max_epochs", "3",
                   "--num_workers", "0", "--resume", "true", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "trained on phantoms generated with other settings" in proc.stderr, proc.stderr[-3000:]
    assert "phantom_shape: saved [48, 48, 40], now [48, 48, 44]" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_ddp_resume_matches_an_uninterrupted_two_node_run(runs, tmp_path, stop_while_validating):
    """2 processes (gloo): 1 epoch, then resumed to 2; the same 2 epochs uninterrupted by two torchrun launches on
    localhost acting as two nodes of one process each: the same weights, bit for bit; only rank 0 writes. Both
    processes stopped by SIGTERM while epoch 1 was validated: the resume validates it, trains epoch 2 alone, and
    ends as the uninterrupted run too (every rank's random states as epoch 1's training left them)."""
    out, straight = tmp_path / "ddp", tmp_path / "two_nodes"
    common = ["run", "training", "--config_file", MULTI, *SMALL, "--dataset_dir", str(runs["dataset"]),
              "--num_workers", "1", "--max_epochs"]  # fmt: skip
    standalone = _torchrun("--standalone", "--nproc_per_node", "2")
    proc = _ok(_bundle(*common, "1", "--output_dir", str(out), cwd=tmp_path, threads=1, launcher=standalone))
    first = _ckpt(out / "checkpoint_epoch=1.pt")
    assert first["engine"] == {"epoch": 1, "iteration": 1, "max_epochs": 1}  # 2 volumes sharded over 2 ranks
    states = first["random_state_ranks"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    assert not any(k.startswith("module.") for k in first["objects"]["model"])
    assert "train_loss" in proc.stdout + proc.stderr
    resumed = _ok(_bundle(*common, "2", "--output_dir", str(out), "--resume", "true", cwd=tmp_path, threads=1,
                          launcher=standalone))  # fmt: skip
    assert "resumed from" in resumed.stdout + resumed.stderr

    port = _free_port()
    nodes = [
        subprocess.Popen(
            _torchrun("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                      "--master_port", str(port), "-m", "monai.bundle", *common, "2", "--output_dir", str(straight)),
            cwd=tmp_path, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
        )  # fmt: skip
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(log[-3000:] for log in logs)

    a, b = _ckpt(out / "checkpoint_epoch=2.pt"), _ckpt(straight / "checkpoint_epoch=2.pt")
    assert a["engine"] == b["engine"] == {"epoch": 2, "iteration": 2, "max_epochs": 2}
    wa, wb = a["objects"]["model"], b["objects"]["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(first["objects"]["model"][k], wa[k]) for k in wa)  # epoch 2 trained
    for r in (0, 1):  # each rank's generators continued as in the uninterrupted run
        assert torch.equal(a["random_state_ranks"][r]["torch"], b["random_state_ranks"][r]["torch"])
    for run in (out, straight):  # checkpoints, exports and logs from rank 0 only
        assert (run / "encoder.pt").is_file() and not list(run.glob("rank*"))
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == (2 if run == out else 1)
    torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)

    stopped_dir, stop = tmp_path / "ddp_stopped", stop_while_validating(TRAIN, tmp_path, epoch=1)
    with_stop = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}','{stop}']"
    stopped = _bundle(*[with_stop if a == MULTI else a for a in common], "2", "--output_dir", str(stopped_dir),
                      cwd=tmp_path, threads=1, launcher=standalone)  # fmt: skip
    saved = _ckpt(stopped_dir / "checkpoint_epoch=1.pt")
    assert stopped.returncode != 0 and saved["engine"]["pending"] == "validation" and len(saved["random_state_ranks"]) == 2
    again = _ok(_bundle(*common, "2", "--output_dir", str(stopped_dir), "--resume", "true", cwd=tmp_path, threads=1,
                        launcher=standalone))  # fmt: skip
    log = again.stdout + again.stderr
    assert "validating epoch 1 before training on" in log and "epoch 1/2: train_loss" not in log
    c = _ckpt(stopped_dir / "checkpoint_epoch=2.pt")
    assert c["engine"] == b["engine"] and c["objects"]["history"] == b["objects"]["history"]
    assert all(torch.equal(c["objects"]["model"][k], wb[k]) for k in wb)
    assert all(torch.equal(c["random_state_ranks"][r]["torch"], b["random_state_ranks"][r]["torch"]) for r in (0, 1))


def test_distributed_sampler_is_reseeded_every_epoch():
    from monai.data import DataLoader, DistributedSampler

    data = [{"image": torch.full((1, 16, 16, 16), float(i) / 8)} for i in range(8)]
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True)
    seen = []
    model = build_model("voxel-mae", "tiny", img_size=16, patch_size=8)
    loader = DataLoader(data, batch_size=1, sampler=sampler)
    trainer = MaskedAutoencoderTrainer("cpu", 3, loader, model, torch.optim.SGD(model.parameters(), lr=0.0))
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(round(float(e.state.batch["image"][0, 0, 0, 0, 0]) * 8)))
    trainer.run()
    orders = [seen[i * 4 : (i + 1) * 4] for i in range(3)]
    # the order of each epoch is torch's DistributedSampler permutation for that epoch (seed 0 + epoch)
    expected = []
    for epoch in (1, 2, 3):
        ref = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
        ref.set_epoch(epoch)
        expected.append(list(ref))
    assert orders == expected and len({tuple(o) for o in orders}) > 1


def test_bad_dataset_dir_fails_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_data"
    proc = _bundle("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(missing),
                   "--output_dir", str(tmp_path / "out"), "--max_epochs", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and str(missing) in proc.stderr
    bad = tmp_path / "bad"
    (bad / "imagesTr").mkdir(parents=True)
    for name in ("good.nii.gz", "cut.nii.gz"):
        nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 100, (48, 48, 40)).astype(np.float32), np.eye(4)),
                 str(bad / "imagesTr" / name))  # fmt: skip
    cut = bad / "imagesTr" / "cut.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    listed = [{"image": f"imagesTr/{n}"} for n in ("good.nii.gz", "gone.nii.gz", "cut.nii.gz")]
    (bad / "dataset.json").write_text(json.dumps({"training": listed}))
    proc = _bundle("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(bad),
                   "--output_dir", str(tmp_path / "out"), "--max_epochs", "1", cwd=tmp_path)  # fmt: skip
    # one message names both unusable files, before any data loading (no EOFError from inside a dataset)
    # (the error closes the log, repeated after the traceback)
    summary = proc.stderr.split("\nerror: ")[-1]
    problems = [line for line in summary.splitlines() if line.startswith("  - ")]
    assert proc.returncode != 0 and "2 problem(s) in the data of" in summary and len(problems) == 2
    assert "gone.nii.gz" in problems[0] and "cut.nii.gz: cannot read the volume" in problems[1]
    assert "applying transform" not in proc.stderr  # stopped before any data loading
    assert not (tmp_path / "out").exists()  # nothing written


def test_inference_writes_ply_nifti_and_png(runs, tmp_path):
    image = runs["dataset"].parent / json.loads(runs["dataset"].read_text())["training"][0]["image"]
    model_path = runs["resumed"] / "model.pt"
    _ok(_bundle("run", "inferring", "--config_file", str(CONFIGS / "inference.json"), "--model_path", str(model_path),
                "--image", str(image), "--inference_dir", str(tmp_path), "--device", "cpu", cwd=tmp_path))  # fmt: skip
    src = nib.load(str(image))
    out = nib.load(str(tmp_path / "case_0000_rendered.nii.gz"))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    g, meta = load_ply(tmp_path / "case_0000_gaussians.ply")
    assert g.num_gaussians > 8 and meta["frame"] == "world" and tuple(meta["shape"]) == src.shape  # several windows
    assert np.allclose(meta["affine"], src.affine)
    # the NIfTI is the rendering of the written (world, mm) Gaussians on the input's grid, mapped back to HU with the
    # window recorded in model.pt, within that window
    inv = torch.from_numpy(np.linalg.inv(src.affine))
    spec = runs["first"]["model"]["preprocessing"]
    lo, hi = spec["hu_window"]
    rendered = np.clip(g.transformed(inv[:3, :3], inv[:3, 3]).render(src.shape)[0].numpy(), 0, 1) * (hi - lo) + lo
    assert np.allclose(out.get_fdata(), rendered, atol=0.05)
    png = Image.open(tmp_path / "case_0000_slices.png")
    assert png.mode == "RGB" and png.size[1] > 2 * 256  # two rows (input, rendering) of slices 256 pixels high


def test_inference_rejects_voxel_mae_model_and_missing_image(tmp_path):
    from medgmae.mae_training import GaussianInference

    vm = VoxelMAE(img_size=32, patch_size=8, model_size="tiny")
    torch.save(vm.model_checkpoint(), tmp_path / "voxel.pt")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(ValueError, match="voxel.pt"):
        GaussianInference(tmp_path / "voxel.pt", tmp_path / "v.nii.gz", tmp_path / "out", device="cpu").run()
    with pytest.raises(FileNotFoundError, match="nothing.nii.gz"):
        GaussianInference(tmp_path / "voxel.pt", tmp_path / "nothing.nii.gz", tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _loader(x: torch.Tensor, n: int = 2) -> list[dict]:
    return [{"image": x.clone()} for _ in range(n)]


def test_trainer_clips_gradients_to_one():
    """Clipping (engine.GradientClipHandler, attached by the trainer) brings the norm the optimiser sees to 1; the
    same step without it sees the large raw norm."""
    from monai.engines.utils import IterationEvents

    def step_norms(grad_clip: float) -> tuple[list, dict]:
        torch.manual_seed(0)
        model = build_model("medgmae", "tiny", img_size=32, patch_size=8, num_gaussians=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)) * 50
        trainer = MaskedAutoencoderTrainer("cpu", 1, _loader(x, 1), model, opt, grad_clip=grad_clip)
        norms: list = []
        grads = lambda: [p.grad for p in model.parameters() if p.grad is not None]  # noqa: E731
        trainer.add_event_handler(IterationEvents.MODEL_COMPLETED,
                                  lambda e: norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads()])))))  # fmt: skip
        trainer.run()
        return norms, trainer.state.output

    raw, _ = step_norms(0.0)
    clipped, output = step_norms(1.0)
    assert min(raw) > 1.0  # a large target makes large gradients ...
    assert max(clipped) == pytest.approx(1.0, rel=1e-4)  # ... clipped to norm 1
    assert set(output) == {"loss", "psnr_masked"}


def test_trainer_stops_on_nan_input_naming_it():
    """A NaN voxel that reaches the model (past the data pre-check, e.g. from an augmentation) stops the step naming
    the input, not as a non-finite loss (tests/test_engine.py covers that handler)."""
    from medgmae.engine import NonFiniteLossHandler

    model = build_model("voxel-mae", "tiny", img_size=32, patch_size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(1, 1, 32, 32, 32)
    x[..., 3, 3, 3] = float("nan")
    trainer = MaskedAutoencoderTrainer("cpu", 1, _loader(x), model, opt, train_handlers=[NonFiniteLossHandler()])
    with pytest.raises(ValueError, match="the input holds NaN or infinite voxels"):
        trainer.run()
    assert trainer.state.iteration == 1


@pytest.mark.gpu
def test_trainer_bf16_autocast_on_cuda():
    torch.manual_seed(0)
    model = build_model("medgmae", "tiny", img_size=32, patch_size=8, num_gaussians=16).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seen = []
    model.encoder.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer = MaskedAutoencoderTrainer("cuda", 1, _loader(torch.rand(1, 1, 32, 32, 32)), model, opt, amp=True)
    trainer.run()
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert torch.isfinite(trainer.state.output["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_metadata_passes_the_shipped_schema(tmp_path):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(REPO / "bundles" / "schema" / "meta_schema.json"))
    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(REPO / "bundles" / "schema" / "meta_schema.json"))


def test_command_line_flags_are_parsed_strictly():
    from medgmae.cli_types import as_bool

    assert [as_bool(v) for v in (True, "true", "False", "1", 0, "off")] == [True, True, False, True, False, False]
    with pytest.raises(ValueError, match="resume must be true or false, got 'maybe'"):
        as_bool("maybe", "resume")
    with pytest.raises(ValueError, match="model kind"):
        build_model("gaussian-vae")


def test_training_volumes_the_sampler_repeats_are_warned(tmp_path, monkeypatch, caplog):
    """Under torchrun the sampler pads each epoch to a multiple of the processes, repeating volumes: whenever the
    count is not a multiple (3 volumes on 2 processes as on 4), rank 0 says so once, with the number torch's
    DistributedSampler repeats."""
    from torch.utils.data import DistributedSampler

    from medgmae.mae_training import pretrain_split

    folder = tmp_path / "vols"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        (folder / name).write_bytes(b"x")
    for size, rank, warned in (("3", "0", False), ("2", "0", True), ("4", "0", True), ("2", "1", False), ("4", "1", False)):
        monkeypatch.setenv("WORLD_SIZE", size)
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING"):
            pretrain_split(str(folder), tmp_path, validate=False, val_fraction=0.0)
        said = [r.getMessage() for r in caplog.records if "processes" in r.getMessage()]
        drawn = [i for r in range(int(size)) for i in DistributedSampler(range(3), num_replicas=int(size), rank=r, shuffle=False)]
        per, extra = len(drawn) // int(size), len(drawn) - 3
        twice = sum(drawn.count(i) > 1 for i in range(3))  # counted from torch's sampler
        assert said == ([f"3 training volumes for {size} processes: the distributed sampler gives every process {per}, "
                         f"padding each epoch with {extra} repeated draw{'s' if extra > 1 else ''}, so {twice} "
                         f"volume{'s are' if twice > 1 else ' is'} trained more than once in that epoch; a multiple of "
                         f"{size} volumes avoids it"] if warned else []), (size, rank, said)  # fmt: skip


def test_a_single_volume_is_warned_about_by_rank_0_alone(tmp_path, monkeypatch, caplog):
    """One volume leaves nothing to hold out: every torchrun process validates on it, and rank 0 alone says so."""
    from medgmae.mae_training import pretrain_split

    folder = tmp_path / "vols"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(b"x")
    for rank, warned in (("0", True), ("1", False)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING"):
            pretrain_split(str(folder), tmp_path, validate=False, val_fraction=0.1)
        said = [r.getMessage() for r in caplog.records if "a single volume, nothing to hold out" in r.getMessage()]
        assert len(said) == (1 if warned else 0), said


def test_datalist_sources_and_errors(tmp_path):
    from medgmae.mae_training import pretrain_split

    folder = tmp_path / "vols"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nrrd", "notes.txt"):
        (folder / name).write_bytes(b"x")
    split = pretrain_split(str(folder), tmp_path, validate=False, val_fraction=0.0)
    assert [Path(i["image"]).name for i in split["training"]] == ["a.nrrd", "b.nii.gz"]
    (tmp_path / "empty.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="empty"):
        pretrain_split(str(tmp_path / "empty.json"), tmp_path)
    (tmp_path / "lab.json").write_text(json.dumps({"training": [{"image": "vols/b.nii.gz", "label": "vols/none.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"lab\.json(.|\n)*label volume not found: .*none\.nii\.gz"):
        pretrain_split(str(tmp_path / "lab.json"), tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        pretrain_split(str(tmp_path / "broken.json"), tmp_path)


def _tiny_decathlon(root: Path) -> Path:
    """Three small CT volumes under ``root/imagesTr`` and a ``dataset_0.json`` listing two for training, one for
    validation (paths relative to ``root``)."""
    (root / "imagesTr").mkdir(parents=True)
    for i in range(3):
        data = np.random.default_rng(i).normal(0, 100, (24, 24, 20)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), str(root / "imagesTr" / f"c{i}.nii.gz"))
    dl = root / "dataset_0.json"
    dl.write_text(json.dumps({"training": [{"image": "imagesTr/c0.nii.gz"}, {"image": "imagesTr/c1.nii.gz"}],
                              "validation": [{"image": "imagesTr/c2.nii.gz"}]}))  # fmt: skip
    return dl


def test_datalist_names_the_data_as_for_fine_tuning(tmp_path):
    """``datalist`` is fine-tuning's key: a Decathlon JSON whose paths resolve against ``dataset_dir`` when given,
    else against the JSON's folder; its lists are the split, and no phantoms are written."""
    from medgmae.data import DatasetError
    from medgmae.mae_training import pretrain_split

    dl = _tiny_decathlon(tmp_path / "data")
    split = pretrain_split("", tmp_path / "run", datalist=str(dl), validate=False)
    assert [Path(i["image"]).name for i in split["training"]] == ["c0.nii.gz", "c1.nii.gz"]
    assert [i["image"] for i in split["validation"]] == [str(tmp_path / "data" / "imagesTr" / "c2.nii.gz")]
    moved = tmp_path / "lists" / "dataset_0.json"
    moved.parent.mkdir()
    moved.write_text(dl.read_text())
    split = pretrain_split(str(tmp_path / "data"), tmp_path / "run", datalist=str(moved), validate=False)
    assert split["validation"][0]["image"] == str(tmp_path / "data" / "imagesTr" / "c2.nii.gz")
    assert not (tmp_path / "run").exists()
    with pytest.raises(DatasetError, match=r"dataset_dir .*dataset_0\.json is a file: with a datalist"):
        pretrain_split(str(dl), tmp_path / "run", datalist=str(moved), validate=False)
    with pytest.raises(DatasetError, match="datalist not found"):
        pretrain_split("", tmp_path / "run", datalist=str(tmp_path / "nope.json"), validate=False)


def test_the_bundle_trains_on_a_datalist(tmp_path):
    """``--datalist`` is a setting of the bundle (it used to replace the internal list of training cases and fail
    with a TypeError after writing phantoms); the cases come from it."""
    from monai.bundle import ConfigParser

    dl = _tiny_decathlon(tmp_path / "data")
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"datalist": str(dl), "output_dir": str(tmp_path / "run"), "device": "cpu"})
    train, val = parser.get_parsed_content("train_cases"), parser.get_parsed_content("val_cases")
    assert [Path(i["image"]).name for i in train] == ["c0.nii.gz", "c1.nii.gz"] and len(val) == 1
    assert parser.get_parsed_content("num_workers") == min(4, len(os.sched_getaffinity(0)))  # real data, not phantoms
    assert not (tmp_path / "run" / "phantom").exists()


def test_pre_training_warns_about_a_volume_in_attenuation_units(tmp_path, caplog):
    """A volume of linear attenuation (1/mm) among CT volumes in HU would be trained on as an almost constant crop:
    the bundle's loading warns, naming the file, as zero-shot inference and segmentation do; a CT in HU passes."""
    import logging

    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from medgmae.data import LoadVolumed, WarnIfNotHUd

    hu = np.full((20, 20, 20), -1000.0, np.float32)
    hu[5:15, 5:15, 5:15] = 40.0
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    mu = np.clip(0.0192 * (1 + hu / 1000), 0, None)
    nib.save(nib.Nifti1Image(mu, np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "mu.nii.gz"))
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"output_dir": str(tmp_path / "run"), "device": "cpu", "roi_size": 24})
    steps = parser.get_parsed_content("train#deterministic_transforms")  # the bundle's loading (training, validation)
    warn = next(t for t in steps if isinstance(t, WarnIfNotHUd))
    assert steps.index(warn) == 1 and isinstance(steps[0], LoadVolumed)  # on the volume as read, before the window
    load = Compose([LoadVolumed(keys="image"), warn])
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        load({"image": str(tmp_path / "ct.nii.gz")})
        assert "linear attenuation" not in caplog.text
        load({"image": str(tmp_path / "mu.nii.gz")})
    assert f"{tmp_path / 'mu.nii.gz'} looks like linear attenuation in 1/mm" in caplog.text


def test_pre_training_and_fine_tuning_warn_about_a_volume_smaller_than_the_crop(tmp_path, caplog):
    """A volume whose body is smaller than roi_size after resampling is padded with air in every crop: both training
    pipelines warn before their SpatialPadd, naming the file and its size, once per file; a large volume passes."""
    import logging
    import re

    from monai.bundle import ConfigParser
    from monai.transforms import Compose, SpatialPadd

    from medgmae.data import WarnIfPaddedd
    from medgmae.finetune.data import train_transforms
    from medgmae.preprocessing import PreprocessingSpec

    def ct(name, n, body):  # n^3 voxels of 1 mm, a body of body^3 voxels at 40 HU in air
        a = np.full((n, n, n), -1000.0, np.float32)
        lo = (n - body) // 2
        a[lo:lo + body, lo:lo + body, lo:lo + body] = 40.0
        nib.save(nib.Nifti1Image(a, np.diag([-1.0, -1.0, 1.0, 1.0])), str(tmp_path / name))
        return str(tmp_path / name)

    # 20^3 voxels at 1.5 mm (about half of a 24^3 crop padding); 36^3; 22 x 36 x 36 (8 % padding: not warned)
    small, large, slim = ct("small.nii.gz", 40, 30), ct("large.nii.gz", 60, 54), ct("slim.nii.gz", 60, 54)
    a = nib.load(slim).get_fdata()
    a[:, :, :] = -1000.0
    a[16:49, 3:57, 3:57] = 40.0
    nib.save(nib.Nifti1Image(a.astype(np.float32), nib.load(slim).affine), slim)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"output_dir": str(tmp_path / "run"), "device": "cpu", "roi_size": 24})
    steps = parser.get_parsed_content("train#deterministic_transforms")
    warn = next(t for t in steps if isinstance(t, WarnIfPaddedd))
    assert isinstance(steps[steps.index(warn) + 1], SpatialPadd)
    spec = PreprocessingSpec(input_size=(24, 24, 24), patch_size=(12, 12, 12))
    fine = train_transforms(spec, num_samples=1)
    assert any(isinstance(t, WarnIfPaddedd) for t in fine.transforms)
    # the fine-tuning demonstration's small phantoms (a size the user did not choose) are not warned about
    assert not any(isinstance(t, WarnIfPaddedd) for t in train_transforms(spec, 1, warn_padding=False).transforms)
    pre = Compose(steps[: steps.index(warn) + 1])
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        pre({"image": large, "label": _label_like(large)})
        fine({"image": large, "label": _label_like(large)})
        pre({"image": slim, "label": _label_like(slim)})
        assert "smaller than the" not in caplog.text
        pre({"image": small, "label": _label_like(small)})
        pre({"image": small, "label": _label_like(small)})
    assert caplog.text.count(f"{small} is ") == 1
    size, share = re.search(r"is (\d+)x\1x\1 voxels.*24x24x24 crop: (\d+) % of every crop", caplog.text).groups()
    assert int(size) in (19, 20) and int(share) == round(100 * (1 - (int(size) / 24) ** 3))
    assert " at 1.5x1.5x1.5 mm" in caplog.text


def _label_like(path: str) -> str:
    """A label map (0/1) on the grid of the volume at ``path``, written beside it."""
    img = nib.load(path)
    out = path.replace(".nii.gz", "_label.nii.gz")
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > -500).astype(np.uint8), img.affine), out)
    return out


def test_a_handler_disabled_the_monai_way_is_left_out(tmp_path):
    """``--val#pictures#_disabled_ true`` (MONAI's way to switch a component off) made the referenced handler None in
    the trainer's list, and the run failed with AttributeError after writing its phantoms; it now runs without it."""
    out = tmp_path / "run"
    proc = _ok(_bundle("run", "training", "--config_file", TRAIN, *SMALL, "--output_dir", str(out), "--max_epochs", "1",
                       "--val#pictures#_disabled_", "true", cwd=tmp_path))  # fmt: skip
    assert (out / "model.pt").is_file() and not list(out.glob("pictures/*.png"))  # trained, without the pictures
    assert "AttributeError" not in proc.stderr
