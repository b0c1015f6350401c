"""Progress lines of long loops where no bar is drawn (a batch job's log): the training engines' epochs and
validation passes, sliding-window segmentation, projections and back-projections, and the data pre-check."""

from __future__ import annotations

import logging
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

import medgmae.engine.console as console
import medgmae.terminal as terminal
from medgmae.data import check_datalist
from medgmae.engine import EpochProgress, ValidationProgress
from medgmae.finetune.sliding import LoggedSlidingWindowInferer, window_count
from medgmae.terminal import ProgressLines

LINE = r", \d+\.\d (s|min|h)(, about \d+\.\d (s|min|h) left)?$"


@pytest.fixture
def every_step(monkeypatch):
    """A line at every step: the interval lowered to nothing."""
    monkeypatch.setattr(terminal, "LINE_SECONDS", 0.0)


def _fake_clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(terminal.time, "perf_counter", lambda: now[0])
    return now


def test_a_line_a_minute_with_the_count_and_the_time_left(monkeypatch):
    now, said = _fake_clock(monkeypatch), []
    lines = ProgressLines("epoch 1/3", 190, "iterations", said.append, bar=False)
    for step in range(1, 191):
        now[0] += 3.0  # 3 s an iteration: a line every 20 iterations
        lines.update(step)
    assert said[0] == "epoch 1/3: 20/190 iterations, 60.0 s, about 8.5 min left", said
    assert said[1] == "epoch 1/3: 40/190 iterations, 2.0 min, about 7.5 min left", said
    assert len(said) == 9 and said[-1].startswith("epoch 1/3: 180/190 iterations, 9.0 min")  # none at 190: the end


def test_no_line_on_a_terminal_or_for_a_short_loop(monkeypatch):
    now, said = _fake_clock(monkeypatch), []
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)
    on_terminal = ProgressLines("epoch 1/1", 100, "iterations", said.append)
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: False)
    short = ProgressLines("epoch 1/1", 100, "iterations", said.append)
    for step in range(1, 101):
        now[0] += 0.5  # 50 s in all
        assert not on_terminal.update(step) and not short.update(step)
    assert said == [] and not on_terminal.enabled and short.enabled


def _engine_lines(caplog, epochs: int) -> list[str]:
    """The lines logged by a 3-iteration training run of ``epochs`` epochs and a 3-case validation pass."""
    caplog.clear()
    trainer, evaluator = Engine(lambda e, b: {"loss": torch.tensor(0.5)}), Engine(lambda e, b: None)
    EpochProgress(progress_bar=True).attach(trainer)
    ValidationProgress(progress_bar=True).attach(evaluator)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        trainer.run(range(3), max_epochs=epochs)
        evaluator.run(DataLoader(range(3), batch_size=1), max_epochs=1)
    return [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]


def test_a_long_epoch_and_validation_pass_log_lines_into_a_log(caplog, every_step, monkeypatch):
    monkeypatch.setattr(console, "progress_bars_shown", lambda: False)
    lines = _engine_lines(caplog, epochs=2)
    for i, start in enumerate(["epoch 1/2: 1/3 iterations", "epoch 1/2: 2/3 iterations", "epoch 1/2: train_loss",
                               "epoch 2/2: 1/3 iterations", "epoch 2/2: 2/3 iterations", "epoch 2/2: train_loss",
                               "validation: 1/3 cases", "validation: 2/3 cases", "validation: 3 cases in "]):  # fmt: skip
        assert lines[i].startswith(start), lines
    assert len(lines) == 9 and all(re.search(LINE, lines[i]) for i in (0, 1, 3, 4, 6, 7)), lines


def test_a_long_validation_pass_in_batches_counts_batches(caplog, every_step, monkeypatch):
    """Into a log, a pass in batches of 2 says batches in its lines a minute and its last line (it said cases)."""
    monkeypatch.setattr(console, "progress_bars_shown", lambda: False)
    evaluator = Engine(lambda e, b: None)
    ValidationProgress(progress_bar=True).attach(evaluator)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        evaluator.run(DataLoader(range(6), batch_size=2), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]
    assert [line.split(",")[0].split(" in ")[0] for line in lines] == [
        "validation: 1/3 batches", "validation: 2/3 batches", "validation: 3 batches"], lines


def test_no_engine_lines_on_a_terminal_or_in_a_short_epoch(caplog, capsys, every_step, monkeypatch):
    """On a terminal the bars show the epoch (unchanged), and no line is logged; into a log a short epoch logs its
    summary line alone."""
    for shown, interval in ((True, 0.0), (False, 60.0)):
        monkeypatch.setattr(console, "progress_bars_shown", lambda: shown)
        monkeypatch.setattr(terminal, "LINE_SECONDS", interval)
        lines = _engine_lines(caplog, epochs=1)
        assert len(lines) == 2 and lines[0].startswith("epoch 1/1: train_loss") and lines[1].startswith("validation: 3 cases")
        err = capsys.readouterr().err
        assert ("[1/3]" in err) is shown  # the bars, on a terminal only


def _volumes(tmp_path, n: int) -> list[dict]:
    items = []
    for i in range(n):
        path = tmp_path / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((8, 8, 8), i, np.float32) + np.arange(8, dtype=np.float32), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))  # not blank
        items.append({"image": str(path)})
    return items


def test_the_precheck_logs_lines_as_it_reads(tmp_path, caplog, every_step, monkeypatch):
    """No bar shows the pre-check: its lines come on a terminal too."""
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)
    items = _volumes(tmp_path, 3)
    with caplog.at_level(logging.INFO, logger="medgmae.data"):
        check_datalist(items, source="the folder")
    lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.data"]
    assert lines[0].startswith("pre-check of the folder: reading 3 of 3 items")
    assert [ln.split(",")[0] for ln in lines[1:]] == ["pre-check of the folder: 1/3 items", "pre-check of the folder: 2/3 items"]
    assert all(re.search(LINE, ln) for ln in lines[1:]), lines


def test_a_short_precheck_logs_its_opening_line_alone(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medgmae.data"):
        check_datalist(_volumes(tmp_path, 3), source="the folder")
    assert len([r for r in caplog.records if r.name == "medgmae.data"]) == 1


@pytest.mark.parametrize("shape, roi, overlap", [((1, 1, 20, 18, 9), (8, 8, 8), 0.25), ((2, 1, 5, 30, 12), (8, 8, 8), 0.5),
                                                 ((1, 1, 16, 16, 16), (8, -1, 8), (0.5, 0.0, 0.25))])  # fmt: skip
def test_window_count_is_the_windows_the_network_sees(shape, roi, overlap):
    seen = []

    def network(x):
        seen.append(x.shape[0])
        return x * 2.0

    from monai.inferers import SlidingWindowInferer

    SlidingWindowInferer(roi, sw_batch_size=3, overlap=overlap)(torch.rand(shape), network)
    assert window_count(shape, roi, overlap) == sum(seen)


@pytest.mark.parametrize("shape, roi, overlap", [
    ((1, 1, 21, 13, 10), (8, 8, 8), 0.3), ((1, 2, 17, 9, 31), (6, 8, 7), 0.75), ((3, 1, 11, 11), (4, 5), 0.6),
    ((1, 1, 7, 25, 8), (8, 8, 8), (0.0, 0.5, 0.25)), ((2, 1, 19, 23), (10, 10), 0.0),
])  # fmt: skip
def test_window_count_is_the_network_calls_one_window_a_call(shape, roi, overlap):
    """window_count (MONAI's private _get_scan_interval) against the calls MONAI's inferer makes with one window a
    call, on shapes the windows do not tile (and one smaller than its window), 2D and 3D."""
    from monai.inferers import SlidingWindowInferer

    calls = []

    def network(x):
        calls.append(x.shape[0])
        return x + 1.0

    SlidingWindowInferer(roi, sw_batch_size=1, overlap=overlap)(torch.rand(shape), network)
    assert set(calls) == {1} and window_count(shape, roi, overlap) == len(calls)


def test_sliding_window_lines_into_a_log_and_the_same_output(caplog, every_step, monkeypatch):
    from monai.inferers import SlidingWindowInferer

    x, net = torch.rand(1, 1, 20, 18, 9), torch.nn.Conv3d(1, 2, 3, padding=1)
    expected = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.25)(x, net)
    total = window_count(x.shape, (8, 8, 8), 0.25)
    for shown in (False, True):  # into a log; on a terminal, MONAI's bar (progress=True as the bundles set it)
        monkeypatch.setattr(terminal, "progress_bars_shown", lambda: shown)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medgmae.finetune.sliding"):
            out = LoggedSlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.25, progress=shown)(x, net)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.finetune.sliding"]
        if shown:
            assert lines == []
        else:
            assert [ln.split(",")[0] for ln in lines] == [f"sliding window: {k}/{total} windows" for k in range(2, total, 2)]
            assert all(re.search(LINE, ln) for ln in lines), lines


def _cone(views: int = 6):
    from recon.geometry import CTGeometry

    return CTGeometry.cone((6, 8, 8), 2.0, source_origin=60.0, source_detector=120.0, det_shape=(10, 12),
                           det_spacing=3.0, num_angles=views)  # fmt: skip


def test_a_long_projection_prints_lines_when_asked(capsys, every_step, monkeypatch):
    """With ``lines`` (simulate's one projection of a whole scan, which no bar shows) the ray marcher prints a line
    per step here (a view a step), on a terminal too; without it (every projection of a reconstruction) none."""
    import recon.projectors.torch_proj as torch_proj

    geom = _cone()
    proj = torch_proj.TorchProjector(geom)
    monkeypatch.setattr(torch_proj, "_CHUNK_SAMPLES", proj.num_steps * 120)  # one view of 10 x 12 rays a step
    volume = torch.rand(6, 8, 8)
    expected = proj.forward(volume)
    assert capsys.readouterr().out == ""  # not asked
    proj.lines = True
    torch.testing.assert_close(proj.forward(volume), expected, rtol=0, atol=0)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(",")[0] for ln in lines] == [f"projecting: {k}/6 views" for k in range(1, 6)], lines
    assert all(re.search(LINE, ln) for ln in lines), lines
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)
    proj.forward(volume)
    assert capsys.readouterr().out.splitlines()[0].startswith("projecting: 1/6 views")


def test_a_long_back_projection_prints_lines_a_short_one_none(capsys, every_step, monkeypatch):
    from recon.fbp import fbp

    geom = _cone(12)
    fbp(torch.rand(12, 10, 12), geom)  # 4 views a step
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["back-projecting: 4/12 views", "back-projecting: 8/12 views"], lines
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)  # no bar shows a back-projection
    fbp(torch.rand(12, 10, 12), geom)
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setattr(terminal, "LINE_SECONDS", 60.0)  # a short one
    fbp(torch.rand(12, 10, 12), geom)
    assert capsys.readouterr().out == ""


def test_simulate_prints_lines_during_its_projection_and_fdk(tmp_path, capsys, every_step, monkeypatch):
    import recon.projectors.torch_proj as torch_proj
    from recon.cli import main

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((12, 12, 8), -200.0, np.float32) + np.arange(8, dtype=np.float32), np.diag([8.0, 8.0, 10.0, 1.0])), str(path))  # not blank
    monkeypatch.setattr(torch_proj, "_CHUNK_SAMPLES", 1 << 14)
    args = ["simulate", "--volume", str(path), "--geometry", "cone", "--views", "8", "--out", str(tmp_path / "scan"), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(re.match(r"projecting: \d/8 views" + LINE, ln) for ln in out), out
    assert any(re.match(r"back-projecting: 4/8 views" + LINE, ln) for ln in out), out
