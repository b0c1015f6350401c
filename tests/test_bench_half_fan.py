"""bench/half_fan.py at toy sizes, so the study cannot rot between runs: the half-fan detector's FDK is as good as
the centred one's, and without its weights it is far worse."""

import json

from bench_helpers import load_bench


def test_the_half_fan_study_runs_and_the_weights_carry_it(tmp_path, capsys):
    out = tmp_path / "half_fan.json"
    assert load_bench("half_fan").main(["--size", "16", "32", "32", "--voxel", "12", "8", "8", "--views", "40",
                                         "--iterations", "5", "--num-gaussians", "1000", "--json", str(out)]) == 0
    rows = {r["scan"]: r for r in json.loads(out.read_text(encoding="utf-8"))["rows"]}
    assert list(rows) == ["full", "half-fan", "half-fan, unweighted"]
    assert rows["half-fan"]["det_shape"][1] < rows["full"]["det_shape"][1] and rows["half-fan"]["det_offset_mm"] > 0
    assert abs(rows["half-fan"]["fdk_psnr"] - rows["full"]["fdk_psnr"]) < 1.0
    assert rows["half-fan, unweighted"]["fdk_psnr"] < rows["half-fan"]["fdk_psnr"] - 3.0
    assert "gaussians" in rows["half-fan"] and "gaussians" not in rows["half-fan, unweighted"]
    assert "| half-fan, unweighted |" in capsys.readouterr().out
