"""Progress on the console: the per-epoch and validation lines, bars only on a terminal, the mean loss over processes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

from medgmae.engine import EpochProgress, MetricHistory, ValidationProgress, loss_value
from medgmae.engine.console import mean_over_processes


def test_epoch_progress_logs_one_line_per_epoch_and_records_the_mean_loss(caplog):
    losses = np.random.default_rng(0).random((2, 5))
    engine = Engine(lambda e, b: {"loss": torch.tensor(losses[e.state.epoch - 1, (e.state.iteration - 1) % 5])})
    history = MetricHistory()
    EpochProgress(history=history, progress_bar="false").attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        engine.run(range(5), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train_loss") and "5 iterations" in lines[0]
    epochs, values = history.get("train_loss")
    assert epochs == [1, 2] and np.allclose(values, losses.mean(1))
    assert loss_value([{"loss": torch.tensor(0.5)}]) == 0.5 and loss_value({"other": 1}) is None
    with pytest.raises(ValueError, match="progress_bar"):
        EpochProgress(progress_bar="maybe")


def _validation_lines(caplog, monkeypatch, lengths, batch_size: int) -> list[str]:
    """The lines a :class:`ValidationProgress` logs over passes of ``lengths`` items in batches of ``batch_size``
    (a bar shown, as on a terminal)."""
    import medgmae.engine.console as console

    monkeypatch.setattr(console, "progress_bars_shown", lambda: True)
    engine = Engine(lambda e, b: None)
    ValidationProgress(progress_bar=True).attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        for n in lengths:
            engine.run(DataLoader(range(n), batch_size=batch_size), max_epochs=1)
    return [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]


def test_validation_progress_logs_one_line_per_pass_with_its_case_count(caplog, capsys, monkeypatch):
    lines = _validation_lines(caplog, monkeypatch, (3, 1), batch_size=1)
    assert len(lines) == 2 and lines[0].startswith("validation: 3 cases in ") and lines[1].startswith("validation: 1 case in ")
    err = capsys.readouterr().err  # the bar, on stderr
    assert "validation: [1/3]" in err and "validation: [1/1]" in err
    with pytest.raises(ValueError, match="progress_bar"):
        ValidationProgress(progress_bar="sometimes")


def test_validation_progress_counts_batches_of_more_than_one_case(caplog, monkeypatch):
    """A pass over 5 cases in batches of 2 is 3 iterations: batches, not cases (it said 3 cases)."""
    lines = _validation_lines(caplog, monkeypatch, (5, 2), batch_size=2)
    assert len(lines) == 2 and lines[0].startswith("validation: 3 batches in ") and lines[1].startswith("validation: 1 batch in ")


def test_bars_are_drawn_on_a_terminal_not_into_a_captured_log(capsys, caplog, monkeypatch):
    """stderr captured (a batch job's log): no bar redraws, the epoch and validation lines alone; a terminal or a
    Jupyter kernel gets the bars."""
    import io
    import sys

    from medgmae.terminal import progress_bars_shown

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    for stream, shown in ((io.StringIO(), False), (Tty(), True), (None, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert progress_bars_shown() is shown
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.5)})
    EpochProgress(progress_bar=True).attach(engine)
    ValidationProgress(progress_bar=True).attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        engine.run(range(3), max_epochs=1)
    assert capsys.readouterr().err == ""  # pytest captures stderr: not a terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]
    assert lines[0].startswith("epoch 1/1: train_loss") and lines[1].startswith("validation: 3 batches")  # no loader
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # in a notebook the bars are widgets
    assert progress_bars_shown()


def test_the_epoch_loss_is_the_mean_over_every_process(monkeypatch):
    """Under torch.distributed the epoch's loss is the mean of all ranks' iterations (here a fake second rank with
    3 iterations summing to 0.9 beside this rank's 2 summing to 0.2: 1.1 / 5), not this rank's alone."""
    import torch.distributed as dist

    assert mean_over_processes(0.2, 2) == 0.2 / 2 and np.isnan(mean_over_processes(0.0, 0))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.add_(torch.tensor([0.9, 3.0], dtype=t.dtype)))
    assert mean_over_processes(0.2, 2) == pytest.approx(1.1 / 5)


def test_a_single_process_epoch_loss_is_the_plain_mean_bit_for_bit():
    losses = np.random.default_rng(1).random(7).astype(np.float32)
    engine = Engine(lambda e, b: {"loss": torch.tensor(losses[e.state.iteration - 1])})
    history = MetricHistory()
    EpochProgress(history=history, progress_bar=False).attach(engine)
    engine.run(range(7), max_epochs=1)
    total = 0.0
    for value in losses:
        total += float(value)
    assert history.get("train_loss") == ([1], [total / 7])


class _CountingTerminal:
    """A fake terminal for stderr: counts the bars' writes and keeps their text."""

    def __init__(self) -> None:
        self.writes, self.text = 0, []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes += 1
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_bars_redraw_on_their_half_second_timer_not_twice_an_iteration(monkeypatch):
    """ignite's ProgressBar set the loss and the label with a redraw each at every iteration: 2 epochs of 1,000
    fast iterations and a 1,000-batch validation wrote about 5,000 times. Now a bar redraws when it starts, when its
    label changes, every ``mininterval`` (0.5 s) of ``update`` and when it closes; the loss still shows."""
    import sys
    import time

    import medgmae.engine.console as console

    monkeypatch.setattr(console, "progress_bars_shown", lambda: True)
    terminal = _CountingTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    engine, passes = Engine(lambda e, b: {"loss": torch.tensor(0.5)}), Engine(lambda e, b: None)
    EpochProgress(progress_bar=True).attach(engine)
    ValidationProgress(progress_bar=True).attach(passes)
    start = time.perf_counter()
    engine.run(range(1000), max_epochs=2)
    passes.run(range(1000), max_epochs=1)
    seconds = time.perf_counter() - start
    timed = 2 * (seconds / 0.5 + 3)  # at most one redraw a half second of each bar (3), each a write or two
    assert terminal.writes <= 6 * 3 + timed, (terminal.writes, seconds)
    shown = "".join(terminal.text)
    assert "Epoch [2/2]: [1/1000]" in shown and "validation: [1/1000]" in shown  # the label, drawn as it changes
    slow = Engine(lambda e, b: time.sleep(0.3) or {"loss": torch.tensor(0.25)})
    EpochProgress(progress_bar=True).attach(slow)
    slow.run(range(3), max_epochs=1)
    assert "train_loss=0.25" in "".join(terminal.text)  # a redraw on the timer shows the newest loss
