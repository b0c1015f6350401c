"""Shared training infrastructure: atomic writes, the device, non-finite losses and divergence, gradient
clipping, the learning-rate plan a resumed scheduler keeps, TensorBoard's purge step."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events

from medgmae.engine import NonFiniteLossHandler, resolve_device
from medgmae.files import atomic_write, save_json_atomic
from medgmae.torch_files import load_torch_file

from engine_helpers import make_trainer


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    save_json_atomic({"a": 1}, target)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8").strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left behind


def test_atomic_write_keeps_extension(tmp_path):
    with atomic_write(tmp_path / "vol.nii.gz") as tmp:
        assert tmp.name.endswith("vol.nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "vol.nii.gz").read_bytes() == b"x"


def test_load_torch_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_torch_file(bad)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    for empty in ("", "  "):  # an unset variable in --device "$DEV": refused, not a silent auto
        with pytest.raises(ValueError, match="device is empty"):
            resolve_device(empty)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("weights", ["spoilt", "finite"])
def test_non_finite_loss_stops_and_saves_interrupted_only_finite_weights(tmp_path, caplog, weights):
    """A non-finite loss stops the run. Its step has already applied the non-finite gradients in the usual case
    (a learning rate of 1e30): the weights are NaN, and were saved as checkpoint_interrupted.pt, a file of no use
    (a resume takes the last epoch checkpoint); now they are not, and the log says why. A loss made non-finite
    after a step that left the weights finite (here: a term without gradient) still saves the state."""
    import logging

    trainer, net = make_trainer(tmp_path, 2, resume=False, lr=1e30 if weights == "spoilt" else 0.05)
    if weights == "finite":  # a NaN term without gradient at iteration 2: the step's gradients stay finite
        nan_term = lambda: float("nan") if trainer.state.iteration == 2 else 0.0
        trainer.loss_function = lambda p, t: ((p - t.flatten(1)) ** 2).mean() + nan_term()
    with caplog.at_level(logging.WARNING), pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.run()
    finite = all(bool(torch.isfinite(w).all()) for w in net.parameters())
    assert finite == (weights == "finite")
    assert (tmp_path / "checkpoint_interrupted.pt").is_file() == finite
    said = "became NaN or infinite (1.weight first) at the failing step: its state is not saved as checkpoint_interrupted.pt"
    assert (said in caplog.text) == (not finite), caplog.text


def test_the_non_finite_loss_error_names_the_settings_that_can_cause_it():
    """The message blamed the data or the learning rate alone; a bundle lists its settings that can make the loss
    diverge (the 2D ones: the scale cap, the classifier's octaves), named with their values."""
    from ignite.engine import Engine

    def nan_step(engine, _):
        engine.state.output = {"loss": torch.tensor(float("nan"))}
        return engine.state.output

    named = Engine(nan_step)
    NonFiniteLossHandler("loss", settings={"learning_rate": 0.0005, "scale_cap": 1.0, "amp": True}).attach(named)
    with pytest.raises(FloatingPointError) as err:
        named.run([0])
    assert ("lower the learning rate or disable amp (the settings that can cause it: --learning_rate 0.0005, "
            "--scale_cap 1.0, --amp True), then resume") in str(err.value)
    plain = Engine(nan_step)
    NonFiniteLossHandler("loss").attach(plain)
    with pytest.raises(FloatingPointError, match=r"disable amp, then resume from the last epoch checkpoint\.$"):
        plain.run([0])


@pytest.mark.parametrize("case", ["nan weights", "nan gaussians", "other error"])
def test_a_step_failing_on_a_diverged_model_is_named_as_divergence(tmp_path, case):
    """A step that made the weights NaN from a finite loss fails at the next forward (a check like the renderer's);
    so does one whose finite but huge weights give the renderer NaN Gaussians (NonFiniteGaussiansError). Either
    stops the run naming the divergence and where, with no interrupted checkpoint of the diverged state; another
    ValueError with finite weights is passed on as it is, the interrupted state saved."""
    from ignite.engine import Events

    from medgmae.render import NonFiniteGaussiansError

    trainer, net = make_trainer(tmp_path, 2, resume=False)

    def check_inputs(module, args):
        if not all(bool(torch.isfinite(w).all()) for w in module.parameters()):
            raise ValueError("means must be finite (found NaN or Inf)")
        if trainer.state.iteration == 3:
            raise (NonFiniteGaussiansError if case == "nan gaussians" else ValueError)("means must be finite (found NaN or Inf)")

    net.register_forward_pre_hook(check_inputs)
    if case == "nan weights":
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: net[1].bias.data.fill_(float("nan")))
    with pytest.raises(ValueError if case == "other error" else FloatingPointError) as raised:
        trainer.run()
    what = {"nan weights": "the weights of 'network' became NaN or infinite (1.bias first)",
            "nan gaussians": "its Gaussians became NaN or infinite", "other error": None}[case]  # fmt: skip
    if what:
        assert str(raised.value).startswith(f"training diverged: {what} by epoch 1, iteration 3, where the step then "
                                            "failed ("), str(raised.value)  # fmt: skip
    assert (tmp_path / "checkpoint_interrupted.pt").is_file() == (what is None)


def test_gradient_clip_bounds_update(tmp_path):
    # with lr=1 and SGD momentum 0.9 the first step's update norm equals the clipped gradient norm
    trainer, net = make_trainer(tmp_path, 1, resume=False, lr=1.0, clip=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.terminate())
    trainer.run()
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert math.isclose(float((after - before).norm()), 1e-3, rel_tol=1e-4)


def test_a_resumed_scheduler_keeps_this_runs_plan(tmp_path, caplog):
    """A warm-up + cosine schedule resumed with a longer plan (a larger --max_epochs) continues on the new plan
    from the saved step: the rate equals an uninterrupted run of the new plan's at every later step (PyTorch's
    load_state_dict kept the saved t_total, and the rate climbed back up after it); the same plan restores exactly."""
    from monai.optimizers import WarmupCosineSchedule

    from medgmae.engine.restore import restore_states

    def schedule(t_total: int, steps: int) -> WarmupCosineSchedule:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = WarmupCosineSchedule(opt, warmup_steps=2, t_total=t_total)
        for _ in range(steps):
            opt.step()
            sched.step()
        return sched

    first = schedule(10, 10)  # the first run, finished at its t_total
    saved = first.state_dict()
    longer, straight = schedule(20, 0), schedule(20, 10)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("optimizer", longer.optimizer), ("lr_scheduler", longer)],
                       {"optimizer": first.optimizer.state_dict(), "lr_scheduler": saved})  # fmt: skip
    assert "t_total: saved 10, now 20" in caplog.text and longer.last_epoch == 10
    # the first resumed step's rate too (the restored optimiser held the saved plan's last rate, 0)
    assert longer.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"] > 0.1
    for _ in range(10):
        for s in (longer, straight):
            s.optimizer.step()
            s.step()
        assert longer.get_last_lr() == straight.get_last_lr()
    assert straight.get_last_lr()[0] < 0.05  # the new plan's end, not the old cosine rising again
    caplog.clear()
    same = schedule(10, 0)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("lr_scheduler", same)], {"lr_scheduler": saved})
    assert same.state_dict() == saved and "continues on this run's schedule" not in caplog.text


def test_a_warm_up_capped_by_the_saved_plan_is_explained_not_named_as_changed(tmp_path, caplog):
    """WarmupCosineSchedule caps warmup_steps at t_total: a run asking 10 warm-up steps of an 8-step plan warmed up
    for 8. Resumed at step 8 with a 16-step plan (a larger --max_epochs, the same warm-up asked), the warning names
    t_total and says truthfully why the warm-up now ends at step 10 and what the rate does (0.8 of the base rate at
    step 8, rising to it by step 10, as an uninterrupted 16-step run's), not 'warmup_steps: saved 8, now 10' as if
    the user had changed it. A warm-up the user did change is still named."""
    from monai.optimizers import WarmupCosineSchedule

    from medgmae.engine.restore import restore_states

    def schedule(warmup: int, t_total: int, steps: int) -> WarmupCosineSchedule:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = WarmupCosineSchedule(opt, warmup_steps=warmup, t_total=t_total)
        for _ in range(steps):
            opt.step()
            sched.step()
        return sched

    saved = schedule(10, 8, 8).state_dict()
    assert saved["warmup_steps"] == 8  # capped
    longer, straight = schedule(10, 16, 0), schedule(10, 16, 8)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("lr_scheduler", longer)], {"lr_scheduler": saved})
    assert "t_total: saved 8, now 16" in caplog.text and "warmup_steps: saved" not in caplog.text
    assert ("the warm-up ends at step 10 instead of 8: the saved run's warm-up was capped at its t_total of 8 "
            "(WarmupCosineSchedule caps warmup_steps at t_total) and this run's longer plan holds 10 warm-up steps; "
            "at the saved step 8 the rate is 0.8 x the base rate (saved plan: 1) and warms up to it by step 10") in caplog.text  # fmt: skip
    assert longer.lr_lambda(8) == straight.lr_lambda(8) == 0.8
    for _ in range(8):
        for s in (longer, straight):
            s.optimizer.step()
            s.step()
        assert longer.get_last_lr() == straight.get_last_lr()
    caplog.clear()
    changed = schedule(3, 16, 0)
    with caplog.at_level("WARNING"):
        restore_states(tmp_path / "c.pt", [("lr_scheduler", changed)], {"lr_scheduler": schedule(2, 8, 8).state_dict()})
    assert "warmup_steps: saved 2, now 3" in caplog.text and "the warm-up ends" not in caplog.text


def _purge_step(tmp_path, resume: bool) -> int | None:
    """The purge step a ``ResumeSummaryWriter`` of the checkpoints in ``tmp_path`` writes into its event file (the
    step of its ``SessionLog`` START record), ``None`` where it writes none."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    from medgmae.engine.tensorboard_writer import ResumeSummaryWriter

    log_dir = tmp_path / f"tb_{len(list(tmp_path.glob('tb_*')))}"
    ResumeSummaryWriter(log_dir, tmp_path, resume).close()
    steps = [event.step for path in log_dir.glob("events.out.tfevents.*") for event in EventFileLoader(str(path)).Load()
             if event.HasField("session_log") and event.session_log.status == SessionLog.START]  # fmt: skip
    return steps[0] if steps else None


def test_tensorboard_purge_step_is_the_iteration_after_the_newest_checkpoint(tmp_path):
    assert _purge_step(tmp_path, True) is None  # nothing to resume: a fresh run purges nothing
    torch.save({"engine": {"epoch": 2, "iteration": 14}}, tmp_path / "checkpoint_epoch=2.pt")
    torch.save({"engine": {"epoch": 3, "iteration": 21}}, tmp_path / "checkpoint_epoch=3.pt")
    assert _purge_step(tmp_path, True) == 22 and _purge_step(tmp_path, False) is None
    (tmp_path / "checkpoint_epoch=4.pt").write_bytes(b"not a checkpoint")  # the resume itself names the problem
    assert _purge_step(tmp_path, True) is None


_FULL_EVENTS_FILE = """
import sys
from medgmae.engine.tensorboard_writer import ResumeSummaryWriter
from medgmae.write_failures import OutputWriteError
writer = ResumeSummaryWriter(sys.argv[1], sys.argv[2], False)
try:
    for step in range(100000):
        writer.add_scalar("loss", float(step), step)
        writer.flush()
except OutputWriteError as e:
    print(step, e.filename, e.said, sep="\\n")
writer.close()
"""


def test_a_full_events_file_is_named_in_the_callers_thread_and_keeps_whole_records(tmp_path):
    """Under a 4 KiB file-size limit the writer raises, in the thread that logs, the toolkit's ``OutputWriteError``
    naming the events file (TensorBoard's writing thread printed its own traceback and a bare ``OSError`` came
    later); the file keeps the scalars logged before, each whole."""
    import resource
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    logs = tmp_path / "tb"
    done = subprocess.run([sys.executable, "-B", "-c", _FULL_EVENTS_FILE, str(logs), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, preexec_fn=limit, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr and "Exception in thread" not in done.stderr, done
    failed_at, name, said = done.stdout.splitlines()
    (events,) = logs.glob("events.out.tfevents.*")
    assert name == str(events) and said.startswith(f"{events} could not be written (File too large)")
    assert said.endswith("The events logged before are kept") and events.stat().st_size <= 4096
    shown = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    shown.Reload()
    assert [(e.step, e.value) for e in shown.Scalars("loss")] == [(s, float(s)) for s in range(int(failed_at))]
    assert int(failed_at) > 10


def test_a_resumed_pending_epoch_logs_to_tensorboard_only_what_the_stopped_run_did_not(tmp_path):
    """Stopped while validating epoch 1 (iteration 3) after logging val/loss there; the resume validates epoch 1
    again: its writer leaves out val/loss at iteration 3 (shown once) and writes val/psnr, which the stop cut off."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from medgmae.engine.tensorboard_writer import ResumeSummaryWriter, logged_tags

    logs = tmp_path / "tensorboard"
    stopped = SummaryWriter(str(logs))
    for step in (1, 2, 3):
        stopped.add_scalar("train_loss", float(step), step)
    stopped.add_scalar("val/loss", 0.5, 3)
    stopped.close()
    torch.save({"engine": {"epoch": 1, "iteration": 3, "pending": "validation"}}, tmp_path / "checkpoint_epoch=1.pt")
    assert logged_tags(logs, 3) == {"train_loss", "val/loss"} and logged_tags(logs, 2) == {"train_loss"}
    resumed = ResumeSummaryWriter(logs, tmp_path, True)
    for tag in ("val/loss", "val/psnr"):
        resumed.add_scalar(tag, 7.0, 3)
    resumed.add_scalar("train_loss", 4.0, 4)
    resumed.close()
    acc = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    acc.Reload()
    shown = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert shown == {"train_loss": [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)], "val/loss": [(3, 0.5)], "val/psnr": [(3, 7.0)]}
    SummaryWriter(str(logs), purge_step=3).close()  # a later run's purge from iteration 3 on: nothing shown there
    assert logged_tags(logs, 3) == set() and logged_tags(logs, 2) == {"train_loss"}
    torch.save({"engine": {"epoch": 1, "iteration": 3}}, tmp_path / "checkpoint_epoch=1.pt")  # validated: all written
    again = ResumeSummaryWriter(logs, tmp_path, True)
    assert again._pending_step is None and not again._logged
    again.close()
