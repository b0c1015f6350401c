"""The count of Gaussians density control leads to (recon.growth.project_growth) against plain integer compounding
and a real run (a --refit run's, stopped early, too), and the time left of a growing run (recon.growth.RunPace)
against the analytic answer of a fake clock whose iterations cost in proportion to the count, in the lines and on
the bar of a fake terminal."""

import re
import sys
from argparse import Namespace

import pytest
import torch
import tqdm.std

from medgmae import terminal
from medgmae.gaussians import Gaussians3D
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
from recon.geometry import CTGeometry
from recon.growth import RunPace, growth_note, progress_bar, project_growth, round_iterations, work_left
from recon.presets import sparse_start_growth, toolkit_cap
from recon.projectors import TorchProjector
from recon.reconstruct_start import density_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _compound(iterations: int, start: int, every: int, first: int, until: int, percent: int, cap: int):
    """Plain integer compounding: after each iteration ``it`` in ``[first, until]`` that ``every`` divides (and
    before the last), ``ceil(start * percent / 100)`` more, up to ``cap``. Returns ``([(it, count)], cap_at)``."""
    rounds, count, cap_at = [], start, None
    for it in range(every, iterations, every):
        if first <= it <= until:
            count = min(cap, count + (count * percent + 99) // 100) if count < cap else count
            rounds.append((it, count))
            if cap_at is None and count >= cap:
                cap_at = it
    return rounds, cap_at


@pytest.mark.parametrize(
    "iterations, start, overrides, expected",
    [  # (iterations, start, overrides, (every, first, until, percent, cap))
        (1000, 655_360, toolkit_cap(655_360), (100, 100, 600, 5, 6_553_600)),  # README's 256 x 256 x 80 scan
        (4000, 5000, toolkit_cap(5000), (100, 100, 2400, 5, 200_000)),  # the review's long run
        (10_000, 20_000, toolkit_cap(20_000), (100, 100, 6000, 5, 200_000)),  # reaches the cap
        (300, 40, sparse_start_growth(2000), (10, 10, 180, 50, 2000)),  # the zero-shot start's growth
        (500, 1000, {"densify_until": 450, "max_gaussians": 1500}, (100, 100, 450, 5, 1500)),
    ],
)
def test_the_projection_is_plain_integer_compounding(iterations, start, overrides, expected):
    every, first, until, percent, cap = expected
    cfg = GaussianReconConfig.preset("toolkit", iterations, **overrides)
    rounds, cap_at = _compound(iterations, start, every, first, until, percent, cap)
    got = project_growth(cfg, 0, start)
    assert got.rounds == rounds and got.final == rounds[-1][1] and got.cap_at == cap_at
    assert round_iterations(cfg) == [it for it, _ in rounds]
    # from the middle of the run: the rounds still to come, from the count then
    mid, at_mid = rounds[len(rounds) // 2]
    assert project_growth(cfg, mid, at_mid).rounds == rounds[len(rounds) // 2 + 1 :]


def test_the_projected_counts_of_the_documented_runs():
    """README and --help: a default run of 1,000 iterations ends at up to 1.34x its start (655,360 Gaussians of a
    256 x 256 x 80 scan: 878,248), 4,000 iterations at 3.2x (5,000: 16,147, where a real run measured 15,789 with
    pruning), the cap of ten times the start from 8,000 iterations on."""
    def final(iterations, start):
        return project_growth(GaussianReconConfig.preset("toolkit", iterations, **toolkit_cap(start)), 0, start)

    assert final(1000, 655_360).final == 878_248 and round(878_248 / 655_360, 2) == 1.34
    assert final(4000, 5000).final == 16_147 and round(16_147 / 5000, 1) == 3.2
    assert final(7900, 20_000).cap_at is None and final(8000, 20_000).cap_at == 4800
    note = growth_note(GaussianReconConfig.preset("toolkit", 4000, **toolkit_cap(5000)), 0, 5000)
    assert "5,000 Gaussians now, at most 16,147 at the end of the run (3.23x: 24 rounds from iteration 100 to 2,400" in note
    assert "pruning only lowers it" in note and "under the cap of 200,000 (--max-gaussians)" in note
    capped = growth_note(GaussianReconConfig.preset("toolkit", 10_000, max_gaussians=30_000), 2000, 25_000)
    assert "reaching the cap of 30,000 (--max-gaussians) at iteration 2,400 at the earliest" in capped
    assert "no round left" in growth_note(GaussianReconConfig.preset("toolkit", 2), 0, 100)
    assert "at most 2,100 at the end of the run (1.05x: 1 round after iteration 100," in growth_note(GaussianReconConfig.preset("toolkit", 300), 0, 2000)
    assert project_growth(GaussianReconConfig.preset("3dgr-ct", 1000), 0, 100) is None
    assert "the growth follows the data" in growth_note(GaussianReconConfig.preset("3dgr-ct", 1000), 0, 100)


def _unpruned_run():
    """A 12^3 ball seen in 6 parallel views, 40 random Gaussians, 30 iterations with a round every 5 from 5 to 25 adding
    30 % each, capped at 90, pruning off: ``(geometry, projections, start, config)``."""
    g = CTGeometry.parallel((12, 12, 12), 1.0, num_angles=6)
    z, y, x = torch.meshgrid(*(torch.arange(12.0),) * 3, indexing="ij")
    proj = TorchProjector(g)(0.02 * (((z - 5.5) ** 2 + (y - 6) ** 2 + (x - 5) ** 2) < 16).float())
    gen = torch.Generator().manual_seed(0)
    n = 40
    init = Gaussians3D(2 + 8 * torch.rand(1, n, 3, generator=gen), torch.full((1, n, 3), 1.5),
                       torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4), 0.01 * torch.rand(1, n, generator=gen))  # fmt: skip
    cfg = GaussianReconConfig.preset("toolkit", 30, densify_from=5, densify_every=5, densify_until=25, densify_fraction=0.3,
                                     max_gaussians=90, prune_intensity=0.0, prune_scale=0.0, eval_every=30)  # fmt: skip
    return g, proj, init, cfg


def test_a_real_run_without_pruning_ends_at_the_projected_count():
    """Pruning off (no intensity or size bound): every round adds what the projection says, the cap included."""
    g, proj, init, cfg = _unpruned_run()
    n = init.num_gaussians
    rec = GaussianReconstructor(TorchProjector(g), proj, init, cfg)
    result = rec.run(progress=False)
    expected, cap_at = _compound(30, n, 5, 5, 25, 30, 90)
    assert expected == [(5, 52), (10, 68), (15, 89), (20, 90), (25, 90)] and cap_at == 20
    assert [(r["iteration"], r["num_gaussians"]) for r in result.density_rounds] == expected
    assert result.gaussians.num_gaussians == project_growth(cfg, 0, n).final == 90


def test_the_time_left_of_a_growing_run_is_the_analytic_one():
    """Cost per iteration in proportion to the count, 5 % growth per round over 60 % of 4,000 iterations: the time
    left is known; RunPace gives it at every iteration, the average pace since the start says far less."""
    cfg = GaussianReconConfig.preset("toolkit", 4000, **toolkit_cap(5000))
    rate, start = 3.0 / 50 / 5000, 5000  # 3 s per 50 iterations of 5,000 Gaussians, as measured at the start
    checks = [50, 1000, 2000, 3000]
    now, said = [0.0], {}
    pace, average = RunPace(0, 4000, cfg, start, 50, clock=lambda: now[0]), terminal.Pace(0, 4000, lambda: now[0])
    counts, count, spent = dict(_compound(4000, start, 100, 100, 2400, 5, 200_000)[0]), start, []
    for it in range(1, 4001):
        spent.append(rate * count)
        now[0] += spent[-1]
        count = counts.get(it, count)
        pace.record(it, count)
        if it in checks:
            said[it] = (pace.seconds_left(it), average.seconds_left(it))
    for it, (new, old) in said.items():
        actual = sum(spent[it:])
        assert new == pytest.approx(actual, rel=1e-9), (it, new, actual)
        assert old < 0.75 * actual, (it, old, actual)  # the average pace: 4.0 min said against 11.5 in the review
    assert pace.left(4000) == "" and pace.seconds_left(4000) is None


def test_a_fixed_cost_per_iteration_is_separated_once_the_counts_spread():
    """With a cost per iteration besides the Gaussians' (the projections), cost in proportion to the count
    overstates the growth of the cost: while the counts seen are within 1.2 times each other RunPace says more time
    than is left, never less, and is nearer the truth than the average pace; once they spread (four 5 % rounds)
    the fixed cost and the cost per Gaussian are told apart and the estimate is exact."""
    cfg = GaussianReconConfig.preset("toolkit", 1000, **toolkit_cap(2000))
    rounds = dict(_compound(1000, 2000, 100, 100, 600, 5, 20_000)[0])
    now, count, spent, said = [0.0], 2000, [], {}
    pace, average = RunPace(0, 1000, cfg, 2000, 50, clock=lambda: now[0]), terminal.Pace(0, 1000, lambda: now[0])
    for it in range(1, 1001):
        spent.append(0.01 + 2e-5 * count)
        now[0] += spent[-1]
        count = rounds.get(it, count)
        pace.record(it, count)
        said[it] = (pace.seconds_left(it), average.seconds_left(it))
    for it in (50, 250, 350):  # counts 2,000 to 2,315: within 1.2 times each other
        actual = sum(spent[it:])
        new, old = said[it]
        assert actual < new < 1.1 * actual and abs(new - actual) < abs(old - actual), (it, new, old, actual)
    for it in (450, 550, 800):  # 2,431 Gaussians from iteration 401 on
        assert said[it][0] == pytest.approx(sum(spent[it:]), rel=1e-9), it
    assert pace.seconds_per_gaussian() == pytest.approx(2e-5, rel=1e-9)


def _sparse_start_run(fixed: float, per_gaussian: float, noise: float = 0.0, seed: int = 0):
    """A zero-shot start's run on a fake clock: 126 Gaussians growing by half every 10 iterations from 10 to 120 toward
    16,000 over 200 iterations, an iteration taking ``fixed + per_gaussian * count`` seconds (times ``1 + noise *
    u``, ``u`` uniform in [-1, 1], the first iteration 1 s longer, each 50th 0.3 s: an evaluation; ``noise`` 0: the
    formula alone). Returns ``(seconds of each iteration, count going into each, {iteration: time left said})``."""
    import random

    cfg = GaussianReconConfig.preset("toolkit", 200, **sparse_start_growth(16_000))
    counts = dict(_compound(200, 126, 10, 10, 120, 50, 16_000)[0])
    rng = random.Random(seed)
    now, count, spent, going, said = [0.0], 126, [], [], {}
    pace = RunPace(0, 200, cfg, 126, 50, clock=lambda: now[0])
    for it in range(1, 201):
        going.append(count)
        spent.append((fixed + per_gaussian * count) * (1 + noise * rng.uniform(-1, 1)))
        if noise:
            spent[-1] += (1.0 if it == 1 else 0.0) + (0.3 if it % 50 == 0 else 0.0)
        now[0] += spent[-1]
        count = counts.get(it, count)
        pace.record(it, count)
        said[it] = pace.seconds_left(it)
    return spent, going, said


def test_a_small_start_growing_far_is_not_overstated():
    """An iteration taking a fixed 0.2 s plus 25 us per Gaussian (10.4 s to iteration 50, 80 s in all): from
    iteration 25 on the time left is within 10 % of the analytic one (exact: the formula is RunPace's model), where
    a pace per Gaussian alone, taken over the last 50 iterations, said 14 times too much at iteration 50
    (16.6 min against 70 s)."""
    spent, going, said = _sparse_start_run(0.2, 2.5e-5)
    assert sum(spent[:50]) == pytest.approx(10.416)
    for it in (25, 50, 100, 150, 199):
        actual = sum(spent[it:])
        assert abs(said[it] - actual) < 0.1 * actual, (it, said[it], actual)
        assert said[it] == pytest.approx(actual, rel=1e-9)
    per_gaussian = sum(spent[:50]) / sum(going[:50])  # the pace per Gaussian of the first 50 iterations
    assert per_gaussian * sum(going[50:]) > 14 * sum(spent[50:])


@pytest.mark.parametrize("seed", range(5))
def test_noisy_timings_and_evaluations_keep_the_estimate_near(seed):
    """The same run with each iteration up to 5 % longer or shorter at random (as on a CPU), a first iteration 1 s
    slower and an evaluation every 50 iterations: the medians of the iterations at each count keep the slow ones out
    of the fit (with means the first iteration alone halves the time said at iteration 50). At iteration 50 the
    cost per Gaussian is known from counts of 126 to 639 only, at 100 from up to 4,858: the time left is within 35 %,
    then 10 % and 5 % of what the iterations after took."""
    spent, _, said = _sparse_start_run(0.2, 2.5e-5, noise=0.05, seed=seed)
    for it, within in ((50, 0.35), (100, 0.1), (150, 0.05)):
        actual = sum(spent[it:])
        assert abs(said[it] - actual) < within * actual, (it, said[it], actual)


def test_without_a_projection_the_pace_is_the_recent_one():
    """3DGR-CT's density control (no projection): the seconds per iteration of the last window; an iteration not
    recorded falls back to the average pace."""
    cfg = GaussianReconConfig.preset("3dgr-ct", 300)
    now = [0.0]
    pace = RunPace(0, 300, cfg, 100, window=20, clock=lambda: now[0])
    for it in range(1, 101):
        now[0] += 1.0 if it <= 50 else 3.0  # the iterations grew three times dearer
        pace.record(it, 100)
    assert pace.seconds_left(100) == pytest.approx(3.0 * 200)
    assert pace.seconds_left(99) == pytest.approx(now[0] / 99 * 201)  # not the iteration recorded last
    with pytest.raises(ValueError, match="window"):
        RunPace(0, 10, cfg, 1, window=0)


def test_work_left_counts_each_iteration_with_the_count_before_it():
    cfg = GaussianReconConfig.preset("toolkit", 500, max_gaussians=10_000)  # rounds after 100, 200, 300
    p = project_growth(cfg, 0, 100)
    assert p.rounds == [(100, 105), (200, 111), (300, 117)]
    assert work_left(p, 0, 100, 500) == 100 * 100 + 100 * 105 + 100 * 111 + 200 * 117
    assert work_left(p, 0, 100, 150) == 100 * 100 + 50 * 105  # a stop before the last rounds (a stage's end)
    assert work_left(p, 0, 100, 100) == 100 * 100  # the round after the stop's iteration counts for nothing here


def test_max_gaussians_caps_both_presets_and_the_sparse_start():
    """--max-gaussians replaces the cap of either preset; with the sparse zero-shot start it lowers the budget."""
    args = Namespace(max_gaussians=30_000, split_rule=None, preset="toolkit")
    start = Namespace(num_gaussians=5000)
    assert density_overrides(args, {"init": "fbp"}, start)["max_gaussians"] == 30_000
    assert density_overrides(Namespace(**{**vars(args), "max_gaussians": None}), {"init": "fbp"}, start)["max_gaussians"] == 200_000
    assert density_overrides(args, {"init": "medgmae", "grow_to": 50_000}, start)["max_gaussians"] == 30_000
    assert density_overrides(args, {"init": "medgmae", "grow_to": 20_000}, start)["max_gaussians"] == 20_000
    assert density_overrides(Namespace(**{**vars(args), "preset": "3dgr-ct"}), {"init": "3dgr-ct"}, start) == {"max_gaussians": 30_000}


def test_a_cap_below_the_start_is_refused_before_the_scan_is_read():
    """--max-gaussians below the start's count (given, or the volume's default) is refused; the decoder's sparse
    start under the toolkit preset grows toward a budget the cap may lower."""
    from recon.cli_names import CLIError
    from recon.reconstruct_start import init_settings

    def args(**kw):
        return Namespace(**{"preset": "toolkit", "init": None, "num_gaussians": None, "max_gaussians": 10_000,
                            "resume": False, "checkpoint": "m.pt", "model_spacing": None, **kw})  # fmt: skip

    with pytest.raises(CLIError, match=r"--max-gaussians 10,000 is below the start's 20,000 Gaussians \(the default of --init fbp"):
        init_settings(args(), num_voxels=1000)
    assert init_settings(args()) == {"init": "fbp", "num_gaussians": 20_000}  # the volume not known yet: checked once it is
    with pytest.raises(CLIError, match=r"below the start's 12,000 Gaussians \(--num-gaussians\)"):
        init_settings(args(num_gaussians=12_000))
    assert init_settings(args(num_gaussians=10_000))["num_gaussians"] == 10_000  # equal: no growth
    assert init_settings(args(init="medgmae", num_gaussians=50_000), num_voxels=10_000)["grow_to"] == 50_000
    with pytest.raises(CLIError, match="below the start's 50,000"):
        init_settings(args(preset="3dgr-ct", init="medgmae", num_gaussians=50_000), num_voxels=10_000)


class _Terminal:
    """A fake terminal for stderr: keeps every write of the bars."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def drawn(self) -> str:
        """The bar as last drawn."""
        return [w for w in self.writes if "Gaussian recon" in w][-1].strip("\r\n")


def test_the_bar_shows_the_time_left_of_the_run_pace_not_tqdms(monkeypatch):
    """On a terminal the reconstruction's bar shows RunPace's time left, the analytic one of a growing run (cost in
    proportion to the count), where tqdm's own layout shows the iterations left at its recent rate, far short; the
    bar redraws exactly as often as a plain tqdm bar fed the same iterations on the same clock."""
    cfg = GaussianReconConfig.preset("toolkit", 4000, **toolkit_cap(5000))
    rate, start = 3.0 / 50 / 5000, 5000
    counts = dict(_compound(4000, start, 100, 100, 2400, 5, 200_000)[0])
    checks = (50, 1000, 2000, 3000)
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)

    def simulate(paced: bool):
        """The run's iterations on a fake clock (tqdm's too): the fake terminal and, at the checks, the time left
        the iterations after them actually took, and tqdm's own estimate then."""
        now, count, spent, tqdms = [0.0], start, [], {}
        monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
        monkeypatch.setattr(sys, "stderr", _Terminal())
        pace = RunPace(0, 4000, cfg, start, 50, clock=lambda: now[0])
        if paced:
            lines, bar = progress_bar(cfg, 0, True, lambda n: pace.left(n))
            assert not lines
        else:
            bar = tqdm.std.tqdm(total=4000, desc="Gaussian recon (toolkit)", dynamic_ncols=True)
        drawn = {}
        with bar:
            for it in range(1, 4001):
                spent.append(rate * count)
                now[0] += spent[-1]
                count = counts.get(it, count)
                pace.record(it, count)
                bar.update(1)
                if it in checks:
                    bar.refresh()  # the draw to read (the same in both runs)
                    drawn[it] = sys.stderr.drawn()
                    tqdms[it] = (4000 - it) / bar.format_dict["rate"]  # tqdm's: at its recent rate
        return sys.stderr, drawn, spent, tqdms

    shown, drawn, spent, tqdms = simulate(paced=True)
    plain, plain_drawn, _, _ = simulate(paced=False)
    for it in checks:
        actual = sum(spent[it:])
        assert f"| {it}/4000 [" in drawn[it] and f", about {terminal.duration_text(actual)} left, " in drawn[it], drawn[it]
        if it < 2400:  # growth still to come: tqdm's own estimate falls short (237 s said at iteration 50 of 574)
            assert tqdms[it] < 0.85 * actual, (it, tqdms[it], actual)
        assert f"<{tqdm.std.tqdm.format_interval(tqdms[it])}" in plain_drawn[it] and "<" not in drawn[it], (plain_drawn[it], drawn[it])
    assert len(shown.writes) == len(plain.writes)  # the time left asked at tqdm's own redraws, none added
    assert " left" not in shown.drawn() and "| 4000/4000 [" in shown.drawn()  # the closed bar: no time left


def test_a_run_on_a_terminal_shows_its_pace_on_the_bar(monkeypatch):
    """GaussianReconstructor.run draws its bar with the time left of its pace in place of tqdm's (a redraw at every
    iteration on tqdm's fake clock), and none once the bar is closed."""
    g = CTGeometry.parallel((8, 8, 8), 1.0, num_angles=4)
    proj = TorchProjector(g)(torch.full((8, 8, 8), 0.01))
    n = 20
    init = Gaussians3D(1 + 6 * torch.rand(1, n, 3, generator=torch.Generator().manual_seed(0)), torch.full((1, n, 3), 1.5),
                       torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4), torch.full((1, n), 0.01))  # fmt: skip
    rec = GaussianReconstructor(TorchProjector(g), proj, init, GaussianReconConfig.preset("toolkit", 6, eval_every=3))
    ticks = iter(range(10**6))
    monkeypatch.setattr(tqdm.std, "time", lambda: float(next(ticks)))  # a second a reading: every update redraws
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    rec.run(progress=True)
    draws = [w.strip("\r\n") for w in sys.stderr.writes if "Gaussian recon" in w]
    paced = [d for d in draws if re.search(r"\| [1-5]/6 \[00:\d\d, about \d+\.\d (s|min|h) left, ", d)]
    assert len(paced) >= 5 and not any("<" in d for d in draws), draws
    assert "| 6/6 [" in draws[-1] and " left" not in draws[-1]


def test_the_refit_run_logs_its_growth_to_its_stop(capsys):
    """--refit's run on every view prints the projected growth as the first run does, to the iteration it stops at
    (a round after that iteration runs before it returns); pruning off, the run ends at that count."""
    from recon.reconstruct_command import _refit

    g, proj, init, cfg = _unpruned_run()
    n = init.num_gaussians
    held_out = GaussianReconstructor(TorchProjector(g), proj, init, cfg)  # the first run (not run here)
    capsys.readouterr()
    full, result, *_ = _refit(held_out, lambda: (init, None), 10, progress=False)
    out = capsys.readouterr().out
    rounds = [(it, count) for it, count in _compound(30, n, 5, 5, 25, 30, 90)[0] if it <= 10]
    assert rounds == [(5, 52), (10, 68)]
    assert ("density control: 40 Gaussians now, at most 68 at iteration 10, where the run stops (1.70x: 2 rounds from "
            "iteration 5 to 10, each adding 30 % of the count") in out, out  # fmt: skip
    assert result.iterations == 10 and result.gaussians.num_gaussians == 68
    assert [(r["iteration"], r["num_gaussians"]) for r in result.density_rounds] == rounds
    assert "at most 52 at iteration 9, where the run stops" in growth_note(cfg, 0, n, stop=9)
    assert "at the end of the run" in growth_note(cfg, 0, n, stop=30) and "at most 90" in growth_note(cfg, 0, n, stop=30)
