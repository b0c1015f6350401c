"""bench/zero_shot_fidelity.py and bench/sparse_growth_rounds.py with a tiny model, so that the scripts cannot rot
between runs of the study (which uses a pre-trained 96^3 model and takes minutes)."""

import re
from pathlib import Path

import pytest

from bench_helpers import load_bench
from model_helpers import tiny_model_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained model whose 32^3 window at 6 mm covers the study scan (32 x 64 x 64 voxels of 6 x 4 x 4 mm)."""
    return tiny_model_file(tmp_path_factory.mktemp("model") / "model.pt", img_size=32, spacing=6.0, num_gaussians=64)


def test_zero_shot_fidelity_prints_every_part(tiny_model, capsys):
    assert load_bench("zero_shot_fidelity").main(["--checkpoint", str(tiny_model), "--views", "8"]) == 0
    out = capsys.readouterr().out
    for part in ("1. FBP/FDK vs phantom", "2. decoder on its grid", "one 32^3 window of the clean phantom",
                 "3. on the reconstruction grid", "4. the windowed FBP", "5. zero-shot start", "6. window inverted",
                 "7. fbp_init, 20000 Gaussians"):  # fmt: skip
        assert part in out, out
    assert not re.search(r"\bnan\b", out)


def test_sparse_growth_rounds_reports_each_rule(tiny_model, capsys):
    args = ["--checkpoint", str(tiny_model), "--views", "8", "--iterations", "12", "--rules", "sample", "moments"]
    assert load_bench("sparse_growth_rounds").main(args) == 0
    out = capsys.readouterr().out
    assert out.count("PSNR: peak") == 2 and "sample:" in out and "moments:" in out, out


def test_init_fit_reports_every_start_and_budget(tiny_model, capsys):
    args = ["--checkpoint", str(tiny_model), "--views", "8", "--fit-steps", "0", "3", "--iterations", "4", "21",
            "--num-gaussians", "400"]  # fmt: skip
    assert load_bench("init_fit").main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [tuple(r.split(" | ")[:2]) for r in rows] == [("| 0", "4"), ("| 0", "21"), ("| 3", "4"), ("| 3", "21")]
    assert rows[0].split(" | ")[4] == "-" and rows[1].split(" | ")[4] != "-"  # iteration 20 is reached by 21 only
    start_fbp = {r.split(" | ")[0]: float(r.split(" | ")[2]) for r in rows}
    assert start_fbp["| 3"] > start_fbp["| 0"]  # the fit brings the start nearer the FBP it is fitted to
