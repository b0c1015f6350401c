"""Resuming with another number of training processes or loader workers: refused naming the process counts when
the epoch length changes, warned once (not exact) when it does not, and ranks beyond the saved ones draw random
numbers of their own."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import RandGaussianNoised

from medgmae.engine.random_state import RandomStateTracker
from medgmae.engine.resume import check_epoch_length, inexact_resume_notes, loader_record, saved_loader_record
from medgmae.torch_files import load_torch_file

PATH = Path("run/checkpoint_epoch=2.pt")


def _two_process_checkpoint(**loader) -> dict:
    """What a 2-process run writes after 2 epochs of 3 iterations (batch size 1), as far as the checks read it."""
    return {"engine": {"epoch": 2, "iteration": 6}, "loader": {"batch_size": 1, "epoch_length": 3, **loader},
            "random_state_ranks": [{}, {}]}  # fmt: skip


def test_another_epoch_length_from_another_process_count_names_the_process_counts():
    """6 cases in 1 process with batch size 1 make 6 iterations per epoch where 2 processes made 3: the message
    names the two process counts and how to resume, not a batch size that did not change."""
    current = loader_record(DataLoader(list(range(6)), batch_size=1))
    assert current["world_size"] == 1 and current["epoch_length"] == 6
    for ckpt in (_two_process_checkpoint(), _two_process_checkpoint(world_size=2)):  # older files: from the ranks
        with pytest.raises(ValueError, match=r"the number of training processes changed: saved 2, now 1 .*Resume with "
                                             r"the settings of the interrupted run \(torchrun --nproc_per_node 2\)") as e:
            check_epoch_length(PATH, ckpt["engine"], saved_loader_record(ckpt), current)
        assert "batch size changed" not in str(e.value) and "samples per case" not in str(e.value)
    one = {"engine": {"epoch": 2, "iteration": 6}, "loader": {"batch_size": 1, "epoch_length": 3}}  # no ranks saved
    with pytest.raises(ValueError, match=r"saved 1, now 2 .*\(one process, without torchrun\)"):
        check_epoch_length(PATH, one["engine"], saved_loader_record(one), {**current, "world_size": 2})


def test_another_process_count_with_the_same_epoch_length_warns_once_in_both_directions(caplog):
    saved = saved_loader_record(_two_process_checkpoint())
    fewer = {"batch_size": 2, "epoch_length": 3, "num_workers": None, "world_size": 1}
    with caplog.at_level(logging.WARNING):
        notes = inexact_resume_notes(PATH, saved, fewer)
    assert len(notes) == 1 and [r.getMessage() for r in caplog.records] == notes
    assert "saved by 2 training processes and this run has 1: the resume is not exact" in notes[0]
    assert "from 2 x 1 to 1 x 2 (processes x batch size)" in notes[0] and "rank" not in notes[0]
    one = saved_loader_record({"loader": {"batch_size": 2, "epoch_length": 3}})  # a single-process checkpoint
    more = inexact_resume_notes(PATH, one, {"batch_size": 1, "epoch_length": 3, "world_size": 3})
    assert len(more) == 1 and "saved by 1 training process and this run has 3" in more[0]
    assert "the processes of ranks 1-2 start from random states derived from rank 0's saved state" in more[0]
    assert inexact_resume_notes(PATH, saved, {**fewer, "world_size": 2}) == []


def test_another_num_workers_is_warned_and_older_checkpoints_are_not_compared():
    saved = saved_loader_record({"loader": {"batch_size": 1, "epoch_length": 3, "num_workers": 0}})
    notes = inexact_resume_notes(PATH, saved, {"batch_size": 1, "epoch_length": 3, "num_workers": 4, "world_size": 1})
    assert len(notes) == 1 and "saved with num_workers=0 and this run has num_workers=4" in notes[0]
    assert "--num_workers 0" in notes[0]
    older = saved_loader_record({"loader": {"batch_size": 1, "epoch_length": 3}})
    assert older["num_workers"] is None
    assert inexact_resume_notes(PATH, older, {"batch_size": 1, "epoch_length": 3, "num_workers": 4, "world_size": 1}) == []
    assert loader_record(DataLoader(list(range(4)), batch_size=2, num_workers=2))["num_workers"] == 2


def test_a_seeded_loader_resumes_any_num_workers_and_notes_a_checkpoint_of_worker_drawn_crops():
    """Items drawn from the epoch's seed do not depend on the workers: another ``num_workers`` is no note; a
    checkpoint of a loader whose workers drew the crops (an earlier release) is, whatever the workers."""
    from medgmae.engine.seeded_loader import SeededDataLoader

    seeded = loader_record(SeededDataLoader(list(range(4)), batch_size=2, num_workers=2))
    assert seeded["item_seeded"] is True and loader_record(DataLoader(list(range(4))))["item_seeded"] is False
    saved = saved_loader_record({"loader": {**seeded, "num_workers": 0}})
    assert inexact_resume_notes(PATH, saved, seeded) == []
    for earlier in ({"batch_size": 2, "epoch_length": 2, "num_workers": 2}, {**seeded, "item_seeded": False}):
        notes = inexact_resume_notes(PATH, saved_loader_record({"loader": earlier}), seeded)
        assert len(notes) == 1 and "whose workers drew random crops" in notes[0] and "other random draws" in notes[0]
    back = inexact_resume_notes(PATH, saved, {**seeded, "item_seeded": False})  # a config back to a plain loader
    assert len(back) == 1 and "that drew each item's random crops" in back[0] and "does not draw" in back[0]


def _draws(tracker: RandomStateTracker) -> list:
    """One number from each generator a training process draws from."""
    return [random.random(), float(np.random.rand()), float(torch.rand(1)), float(tracker.transforms[0].R.rand())]


def test_ranks_beyond_the_saved_ones_draw_distinct_reproducible_numbers():
    """Rank 0 (and any saved rank) continues exactly; a rank the checkpoint lacks neither repeats rank 0's draws
    nor changes from one resume to the next."""
    tracker = RandomStateTracker(RandGaussianNoised(keys="image", prob=1.0))
    random.seed(1), np.random.seed(1), torch.manual_seed(1), tracker.transforms[0].set_random_state(1)
    saved = [tracker.state_dict()]
    expected = _draws(tracker)  # what an uninterrupted rank 0 draws next
    assert tracker.load_rank_state(saved, 0) is False and _draws(tracker) == expected
    assert tracker.load_rank_state(saved, 1) is True
    rank1 = _draws(tracker)
    tracker.load_rank_state(saved, 2)
    rank2 = _draws(tracker)
    tracker.load_rank_state(saved, 1)
    assert _draws(tracker) == rank1  # the same on every resume
    assert all(a != b for a, b in zip(rank1, expected)) and all(a != b for a, b in zip(rank1, rank2))
    with pytest.raises(ValueError, match="at least one saved random state"):
        tracker.load_rank_state([], 0)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_changed_pipeline_is_warned_by_rank_0_alone(monkeypatch, caplog, rank):
    """Every rank builds the same pipeline: a checkpoint whose random-transform states do not fit it is warned
    once, by rank 0, not once per process."""
    monkeypatch.setenv("RANK", rank)
    saved = RandomStateTracker(RandGaussianNoised(keys="image", prob=1.0)).state_dict()
    with caplog.at_level(logging.WARNING):
        RandomStateTracker(None).load_state_dict(saved)
    warned = [r for r in caplog.records if "random-transform states" in r.getMessage()]
    assert len(warned) == (1 if rank == "0" else 0)


def _trainer(out: Path, max_epochs: int, resume: bool, fail_at: int | None = None):
    """A tiny MONAI trainer with a CheckpointHandler (3 iterations per epoch); ``fail_at``: Ctrl-C at that iteration."""
    from monai.engines import SupervisedTrainer

    from medgmae.engine import CheckpointHandler

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def loss(pred, target):
        if fail_at is not None and trainer.state.iteration == fail_at:
            raise KeyboardInterrupt
        return ((pred - target) ** 2).mean()

    data = DataLoader([{"image": torch.full((2,), float(i)), "label": torch.zeros(1)} for i in range(3)], batch_size=1)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=data, network=net,
                                optimizer=opt, loss_function=loss,
                                train_handlers=[CheckpointHandler(out, {"network": net, "optimizer": opt}, resume=resume)])  # fmt: skip
    return trainer


def test_a_resume_in_fewer_processes_is_warned_once_at_the_engine_start(tmp_path, caplog):
    """A checkpoint of 2 processes (its random states per rank), resumed in 1 process with the same epoch length,
    continues from rank 0's states and says once that it is not exact."""
    _trainer(tmp_path, 1, resume=False).run()
    path = tmp_path / "checkpoint_epoch=1.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["random_state_ranks"] = [ckpt["random_state"], ckpt["random_state"]]
    del ckpt["loader"]["world_size"]  # as written before the process count was recorded
    torch.save(ckpt, path)
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path, 2, resume=True).run()
    notes = [r.getMessage() for r in caplog.records if "training process" in r.getMessage()]
    assert len(notes) == 1 and "saved by 2 training processes and this run has 1: the resume is not exact" in notes[0]


def test_a_resumed_run_removes_the_interrupted_checkpoint_once_it_saved_a_later_one(tmp_path, caplog):
    """Ctrl-C in the first epoch leaves only checkpoint_interrupted.pt, and its last line says that there is no epoch
    checkpoint to continue from (not "continue from the newest checkpoint_epoch=N.pt"); the resume says, neutrally,
    that training starts from its first epoch and why that file is not used; Ctrl-C later leaves it beside the
    epoch checkpoints (the usual advice to resume), and the resumed run removes it at its first epoch checkpoint."""
    with pytest.raises(KeyboardInterrupt) as stopped:
        _trainer(tmp_path, 3, resume=False, fail_at=2).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_interrupted.pt"]
    assert stopped.value.resume_advice == (
        f"interrupted before the first epoch finished: there is no checkpoint_epoch=N.pt in {tmp_path} to continue "
        "from, so the same command (with or without --resume true) trains there from the first epoch again")
    with caplog.at_level(logging.INFO, logger="medgmae.engine"), pytest.raises(KeyboardInterrupt) as stopped:
        _trainer(tmp_path, 3, resume=True, fail_at=5).run()
    assert stopped.value.resume_advice is None  # checkpoint_epoch=1.pt: "--resume true continues from the newest"
    started = next(r for r in caplog.records if "no checkpoint_epoch=N.pt in" in r.getMessage())
    assert started.levelname == "INFO" and f"no checkpoint_epoch=N.pt in {tmp_path} yet: training starts from its first epoch" in started.getMessage()
    assert "checkpoint_interrupted.pt holds the interrupted run's state within an epoch, which a resume does not continue" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_interrupted.pt"]
    assert torch.load(tmp_path / "checkpoint_interrupted.pt", weights_only=True)["engine"]["iteration"] == 5
    _trainer(tmp_path, 3, resume=True).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=3.pt", "checkpoint_final.pt"]


def test_ctrl_c_while_the_first_epoch_checkpoint_is_written_keeps_the_epoch(tmp_path, monkeypatch):
    """Ctrl-C during the write of checkpoint_epoch=1.pt (after the epoch and its validation): the epoch's training is
    saved in its place, marked for validation, and the advice says so. Ctrl-C after the epoch's last step but before
    the checkpoint handler kept its state (an epoch-end handler before it) leaves no epoch checkpoint: the advice says
    the epoch finished but its checkpoint was not written (not "before the first epoch finished")."""
    import medgmae.engine.checkpoint_handler as handlers

    real, cut = handlers.save_torch_atomic, []

    def stopped_in_epoch_write(payload, path):
        if Path(path).name.startswith("checkpoint_epoch=") and not cut:
            cut.append(path)
            raise KeyboardInterrupt
        return real(payload, path)

    monkeypatch.setattr(handlers, "save_torch_atomic", stopped_in_epoch_write)
    with pytest.raises(KeyboardInterrupt) as stopped:
        _trainer(tmp_path, 3, resume=False).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    assert load_torch_file(tmp_path / "checkpoint_epoch=1.pt")["engine"]["pending"] == "validation"
    assert stopped.value.resume_advice == (
        "interrupted while writing epoch 1's checkpoint: its training is saved in checkpoint_epoch=1.pt; run the same "
        "command with --resume true to validate it and train on")
    (tmp_path / "checkpoint_epoch=1.pt").unlink()
    monkeypatch.undo()

    def stopped_before_kept(self, payload, objects):
        raise KeyboardInterrupt

    monkeypatch.setattr(handlers.EpochValidation, "keep", stopped_before_kept)
    with pytest.raises(KeyboardInterrupt) as stopped:
        _trainer(tmp_path, 3, resume=False).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_interrupted.pt"]
    assert stopped.value.resume_advice.startswith(
        f"interrupted after epoch 1 finished, before its checkpoint was written: there is no checkpoint_epoch=N.pt in {tmp_path}")
    # Ctrl-C in the step of epoch 1's last iteration (ignite has counted it): the epoch had not finished
    monkeypatch.undo()
    (tmp_path / "checkpoint_interrupted.pt").unlink()
    with pytest.raises(KeyboardInterrupt) as stopped:
        _trainer(tmp_path, 3, resume=False, fail_at=3).run()
    assert stopped.value.resume_advice.startswith("interrupted before the first epoch finished")


def test_a_run_removes_what_killed_writes_left_in_its_folder(tmp_path, caplog):
    """SIGKILL during an atomic write leaves its temporary file (a base checkpoint is over a gigabyte) or a staging
    folder; the next run in the folder removes them at its start and says so; other hidden files stay."""
    from medgmae.files import atomic_write, staged_outputs
    from medgmae.temp_names import host_tag

    tmp_path.mkdir(exist_ok=True)
    left = [tmp_path / ".tmp-0123456789ab-checkpoint_epoch=2.pt", tmp_path / ".tmp-ba9876543210-model.pt",
            tmp_path / ".tmp-gpu-node-7.4711-ba9876543210-encoder.pt"]  # an earlier version's names, and this one's
    for p in left:
        p.write_bytes(b"partial")
    (tmp_path / ".best-x1y2_abc").mkdir()
    (tmp_path / ".best-x1y2_abc" / ".tmp-0123456789ab-encoder.pt").write_bytes(b"partial")
    (tmp_path / ".eval.staging-abc12345").mkdir()
    # a user's own hidden files and folders of similar names stay (an output folder may be a project folder)
    mine = [".keep", ".tmp-notours", ".best-notes.md", ".env.staging-old", ".tmp-0123456789ab-notes"]
    for name in mine:
        (tmp_path / name).write_text("mine")
    for name in (".best-runs", ".data.staging-x", ".tmp-0123456789ab-model.pt.d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_text("mine")
        mine.append(name)
    with atomic_write(tmp_path / "x.json") as t:  # the real writers' names match the pattern removed
        assert t.name.startswith(f".tmp-{host_tag()}.{os.getpid()}-") and len(t.name.split("-")[-2]) == 12
        t.write_text("{}")
    with staged_outputs(tmp_path / "eval") as stage:
        assert stage.name.startswith(".eval.staging-")
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        _trainer(tmp_path, 1, resume=False).run()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(mine)
    warned = next(r for r in caplog.records if "killed writes" in r.getMessage())
    assert warned.levelname == "WARNING" and "removed what 5 killed writes left in" in warned.getMessage()
    assert ".tmp-0123456789ab-checkpoint_epoch=2.pt" in warned.getMessage()


def test_an_error_within_an_epoch_saves_the_interrupted_state_once(tmp_path, monkeypatch):
    """ignite fires EXCEPTION_RAISED twice for an error raised within an epoch (once for the epoch, once for the
    run): the interrupted checkpoint is written once, not twice (a base checkpoint is over a gigabyte)."""
    import medgmae.engine.checkpoint_handler as handlers

    writes, real = [], handlers.save_torch_atomic
    monkeypatch.setattr(handlers, "save_torch_atomic", lambda payload, path: writes.append(Path(path).name) or real(payload, path))
    def peer_lost(engine):
        raise RuntimeError("gloo: Connection reset by peer")

    trainer = _trainer(tmp_path, 2, resume=False)
    trainer.add_event_handler(handlers.Events.ITERATION_COMPLETED(once=4), peer_lost)  # in epoch 2
    with pytest.raises(RuntimeError, match="Connection reset"):
        trainer.run()
    assert writes.count("checkpoint_interrupted.pt") == 1 and "checkpoint_epoch=1.pt" in writes


def test_an_interrupted_checkpoint_that_cannot_be_written_is_named_once(tmp_path, monkeypatch, caplog):
    """A read-only file system under a failing run: ``torch.save``'s own words (``open file failed with strerror:
    Read-only file system``) named no file; now the line names the checkpoint file and the reason, the path once."""
    import medgmae.engine.checkpoint_handler as handlers
    from medgmae.files import atomic_write

    real = handlers.save_torch_atomic

    def read_only(payload, path):
        if Path(path).name != "checkpoint_interrupted.pt":
            return real(payload, path)
        with atomic_write(path):
            raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only "
                               "file system")

    monkeypatch.setattr(handlers, "save_torch_atomic", read_only)
    trainer = _trainer(tmp_path, 2, resume=False, fail_at=5)
    with caplog.at_level(logging.ERROR, logger="medgmae.engine"), pytest.raises(KeyboardInterrupt):
        trainer.run()
    said = next(r.getMessage() for r in caplog.records if "interrupted checkpoint" in r.getMessage())
    assert said == (f"could not save the interrupted checkpoint: {tmp_path / 'checkpoint_interrupted.pt'} could not be "
                    "written (Read-only file system): is its folder read-only, or another user's? Nothing of it was kept")


def test_a_resume_in_a_folder_without_any_run_is_warned(tmp_path, caplog):
    """--resume true where no run has written (a mistyped --output_dir?) starts afresh with a warning, not quietly."""
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        _trainer(tmp_path / "new", 1, resume=True).run()
    started = next(r for r in caplog.records if "no checkpoint_epoch=N.pt in" in r.getMessage())
    assert started.levelname == "WARNING" and "(is this the folder of the run to resume?)" in started.getMessage()
