"""bench/flexmap.py at its toy size (``--quick``), so the study cannot rot between runs: FDK with the per-view
offsets puts the phantom back in place, while the mean offset (one offset for every view) or none misplaces it and
costs several dB, much of which moving it back undoes."""

import json

from bench_helpers import load_bench


def test_the_flexmap_study_runs_and_the_per_view_offsets_carry_it(tmp_path, capsys):
    out = tmp_path / "flexmap.json"
    assert load_bench("flexmap").main(["--quick", "--json", str(out)]) == 0
    saved = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["offset"]: r for r in saved["rows"]}
    assert list(rows) == ["per view", "mean", "none"] and saved["args"]["quick"] and saved["args"]["views"] == 40
    u, v = rows["per view"]["det_offset_u_mm"], rows["per view"]["det_offset_v_mm"]
    assert u[1] - u[0] > 5 and v[1] - v[0] > 2  # the sinusoid's swing, one offset per view
    assert rows["mean"]["det_offset_u_mm"][0] == rows["mean"]["det_offset_u_mm"][1]
    assert rows["none"]["det_offset_u_mm"] == [0.0, 0.0] == rows["none"]["det_offset_v_mm"]
    fdk = {name: r["fdk"] for name, r in rows.items()}
    for wrong in ("mean", "none"):
        assert fdk["per view"]["psnr"] > fdk[wrong]["psnr"] + 3.0 and fdk["per view"]["ssim"] > fdk[wrong]["ssim"]
        assert fdk[wrong]["centroid_shift_mm"] > 1.0
    assert fdk["per view"]["centroid_shift_mm"] < 0.5
    assert fdk["mean"]["psnr_recentred"] > fdk["mean"]["psnr"] + 2.0  # moved back, much of the loss is undone
    assert "gaussians" in rows["per view"] and "gaussians" in rows["mean"] and "gaussians" not in rows["none"]
    assert {"psnr", "ssim", "centroid_shift_mm", "psnr_recentred", "peak", "peak_iteration", "seconds"} <= set(rows["mean"]["gaussians"])
    assert "| per view |" in capsys.readouterr().out
