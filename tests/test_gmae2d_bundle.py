"""Tests of the gmae2d_pretrain bundle: a short training run, exact resume, image-folder data, bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, verify_metadata
from monai.utils import set_determinism
from PIL import Image
from gmae2d_helpers import TINY_GMAE, train_gmae2d_bundle

from medgmae.twod.cli import main as cli_main
from medgmae.twod.gmae import GMAE2D

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "gmae2d_pretrain"
TRAIN = str(BUNDLE / "configs" / "train.json")


def test_metadata_passes_the_schema():
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(BUNDLE.parent / "schema" / "meta_schema.json"))
    for name in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (BUNDLE / name).is_file(), name


#: third-party notices the bundle filters or avoids (none may reach the console)
FILTERED = ("nvImageCodec", "torch.meshgrid", "Orientationd.__init__:labels")


def _check_validation_and_pictures(run_dir: Path, console: str, caught: list) -> None:
    """Validation metrics in TensorBoard, best_model.pt, pictures of the fixed images, no filtered notices."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    messages = console + "\n".join(str(w.message) for w in caught)
    assert not any(text in messages for text in FILTERED), [t for t in FILTERED if t in messages]
    best = torch.load(run_dir / "best_model.pt", weights_only=True)
    assert best["kind"] == "gmae2d" and GMAE2D.from_checkpoint(run_dir / "best_model.pt").num_gaussians == 32
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    psnr = [e.value for e in acc.Scalars("val/psnr")] + [e.value for e in acc.Scalars("val/ssim")]
    assert len(psnr) == 4 and np.isfinite(psnr).all() and "val/reconstruction" in acc.Tags()["images"]
    assert [e.step for e in acc.Scalars("train/lr")] == list(range(1, len(acc.Scalars("train_loss")) + 1))
    # 4 validation images x (input, masked, rendering, 4 layers), 32-pixel images enlarged 3x under 14-pixel labels
    pic = np.asarray(Image.open(run_dir / "pictures" / "epoch_0002.png").convert("RGB"))
    assert pic.shape == (14 + 4 * (96 + 14 + 2) + 2, 7 * (96 + 2) + 2, 3) and pic.astype(float).var() > 100.0
    curves = np.asarray(Image.open(run_dir / "curves.png").convert("RGB"))
    assert curves.astype(float).var() > 100.0
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["best_epoch"] in (1, 2) and "medgmae-2d layers" in summary["next"]["zero-shot layers"]


def test_validation_images_are_held_out():
    from medgmae.twod.data2d import gmae2d_dataset
    from medgmae.twod.gmae_validation import gmae2d_validation_dataset

    train = gmae2d_dataset("", (32, 32), 1, num_phantom_cases=1, slices_per_case=4, seed=0, flip=False, cache=False)
    val = gmae2d_validation_dataset("", (32, 32), 1, num_phantoms=1, num_images=4, seed=0)
    assert len(val) == 4
    assert not any(torch.equal(torch.as_tensor(v["image"]), torch.as_tensor(t["image"])) for v in val for t in train)


def test_training_resumes_exactly_and_feeds_the_cli(tmp_path, capfd, caplog):
    import warnings

    straight, split = tmp_path / "straight", tmp_path / "split"
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        train_gmae2d_bundle(straight, max_epochs=2, checkpoint_interval=2)  # the weights do not depend on it
    out, err = capfd.readouterr()
    _check_validation_and_pictures(straight, out + err, caught)
    # --checkpoint_interval 2: neither a checkpoint nor model.pt / encoder.pt at epoch 1 (both were written each epoch)
    assert "checkpoint_epoch=2.pt" in caplog.text and "checkpoint_epoch=1.pt" not in caplog.text
    assert "epoch 2: wrote" in caplog.text and not any(f"epoch 1: wrote {straight}" in r.getMessage() for r in caplog.records)
    caplog.clear()
    _stop_after_the_first_epoch_and_resume(split)
    a, ha = _check_the_resumed_run_is_the_uninterrupted_one(straight, split)
    _check_the_exported_model_drives_the_cli(split / "model.pt", tmp_path)
    _check_a_stop_while_validating_resumes_to_the_same_run(tmp_path / "cut", a, ha, caplog)


def _parsed_training(output_dir: Path) -> ConfigParser:
    """The bundle's 2-epoch training config at TINY_GMAE settings, with the random state a run starts from."""
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({**TINY_GMAE, "output_dir": str(output_dir), "max_epochs": 2})
    set_determinism(seed=0)
    return parser


def _stop_after_the_first_epoch_and_resume(split: Path) -> None:
    """The run stopped by an error at the end of its first epoch, then resumed: TensorBoard shows each step once."""
    trainer = _parsed_training(split).get_parsed_content("train#trainer")

    def stop(engine):
        raise RuntimeError("power cut")

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), stop)
    with pytest.raises(RuntimeError, match="power cut"):
        trainer.run()
    assert (split / "checkpoint_epoch=1.pt").is_file() and (split / "checkpoint_interrupted.pt").is_file()
    # what a run stopped within epoch 2 would have logged past the checkpoint: the resumed run logs those steps again
    from torch.utils.tensorboard import SummaryWriter

    saved = torch.load(split / "checkpoint_epoch=1.pt", weights_only=True)["engine"]["iteration"]
    stale = SummaryWriter(str(split / "tensorboard"))
    stale.add_scalar("train_loss", 99.0, saved + 1)
    stale.close()
    # then resumed, with another checkpoint interval (allowed: it changes no weight); the last epoch has its checkpoint
    train_gmae2d_bundle(split, max_epochs=2, resume=True, checkpoint_interval=3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(split / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("train_loss", "train/lr", "val/psnr"):  # each step once: the resumed run's (it showed them twice)
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)) and 99.0 not in [e.value for e in acc.Scalars(tag)], (tag, steps)


def _check_the_resumed_run_is_the_uninterrupted_one(straight: Path, split: Path) -> tuple[dict, dict]:
    """The resumed run's model, history and exports are the uninterrupted run's: returns that run's model.pt and
    metric history."""
    assert (split / "checkpoint_epoch=2.pt").is_file() and not (split / "checkpoint_epoch=1.pt").exists()
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert a["kind"] == b["kind"] == "gmae2d" and a["config"] == b["config"]
    assert a["config"]["num_gaussians"] == 32 and a["config"]["img_size"] == [32, 32]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bit for bit, as if never interrupted
    ha = torch.load(straight / "checkpoint_epoch=2.pt", weights_only=False)["objects"]["history"]
    assert ha == torch.load(split / "checkpoint_epoch=2.pt", weights_only=False)["objects"]["history"]
    assert ha["series"]["val_psnr"]["epoch"] == [1, 2]  # the resumed run kept epoch 1's validation
    init = GMAE2D(img_size=32, patch_size=8, model_size="tiny", in_channels=1, num_gaussians=32).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in a["state_dict"].items() if k.startswith("head_"))
    assert torch.load(split / "encoder.pt", weights_only=True)["kind"] == "medgmae-encoder"
    # the training checkpoint loads too
    assert GMAE2D.from_checkpoint(split / "checkpoint_epoch=2.pt").config() == a["config"]
    return a, ha


def _check_the_exported_model_drives_the_cli(model_pt: Path, tmp_path: Path) -> None:
    img = (np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "slice.png")
    out = tmp_path / "seg"
    assert cli_main(["segment", "--checkpoint", str(model_pt), "--image", str(tmp_path / "slice.png"),
                     "--out", str(out), "--num-layers", "4"]) == 0  # fmt: skip
    assert json.loads((out / "segment.json").read_text(encoding="utf-8"))["num_layers"] == 4


def _check_a_stop_while_validating_resumes_to_the_same_run(cut: Path, a: dict, ha: dict, caplog) -> None:
    """Stopped (Ctrl-C) while epoch 1 was validated: epoch 1's training is kept, and the resume validates it, trains
    epoch 2 alone and ends as the uninterrupted run (its model.pt ``a`` and history ``ha``)."""
    parser = _parsed_training(cut)
    trainer, validator = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("val#handler")

    def ctrl_c():
        raise KeyboardInterrupt

    validator.evaluate = ctrl_c
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert torch.load(cut / "checkpoint_epoch=1.pt", weights_only=True)["engine"]["pending"] == "validation"
    with caplog.at_level("INFO"):
        train_gmae2d_bundle(cut, max_epochs=2, resume=True)
    assert "validating epoch 1 before training on" in caplog.text and "epoch 1/2: train_loss" not in caplog.text
    assert "epoch 2/2: train_loss" in caplog.text
    c = torch.load(cut / "model.pt", weights_only=True)
    assert all(torch.equal(value, c["state_dict"][key]) for key, value in a["state_dict"].items())
    assert ha == torch.load(cut / "checkpoint_epoch=2.pt", weights_only=False)["objects"]["history"]


def test_resume_with_another_batch_size_writes_nothing(tmp_path, folder_state):
    """A resume with batch size 2 of a run trained at batch size 4 (6 images: 2 iterations per epoch, then 3) is
    refused before its TensorBoard writers create event files: the folder is byte for byte as it was, and the
    error names both batch sizes and both epoch lengths. (In subprocesses: each run's writers are closed on exit.)"""
    import subprocess
    import sys

    out = tmp_path / "run"

    def train(**overrides) -> subprocess.CompletedProcess:
        args = [x for k, v in {**TINY_GMAE, **overrides}.items() for x in (f"--{k}", str(v))]
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--output_dir", str(out), *args]
        return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", cwd=BUNDLE.parents[1], timeout=300)

    first = train(max_epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(list((out / "tensorboard").iterdir())) == 1  # one writer, with a resume's purge step
    before = folder_state(out)
    refused = train(max_epochs=2, resume=True, batch_size=2)
    assert refused.returncode != 0
    assert ("after 2 iterations (2 per epoch, batch size 4), but this run has 3 iterations per epoch (batch size 2): "
            "the batch size changed from 4 to 2") in refused.stderr, refused.stderr[-3000:]
    assert folder_state(out) == before
    refused = train(max_epochs=2, resume=True, flip=True)  # a data setting no shape or count reveals
    assert refused.returncode != 0 and "flip: saved False, now True" in refused.stderr, refused.stderr[-3000:]
    assert folder_state(out) == before
    refused = train(max_epochs=2, resume=True, batch_size=2, flip=True)  # another epoch length and a setting: both named
    assert refused.returncode != 0 and "the batch size changed from 4 to 2" in refused.stderr, refused.stderr[-3000:]
    assert "flip: saved False, now True" in refused.stderr, refused.stderr[-3000:]
    assert folder_state(out) == before
    refused = train(max_epochs=2, resume=True, weight_decay=0.1, val_images=3)  # the optimiser would keep 0.05
    assert refused.returncode != 0, refused.stderr[-3000:]
    assert "optimiser.weight_decay: saved 0.05, now 0.1; validation.val_images: saved 4, now 3" in refused.stderr, refused.stderr[-3000:]
    assert folder_state(out) == before


def test_a_run_from_before_flip_was_a_setting_resumes_only_with_flips(tmp_path, folder_state, caplog):
    """gmae2d_pretrain 0.1.0 (before the flip setting) always trained with random flips and its checkpoints held no
    settings or data record. Its resume with today's default (no flips) went on with a generic warning, silently
    without the flips; it is refused naming --flip true, and resumes with it."""
    out = tmp_path / "run"
    train_gmae2d_bundle(out, max_epochs=1, flip=True)
    for path in out.glob("checkpoint_*.pt"):  # the checkpoints as that release wrote them
        saved = torch.load(path, weights_only=True)
        saved["objects"] = {k: v for k, v in saved["objects"].items() if k not in ("settings", "data")}
        torch.save(saved, path)
    before = folder_state(out)
    with pytest.raises(Exception) as info:
        train_gmae2d_bundle(out, max_epochs=2, resume=True)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("(flip: saved True, now False). Resume with the saved settings (here --flip true)" in t for t in chain), chain
    assert folder_state(out) == before
    with caplog.at_level("INFO", logger="medgmae.engine"):
        train_gmae2d_bundle(out, max_epochs=2, resume=True, flip=True)
    assert "resumed from" in caplog.text and "random-transform states" not in caplog.text
    assert torch.load(out / "model.pt", weights_only=True)["extra"]["data"]["flip"] is True


def test_training_on_an_rgb_image_folder(tmp_path):
    data = tmp_path / "images" / "nested"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (32, 32), (50, 64), (20, 24)]):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(data / f"im{i}.{'png' if i % 2 else 'jpg'}")
    train_gmae2d_bundle(tmp_path / "run", dataset_dir=str(tmp_path / "images"), in_channels=3, max_epochs=1)
    model = GMAE2D.from_checkpoint(tmp_path / "run" / "model.pt")
    assert model.in_channels == 3 and model.head_color.out_features == 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"dataset_dir": "/nonexistent/folder/x"}, "/nonexistent/folder/x"),
        ({"dataset_dir": "EMPTY"}, "holds no images"),
        ({"dataset_dir": "CORRUPT"}, "broken.png"),
        ({"model_size": "gigantic"}, "--model_size: expected one of"),
        ({"device": "tpu"}, "unknown device"),
        ({"image_size": 8}, "--image_size: expected at least 11"),
        ({"image_size": 36}, "--image_size: expected a multiple of --patch_size 8, got '36'"),
    ],
)
def test_bad_configuration_fails_clearly(tmp_path, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "broken.png").write_bytes(b"\x89PNG not really")
    folders = {"EMPTY": str(tmp_path / "empty"), "CORRUPT": str(tmp_path / "corrupt")}
    overrides = {k: folders.get(v, v) for k, v in overrides.items()}
    with pytest.raises(Exception) as info:
        train_gmae2d_bundle(tmp_path / "run", max_epochs=1, **overrides)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any(message in text for text in chain), chain
    assert not (tmp_path / "run" / "model.pt").exists()


def _resolved(tmp_path, **overrides):
    """Parse the training config with overrides, on a torch.device("cuda") that is never used (nothing is moved
    to it), so that the trainer's bf16 switch shows what ``amp`` resolved to (it is always off on CPU)."""
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({**TINY_GMAE, "output_dir": str(tmp_path), "slices_per_case": 1, "image_size": 16,
                   "device_obj": "$torch.device('cuda')", "network": "@network_def", **overrides})  # fmt: skip
    return parser


def _checkpointer(parser):
    from medgmae.engine import CheckpointHandler

    return next(h for h in parser.get_parsed_content("train#handlers") if isinstance(h, CheckpointHandler))


@pytest.mark.parametrize("value", ["false", "False", "0", False])
def test_string_flags_turn_amp_and_resume_off(tmp_path, value):
    on = _resolved(tmp_path / "on", amp=True, resume=True)
    assert on.get_parsed_content("train#trainer").bf16 is True
    assert _checkpointer(on).resume is True
    off = _resolved(tmp_path / "off", amp=value, resume=value)
    assert off.get_parsed_content("train#trainer").bf16 is False
    assert _checkpointer(off).resume is False
    cpu = _resolved(tmp_path / "cpu", amp=True, device_obj="$torch.device('cpu')")
    assert cpu.get_parsed_content("train#trainer").bf16 is False  # amp is bf16 autocast on CUDA only


def test_console_defaults_match_the_3d_bundles():
    """The progress bar is on by default, as in medgmae_pretrain and unetr_finetune, and the trainer's StatsHandler
    prints no per-iteration or per-epoch line through it (EpochProgress logs one line per epoch, as there)."""
    configs = {name: json.loads((BUNDLE.parent / name / "configs" / "train.json").read_text(encoding="utf-8"))
               for name in ("gmae2d_pretrain", "medgmae_pretrain", "unetr_finetune")}  # fmt: skip
    assert {name: c["progress_bar"] for name, c in configs.items()} == dict.fromkeys(configs, True)
    for name, c in configs.items():  # the trainer's StatsHandler logs neither iterations nor epochs: EpochProgress does
        stats = [h for h in c["train"]["handlers"] if isinstance(h, dict) and h["_target_"] == "StatsHandler"]
        assert stats and all(h.get("iteration_log") is False and h.get("epoch_log") is False for h in stats), name


def _group_members(group: int) -> list[int]:
    """The live processes of a process group (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, pgrp, ...
        if entry.name.isdigit() and fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc")
def test_sigterm_to_the_process_group_stops_like_sigterm_to_the_run(tmp_path):
    """``kill -TERM -<group>`` (a batch system's time limit) reaches the data loader workers too: they died by the
    signal and the main process, stopping on its own SIGTERM, raised "DataLoader worker (pid N) is killed by
    signal: Terminated" (a traceback, ignite's ERROR line) as if the run had crashed. Now the run ends as on a
    SIGTERM to it alone: its checkpoint, the one "terminated (SIGTERM)" line, status 143 (-15), and no process of
    the group left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = {**TINY_GMAE, "batch_size": 2, "num_phantoms": 2, "slices_per_case": 20, "num_workers": 2, "max_epochs": 50,
                "progress_bar": False}  # fmt: skip
    args = [x for k, v in settings.items() for x in (f"--{k}", str(v))]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--output_dir",
           str(tmp_path / "run"), *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                            cwd=BUNDLE.parents[1], start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_group_members(proc.pid)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the main process and its 2 workers
        assert len(_group_members(proc.pid)) >= 3, "the data loader workers never started"
        time.sleep(1.0)  # into the epoch: the workers loading, the main process training
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGTERM, out[-3000:]
    assert "DataLoader worker" not in out and "Traceback" not in out and " - ERROR - " not in out, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("terminated (SIGTERM)"), out[-3000:]
    assert (tmp_path / "run" / "checkpoint_interrupted.pt").is_file()
    deadline = time.monotonic() + 15
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_members(proc.pid) == []
