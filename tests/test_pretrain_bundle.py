"""The medgmae_pretrain bundle end to end on generated phantoms: outputs, validation, pictures, TensorBoard,
summary, inference, and exact resumption (also of a stop while validating, and under torchrun); the resumes it
refuses: test_pretrain_bundle_resume_checks.py."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.networks import MaskedViTEncoder, MedGMAE
from medgmae.ply import load_ply

from bundle_helpers import tensorboard_events, tensorboard_shown
from pretrain_helpers import (
    CONFIGS,
    MULTI,
    SMALL,
    SMALL_RATES,
    TRAIN,
    bundle_env,
    bundle_process,
    read_checkpoint,
    succeeded,
    torchrun_command,
    two_nodes,
)


@pytest.fixture
def runs(pretrain_runs):
    """One short run generating phantoms (then resumed to 2 epochs) and an uninterrupted 2-epoch run (conftest.py)."""
    return pretrain_runs


def test_smoke_run_writes_checkpoint_encoder_and_model(runs):
    first = runs["first"]
    assert first["epoch_ckpt"] == ["checkpoint_epoch=1.pt"]
    assert "train_loss" in first["log"]  # StatsHandler progress
    assert list((runs["resumed"] / "tensorboard").glob("events.out.tfevents.*"))
    data = json.loads(runs["dataset"].read_text(encoding="utf-8"))
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


def test_validation_best_model_pictures_tensorboard_and_summary(runs):
    straight = runs["straight"]
    log = runs["first"]["log"]
    assert not any(text in log for text in FILTERED), [t for t in FILTERED if t in log]
    assert "validation (2 crops, fixed masks)" in log and "pre-training finished: 1 epoch of" in log
    # the start line: SMALL runs a 32^3 crop of 8^3 patches (64, 16 visible), one crop per volume, on the CPU
    assert ("pre-training runs on cpu, AMP off (amp true has no effect on the CPU), renderer torch, model medgmae tiny ("
            in log and "K=8 Gaussians, mask ratio 0.75 (16 of 64 patches visible per crop), global batch 1 crop per step "
            "(1 process x 1 volume x 1 crop), seed 0" in log)  # fmt: skip  (the default seed: no command line gives it)
    # best_model.pt: model.pt's format, loadable without unpickling code, rebuilds the model
    best = torch.load(straight / "best_model.pt", map_location="cpu", weights_only=True)
    assert set(best) == set(read_checkpoint(straight / "model.pt")) and best["kind"] == "medgmae"
    assert MedGMAE.from_checkpoint(straight / "best_model.pt").num_gaussians == 8
    # validation metrics: finite, in TensorBoard per validated epoch, and the best one in summary.json
    acc = tensorboard_events(straight / "tensorboard")
    psnr = [e.value for e in acc.Scalars("val/psnr")]
    ssim = [e.value for e in acc.Scalars("val/ssim")]
    assert [e.step for e in acc.Scalars("val/psnr")] == [2, 4] and np.isfinite(psnr + ssim).all()  # the iterations
    # the learning rate each step used: 2 epochs of 2 volumes, 3 warm-up steps from 0 to 1.5e-4, then the cosine
    lr = acc.Scalars("train/lr")
    assert [e.step for e in lr] == [1, 2, 3, 4] and [e.value for e in lr] == pytest.approx(SMALL_RATES[:4])
    assert all(-1.0 <= v <= 1.0 for v in ssim)
    summary = json.loads((straight / "summary.json").read_text(encoding="utf-8"))
    assert summary["best_val_psnr"] == pytest.approx(max(psnr), abs=1e-4) and summary["best_epoch"] == 1 + int(np.argmax(psnr))
    assert str(straight / "encoder.pt") in summary["next"]["fine-tune"] and "--init medgmae" in summary["next"]["reconstruction init"]
    # the run's settings, to compare runs from their folders: as given on the command line (SMALL) and the defaults
    settings = summary["settings"]
    assert settings["model"]["num_gaussians"] == 8 and settings["model"]["img_size"] == [32, 32, 32]
    assert settings["preprocessing"]["spacing"] == [3.0, 3.0, 3.0]
    keys = ("batch_size", "num_samples", "learning_rate", "seed", "num_workers", "processes")
    assert {k: settings["training"][k] for k in keys} == {
        "batch_size": 1, "num_samples": 1, "learning_rate": 1.5e-4, "seed": 0, "num_workers": 0, "processes": 1}
    # what else decides the weights: the software (and a GPU, which this CPU run names none of)
    assert summary["software"]["packages"]["torch"] == torch.__version__ and "gpu" not in summary["software"]
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
    a, b = read_checkpoint(runs["resumed"] / "checkpoint_epoch=2.pt"), read_checkpoint(runs["straight"] / "checkpoint_epoch=2.pt")
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
    a, b = read_checkpoint(resumed / "checkpoint_epoch=2.pt"), read_checkpoint(straight / "checkpoint_epoch=2.pt")
    assert a["engine"] == b["engine"] == {"epoch": 2, "iteration": 4, "max_epochs": 2}
    wa, wb = a["objects"]["model"], b["objects"]["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # training moved the weights after the resume
    w1 = runs["first"]["model"]["state_dict"]
    assert any(not torch.equal(w1[k], wa[k]) for k in wa)
    oa, ob = a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(oa[i].keys() == ob[i].keys() for i in oa)
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])  # exp_avg, exp_avg_sq, step
    assert a["objects"]["lr_scheduler"]["last_epoch"] == b["objects"]["lr_scheduler"]["last_epoch"] == 4
    assert runs["first"]["scheduler"]["last_epoch"] == 2  # the resume started inside the 3-step warm-up
    # stopped after step 2, inside the 3-step warm-up, the run resumed into the cosine as the uninterrupted run: the
    # rate of each step (TensorBoard: steps 1-2 of the stopped run, 3-4 of the resume), the scheduler's plan and the
    # rate of step 5 the optimiser holds (a point of the cosine that depends on t_total)
    for run in (resumed, straight):
        lr = tensorboard_events(run / "tensorboard").Scalars("train/lr")
        assert [(e.step, e.value) for e in lr] == [(i + 1, pytest.approx(r)) for i, r in enumerate(SMALL_RATES[:4])], run
    sa, sb = a["objects"]["lr_scheduler"], b["objects"]["lr_scheduler"]
    assert sa == sb and (sa["warmup_steps"], sa["t_total"]) == (3, 6)
    ga, gb = a["objects"]["optimizer"]["param_groups"], b["objects"]["optimizer"]["param_groups"]
    assert ga == gb and all(g["lr"] == pytest.approx(SMALL_RATES[4]) for g in ga)
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
    proc = succeeded(bundle_process("run", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                       str(run), "--max_epochs", "2", "--num_workers", "0", "--resume", "true", cwd=runs["root"]))  # fmt: skip
    assert "has trained all 2 epochs; its run stopped before its closing steps" in proc.stdout + proc.stderr
    assert all((run / name).is_file() for name in closing)
    a, b = read_checkpoint(run / "model.pt")["state_dict"], read_checkpoint(runs["straight"] / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(run / "checkpoint_final.pt")["engine"] == {"epoch": 2, "iteration": 4, "max_epochs": 2}
    summary, straight = (json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in (run, runs["straight"]))
    assert summary["best_epoch"] == straight["best_epoch"] and summary["best_val_psnr"] == straight["best_val_psnr"]
    again = bundle_process("run", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir",
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
    stopped = bundle_process("run", "--config_file", f"['{TRAIN}','{stop}']", *args, cwd=runs["root"])
    assert stopped.returncode == -15, stopped.stderr[-3000:]
    assert stopped.stderr.rstrip().splitlines()[-1] == (
        "terminated (SIGTERM) while validating epoch 1: its training is saved in checkpoint_epoch=1.pt; run the same "
        "command with --resume true to validate it and train on")
    assert not (run / "checkpoint_interrupted.pt").exists()
    assert read_checkpoint(run / "checkpoint_epoch=1.pt")["engine"] == {"epoch": 1, "iteration": 2, "max_epochs": 2, "pending": "validation"}
    resumed = succeeded(bundle_process("run", "--config_file", TRAIN, *args, "--resume", "true", cwd=runs["root"]))
    log = resumed.stdout + resumed.stderr
    assert "validating epoch 1 before training on" in log and "epoch 1 validation (2 crops" in log
    assert "epoch 1/2: train_loss" not in log and log.count("epoch 2/2: train_loss") == 1  # epoch 1 not trained again
    # epoch 1's model.pt / encoder.pt are written once it is validated, as at the end of an uninterrupted epoch 1
    assert log.index("validating epoch 1 before") < log.index("epoch 1: wrote ") < log.index("epoch 2/2: train_loss")
    a, b = read_checkpoint(run / "checkpoint_epoch=2.pt"), read_checkpoint(straight / "checkpoint_epoch=2.pt")
    assert a["engine"] == b["engine"] == {"epoch": 2, "iteration": 4, "max_epochs": 2}
    assert a["objects"]["history"] == b["objects"]["history"]  # validation and loss curves, best epoch and value
    assert a["objects"]["lr_scheduler"] == b["objects"]["lr_scheduler"]
    wa, wb = a["objects"]["model"], b["objects"]["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in ("exp_avg", "exp_avg_sq"))
    ba, bb = (torch.load(d / "best_model.pt", weights_only=True) for d in (run, straight))
    assert ba["extra"] == bb["extra"] and all(torch.equal(ba["state_dict"][k], bb["state_dict"][k]) for k in ba["state_dict"])
    sa, sb = (json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in (run, straight))
    assert (sa["best_epoch"], sa["best_val_psnr"]) == (sb["best_epoch"], sb["best_val_psnr"])
    assert sorted(p.name for p in (run / "pictures").iterdir()) == sorted(p.name for p in (straight / "pictures").iterdir())
    # TensorBoard shows epoch 1's validation once (the stopped run logged it before the stop; the resume, validating
    # epoch 1 again, leaves out what the folder holds at its iteration) and the same curves as the uninterrupted run
    assert tensorboard_shown(run / "tensorboard") == tensorboard_shown(straight / "tensorboard")


def test_a_fresh_run_replaces_every_output_the_bundle_writes(runs):
    """Each file a pre-training run wrote in its folder, its data (phantoms, cache) and checkpoints aside, is among
    the outputs a fresh run in that folder replaces (its CheckpointHandler's ``earlier_outputs``): none of them is
    left beside a new run's checkpoints as if it were the new run's."""
    config = json.loads(Path(TRAIN).read_text(encoding="utf-8"))
    handler = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))
    for out in (runs["straight"], runs["resumed"]):
        replaced = {p for pattern in handler["earlier_outputs"] for p in out.glob(pattern)}
        written = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith("checkpoint_")
                   and p.relative_to(out).parts[0] not in ("cache", "phantom")}  # fmt: skip
        assert written and written <= replaced, sorted(str(p.relative_to(out)) for p in written - replaced)


def test_a_resumed_run_does_not_show_the_interrupted_steps_twice_intensorboard_events(runs, tmp_path):
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
    assert [e.step for e in tensorboard_events(out / "tensorboard").Scalars("train_loss")] == [1, 2, 3, 4, 5, 6]
    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]),
                "--output_dir", str(out), "--num_workers", "0", "--resume", "true", "--max_epochs", "3", cwd=tmp_path))
    acc = tensorboard_events(out / "tensorboard")
    logged = [(e.step, e.value) for e in acc.Scalars("train_loss")]
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6] and 99.0 not in [v for _, v in logged], logged
    validated = [(e.step, e.value) for e in acc.Scalars("val/psnr")]  # at the iterations ending epochs 1-3
    assert [step for step, _ in validated] == [2, 4, 6] and 99.0 not in [v for _, v in validated], validated


def test_ddp_resume_matches_an_uninterrupted_two_node_run(runs, tmp_path, stop_while_validating):
    """2 processes (gloo): 1 epoch, then resumed to 2; the same 2 epochs uninterrupted by two torchrun launches on
    localhost acting as two nodes of one process each: the same weights, bit for bit; only rank 0 writes. Both
    processes stopped by SIGTERM while epoch 1 was validated: the resume validates it, trains epoch 2 alone, and
    ends as the uninterrupted run too (every rank's random states as epoch 1's training left them)."""
    out, straight = tmp_path / "ddp", tmp_path / "two_nodes"
    common = ["run", "training", "--config_file", MULTI, *SMALL, "--dataset_dir", str(runs["dataset"]),
              "--num_workers", "1", "--max_epochs"]  # fmt: skip
    standalone = torchrun_command("--standalone", "--nproc_per_node", "2")
    proc = succeeded(bundle_process(*common, "1", "--output_dir", str(out), cwd=tmp_path, threads=1, launcher=standalone))
    first = read_checkpoint(out / "checkpoint_epoch=1.pt")
    assert first["engine"] == {"epoch": 1, "iteration": 1, "max_epochs": 1}  # 2 volumes sharded over 2 ranks
    states = first["random_state_ranks"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    assert not any(k.startswith("module.") for k in first["objects"]["model"])
    assert "train_loss" in proc.stdout + proc.stderr
    assert "validation (2 crops, fixed masks; shared out over 2 processes)" in proc.stdout + proc.stderr
    resumed = succeeded(bundle_process(*common, "2", "--output_dir", str(out), "--resume", "true", cwd=tmp_path, threads=1,
                          launcher=standalone))  # fmt: skip
    assert "resumed from" in resumed.stdout + resumed.stderr

    logs = two_nodes([*common, "2", "--output_dir", str(straight)], cwd=tmp_path)

    a, b = read_checkpoint(out / "checkpoint_epoch=2.pt"), read_checkpoint(straight / "checkpoint_epoch=2.pt")
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
    stopped = bundle_process(*[with_stop if a == MULTI else a for a in common], "2", "--output_dir", str(stopped_dir),
                      cwd=tmp_path, threads=1, launcher=standalone)  # fmt: skip
    assert (stopped_dir / "checkpoint_epoch=1.pt").is_file(), (stopped.stdout + stopped.stderr)[-3000:]
    saved = read_checkpoint(stopped_dir / "checkpoint_epoch=1.pt")
    assert stopped.returncode != 0 and saved["engine"]["pending"] == "validation" and len(saved["random_state_ranks"]) == 2
    again = succeeded(bundle_process(*common, "2", "--output_dir", str(stopped_dir), "--resume", "true", cwd=tmp_path, threads=1,
                        launcher=standalone))  # fmt: skip
    log = again.stdout + again.stderr
    assert "validating epoch 1 before training on" in log and "epoch 1/2: train_loss" not in log
    c = read_checkpoint(stopped_dir / "checkpoint_epoch=2.pt")
    assert c["engine"] == b["engine"] and c["objects"]["history"] == b["objects"]["history"]
    assert all(torch.equal(c["objects"]["model"][k], wb[k]) for k in wb)
    assert all(torch.equal(c["random_state_ranks"][r]["torch"], b["random_state_ranks"][r]["torch"]) for r in (0, 1))


def test_inference_writes_ply_ellipsoids_nifti_and_png(runs, tmp_path):
    image = runs["dataset"].parent / json.loads(runs["dataset"].read_text(encoding="utf-8"))["training"][0]["image"]
    model_path = runs["resumed"] / "model.pt"
    succeeded(bundle_process("run", "inferring", "--config_file", str(CONFIGS / "inference.json"), "--model_path", str(model_path),
                "--image", str(image), "--inference_dir", str(tmp_path), "--device", "cpu", cwd=tmp_path))  # fmt: skip
    src = nib.load(str(image))
    out = nib.load(str(tmp_path / "case_0000_rendered.nii.gz"))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    g, meta = load_ply(tmp_path / "case_0000_gaussians.ply")
    assert g.num_gaussians > 8 and meta["frame"] == "world" and tuple(meta["shape"]) == src.shape  # several windows
    assert np.allclose(meta["affine"], src.affine) and meta["cutoff"] == 3.0  # the model's rendering cutoff
    # the NIfTI is the rendering of the written (world, mm) Gaussians on the input's grid, mapped back to HU with the
    # window recorded in model.pt, within that window
    inv = torch.from_numpy(np.linalg.inv(src.affine))
    spec = runs["first"]["model"]["preprocessing"]
    lo, hi = spec["hu_window"]
    rendered = np.clip(g.transformed(inv[:3, :3], inv[:3, 3]).render(src.shape)[0].numpy(), 0, 1) * (hi - lo) + lo
    assert np.allclose(out.get_fdata(), rendered, atol=0.05)
    png = Image.open(tmp_path / "case_0000_slices.png")
    assert png.mode == "RGB" and png.size[1] > 2 * 256  # two rows (input, rendering) of slices 256 pixels high
    from ellipsoid_helpers import read_vtk_polydata

    mesh = read_vtk_polydata(tmp_path / "case_0000_ellipsoids.vtk")  # the same Gaussians, as ellipsoids Slicer draws
    assert len(mesh["points"]) == 162 * g.num_gaussians and len(mesh["polygons"]) == 320 * g.num_gaussians
