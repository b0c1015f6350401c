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
    result = json.loads(out.read_text(encoding="utf-8"))
    _check_every_start(result)
    capsys.readouterr()
    _check_the_summary_and_its_pictures(out, result, tmp_path, capsys)
    other = _check_a_second_models_runs(out, result, model_file, tmp_path, capsys)
    _check_the_summary_options(out, result, other, tmp_path, capsys)


def _check_every_start(result: dict) -> None:
    """The case's JSON: every start, its preset and initial Gaussians, and each start's curves in seconds."""
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


def _check_the_summary_and_its_pictures(out, result: dict, tmp_path, capsys) -> None:
    """recon_summary.py's table and its two pictures (by iteration and by seconds) of the case."""
    assert recon_summary.main([str(out), "--png", str(tmp_path / "all.png"), "--png-seconds", str(tmp_path / "s.png")]) == 0
    table = capsys.readouterr().out
    assert "| medgmae-dense | toolkit |" in table and "parallel, 8 views" in table
    assert (tmp_path / "all.png").read_bytes()[:4] == (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "all.png").read_bytes() != (tmp_path / "s.png").read_bytes()
    with pytest.raises(ValueError, match="x_axis"):
        load_bench("recon_curves").plot_curves(result, str(tmp_path / "bad.png"), x_axis="minutes")


def _check_a_second_models_runs(out, result: dict, model_file, tmp_path, capsys) -> dict:
    """A second model's runs of the same case: kept apart by --name-by-model, else the later file's replace.
    Returns that second file's content (one start, medgmae-grow), for the checks that follow."""
    other = json.loads(out.read_text(encoding="utf-8"))
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
    return other


def _check_the_summary_options(out, result: dict, other: dict, tmp_path, capsys) -> None:
    """--name-by-settings, --at, and a scan measured without noise as a case of its own."""
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
    a, b = json.loads(whole.read_text(encoding="utf-8"))["runs"], json.loads(parts.read_text(encoding="utf-8"))["runs"]
    for name in ("toolkit", "3dgr-ct"):
        assert b[name]["complete"] and b[name]["curve"] == a[name]["curve"]


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
    levels = json.loads(out.read_text(encoding="utf-8"))[str(path)]["levels"]
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
    runs = json.loads(out.read_text(encoding="utf-8"))["runs"]
    assert set(runs) == {"toolkit", "toolkit-fit"}
    assert runs["toolkit-fit"]["initial_psnr"] > runs["toolkit"]["initial_psnr"]
    assert {"toolkit-fit", "medgmae-fit", "medgmae-fit-3dgr"} <= set(bench_recon.ON_REQUEST)
    assert bench_recon.main([*base, "--json", str(out)]) == 0
    assert set(json.loads(out.read_text(encoding="utf-8"))["runs"]) == {"random", "toolkit", "3dgr-ct"}


def test_grown_3dgr_start_runs_on_request_under_the_toolkit_optimiser(tmp_path):
    """``3dgr-ct-grow`` starts from 3DGR-CT's Gaussians (the count of the ``3dgr-ct`` start), runs the toolkit
    optimiser with the sparse-start growth (a round every 10 iterations, the first 60 % of the run) and grows."""
    base = ["--size", "8", "16", "16", "--voxel", "12", "8", "8", "--geometry", "parallel", "--views", "8",
            "--iterations", "20", "--eval-every", "4", "--num-gaussians", "200", "--num-gaussians-3dgr", "20",
            "--device", "cpu"]  # fmt: skip
    out = tmp_path / "g.json"
    assert bench_recon.main([*base, "--only", "3dgr-ct", "3dgr-ct-grow", "--json", str(out)]) == 0
    res = json.loads(out.read_text(encoding="utf-8"))
    grow, pub = res["runs"]["3dgr-ct-grow"], res["runs"]["3dgr-ct"]
    assert "3dgr-ct-grow" in bench_recon.ON_REQUEST
    assert grow["preset"] == "toolkit" and pub["preset"] == "3dgr-ct"
    assert grow["preset_overrides"]["densify_every"] == 10 and grow["preset_overrides"]["max_gaussians"] == 200
    assert grow["initial_gaussians"] == pub["initial_gaussians"] == res["num_gaussians_3dgr"] == 20
    assert [r["iteration"] for r in grow["density_rounds"]] == [10]
    assert grow["final_gaussians"] > grow["initial_gaussians"]
    assert res["ini_sigma_3dgr"] == 0.15  # the published scale rule unless --ini-sigma-3dgr
    assert bench_recon.main([*base, "--only", "3dgr-ct-grow", "--ini-sigma-3dgr", "0.6", "--json", str(out)]) == 0
    wide = json.loads(out.read_text(encoding="utf-8"))
    assert wide["ini_sigma_3dgr"] == 0.6 and wide["runs"]["3dgr-ct-grow"]["initial_psnr"] != grow["initial_psnr"]
    q, q_wide = grow["initial_scale_voxels_p10_p50_p90"], wide["runs"]["3dgr-ct-grow"]["initial_scale_voxels_p10_p50_p90"]
    assert q == sorted(q) and q_wide == pytest.approx([4 * v for v in q], rel=1e-5)  # the rule is linear in ini_sigma


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
