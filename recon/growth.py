"""How many Gaussians a run's density control leads to, and how long the rest of a run takes as they grow.

The toolkit's density control (:func:`recon.density.densify_toolkit`) runs after every ``densify_every``-th
iteration from ``densify_from`` to ``densify_until`` (60 % of the run unless set), never after the last
(:func:`round_due`), and densifies ``ceil(densify_fraction * K)`` of the current ``K`` Gaussians (5 %), no more
than the cap ``max_gaussians`` leaves room for (:func:`toolkit_additions`): each adds one Gaussian, a clone or a
split's second child. The growth compounds: 1.05 per round, so 1,000 iterations (6 rounds) end at up to 1.34 times
the start, 4,000 (24 rounds) at 3.2 times, and the toolkit's cap (ten times the start, at least 200,000:
:func:`recon.presets.toolkit_cap`) is reached from about 8,000 iterations on. Pruning (faint and oversized
Gaussians) only removes, so :func:`project_growth` is an upper bound on the count. 3DGR-CT's rule densifies every
Gaussian over a gradient threshold while the count is under its cap: its growth depends on the data and is not
projected.

Each iteration's cost grows with the count (the rendering sums every Gaussian), so the average pace since the start
says too little time is left in a growing run (a 4,000-iteration run from 5,000 Gaussians said 4.0 min left at
iteration 50 and took 11.5). An iteration also costs time that no Gaussian adds (the projector's, the optimiser's
steps): with a few hundred Gaussians that part is nearly all of it, and a pace per Gaussian taken there and
multiplied over the projected growth overstates the rest many times (a 200-iteration run from 126 Gaussians
growing toward 16,000 said 19.9 min left at iteration 50 and took 51 s more). :class:`RunPace` therefore takes an
iteration's time as a fixed part plus a part per Gaussian, the latter fitted over the iterations so far, and sums
them over the projected counts of the iterations to come. Its time left is the one the printed lines give and the
one the bar shows (:func:`progress_bar`, in place of tqdm's own estimate, which assumes a constant cost per
iteration).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Callable, NamedTuple

from medgmae import terminal
from medgmae.words import plural
from recon.presets import GaussianReconConfig

__all__ = ["GrowthProjection", "RunPace", "growth_note", "progress_bar", "project_growth", "round_due",
           "round_iterations", "toolkit_additions", "work_left"]  # fmt: skip

SPREAD = 1.2
"""How many times the smallest count the largest count of the iterations timed so far must be before
:class:`RunPace` separates an iteration's fixed cost from its cost per Gaussian (with counts closer than that the
noise of the timings decides the split)."""

MIN_RUN = 3
"""The fewest iterations at one count whose median time enters the fit (one slow iteration, the first one's set-up
or an evaluation, does not move a median of three)."""


def round_due(config: GaussianReconConfig, iteration: int) -> bool:
    """Whether density control runs after ``iteration`` (counted from 1): from ``densify_from`` to
    ``densify_until``, every ``densify_every`` iterations, never after the last iteration of the run."""
    c = config
    return c.densify_from <= iteration <= c.densify_until and iteration % c.densify_every == 0 and iteration < c.iterations


def round_iterations(config: GaussianReconConfig) -> list[int]:
    """The iterations after which density control runs (:func:`round_due`), in order."""
    return [it for it in range(1, config.iterations + 1) if round_due(config, it)]


def toolkit_additions(config: GaussianReconConfig, count: int) -> int:
    """The Gaussians a toolkit round densifies at most with ``count`` of them: ``ceil(densify_fraction * count)``,
    no more than ``max_gaussians`` leaves room for (none at or over it)."""
    return min(int(math.ceil(config.densify_fraction * count)), max(0, config.max_gaussians - count))


class GrowthProjection(NamedTuple):
    """The count of Gaussians density control leads to, every densified Gaussian adding one and none pruned.

    Attributes:
        rounds: ``(iteration, count after the round)`` of each round still to come.
        final: the count at the end of the run.
        cap_at: the iteration of the round that reaches ``max_gaussians`` (``None``: not reached).
    """

    rounds: list[tuple[int, int]]
    final: int
    cap_at: int | None


def project_growth(config: GaussianReconConfig, iteration: int, count: int, rounds: list[int] | None = None) -> GrowthProjection | None:
    """The upper bound on the count of Gaussians after ``iteration`` with ``count`` Gaussians now (pruning only
    lowers it); ``None`` under 3DGR-CT's density control, whose growth depends on the data.

    Args:
        config: the run's settings.
        iteration: the iteration done (0: the start).
        count: the Gaussians now.
        rounds: the iterations of the rounds to count (default :func:`round_iterations` of ``config``; a run
            stopped early: those up to its stop).
    """
    if config.densify_mode != "toolkit":
        return None
    out, cap_at = [], None
    for it in round_iterations(config) if rounds is None else rounds:
        if it > iteration:
            count += toolkit_additions(config, count)
            out.append((it, count))
            if cap_at is None and count >= config.max_gaussians:
                cap_at = it
    return GrowthProjection(out, count, cap_at)


def work_left(projection: GrowthProjection, iteration: int, count: int, stop: int) -> int:
    """Gaussian-iterations of the iterations ``iteration + 1`` to ``stop``: each iteration's count of Gaussians
    (a round after iteration ``r`` changes the count of iteration ``r + 1`` on), summed."""
    work, at = 0, iteration
    for it, after in projection.rounds:
        if it >= stop:
            break
        work += (it - at) * count
        count, at = after, it
    return work + max(0, stop - at) * count


def growth_note(config: GaussianReconConfig, iteration: int, count: int, stop: int | None = None) -> str:
    """One line on how the count grows from ``count`` Gaussians after ``iteration`` to the end of the run, and the
    cap (``--max-gaussians``).

    Args:
        config: the run's settings.
        iteration: the iteration done (0: the start).
        count: the Gaussians now.
        stop: the iteration a run stopped early ends at (``GaussianReconstructor.run``'s ``stop_at``, the
            ``--refit`` run's); its rounds are those of ``config`` up to it (one after ``stop`` itself included: it
            runs before the run returns). Default: ``config.iterations``.
    """
    cap = f"{config.max_gaussians:,}"
    stop = config.iterations if stop is None else min(int(stop), config.iterations)
    rounds = [it for it in round_iterations(config) if it <= stop]
    projection = project_growth(config, iteration, count, rounds)
    end = "the end of the run" if stop == config.iterations else f"iteration {stop:,}, where the run stops"
    if projection is None:
        left = [it for it in rounds if it > iteration]
        if not left:
            return f"density control: no round left in the run; the count stays at {count:,} Gaussians or below"
        when = f"after iteration {left[0]:,}" if len(left) == 1 else f"from iteration {left[0]:,} to {left[-1]:,}"
        return (f"density control (3dgr-ct): {count:,} Gaussians now; {plural(len(left), 'round')} {when}, each "
                f"cloning or splitting every Gaussian over its gradient threshold while there are fewer than {cap} "
                "(--max-gaussians; one round can up to double the count): the growth follows the data, and each "
                "iteration takes longer as the count grows")  # fmt: skip
    n = len(projection.rounds)
    if n == 0:
        return f"density control: no round left in the run; the count stays at {count:,} Gaussians or below"
    first, last = projection.rounds[0][0], projection.rounds[-1][0]
    when = f"after iteration {first:,}" if n == 1 else f"from iteration {first:,} to {last:,}"
    reach = (f"reaching the cap of {cap} (--max-gaussians) at iteration {projection.cap_at:,} at the earliest"
             if projection.cap_at is not None else f"under the cap of {cap} (--max-gaussians)")  # fmt: skip
    return (f"density control: {count:,} Gaussians now, at most {projection.final:,} at {end} "
            f"({projection.final / max(1, count):.2f}x: {plural(n, 'round')} {when}, each "
            f"adding {config.densify_fraction * 100:g} % of the count; pruning only lowers it), {reach}; each iteration "
            "takes longer as the count grows")  # fmt: skip


class RunPace(terminal.Pace):
    """:class:`medgmae.terminal.Pace` for a reconstruction whose iterations grow dearer as density control adds
    Gaussians. Each iteration is told with :meth:`record`.

    An iteration takes ``a + b * count`` seconds: ``b``, the seconds per Gaussian, is the least-squares slope of the
    median time of an iteration at each count seen so far (:meth:`seconds_per_gaussian`; runs of fewer than
    :data:`MIN_RUN` iterations left out, each count weighted by its iterations, the slope at least 0), and ``a``, the
    fixed part, what that leaves of the last ``window`` iterations' time (evaluations included). The time left is
    ``a`` times the iterations left plus ``b`` times the Gaussian-iterations still to come (:func:`work_left` of
    :func:`project_growth`). While the counts seen are within :data:`SPREAD` times each other, or where ``a`` would
    come out below 0, every second of the last ``window`` iterations is taken to be per Gaussian (``a = 0``): the
    estimate then errs long as long as growth is left. Where the cost per Gaussian rises past the counts seen (a GPU
    flat until it fills) the fitted estimate runs short until the count gets there. Under 3DGR-CT's density control (no projection) it is the
    seconds per iteration of the last ``window`` iterations times those left.

    Args:
        first: the iteration the loop (re)starts from.
        stop: the iteration it stops at.
        config: the run's settings.
        count: the Gaussians at ``first``.
        window: how many of the last iterations give the pace.
        clock: seconds from a fixed origin (default :func:`time.perf_counter`).
        stage: words after the time left of a stage short of the run (``" of the half-resolution stage"``).
    """

    def __init__(self, first: int, stop: int, config: GaussianReconConfig, count: int, window: int = 50,
                 clock: Callable[[], float] | None = None, stage: str = "") -> None:  # fmt: skip
        super().__init__(first, stop, clock)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.config, self.stage = config, stage
        self.rounds = round_iterations(config) if config.densify_mode == "toolkit" else None
        self.samples: deque = deque([(self.start, self.first, int(count))], maxlen=window + 1)
        self.at_count: list[tuple[int, deque, list[int]]] = []  # (count, recent seconds per iteration, [iterations])
        self._slope: tuple[int, float | None] = (-1, None)  # (iterations recorded, seconds per Gaussian then)

    def record(self, step: int, count: int) -> None:
        """Iteration ``step`` is done, density control included, and ``count`` Gaussians go into the next."""
        (t0, s0, before), now = self.samples[-1], self.clock()
        self.samples.append((now, int(step), int(count)))
        if self.rounds is None or step <= s0:
            return
        if not self.at_count or self.at_count[-1][0] != before:  # the iterations at a new count
            self.at_count.append((before, deque(maxlen=256), [0]))
        _, seconds, iterations = self.at_count[-1]
        seconds.extend([(now - t0) / (step - s0)] * min(step - s0, 256))
        iterations[0] += step - s0

    def seconds_per_gaussian(self) -> float | None:
        """``b`` of the class (at least 0); ``None`` while the counts seen do not spread over :data:`SPREAD` times."""
        recorded = sum(n[0] for _, _, n in self.at_count)
        if self._slope[0] != recorded:
            runs = [(c, statistics.median(s), n[0]) for c, s, n in self.at_count if n[0] >= MIN_RUN]
            counts = [c for c, _, _ in runs]
            slope = None
            if counts and max(counts) >= SPREAD * max(1, min(counts)):
                weight = sum(n for _, _, n in runs)
                mean_c, mean_s = (sum(v[k] * v[2] for v in runs) / weight for k in (0, 1))
                sxx = sum(n * (c - mean_c) ** 2 for c, _, n in runs)
                sxy = sum(n * (c - mean_c) * (s - mean_s) for c, s, n in runs)
                slope = max(0.0, sxy / sxx)
            self._slope = (recorded, slope)
        return self._slope[1]

    def seconds_left(self, step: int) -> float | None:
        """Seconds the iterations after ``step`` take (see the class); the average pace when ``step`` was not
        recorded; ``None`` at the end or before any iteration ran."""
        (t0, s0, _), (t1, s1, count) = self.samples[0], self.samples[-1]
        if s1 != step or s1 <= s0 or t1 <= t0 or step >= self.stop:
            return super().seconds_left(step)
        if self.rounds is None:
            return (t1 - t0) / (s1 - s0) * (self.stop - step)
        samples = list(self.samples)
        done = sum((b[1] - a[1]) * a[2] for a, b in zip(samples, samples[1:]))  # Gaussian-iterations in the window
        work = work_left(project_growth(self.config, step, count, self.rounds), step, count, self.stop)
        per_gaussian = self.seconds_per_gaussian()
        if per_gaussian is not None:
            fixed = (t1 - t0 - per_gaussian * done) / (s1 - s0)
            if fixed >= 0:
                return fixed * (self.stop - step) + per_gaussian * work
        return (t1 - t0) / max(1, done) * work

    def left(self, step: int) -> str:
        """``", about 12.0 min left"`` after ``step`` (:meth:`seconds_left`), the ``stage`` words after it; ``""`` at
        the end or before any iteration ran."""
        text = super().left(step)
        return text + self.stage if text else ""


def progress_bar(config: GaussianReconConfig, iteration: int, progress: bool | str, left: Callable[[int], str]) -> tuple[bool, Any]:
    """``(lines, bar)`` for ``GaussianReconstructor.run``'s ``progress``: whether to print a line per evaluation,
    and its tqdm bar (disabled when lines are printed or nothing is shown).

    The bar's time left is ``left`` of its count (:meth:`RunPace.left`, that of the lines;
    :func:`medgmae.terminal.paced_bar`), not tqdm's (the iterations left at its recent rate).

    Args:
        config: the run's settings (the bar counts to ``config.iterations``).
        iteration: the iteration the run (re)starts from.
        progress: ``True``, ``False`` or ``"lines"`` (``GaussianReconstructor.run``).
        left: the time left after an iteration, as :meth:`RunPace.left` words it.
    """
    from tqdm.auto import tqdm

    if progress not in (True, False, "lines"):
        raise ValueError(f"progress must be True, False or 'lines', got {progress!r}")
    lines = progress == "lines" or (progress is True and not terminal.progress_bars_shown())  # a log: no redraws
    bar = terminal.paced_bar(tqdm)(total=config.iterations, initial=iteration, disable=not progress or lines, left=left,
                                   desc=f"Gaussian recon ({config.preset_name})", dynamic_ncols=True)  # fmt: skip
    return lines, bar
