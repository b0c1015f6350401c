"""Progress for terminals and logs: whether bars can be drawn (on a terminal or in a notebook, not into a captured
log), how a duration is written, and the time left of a loop that prints lines.

A tqdm bar redraws itself with carriage returns; on a terminal (or in Jupyter, which renders it as a widget) that is
one updating line, but in a file (a batch job's log, ``> run.log 2>&1``) every redraw stays, mixed into the log
lines. The training bars (epochs, validation passes: :mod:`medgmae.engine.console`) ask :func:`progress_bars_shown`;
where it says no, the one line per epoch or pass that they log anyway is the progress, and a long epoch or pass
adds a :class:`ProgressLines` line every :data:`LINE_SECONDS` (as do sliding-window segmentation, projections and
back-projections, and the data pre-check); ``medgmae-recon reconstruct`` prints one line per evaluation instead of
its bar. :func:`steady_bar` makes a tqdm class whose description and postfix wait for its next timed redraw (ignite's
``ProgressBar`` sets both every iteration, each a redraw of its own); :func:`paced_bar` one that shows a
:class:`Pace`'s time left in place of tqdm's own (the reconstruction's bar: its iterations grow dearer). No torch or
MONAI imports.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

__all__ = ["progress_bars_shown", "duration_text", "Pace", "ProgressLines", "LINE_SECONDS", "steady_bar", "paced_bar",
           "PACED_BAR_FORMAT"]  # fmt: skip

#: Seconds without a progress line after which a long loop printing lines (into a log) prints one.
LINE_SECONDS = 60.0


def progress_bars_shown() -> bool:
    """True when stderr is a terminal or the process runs in a Jupyter kernel, False when stderr is captured."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


@functools.lru_cache(maxsize=None)
def steady_bar(base: type) -> type:
    """A subclass of the tqdm class ``base`` that redraws at most every ``mininterval`` seconds, as ``update`` does.

    ignite's ``ProgressBar`` calls ``set_description`` and ``set_postfix`` at every iteration, whose default
    ``refresh=True`` redraws the bar each time, twice an iteration whatever ``mininterval`` says (10,003 redraws,
    1.7 MB on the terminal over 5,000 fast iterations). In the subclass a new postfix waits for the next redraw of
    ``update``, and so does a description except when it changes (once a bar: ``Epoch [3/15]``, shown at once).

    Args:
        base: a tqdm class (``tqdm.tqdm``, ``tqdm.notebook.tqdm``, ``tqdm.autonotebook.tqdm``).

    Returns:
        The subclass (the same one for the same ``base``).
    """

    class SteadyBar(base):  # type: ignore[misc, valid-type]
        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            before = self.desc
            super().set_description(desc, refresh=False)
            if refresh and self.desc != before:
                self.refresh()

        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

    SteadyBar.__name__ = SteadyBar.__qualname__ = f"Steady{base.__name__}"
    return SteadyBar


#: tqdm's default layout (``desc: 40%|####  | 40/100 [00:12<00:18, 3.21it/s, loss=0.01]``) with ``{pace_left}``, a
#: :meth:`Pace.left` text (``", about 4.5 min left"``), in place of ``<{remaining}``, tqdm's own time left.
PACED_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{pace_left}, {rate_fmt}{postfix}]"


@functools.lru_cache(maxsize=None)
def paced_bar(base: type) -> type:
    """A subclass of the tqdm class ``base`` whose time left is a :class:`Pace`'s, not tqdm's own.

    tqdm says the iterations left at its recent rate, every iteration taken to cost the same: short in a
    reconstruction whose iterations grow dearer as the count of Gaussians grows (``recon.growth.RunPace`` knows the
    growth). The subclass takes ``left``, the bar's count to a :meth:`Pace.left` text, and draws that text where
    tqdm's default layout has its own estimate (:data:`PACED_BAR_FORMAT`). It is asked at each of the bar's own
    redraws (every ``mininterval`` of ``update``): no redraw of its own. A closed bar says no time left.

    Args:
        base: a tqdm class (``tqdm.tqdm``, ``tqdm.auto.tqdm``, ``tqdm.notebook.tqdm``).

    Returns:
        The subclass (the same one for the same ``base``), built as ``base`` is, with the keyword ``left``
        (default: no time left) and :data:`PACED_BAR_FORMAT` unless ``bar_format`` is given.
    """

    class PacedBar(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, left: Callable[[int], str] | None = None, **kwargs: Any) -> None:
            self.left = left if left is not None else (lambda n: "")  # before tqdm's first draw, in its __init__
            kwargs.setdefault("bar_format", PACED_BAR_FORMAT)
            super().__init__(*args, **kwargs)

        @property
        def format_dict(self) -> dict:
            d = super().format_dict  # tqdm's own fields; the extra one reaches the layout (format_meter's kwargs)
            d["pace_left"] = "" if self.disable else self.left(self.n)  # closing sets disable before its last draw
            return d

    PacedBar.__name__ = PacedBar.__qualname__ = f"Paced{base.__name__}"
    return PacedBar


def duration_text(seconds: float) -> str:
    """``"12.3 s"``, ``"4.5 min"`` or ``"2.1 h"``."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class Pace:
    """When a loop that prints lines (into a log) should print one, and its time left from its average pace so far
    (every step taken to cost the same; a loop whose steps grow dearer overrides :meth:`seconds_left`, as
    ``recon.growth.RunPace`` does).

    Args:
        first: the step the loop (re)starts from.
        stop: the step it stops at.
        clock: seconds from a fixed origin (default :func:`time.perf_counter`).
    """

    def __init__(self, first: int, stop: int, clock: Callable[[], float] | None = None) -> None:
        self.first, self.stop = int(first), int(stop)
        self.clock = clock if clock is not None else (lambda: time.perf_counter())
        self.start = self.last = self.clock()

    def seconds(self) -> float:
        """Seconds since the loop (re)started."""
        return self.clock() - self.start

    def quiet_for(self) -> float:
        """Seconds since the last line (:meth:`said`)."""
        return self.clock() - self.last

    def said(self) -> None:
        """A line was printed now."""
        self.last = self.clock()

    def seconds_left(self, step: int) -> float | None:
        """Seconds the steps after ``step`` take at the average pace so far; ``None`` at the end or before any
        step ran."""
        done, rest = step - self.first, self.stop - step
        if done <= 0 or rest <= 0:
            return None
        return self.seconds() / done * rest

    def left(self, step: int) -> str:
        """``", about 12.0 min left"`` after ``step`` (:meth:`seconds_left`); ``""`` at the end or before any step
        ran."""
        seconds = self.seconds_left(step)
        return "" if seconds is None else f", about {duration_text(seconds)} left"


class ProgressLines:
    """A plain line every :data:`LINE_SECONDS` of a loop where no progress bar shows it (a batch job's log).

    The line reads ``epoch 1/15: 94/190 iterations, 4.6 min, about 4.8 min left``; a loop shorter than
    :data:`LINE_SECONDS` prints none, and none is printed before the first step or at the last (the loop's own
    closing line follows).

    Args:
        label: what the line starts with (``"epoch 1/15"``, ``"sliding window"``).
        total: the step the loop stops at.
        unit: what a step is, in the plural (``"iterations"``, ``"views"``).
        say: prints one line (``logger.info``); default: ``print`` to stdout, flushed.
        first: the step the loop (re)starts from.
        bar: whether a bar shows the loop (then no lines); default :func:`progress_bars_shown`.
    """

    def __init__(
        self, label: str, total: int, unit: str, say: Callable[[str], object] | None = None, first: int = 0,
        bar: bool | None = None,
    ) -> None:  # fmt: skip
        self.label, self.total, self.unit = label, int(total), unit
        self.say = say or (lambda line: print(line, flush=True))
        self.enabled = not (progress_bars_shown() if bar is None else bar)
        self.pace = Pace(first, total)

    def update(self, step: int) -> bool:
        """After ``step`` of the loop: print a line when :data:`LINE_SECONDS` passed since the last one (or the
        start); True when it did."""
        if not self.enabled or not self.pace.first < step < self.total or self.pace.quiet_for() < LINE_SECONDS:
            return False
        seconds = duration_text(self.pace.seconds())
        self.say(f"{self.label}: {step}/{self.total} {self.unit}, {seconds}{self.pace.left(step)}")
        self.pace.said()
        return True
