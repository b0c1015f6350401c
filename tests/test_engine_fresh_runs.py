"""A new run in a used folder: the earlier run's checkpoints, pictures and event files are replaced at the first
save, and a Ctrl-C before it keeps the earlier run."""

from __future__ import annotations

from pathlib import Path

import pytest
from ignite.engine import Events

from medgmae.engine import latest_checkpoint
from medgmae.torch_files import load_torch_file

from engine_helpers import make_trainer


def test_a_new_run_in_a_used_folder_replaces_the_earlier_runs_checkpoints(tmp_path, caplog):
    """A fresh run (no resume) in a folder holding a finished 3-epoch run: its start names the earlier checkpoints,
    its first epoch checkpoint replaces them, and a resume then continues this run (epoch 1), not the earlier one
    (whose checkpoint_epoch=3.pt used to outrank this run's own and be the one kept)."""
    first, _ = make_trainer(tmp_path, 3, resume=False)
    first.run()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=3.pt", "checkpoint_final.pt"]
    again, _ = make_trainer(tmp_path, 1, resume=False, lr=0.01)
    with caplog.at_level("WARNING"):
        again.run()
    assert ("holds a finished earlier run's checkpoints (checkpoint_epoch=3.pt, checkpoint_final.pt): this new run "
            "removes them when it saves its first epoch (stop now and give another --output_dir to keep it, or add "
            "--resume true with a larger --max_epochs to train it further)") in caplog.text  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_final.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=1.pt"
    assert load_torch_file(tmp_path / "checkpoint_final.pt")["engine"]["epoch"] == 1
    (tmp_path / "checkpoint_final.pt").unlink()  # an unfinished run's folder: --resume true continues it
    caplog.clear()
    third, _ = make_trainer(tmp_path, 1, resume=False)
    with caplog.at_level("WARNING"):
        third.run()
    assert ("holds an earlier run's checkpoints (checkpoint_epoch=1.pt): this new run removes them when it saves its "
            "first epoch (stop now and add --resume true to continue that run instead)") in caplog.text


def test_a_new_run_in_a_used_folder_removes_the_earlier_runs_pictures_and_event_files_at_its_first_save(tmp_path, caplog):
    """The earlier run's pictures/epoch_*.png and TensorBoard event files are named at the start of a fresh run and
    removed when it saves its first epoch checkpoint, not before: a run that fails in its first epoch removes
    nothing. This process's own event file (its writer opens it before the engine starts) and a picture this run
    rewrote stay; so does a TensorBoard file of another kind."""
    import os
    import socket

    from ignite.engine import Events

    pics, tb = tmp_path / "pictures", tmp_path / "tensorboard"
    pics.mkdir()
    tb.mkdir()
    old = [pics / "epoch_0001.png", pics / "epoch_0003.png", tb / "events.out.tfevents.1700000000.elsewhere.4242.0"]
    own = tb / f"events.out.tfevents.1800000000.{socket.gethostname()}.{os.getpid()}.7"
    other = tb / "projector_config.pbtxt"
    for p in (*old, own, other):
        p.write_bytes(b"earlier")
    (tmp_path / "checkpoint_final.pt").write_bytes(b"x")

    def fail(engine):
        raise RuntimeError("stopped in the first epoch")

    failing, _ = make_trainer(tmp_path, 1, resume=False)
    failing.add_event_handler(Events.ITERATION_COMPLETED(once=1), fail)
    with pytest.raises(RuntimeError, match="stopped in the first epoch"):
        failing.run()
    assert all(p.is_file() for p in old)  # nothing removed without a first save

    seen = []
    trainer, _ = make_trainer(tmp_path, 2, resume=False)

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _during_first_epoch(engine):
        seen.append(all(p.is_file() for p in old))
        old[0].write_bytes(b"this run's picture of epoch 1")

    with caplog.at_level("WARNING"):
        trainer.run()
    assert seen == [True]
    assert ("holds a finished earlier run's checkpoints (checkpoint_final.pt, checkpoint_interrupted.pt), 2 pictures/epoch_*.png "
            "files, 1 tensorboard/events.out.tfevents.* file: this new run removes them when it saves its first epoch") in caplog.text  # fmt: skip
    assert old[0].read_bytes() == b"this run's picture of epoch 1"
    assert not old[1].exists() and not old[2].exists()
    assert own.is_file() and other.is_file()


def _bundle_earlier_outputs(bundle: str) -> tuple[str, ...]:
    """The ``earlier_outputs`` of the CheckpointHandler in a bundle's train.json."""
    import json

    config = json.loads((Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    handler = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))
    return tuple(handler["earlier_outputs"])


@pytest.mark.parametrize("bundle, outputs", [
    ("medgmae_pretrain", ["model.pt", "encoder.pt", "best_model.pt", "summary.json", "curves.png", "pictures/epoch_0003.png"]),
    ("gmae2d_pretrain", ["model.pt", "encoder.pt", "best_model.pt", "summary.json", "curves.png", "pictures/epoch_0003.png"]),
    ("unetr_finetune", ["best_model.pt", "model.ts", "segmentation.png", "dice_per_class.md", "validation/metrics.json",
                        "validation/per_case_dice.csv"]),
])  # fmt: skip
def test_a_fresh_run_stopped_after_its_first_save_leaves_nothing_of_the_earlier_run(tmp_path, caplog, bundle, outputs):
    """A fresh run in the folder of a finished run, stopped right after its first epoch checkpoint (before its own
    summary and models are written): none of the earlier run's outputs is left beside its checkpoint (they used to
    read as this run's: a summary of other epochs, another run's models); the removal names every file, checkpoints
    included. A file this run rewrote before (best_model.pt of its first validation) stays, and so do its inputs."""
    from ignite.engine import Events

    earlier = [tmp_path / "checkpoint_epoch=3.pt", tmp_path / "checkpoint_final.pt", tmp_path / "tensorboard" /
               "events.out.tfevents.1700000000.elsewhere.4242.0", *(tmp_path / name for name in outputs)]  # fmt: skip
    inputs = [tmp_path / "cache" / "precheck.json", tmp_path / "phantom" / "dataset.json", tmp_path / "training_cases.json"]
    for p in earlier + inputs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"earlier run")
    trainer, _ = make_trainer(tmp_path, 2, resume=False, earlier_outputs=_bundle_earlier_outputs(bundle))

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _validated(engine):  # this run's own first best model, written before its first checkpoint
        (tmp_path / "best_model.pt").write_bytes(b"this run")

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def _stop(engine):  # attached after the checkpoint handler: right after the first save
        raise KeyboardInterrupt

    with caplog.at_level("INFO", logger="medgmae.engine"), pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    assert stopped.value.resume_advice is None  # checkpoint_epoch=1.pt is this run's: "--resume true" continues it
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    expected = ["best_model.pt", "cache/precheck.json", "checkpoint_epoch=1.pt", "checkpoint_interrupted.pt",
                "phantom/dataset.json", "training_cases.json"]  # fmt: skip
    assert left == expected and (tmp_path / "best_model.pt").read_bytes() == b"this run"
    removed = sorted(str(p.relative_to(tmp_path)) for p in earlier if p.name != "best_model.pt")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("removed "))
    shown = ", ".join(removed[:8]) + (f" and {len(removed) - 8} more" if len(removed) > 8 else "")
    assert line == f"removed {len(removed)} files of the earlier run from {tmp_path}: {shown}", line
    assert "checkpoint_epoch=3.pt, checkpoint_final.pt" in line


def _advice_when_stopped(trainer, at) -> str | None:
    """Run ``trainer`` with Ctrl-C at the event ``at``: the stop's resume advice."""

    def _ctrl_c(engine):
        raise KeyboardInterrupt

    trainer.add_event_handler(at, _ctrl_c)
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    return stopped.value.resume_advice


def test_ctrl_c_before_a_fresh_runs_first_save_in_a_used_folder_keeps_the_earlier_run(tmp_path):
    """Ctrl-C in the first epoch of a fresh run in a finished run's folder: the advice says that nothing of the
    earlier run was removed and that --resume true would continue that run (not this one)."""
    make_trainer(tmp_path, 2, resume=False)[0].run()
    trainer, _ = make_trainer(tmp_path, 2, resume=False)
    assert _advice_when_stopped(trainer, Events.ITERATION_COMPLETED(once=1)) == (
        f"interrupted before the first epoch finished: it saved no checkpoint_epoch=N.pt and removed nothing of the "
        f"earlier run in {tmp_path}; run the same command again to start over (with --resume true it would continue "
        "the earlier run instead)")
    assert (tmp_path / "checkpoint_epoch=2.pt").is_file()


def test_a_stop_after_epochs_before_a_fresh_runs_first_checkpoint_says_so_and_names_what_it_wrote(tmp_path):
    """``save_interval`` 3, stopped in epoch 3 of a fresh run in a finished run's folder: the advice said "before
    this run finished an epoch", though it had finished two. It now names the first checkpoint's epoch and the
    outputs this run wrote before it (its own best_model.pt over the earlier run's, a picture), not the earlier run's."""
    outputs = ("pictures/epoch_*.png", "best_model.pt", "summary.json")
    make_trainer(tmp_path, 2, resume=False)[0].run()
    for name in ("pictures/epoch_0002.png", "best_model.pt", "summary.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"earlier run")
    trainer, _ = make_trainer(tmp_path, 6, resume=False, earlier_outputs=outputs, save_interval=3)

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def _validated(engine):
        (tmp_path / "best_model.pt").write_bytes(b"this run")
        (tmp_path / "pictures" / "epoch_0001.png").write_bytes(b"this run")

    # in epoch 3, before its end and checkpoint
    assert _advice_when_stopped(trainer, Events.ITERATION_COMPLETED(once=7)) == (
        f"interrupted before its first checkpoint, at the end of epoch 3: it saved no checkpoint_epoch=N.pt and "
        f"removed nothing of the earlier run in {tmp_path}; this run has written best_model.pt, "
        "pictures/epoch_0001.png there; run the same command again to start over (with --resume true it would "
        "continue the earlier run instead)")


def test_ctrl_c_in_a_later_stage_before_its_first_save_advises_resuming_past_the_finished_stages(tmp_path):
    """GViT's classifier phase stopped in its first epoch: no checkpoint in its own folder, but the warm-up is
    finished; "with or without --resume true" would have started over and replaced the warm-up's checkpoints."""
    trainer, _ = make_trainer(tmp_path / "classifier", 2, resume=False, later_stage=True)
    advice = _advice_when_stopped(trainer, Events.ITERATION_COMPLETED(once=1))
    assert advice.startswith(f"interrupted before this stage saved a checkpoint (none in {tmp_path / 'classifier'}): "
                             "run the same command with --resume true") and "with or without" not in advice
