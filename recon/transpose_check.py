"""Whether a projection stack's views look transposed (detector rows and columns swapped), from the steadiness of
their row and column sums across the views.

A detector row of a parallel-beam scan is the projection of one axial slice, so its sum over the columns is the
slice's total attenuation times the pixel width whatever the view's angle (the zeroth Helgason-Ludwig moment); a
cone beam's rows are nearly so (each sees a plane tilted by its cone angle). A column's sum over the rows is the
integral over a plane along the rotation axis at that column's distance from it, which turns with the view and
changes unless the object is round about the axis. So in a stack as the geometry reads it the row sums stay
nearly the same from view to view and the column sums do not; in a stack saved with each view transposed it is the
other way round, and FBP/FDK reconstructs garbage from it without failing (a square detector, or a ``det_shape``
taken from the transposed stack itself, lets the shapes match).

The check compares the median over the rows of each row sum's coefficient of variation across the views with that
over the columns (only the rows and columns carrying at least :data:`MASS_SHARE` of the largest mean sum: the
object's, not the air's, whose relative noise is large). It warns when the row sums clearly vary
(:data:`UNSTEADY_ROWS`) and the column sums are at least :data:`STEADIER` times steadier. A stack truncated at the
detector's sides (an object wider than it) has row sums that vary too, but its column sums vary about as much
(the row sums 0.9 to 1.2 times as much on the simulated scans of :data:`UNSTEADY_ROWS`, their sides cut by a third),
so it is not taken for transposed. A half-fan scan (:attr:`CTGeometry.half_fan`: each row
sees part of its slice, a different part per view) is not checked. It reads at most :data:`MAX_VIEWS` views, spread
evenly, and only their sums.
"""

from __future__ import annotations

import numpy as np

from recon.geometry import CTGeometry

__all__ = ["MASS_SHARE", "MAX_VIEWS", "STEADIER", "UNSTEADY_ROWS", "spread_views", "sum_variation", "transposed_note"]

#: Views read, spread evenly over the stack (the sums of a few dozen views tell as much as all of them).
MAX_VIEWS = 64
#: Fewest views the check is made from.
MIN_VIEWS = 4
#: Share of the largest mean sum that a row (column) must carry to count: the object's rows, not the air's.
MASS_SHARE = 0.25
#: Median coefficient of variation of the row sums across the views above which the rows clearly vary. Simulated
#: 32 x 32 x 24 abdominal phantoms (seeds 1, 2, 3, 7 and a hand-made one; parallel half and full turn, cone full and
#: short scan, 10 to 60 views, detector offsets, noiseless and at 1e4 photons) measured up to 0.009 as read, 0.015
#: with the source at twice the volume's radius (half cone angle up to 32 degrees), and 0.066 to 0.12 transposed
#: (the column sums then up to 0.015).
UNSTEADY_ROWS = 0.02
#: How many times steadier than the row sums the column sums must be for the views to look transposed.
STEADIER = 4.0


def _cv(sums: np.ndarray) -> float | None:
    """The median over the lines that carry mass of each line's coefficient of variation across the views.

    Args:
        sums: ``(views, lines)`` each view's sum along each detector row (or column).

    Returns:
        The median of ``std / mean`` over the lines whose mean is at least :data:`MASS_SHARE` of the largest
        mean; ``None`` when no line carries mass.
    """
    mean = sums.mean(axis=0)
    top = float(mean.max()) if mean.size else 0.0
    if not np.isfinite(top) or top <= 0:
        return None
    keep = mean >= MASS_SHARE * top
    return float(np.median(sums[:, keep].std(axis=0) / mean[keep]))


def spread_views(num_views: int, max_views: int) -> list[int]:
    """At most ``max_views`` view indices spread evenly over ``0 .. num_views - 1`` (the checks that look at a
    sample of the views: this one and :mod:`recon.fbp_check`)."""
    return np.unique(np.round(np.linspace(0, num_views - 1, min(num_views, max_views))).astype(int)).tolist()


def sum_variation(proj, max_views: int = MAX_VIEWS) -> tuple[float, float] | None:
    """How much each view's row sums and column sums vary across the views.

    Args:
        proj: ``(V, rows, cols)`` line integrals (numpy array or torch tensor; only ``max_views`` views are read).
        max_views: views read, spread evenly over the stack.

    Returns:
        ``(rows' median coefficient of variation, columns')`` over the lines carrying mass (:func:`_cv`), or
        ``None`` for fewer than :data:`MIN_VIEWS` views, fewer than 4 rows or columns, or no mass.
    """
    if max_views < MIN_VIEWS:
        raise ValueError(f"max_views must be at least {MIN_VIEWS}, got {max_views}")
    if len(proj.shape) != 3:
        raise ValueError(f"proj must be (views, rows, cols), got shape {tuple(proj.shape)}")
    v, rows, cols = proj.shape
    if v < MIN_VIEWS or rows < 4 or cols < 4:
        return None
    picked = spread_views(v, max_views)
    row_sums, col_sums = np.empty((len(picked), rows)), np.empty((len(picked), cols))
    for k, i in enumerate(picked):  # one view at a time: no copy of the stack
        view = proj[int(i)]
        if hasattr(view, "detach"):  # a torch tensor: the view is copied to the host
            view = view.detach().cpu().numpy()
        row_sums[k], col_sums[k] = view.sum(axis=1, dtype=np.float64), view.sum(axis=0, dtype=np.float64)
    by_row, by_col = _cv(row_sums), _cv(col_sums)
    return None if by_row is None or by_col is None else (by_row, by_col)


def transposed_note(proj, geometry: CTGeometry, source: str = "the projections") -> str | None:
    """A warning's text when the views look transposed (:mod:`recon.transpose_check`), else ``None``.

    Args:
        proj: ``(V, rows, cols)`` line integrals.
        geometry: the scan (a half-fan one is not checked).
        source: the stack as the warning names it (``"projections <file>"``).

    Returns:
        One line naming ``source``, the two variations and how to put the rows and columns back; ``None`` when
        the row sums are steady, the column sums are not clearly steadier, or the check does not apply.
    """
    if geometry.half_fan:
        return None
    found = sum_variation(proj)
    if found is None:
        return None
    by_row, by_col = found
    if by_row <= UNSTEADY_ROWS or by_col * STEADIER > by_row:
        return None
    return (f"{source}: the views look transposed (detector rows and columns swapped): each row's sum should stay "
            f"nearly the same from view to view (a row sees one slice), yet the row sums vary by {100 * by_row:.1f} % "
            f"across the views (median) and the column sums by only {100 * by_col:.1f} %; FBP/FDK of such a stack is "
            "garbage: swap each view's axes (numpy.transpose(stack, (0, 2, 1)); an image file: x the column, y the "
            "row) and det_shape / det_spacing in geometry.json to match")  # fmt: skip
