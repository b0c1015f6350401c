"""Pre-training's validation under torchrun: the fixed crops are shared out among the processes (rank r scores crops
r, r + W, ...) and their values gathered back in crop order, so that the logged means, the metric history and
``best_model.pt`` are those one process computes for the same weights, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distributed_helpers import end_without_teardown, meet
from medgmae.engine import MetricHistory
from medgmae.mae_training import MaskedValidationHandler, build_model

CROP_COUNTS = (3, 1)  # more crops than processes, and fewer: rank 1 then scores none but joins the gather


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("medgmae", "tiny", img_size=16, patch_size=8, num_gaussians=4)


def _crops(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(11)
    return [{"image": torch.rand(1, 16, 16, 16, generator=g)} for _ in range(n)]


def _handler(network: torch.nn.Module, n: int, out: Path) -> MaskedValidationHandler:
    return MaskedValidationHandler(network, _crops(n), MetricHistory("val_psnr", "max"), out, seed=3)


def _validate_on_two_ranks(rank: int, store: str, results: str) -> None:
    """One of two gloo processes: a DDP-wrapped model validated at epoch 1 (``__call__``, as the trainer runs it)
    with 3 crops, then with 1; which crops this rank scored and what its history recorded; then, the group gone,
    one process's validation of the same weights and crops in the same process (the same thread count)."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    meet(store, rank, 2)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1, iteration=4, max_epochs=1))
    outcome: dict = {}
    try:
        network = DistributedDataParallel(_model())
        for n in CROP_COUNTS:
            handler, scored = _handler(network, n, Path(results, f"crops{n}")), []
            score = handler.crop_metrics
            handler.crop_metrics = lambda i, score=score, scored=scored: scored.append(i) or score(i)
            handler(engine)
            outcome[n] = {"scored": scored, "history": handler.history.state_dict()}
    finally:
        dist.destroy_process_group()
    for n in CROP_COUNTS:
        outcome[n]["alone"] = _handler(_model(), n, Path(results, "alone")).evaluate()
    Path(results, f"{rank}.json").write_text(json.dumps(outcome))
    end_without_teardown()


def test_two_processes_validate_their_share_and_record_one_process_metrics(tmp_path):
    """3 crops on 2 ranks: rank 0 scores crops 0 and 2, rank 1 crop 1; 1 crop: rank 0 scores it, rank 1 none (and
    still joins the gather: no rank waits for ever). Rank 0's recorded loss, PSNR and SSIM are exactly one process's
    for the same weights and crops, and its ``best_model.pt`` records that PSNR; rank 1 records and writes nothing."""
    mp.start_processes(_validate_on_two_ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                       start_method="spawn")  # fmt: skip
    got = [json.loads((tmp_path / f"{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [g["3"]["scored"] for g in got] == [[0, 2], [1]]
    assert [g["1"]["scored"] for g in got] == [[0], []]
    for n in map(str, CROP_COUNTS):
        alone, history = got[0][n]["alone"], got[0][n]["history"]
        assert got[1][n]["alone"] == alone  # the same weights in both processes
        assert {name: series["value"] for name, series in history["series"].items()} == {
            f"val_{k}": [v] for k, v in alone.items()
        }, (history, alone)
        assert history["best_epoch"] == 1 and history["best_value"] == alone["psnr"]
        assert got[1][n]["history"]["series"] == {} and got[1][n]["history"]["best_epoch"] == -1
        best = torch.load(tmp_path / f"crops{n}" / "best_model.pt", weights_only=True)
        assert best["extra"]["best"] == {"epoch": 1, "val_psnr": alone["psnr"]}
    assert got[0]["3"]["alone"] != got[0]["1"]["alone"]  # the crops beyond the first count
    assert sorted(p.name for p in (tmp_path / "crops3").iterdir()) == ["best_model.pt"]
