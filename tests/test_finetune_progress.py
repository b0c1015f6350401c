"""Evaluation and segmentation runs: one log line per case (medgmae.finetune.progress), the report files written
together (medgmae.finetune.evaluate)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from medgmae.finetune import CaseProgress, SegmentationReport


def _onehot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long(), 2).permute(3, 0, 1, 2).float()


def _case(name: str, overlap: int) -> dict:
    """A decollated evaluator item whose class-1 Dice is 2 * overlap / (4 + 4): two 4-voxel rows."""
    ref, pred = torch.zeros(6, 6, 6), torch.zeros(6, 6, 6)
    ref[0, 0, :4] = 1
    pred[0, 0, 4 - overlap:8 - overlap] = 1
    image = MetaTensor(torch.zeros(1, 6, 6, 6), meta={"filename_or_obj": f"/data/{name}.nii.gz"})
    return {"image": image, "pred": _onehot(pred), "label": _onehot(ref)}


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "medgmae.finetune.progress"]


def test_one_line_per_case_with_name_and_dice(tmp_path, caplog):
    """An evaluator run over two cases logs each case's number, name, time and Dice (2*4/8 = 1 and 2*2/8 = 0.5)."""
    cases = [_case("liver_001", 4), _case("liver_002", 2)]
    engine = Engine(lambda eng, batch: [batch])
    report = SegmentationReport(tmp_path, ["background", "liver"])
    report.attach(engine)
    CaseProgress(report, what="evaluating").attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run(cases, max_epochs=1)
    lines = _lines(caplog)
    assert lines[0] == "evaluating 2 cases" and re.fullmatch(r"2 cases in \d+\.\d s", lines[-1]), lines
    assert re.fullmatch(r"case 1/2 liver_001: \d+\.\d s, mean Dice 1\.00000 \(about \d+\.\d s left\)", lines[1]), lines
    assert re.fullmatch(r"case 2/2 liver_002: \d+\.\d s, mean Dice 0\.50000", lines[2]), lines


def test_segmentation_lines_use_the_output_name(caplog):
    """Without a report (segmentation), the line names the case by its output name and gives no Dice."""
    items = [{"image": torch.zeros(1, 2, 2, 2), "name": "patA_ct"}]
    engine = Engine(lambda eng, batch: [batch])
    CaseProgress(what="segmenting").attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run(items, max_epochs=1)
    lines = _lines(caplog)
    assert lines[0] == "segmenting 1 case" and re.fullmatch(r"case 1/1 patA_ct: \d+\.\d s", lines[1]), lines


def test_a_segmentation_run_names_each_case_by_its_unique_output_name(caplog):
    """Through MONAI's evaluator (which keeps the inputs' ``name`` in ``state.batch``, not in its output), two inputs
    both called ``ct`` are named as their outputs are, ``a_ct`` and ``b_ct``, not ``ct`` twice."""
    from monai.engines import SupervisedEvaluator

    items = [{"image": MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": f"/data/{d}/ct.nii.gz"}),
              "name": f"{d}_ct"} for d in ("a", "b")]  # fmt: skip
    loader = torch.utils.data.DataLoader(items, batch_size=1, collate_fn=__import__("monai").data.list_data_collate)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Identity())
    CaseProgress(what="segmenting").attach(evaluator)
    with caplog.at_level(logging.INFO):
        evaluator.run()
    lines = _lines(caplog)
    assert [line.split(":")[0] for line in lines[1:3]] == ["case 1/2 a_ct", "case 2/2 b_ct"], lines


def test_report_must_be_attached_first(tmp_path):
    engine = Engine(lambda eng, batch: [batch])
    progress = CaseProgress(SegmentationReport(tmp_path, ["background", "liver"]))
    with pytest.raises(ValueError, match="before CaseProgress"):
        progress.attach(engine)


def test_report_files_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """An error while writing the per-case CSV leaves the earlier metrics.json and CSV as they were: the pair is
    never half new."""
    import medgmae.finetune.evaluate as evaluate

    report = SegmentationReport(tmp_path, ["background", "liver"])
    report.rows.append(("liver_001", "/data/liver_001.nii.gz", [1.0], [False]))
    report.write()
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "per_case_dice.csv")}
    report.rows.append(("liver_002", "/data/liver_002.nii.gz", [0.5], [False]))

    def broken_writer(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(evaluate.csv, "writer", broken_writer)
    with pytest.raises(OSError, match="No space left"):
        report.write()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "per_case_dice.csv"]  # no staging left
