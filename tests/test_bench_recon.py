"""bench/recon.py and bench/recon_summary.py at toy sizes, so the study's scripts cannot rot between runs."""

import json
import math

import pytest
import torch

from medgmae.networks.medgmae import MedGMAE
from medgmae.preprocessing import PreprocessingSpec

from bench_helpers import load_bench
from model_helpers import tiny_model_file


bench_recon, recon_summary = load_bench("recon"), load_bench("recon_summary")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "model.pt")


def test_every_start_runs_and_the_summary_reads_it(model_file, tmp_path, capsys):
    out = tmp_path / "case.json"
    args = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "4", "--eval-every", "2", "--num-gaussians", "300", "--device", "cpu", "--compare-medgmae",
            "--checkpoint", str(model_file), "--overlap", "4", "--json", str(out), "--png", str(tmp_path / "case.png")]  # fmt: skip
    assert bench_recon.main(args) == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert set(runs) == {"random", "toolkit", "3dgr-ct", "medgmae", "medgmae-dense", "medgmae-grow", "medgmae-3dgr"}
    assert runs["3dgr-ct"]["preset"] == runs["medgmae-3dgr"]["preset"] == "3dgr-ct"
    assert result["num_gaussians_3dgr"] == 100  # the published density floors at 100 for a toy volume
    m, dense = runs["medgmae"]["initial_gaussians"], runs["medgmae-dense"]["initial_gaussians"]
    assert dense == (300 // m) * m and dense > m  # subdivided to the budget
    assert runs["medgmae-grow"]["preset_overrides"]["densify_every"] == 10
    assert all(r["density_rounds"] == [] for r in runs.values())  # recorded (4 iterations: no round yet)
    assert len(result["targets"]) == 5 and result["targets"][2] == pytest.approx(result["best_fbp_psnr"], abs=0.01)
    for r in runs.values():  # seconds: the start's, then growing with every iteration (steps and density control)
        secs = r["curve_seconds"]
        assert len(secs) == len(r["curve"]) and secs[0] == pytest.approx(r["init_seconds"], abs=1e-3)
        assert all(b > a for a, b in zip(secs, secs[1:]))
        assert [i for i, _ in r["loss_curve"]] == [i for i, _ in r["curve"][1:]]  # the fitted loss at each evaluation
        assert all(math.isfinite(v) and v > 0 for _, v in r["loss_curve"])
        for hit in filter(None, r["iterations_to_psnr"].values()):
            assert hit["seconds"] == pytest.approx(secs[[i for i, _ in r["curve"]].index(hit["iteration"])], abs=1e-3)
    capsys.readouterr()
    assert recon_summary.main([str(out), "--png", str(tmp_path / "all.png"), "--png-seconds", str(tmp_path / "s.png")]) == 0
    table = capsys.readouterr().out
    assert "| medgmae-dense | toolkit |" in table and "parallel, 8 views" in table
    assert (tmp_path / "all.png").read_bytes()[:4] == (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "all.png").read_bytes() != (tmp_path / "s.png").read_bytes()
    with pytest.raises(ValueError, match="x_axis"):
        load_bench("recon_curves").plot_curves(result, str(tmp_path / "bad.png"), x_axis="minutes")
    # a second model's runs of the same case: kept apart by --name-by-model, else the later file's replace
    other = json.loads(out.read_text())
    assert result["medgmae_model"]["overlap"] == 4
    other["medgmae_model"]["checkpoint"] = "models/e150.pt"
    other["runs"] = {k: v for k, v in other["runs"].items() if k == "medgmae-grow"}
    other["runs"]["medgmae-grow"]["final_psnr"] = 99.0
    (tmp_path / "e150.json").write_text(json.dumps(other))
    assert recon_summary.main([str(out), str(tmp_path / "e150.json"), "--name-by-model"]) == 0
    captured = capsys.readouterr()
    assert f"| medgmae-grow ({model_file.parent.name}, overlap 4) | toolkit |" in captured.out and "| medgmae-grow (e150, overlap 4) | toolkit |" in captured.out
    assert "| random | toolkit |" in captured.out and captured.err == ""
    assert recon_summary.main([str(out), str(tmp_path / "e150.json"), "--name-by-model", "--starts", "toolkit", "medgmae-grow"]) == 0
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| init", "| toolkit", f"| medgmae-grow ({model_file.parent.name}, overlap 4)", "| medgmae-grow (e150, overlap 4)"]
    assert recon_summary.main([str(out), str(tmp_path / "e150.json")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("| medgmae-grow | toolkit |") == 1 and "| 99.00 |" in captured.out
    assert "e150.json: its start 'medgmae-grow' replaces the one of" in captured.err
    # runs of one start with other reconstruction settings: kept apart by --name-by-settings
    other["set"] = {"coarse_iterations": 0}
    (tmp_path / "nocoarse.json").write_text(json.dumps(other))
    assert recon_summary.main([str(out), str(tmp_path / "nocoarse.json"), "--name-by-settings", "--starts", "medgmae-grow"]) == 0
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| init", "| medgmae-grow", "| medgmae-grow [coarse_iterations=0]"]
    # --at: the PSNR and the fitted loss of each start at the given iterations, from its curves
    assert recon_summary.main([str(out), "--at", "2", "3", "--starts", "toolkit"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| toolkit |")).split(" | ")
    t = result["runs"]["toolkit"]
    assert row[7] == f"{dict(t['curve'])[2]:.2f} ({dict(t['loss_curve'])[2]:.3g})" and row[8] == "-"  # 3: not evaluated
    peak_it = max(t["curve"], key=lambda c: c[1])[0]
    assert row[9] == (f"{dict(t['loss_curve'])[peak_it]:.3g} -> {dict(t['loss_curve'])[4]:.3g}" if peak_it else "-")
    # a scan measured without noise is a case of its own, named so
    quiet = {**other, "photons": 0.0, "set": {}}
    (tmp_path / "quiet.json").write_text(json.dumps(quiet))
    assert recon_summary.main([str(out), str(tmp_path / "quiet.json")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.count("**parallel, 8 views, phantom seed 1000") == 2
    assert "**parallel, 8 views, phantom seed 1000, no noise**" in captured.out


def test_recon_profile_parts_add_up_to_a_step(tmp_path):
    """bench/recon_profile.py at a tiny size: every part is timed, they sum to about one step, and the profiled
    iterations advance the reconstructor like steps (its own methods, so the script cannot rot)."""
    profile = load_bench("recon_profile")
    out = tmp_path / "p.json"
    assert profile.main(["--threads", "1", "--views", "6", "--num-gaussians", "200", "--iterations", "2",
                         "--warmup", "0", "--json", str(out)]) == 0
    ms = json.loads(out.read_text())["ms"]
    assert all(ms[k] >= 0 for k in profile.PARTS) and ms["render"] > 0 and ms["forward project"] > 0
    assert ms["sum of parts"] == pytest.approx(sum(ms[k] for k in profile.PARTS))


def test_partial_results_are_written_and_the_run_is_unchanged(tmp_path, monkeypatch):
    """--partial-every: the JSON is written after every segment, marked incomplete, and the finished run's curve
    equals that of an unsegmented run (the segments resume exactly)."""
    import medgmae.files

    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "6", "--eval-every", "2", "--num-gaussians", "200", "--device", "cpu", "--only", "toolkit",
            "3dgr-ct"]  # fmt: skip
    whole, parts = tmp_path / "whole.json", tmp_path / "parts.json"
    assert bench_recon.main([*base, "--json", str(whole)]) == 0
    saved, original = [], medgmae.files.save_json_atomic
    monkeypatch.setattr(medgmae.files, "save_json_atomic", lambda obj, path: (saved.append(obj), original(obj, path)))
    assert bench_recon.main([*base, "--json", str(parts), "--partial-every", "2"]) == 0
    partial = [(name, r["completed_iterations"]) for obj in saved[:-1] for name, r in obj["runs"].items()
               if not r["complete"]]  # fmt: skip
    assert ("toolkit", 2) in partial and ("3dgr-ct", 4) in partial and "date" in saved[0]
    a, b = json.loads(whole.read_text())["runs"], json.loads(parts.read_text())["runs"]
    for name in ("toolkit", "3dgr-ct"):
        assert b[name]["complete"] and b[name]["curve"] == a[name]["curve"]


def test_summary_marks_incomplete_runs(tmp_path, capsys):
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "4", "--eval-every", "2", "--num-gaussians", "200", "--device", "cpu", "--only", "toolkit"]
    out = tmp_path / "r.json"
    assert bench_recon.main([*base, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
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
    run = json.loads(held.read_text())["runs"]["toolkit"]
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
    run = json.loads((tmp_path / "b100.json").read_text())["runs"]["toolkit"]
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


@pytest.mark.parametrize("pair, message", [("foo=1", "foo is not a reconstruction setting"), ("split_rule", "KEY=VALUE"),
                                           ("seed=3", "use --seed"), ("split_rule=foo", "split_rule must be one of"),
                                           ("split_offset=1.5", "split_offset must be in")])  # fmt: skip
def test_recon_set_refuses_bad_settings(pair, message, capsys):
    """bench/recon.py --set: an unknown, malformed, flagged or invalid setting is refused before any simulation."""
    with pytest.raises(SystemExit) as e:
        bench_recon.main(["--set", pair])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--fit-iterations", "-1"], "--fit-iterations: expected a non-negative integer"),
                                           (["--views", "0"], "--views: expected a positive integer"),
                                           (["--voxel", "1", "nan", "1"], "--voxel: expected a positive number"),
                                           (["--photons", "-5"], "--photons: expected a finite number >= 0")])  # fmt: skip
def test_recon_refuses_nonsense_flags(argv, message, capsys):
    """bench/recon.py: a count or size out of range is a usage error naming the flag, before any simulation."""
    with pytest.raises(SystemExit) as e:
        bench_recon.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


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
    runs = {f"tv {float(f.stem[2:]):g}": json.loads(f.read_text())["runs"]["toolkit"] for f in files}
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


def test_simulation_grids():
    """The 2x finer simulation sees detail the reconstruction grid cannot hold; the same-grid diagnostic measures
    the reference itself (no noise: exactly its projections)."""
    from recon.geometry import CTGeometry
    from recon.projectors import TorchProjector

    geom = CTGeometry.parallel((8, 16, 16), (8.0, 8.0, 8.0), num_angles=6)
    fine_proj, fine_ref = bench_recon.simulate(3, geom, None, torch.device("cpu"), grid="finer")
    same_proj, same_ref = bench_recon.simulate(3, geom, None, torch.device("cpu"), grid="same")
    assert fine_ref.shape == same_ref.shape == geom.volume_shape
    exact = TorchProjector(geom)(same_ref)
    assert torch.allclose(same_proj, exact, atol=1e-6)  # no noise: the reference's own projections
    rel = float((fine_proj - exact).norm() / exact.norm())
    assert 1e-4 < rel < 0.2  # the finer phantom differs from its block mean, but measures the same object
    with pytest.raises(ValueError, match="grid"):
        bench_recon.simulate(3, geom, None, torch.device("cpu"), grid="coarse")


def test_zero_shot_levels_counts_what_each_level_keeps(tmp_path, capsys):
    """bench/zero_shot_levels.py on a MedGMAE* whose level 2 is switched off by hand (intensity bias -> 0 under
    the clamp rule) and level 1 left alone: the table reports level 2 dead and carrying no mass."""
    torch.manual_seed(0)
    m = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, render_backend="torch", multi_level=True,
                level_intensity="clamp")  # fmt: skip
    with torch.no_grad():
        m.levels[1].heads.weight[10].zero_()
        m.levels[1].heads.bias[10] = -50.0  # tanh -> -1: child intensity = clamp(parent - 0.1) = 0 for parents <= 0.1
        m.head_intensity.weight.zero_()
        m.head_intensity.bias.fill_(-3.0)  # level 0 at sigmoid(-3) = 0.047; level 1 stays within 0.1 of it
    m.preprocessing = PreprocessingSpec(spacing=12.0, input_size=16, patch_size=8)
    path = tmp_path / "star.pt"
    torch.save(m.model_checkpoint(), path)
    out = tmp_path / "levels.json"
    assert load_bench("zero_shot_levels").main([str(path), "--seeds", "1", "2", "--json", str(out)]) == 0
    levels = json.loads(out.read_text())[str(path)]["levels"]
    assert [lv["gaussians"] for lv in levels] == [4, 8, 16]
    assert levels[0]["alive"] == 4 and levels[2]["alive"] == 0 and levels[2]["mass_share"] == 0.0
    assert abs(levels[0]["median_intensity"] - torch.sigmoid(torch.tensor(-3.0)).item()) < 1e-6
    assert abs(sum(lv["mass_share"] for lv in levels) - 1.0) < 1e-9
    assert "| star (clamp) | 2 | 16 | 0.0 |" in capsys.readouterr().out


def test_fit_starts_run_on_request_and_start_nearer_the_fbp(tmp_path):
    """``toolkit-fit`` runs only when named, and its fitted intensities start nearer the reference than the
    toolkit start's single gain (same Gaussians, fitted to the FBP of 8 noisy views)."""
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "2", "--eval-every", "2", "--num-gaussians", "200", "--device", "cpu"]  # fmt: skip
    out = tmp_path / "r.json"
    assert bench_recon.main([*base, "--only", "toolkit", "toolkit-fit", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"toolkit", "toolkit-fit"}
    assert runs["toolkit-fit"]["initial_psnr"] > runs["toolkit"]["initial_psnr"]
    assert {"toolkit-fit", "medgmae-fit", "medgmae-fit-3dgr"} <= set(bench_recon.ON_REQUEST)
    assert bench_recon.main([*base, "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["runs"]) == {"random", "toolkit", "3dgr-ct"}


def test_grown_3dgr_start_runs_on_request_under_the_toolkit_optimiser(tmp_path):
    """``3dgr-ct-grow`` starts from 3DGR-CT's Gaussians (the count of the ``3dgr-ct`` start), runs the toolkit
    optimiser with the sparse-start growth (a round every 10 iterations, the first 60 % of the run) and grows."""
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "20", "--eval-every", "4", "--num-gaussians", "200", "--num-gaussians-3dgr", "20",
            "--device", "cpu"]  # fmt: skip
    out = tmp_path / "g.json"
    assert bench_recon.main([*base, "--only", "3dgr-ct", "3dgr-ct-grow", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    grow, pub = res["runs"]["3dgr-ct-grow"], res["runs"]["3dgr-ct"]
    assert "3dgr-ct-grow" in bench_recon.ON_REQUEST
    assert grow["preset"] == "toolkit" and pub["preset"] == "3dgr-ct"
    assert grow["preset_overrides"]["densify_every"] == 10 and grow["preset_overrides"]["max_gaussians"] == 200
    assert grow["initial_gaussians"] == pub["initial_gaussians"] == res["num_gaussians_3dgr"] == 20
    assert [r["iteration"] for r in grow["density_rounds"]] == [10]
    assert grow["final_gaussians"] > grow["initial_gaussians"]
    assert res["ini_sigma_3dgr"] == 0.15  # the published scale rule unless --ini-sigma-3dgr
    assert bench_recon.main([*base, "--only", "3dgr-ct-grow", "--ini-sigma-3dgr", "0.6", "--json", str(out)]) == 0
    wide = json.loads(out.read_text())
    assert wide["ini_sigma_3dgr"] == 0.6 and wide["runs"]["3dgr-ct-grow"]["initial_psnr"] != grow["initial_psnr"]
    q, q_wide = grow["initial_scale_voxels_p10_p50_p90"], wide["runs"]["3dgr-ct-grow"]["initial_scale_voxels_p10_p50_p90"]
    assert q == sorted(q) and q_wide == pytest.approx([4 * v for v in q], rel=1e-5)  # the rule is linear in ini_sigma


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
    result = json.loads(out.read_text())
    assert set(result["median_seconds"]) == {"per_slice", "grid"} and result["views"] == 6
    assert result["max_abs_difference"] <= 1e-5 * result["max_abs_value"] and result["max_abs_value"] > 0


def test_the_cone_backprojection_bench_measures_both_variants_in_fresh_processes(tmp_path):
    """bench/fbp_backprojection.py --cone at a toy size: slabs and the whole grid, each with its own peak memory,
    and the same volume."""
    bench = load_bench("fbp_backprojection")
    out = tmp_path / "cone.json"
    assert bench.main(["--cone", "--size", "4", "12", "10", "--views", "5", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "cone" and set(result["median_seconds"]) == set(result["peak_rss_mib"]) == {"slabs", "grid"}
    assert min(result["peak_rss_mib"].values()) > 0 and result["max_abs_value"] > 0
    assert result["relative_sum_difference"] < 1e-5


@pytest.mark.parametrize("argv, message", [
    (["--only", "medgmae-grwo"], "unknown start(s) medgmae-grwo; the starts are random, toolkit,"),
    (["--only", "bogus", "toolkit"], "unknown start(s) bogus"),
    (["--only", "toolkit", "medgmae-grow"], "--only medgmae-grow: the MedGMAE starts need --compare-medgmae"),
])  # fmt: skip
def test_recon_refuses_unknown_only_starts(argv, message, capsys, monkeypatch):
    """bench/recon.py --only: a misspelt start, or a zero-shot one without its model, is a usage error before any
    simulation (not a run that leaves out the start and writes empty results)."""
    monkeypatch.setattr(bench_recon, "run_case", lambda *a, **k: pytest.fail("ran despite a bad --only"))
    with pytest.raises(SystemExit) as e:
        bench_recon.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_only_names_are_the_starts_made(model_file):
    """The names ``--only`` accepts are exactly the starts :func:`starts` makes, with and without a model."""
    import argparse

    args = argparse.Namespace(num_gaussians_3dgr=None, ini_sigma_3dgr=0.15, num_gaussians=100, seed=0,
                              fit_iterations=1, compare_medgmae=False, checkpoint=str(model_file), overlap=4)  # fmt: skip
    geom = bench_recon.CTGeometry.parallel((8, 16, 16), (12.0, 8.0, 8.0), num_angles=4)
    inits, _ = bench_recon.starts(args, torch.zeros(8, 16, 16), geom, torch.device("cpu"), {})
    assert tuple(inits) == bench_recon.PLAIN_STARTS
    args.compare_medgmae = True
    inits, _ = bench_recon.starts(args, torch.zeros(8, 16, 16), geom, torch.device("cpu"), {})
    assert tuple(inits) == bench_recon.PLAIN_STARTS + bench_recon.MEDGMAE_STARTS
