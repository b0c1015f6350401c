"""The recon study's reports at toy sizes: bench/recon_summary.py and its held-out, budget and selection
summaries, the curve panels, bench/recon_profile.py and the FBP back-projection benches, so they cannot rot between
study runs (the study's runs themselves: test_bench_recon.py)."""

import json

import pytest

from bench_helpers import load_bench


bench_recon, recon_summary = load_bench("recon"), load_bench("recon_summary")


def test_recon_profile_parts_add_up_to_a_step(tmp_path):
    """bench/recon_profile.py at a tiny size: every part is timed, they sum to about one step, and the profiled
    iterations advance the reconstructor like steps (its own methods, so the script cannot rot)."""
    profile = load_bench("recon_profile")
    out = tmp_path / "p.json"
    assert profile.main(["--threads", "1", "--views", "6", "--num-gaussians", "200", "--iterations", "2",
                         "--warmup", "0", "--json", str(out)]) == 0
    ms = json.loads(out.read_text(encoding="utf-8"))["ms"]
    assert all(ms[k] >= 0 for k in profile.PARTS) and ms["render"] > 0 and ms["forward project"] > 0
    assert ms["sum of parts"] == pytest.approx(sum(ms[k] for k in profile.PARTS))


def test_summary_marks_incomplete_runs(tmp_path, capsys):
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "4", "--eval-every", "2", "--num-gaussians", "200", "--device", "cpu", "--only", "toolkit"]
    out = tmp_path / "r.json"
    assert bench_recon.main([*base, "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    run = result["runs"]["toolkit"]
    run.update(complete=False, completed_iterations=2, curve=run["curve"][:2])
    out.write_text(json.dumps(result))
    capsys.readouterr()
    assert recon_summary.main([str(out)]) == 0
    table = capsys.readouterr().out
    assert "4 iterations" in table and "(at iteration 2, run incomplete)" in table


def test_holdout_summary_replays_the_patience(tmp_path, capsys):
    """bench/recon_holdout_summary.py on toy held-out and every-view runs: one row per start, the choice is the
    lowest recorded held-out error, a patience of 1 stops one evaluation after the first non-improvement."""
    summary = load_bench("recon_holdout_summary")
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "6", "--eval-every", "1", "--num-gaussians", "200", "--device", "cpu", "--only", "toolkit"]  # fmt: skip
    held, full = tmp_path / "held.json", tmp_path / "full.json"
    assert bench_recon.main([*base, "--holdout-views", "2", "--json", str(held)]) == 0
    assert bench_recon.main([*base, "--json", str(full)]) == 0
    run = json.loads(held.read_text(encoding="utf-8"))["runs"]["toolkit"]
    errors = dict(run["holdout_curve"])
    assert run["chosen"]["iteration"] == min(errors, key=errors.get) and run["holdout"]["views"] == [2, 6]
    curve = [(1, 3.0), (2, 2.0), (3, 2.5), (4, 1.0), (5, 1.5), (6, 1.6)]
    toy = {"holdout": {"views": [2, 6]}, "holdout_curve": curve}
    assert summary.replay(toy, 8, 1) == (3, 2) and summary.replay(toy, 8, 2) == (6, 4) and summary.replay(toy, 8, 0) == (6, 4)
    capsys.readouterr()
    assert summary.main([str(held), "--full", str(full), "--patience", "1", "--png", str(tmp_path / "h.png")]) == 0
    table = capsys.readouterr().out
    assert "| toolkit |" in table and "n/a" not in table and "patience 1" in table
    peak_it, peak = max(run["curve"], key=lambda c: c[1])  # the held-out run's own peak and last PSNR, read back
    assert "held out: peak (it) | held out: last |" in table
    assert f"| {peak:.2f} ({peak_it}) | {run['curve'][-1][1]:.2f} |" in table
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        summary.main([str(full)])  # a run without held-out views


def test_budget_summary_orders_budgets_and_reads_the_curves(tmp_path, capsys):
    """bench/recon_budget_summary.py on two toy budgets of one scan: rows in budget order, the PSNR after N
    iterations is the recorded evaluation's, the PNG is written; a run given settings (``--set``) is named by them,
    a file of another scan gets its own table, and a file that is not a result is refused by name."""
    summary = load_bench("recon_budget_summary")
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "4", "--eval-every", "2", "--device", "cpu", "--only", "toolkit"]  # fmt: skip
    for n in (300, 100):
        assert bench_recon.main([*base, "--num-gaussians", str(n), "--json", str(tmp_path / f"b{n}.json")]) == 0
    run = json.loads((tmp_path / "b100.json").read_text(encoding="utf-8"))["runs"]["toolkit"]
    capsys.readouterr()
    files = [str(tmp_path / "b300.json"), str(tmp_path / "b100.json")]
    assert summary.main([*files, "--at-iterations", "2", "--png", str(tmp_path / "b.png")]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "Gaussians |" in line]
    assert [r.split(" |")[0] for r in rows] == ["| 100 Gaussians", "| 300 Gaussians"]
    assert f"| {dict(run['curve'])[2]:.2f} |" in rows[0] and "| 20.5 |" in rows[0]  # 8 x 16 x 16 voxels / 100
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert bench_recon.main([*base, "--num-gaussians", "100", "--set", "split_rule=sample", "densify_from=99",
                             "--json", str(tmp_path / "s.json")]) == 0  # fmt: skip
    assert bench_recon.main([*base, "--views", "6", "--json", str(tmp_path / "other.json")]) == 0
    capsys.readouterr()
    assert summary.main([*files, str(tmp_path / "s.json"), str(tmp_path / "other.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("best FBP/FDK") == 2 and "8 views" in out and "6 views" in out
    assert "| 100 Gaussians, split_rule=sample, no density control |" in out
    (tmp_path / "bad.json").write_text("{")
    assert summary.main([files[0], str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert bench_recon.main([*base, "--num-gaussians", "100", "--tv", "0.001", "--json", str(tmp_path / "tv.json")]) == 0
    capsys.readouterr()
    assert summary.main([files[1], str(tmp_path / "tv.json")]) == 0 and "| 100 Gaussians, TV 0.001 |" in capsys.readouterr().out
    assert summary.main([files[1], files[1]]) == 2  # the same run twice would hide one of them
    assert "already in another file" in capsys.readouterr().err


def test_select_summary_chooses_by_held_out_error_and_reports_what_it_gives_away(tmp_path, capsys):
    """bench/recon_select_summary.py on toy held-out runs at three TV weights: the choice is the weight with the
    lowest recorded held-out error, the best is the highest PSNR, the difference is what the choice gives away;
    results without held-out views and two runs of one setting are refused."""
    summary = load_bench("recon_select_summary")
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "6", "--eval-every", "2", "--num-gaussians", "200", "--device", "cpu", "--only", "toolkit"]  # fmt: skip
    files = []
    for w in ("0", "0.01", "5"):
        files.append(tmp_path / f"tv{w}.json")
        assert bench_recon.main([*base, "--holdout-views", "2", "--tv", w, "--json", str(files[-1])]) == 0
    runs = {f"tv {float(f.stem[2:]):g}": json.loads(f.read_text(encoding="utf-8"))["runs"]["toolkit"] for f in files}
    chosen = min(runs, key=lambda k: runs[k]["holdout"]["best_error"])
    best = max(runs, key=lambda k: runs[k]["chosen"]["psnr"])
    c = summary.choice(summary.load([str(f) for f in files])[("parallel", 8, 1000, "toolkit", 2, "")])
    assert (c["chosen"], c["best"]) == (chosen, best) and chosen != "tv 5"  # a weight of 5 flattens the volume
    assert c["same_order"] == (sorted(runs, key=lambda k: runs[k]["holdout"]["best_error"]) == sorted(runs, key=lambda k: -runs[k]["chosen"]["psnr"]))
    assert c["given_away"] >= 0 and c["given_away"] == pytest.approx(runs[best]["chosen"]["psnr"] - runs[chosen]["chosen"]["psnr"])
    capsys.readouterr()
    assert summary.main([str(f) for f in files]) == 0
    table = capsys.readouterr().out
    assert f"| {chosen} (chosen) |" in table and f"| parallel 8, seed 1000, toolkit, 2 held out | {chosen} |" in table
    same = tmp_path / "same.json"  # the same-grid diagnostic is a scan of its own, not a second run of one setting
    assert bench_recon.main([*base, "--holdout-views", "2", "--simulate-grid", "same", "--json", str(same)]) == 0
    assert set(summary.load([str(files[0]), str(same)])) == {("parallel", 8, 1000, "toolkit", 2, ""),
                                                             ("parallel", 8, 1000, "toolkit", 2, ", simulated on its own grid")}
    plain = tmp_path / "plain.json"
    assert bench_recon.main([*base, "--json", str(plain)]) == 0
    for bad in ([str(plain)], [str(files[0]), str(files[0])]):
        with pytest.raises(SystemExit):
            summary.main(bad)


def test_summary_compares_with_the_chosen_starts_and_names_targets_only_one_reached(capsys):
    """``--versus`` picks the comparison columns; a cell gives the change at the highest target both reached
    (hand-counted curves) and the highest target the other start never reached."""
    curve = lambda pts: {"curve": pts, "preset": "toolkit", "initial_gaussians": 1, "final_gaussians": 1,
                         "initial_psnr": pts[0][1], "final_psnr": pts[-1][1], "seconds_per_iteration_median": 0.1}  # noqa: E731
    result = {"geometry": "cone", "views": 20, "phantom_seed": 7, "best_fbp_psnr": 20.0, "iterations": 40, "runs": {
        "fast": curve([[0, 10.0], [10, 17.5], [20, 20.5], [30, 22.5], [40, 22.0]]),
        "slow": curve([[0, 10.0], [10, 14.0], [20, 16.0], [30, 17.2], [40, 19.0]]),
    }}  # fmt: skip
    table = recon_summary.case_table(result, [-3.0, 0.0, 2.0], versus=("slow",))
    row = next(line for line in table.splitlines() if line.startswith("| fast |")).split(" | ")
    assert table.splitlines()[2].split(" | ")[-1] == "vs slow |"
    assert row[-1] == "-67 % at 17.0 dB; slow never reached 22.0 |"  # 10 against 30 iterations to FBP - 3 dB
    assert row[-4:-1] == ["10", "20", "30"]
    slow_row = next(line for line in table.splitlines() if line.startswith("| slow |"))
    assert slow_row.endswith("|  |")


def test_curve_panels_name_the_scan():
    """The curve panel's title names the photon count, a scan without noise and one simulated on the
    reconstruction grid (the tables' case headings say the same)."""
    curves = load_bench("recon_curves")
    base = {"geometry": "parallel", "views": 90, "phantom_seed": 1000, "photons": 1e5, "simulated_on": "2x finer grid, PyTorch projector"}
    assert curves.panel_title(base) == "parallel, 90 views, seed 1000, 100000 photons"
    exact = {**base, "photons": 0.0, "simulated_on": bench_recon.SIMULATED_ON["same"]}
    assert curves.panel_title(exact) == "parallel, 90 views, seed 1000, no noise, simulated on the reconstruction grid"
    assert curves.on_own_grid(exact) and not curves.on_own_grid({k: v for k, v in base.items() if k != "simulated_on"})


def test_name_by_settings_names_the_3dgr_scale_rule():
    """``--name-by-settings`` names a 3DGR-CT start run with another scale rule, and only the 3DGR-CT starts."""
    result = {"set": {}, "ini_sigma_3dgr": 0.6, "runs": {"3dgr-ct-grow": 1, "3dgr-ct": 2, "medgmae-grow": 3}}
    assert list(recon_summary._named_by_settings(result)["runs"]) == ["3dgr-ct-grow [ini_sigma=0.6]", "3dgr-ct [ini_sigma=0.6]", "medgmae-grow"]
    both = {"set": {"tv_weight": 0.001}, "ini_sigma_3dgr": 0.6, "runs": {"3dgr-ct": 1, "toolkit": 2}}
    assert list(recon_summary._named_by_settings(both)["runs"]) == ["3dgr-ct [tv_weight=0.001 ini_sigma=0.6]", "toolkit [tv_weight=0.001]"]
    published = {"set": {}, "ini_sigma_3dgr": 0.15, "runs": {"3dgr-ct": 1}}
    assert list(recon_summary._named_by_settings(published)["runs"]) == ["3dgr-ct"]


def test_curve_colours_follow_the_start_unless_two_runs_share_it(tmp_path):
    """A renamed run (``--name-by-settings``) is drawn in its start's colour; two runs of one start get colours
    of their own (read back from the PNG's pixels)."""
    from PIL import Image

    curves = load_bench("recon_curves")
    assert curves.start_of("3dgr-ct-grow [ini_sigma=0.6]") == curves.start_of("3dgr-ct-grow (x)") == "3dgr-ct-grow"
    flat = lambda v: {"curve": [[0, v], [10, v]], "curve_seconds": [0.0, 1.0]}  # noqa: E731
    base = {"geometry": "cone", "views": 20, "phantom_seed": 1, "photons": 1e5, "best_fbp_psnr": 20.0}
    pink, green = (240, 80, 160), (30, 150, 60)
    one = {**base, "runs": {"3dgr-ct-grow [ini_sigma=0.6]": flat(15.0), "medgmae-grow": flat(25.0)}}
    curves.plot_curves(one, str(tmp_path / "one.png"))
    colours = {c for _, c in Image.open(tmp_path / "one.png").convert("RGB").getcolors(1 << 20)}
    assert pink in colours and (150, 0, 150) in colours
    two = {**base, "runs": {"3dgr-ct": flat(15.0), "3dgr-ct [ini_sigma=0.6]": flat(25.0)}}
    curves.plot_curves(two, str(tmp_path / "two.png"))
    colours = {c for _, c in Image.open(tmp_path / "two.png").convert("RGB").getcolors(1 << 20)}
    assert green not in colours and curves.OTHER_COLOURS[0] in colours and curves.OTHER_COLOURS[1] in colours


def test_the_backprojection_bench_runs_and_compares_equal_outputs(tmp_path):
    """bench/fbp_backprojection.py at a toy size: both paths timed, their outputs equal to float32 rounding."""
    bench = load_bench("fbp_backprojection")
    out = tmp_path / "fbp.json"
    assert bench.main(["--size", "4", "16", "12", "--views", "6", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result["median_seconds"]) == {"per_slice", "grid"} and result["views"] == 6
    assert result["max_abs_difference"] <= 1e-5 * result["max_abs_value"] and result["max_abs_value"] > 0


def test_the_cone_backprojection_bench_measures_both_variants_in_fresh_processes(tmp_path):
    """bench/fbp_backprojection.py --cone at a toy size: slabs and the whole grid, each with its own peak memory,
    and the same volume."""
    bench = load_bench("fbp_backprojection")
    out = tmp_path / "cone.json"
    assert bench.main(["--cone", "--size", "4", "12", "10", "--views", "5", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["kind"] == "cone" and set(result["median_seconds"]) == set(result["peak_rss_mib"]) == {"slabs", "grid"}
    assert min(result["peak_rss_mib"].values()) > 0 and result["max_abs_value"] > 0
    assert result["relative_sum_difference"] < 1e-5
