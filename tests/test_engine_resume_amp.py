"""Resuming a run trained under amp: the trainer's gradient scaler is saved in the epoch checkpoints and restored, so
the resumed run skips and takes the steps the uninterrupted run does; a change of amp on resume is warned about.

MONAI's SupervisedTrainer makes ``torch.cuda.amp.GradScaler()`` when it runs with ``amp=True``, disabled without
CUDA; here that name gives an enabled CPU ``torch.amp.GradScaler`` instead. Its start at 2**126 overflows the
float32 gradients of the first steps (skipped, the scale halved) and it grows every second finite step, so a
scaler started afresh on resume takes other steps. The GPU test at the end resumes a real CUDA amp run."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from medgmae.torch_files import load_torch_file, save_torch_atomic

from engine_helpers import make_trainer

INIT_SCALE = 2.0**126


@pytest.fixture
def cpu_scaler(monkeypatch):
    """``torch.cuda.amp.GradScaler()``, as MONAI's trainers call it, makes an enabled CPU scaler."""
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", lambda: torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=2))


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_resume_restores_the_gradient_scaler(tmp_path, cpu_scaler):
    full, net_full = make_trainer(tmp_path / "full", 4, resume=False, amp=True)
    full.run()
    part, _ = make_trainer(tmp_path / "part", 2, resume=False, amp=True)
    part.run()
    saved = part.scaler.state_dict()  # the scaler as the interrupted run left it
    assert saved["scale"] != INIT_SCALE and saved["_growth_tracker"] == 1  # steps were skipped and counted
    assert load_torch_file(tmp_path / "part" / "checkpoint_epoch=2.pt")["scaler"] == saved
    rest, net_rest = make_trainer(tmp_path / "part", 4, resume=True, amp=True)
    restored = []
    rest.add_event_handler(Events.STARTED, lambda e: restored.append(e.scaler.state_dict()))  # after the resume
    rest.run()
    assert restored[0]["scale"] == saved["scale"] and restored[0]["_growth_tracker"] == saved["_growth_tracker"]
    assert rest.scaler.state_dict() == full.scaler.state_dict()
    assert _weights_equal(net_rest, net_full)
    assert load_torch_file(tmp_path / "part" / "checkpoint_final.pt")["scaler"] == full.scaler.state_dict()


@pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.GradScaler.*is deprecated:FutureWarning")
def test_a_run_without_amp_saves_no_scaler(tmp_path):
    """Without amp, and with amp where CUDA is missing (MONAI's scaler is then disabled), there is no scaler state."""
    plain, _ = make_trainer(tmp_path / "plain", 1, resume=False)
    plain.run()
    assert load_torch_file(tmp_path / "plain" / "checkpoint_epoch=1.pt")["scaler"] is None
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA is not available"):
            cpu, _ = make_trainer(tmp_path / "cpu", 1, resume=False, amp=True)
            cpu.run()
        assert load_torch_file(tmp_path / "cpu" / "checkpoint_epoch=1.pt")["scaler"] is None


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_a_change_of_amp_on_resume_is_warned(tmp_path, cpu_scaler, caplog):
    """A resume with amp from a checkpoint without a scaler, and without amp from one with a scaler, goes on with a
    warning naming the checkpoint; a checkpoint older than the scaler's entry is said to be so."""
    amp_run, plain_run, old = tmp_path / "amp", tmp_path / "plain", tmp_path / "old"
    for folder, amp in ((amp_run, True), (plain_run, False), (old, True)):
        make_trainer(folder, 2, resume=False, amp=amp)[0].run()
    ckpt = load_torch_file(old / "checkpoint_epoch=2.pt")
    del ckpt["scaler"]
    save_torch_atomic(ckpt, old / "checkpoint_epoch=2.pt")
    cases = ((amp_run, False, "was saved by a run with amp"), (plain_run, True, "was saved by a run without amp"),
             (old, True, "holds no gradient scaler state"))  # fmt: skip
    for folder, amp, said in cases:
        caplog.clear()
        rest, _ = make_trainer(folder, 3, resume=True, amp=amp)
        with caplog.at_level("WARNING"):
            rest.run()
        assert rest.state.epoch == 3
        lines = [r.getMessage() for r in caplog.records if said in r.getMessage()]
        assert len(lines) == 1 and str(folder / "checkpoint_epoch=2.pt") in lines[0], caplog.text
        if amp:
            assert "starts afresh at scale 8.50706e+37" in lines[0]  # 2**126


@pytest.mark.gpu
def test_a_cuda_amp_run_resumes_as_the_uninterrupted_one(tmp_path):
    """A SupervisedTrainer with amp on CUDA (MONAI's own GradScaler, float16 autocast), stopped after 2 of 4 epochs
    and resumed, ends with the uninterrupted run's weights and scaler state."""
    full, net_full = make_trainer(tmp_path / "full", 4, resume=False, amp=True, device="cuda")
    full.run()
    part, _ = make_trainer(tmp_path / "part", 2, resume=False, amp=True, device="cuda")
    part.run()
    assert part.scaler.is_enabled() and load_torch_file(tmp_path / "part" / "checkpoint_epoch=2.pt")["scaler"]
    rest, net_rest = make_trainer(tmp_path / "part", 4, resume=True, amp=True, device="cuda")
    rest.run()
    assert rest.scaler.state_dict() == full.scaler.state_dict()
    assert _weights_equal(net_rest, net_full)
