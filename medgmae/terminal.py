"""Whether progress bars can be drawn: on a terminal or in a notebook, not into a captured log.

A tqdm bar redraws itself with carriage returns; on a terminal (or in Jupyter, which renders it as a widget) that is
one updating line, but in a file (a batch job's log, ``> run.log 2>&1``) every redraw stays, mixed into the log
lines. The training bars (epochs, validation passes: :mod:`medgmae.engine.console`) ask :func:`progress_bars_shown`;
where it says no, the one line per epoch or pass that they log anyway is the progress; ``medgmae-recon reconstruct``
prints one line per evaluation instead of its bar. No torch or MONAI imports.
"""

from __future__ import annotations

import sys

__all__ = ["progress_bars_shown"]


def progress_bars_shown() -> bool:
    """True when stderr is a terminal or the process runs in a Jupyter kernel, False when stderr is captured."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
