"""Sliding-window inference that reports its progress into a log.

MONAI's :class:`~monai.inferers.SlidingWindowInferer` draws a tqdm bar over its windows with ``progress=True``, which
the segmentation bundles ask for on a terminal only (:func:`medgmae.terminal.progress_bars_shown`): a bar's redraws
would fill a batch job's log. Without it a whole CT volume is minutes of silence. :class:`LoggedSlidingWindowInferer`
is the same inferer (the same windows, weights and output) which, where no bar is drawn, logs a line every
:data:`medgmae.terminal.LINE_SECONDS`, e.g. ``sliding window: 1200/3456 windows, 2.0 min, about 3.8 min left``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval
from monai.utils import ensure_tuple_rep, fall_back_tuple

from medgmae.terminal import ProgressLines

__all__ = ["LoggedSlidingWindowInferer", "window_count"]

logger = logging.getLogger(__name__)


def window_count(shape: tuple[int, ...] | torch.Size, roi_size: Any, overlap: Any) -> int:
    """How many windows MONAI's sliding-window inference runs the network on for inputs of ``shape``.

    Args:
        shape: the inputs' ``(B, C, *spatial)``.
        roi_size: the window (non-positive entries: the input's size), as the inferer takes it.
        overlap: the windows' overlap, as the inferer takes it.

    Returns:
        Windows per image times the batch size.
    """
    spatial = [int(s) for s in shape[2:]]
    roi = fall_back_tuple(roi_size, spatial)
    size = tuple(max(s, r) for s, r in zip(spatial, roi))  # MONAI pads an input smaller than the window
    interval = _get_scan_interval(size, roi, len(size), ensure_tuple_rep(overlap, len(size)))
    return len(dense_patch_slices(size, roi, interval)) * int(shape[0])


class LoggedSlidingWindowInferer(SlidingWindowInferer):
    """:class:`~monai.inferers.SlidingWindowInferer` (the same arguments) that logs a progress line a minute where
    no bar shows the windows (``progress=False`` and stderr not a terminal); the output is the inferer's own."""

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the sliding-window inference of ``inputs`` with ``network`` (as the inferer does), counting the
        windows the network has seen for the progress lines."""
        lines = ProgressLines("sliding window", window_count(inputs.shape, self.roi_size, self.overlap), "windows",
                              logger.info, bar=True if self.progress else None)  # fmt: skip
        if not lines.enabled:
            return super().__call__(inputs, network, *args, **kwargs)
        done = 0

        def counted(windows: torch.Tensor, *more: Any, **named: Any) -> Any:
            nonlocal done
            out = network(windows, *more, **named)
            done += int(windows.shape[0])
            lines.update(done)
            return out

        return super().__call__(inputs, counted, *args, **kwargs)
