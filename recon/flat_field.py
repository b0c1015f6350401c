"""Raw detector images to line integrals (``fbp`` and ``reconstruct`` with ``--flat`` / ``--dark`` / ``--i0``).

A micro-CT or bench-top cone-beam scanner gives detector readings ``I`` (counts or intensities), an open-beam
(flat) image ``F`` taken without the object and a dark image ``D`` taken without the beam. The line integrals are
``p = -log((I - D) / (F - D))``, computed in float64 and stored as float32, the projections' working type.

* ``--flat FILE`` is read as the projections are (:func:`recon.scan_files.read_detector_images`: a ``.npy``, a
  MetaImage / NRRD / NIfTI or a TIFF, the same axis order), one image or a stack; a stack is always averaged over
  its first axis into one flat, even when it holds as many images as the scan has views (the common case is a few
  flats taken before and after the scan; a per-view correction is not made). ``--dark FILE`` likewise (default 0).
  ``--i0 VALUE`` is the alternative to ``--flat``: the open-beam reading as one number, a uniform flat (with
  ``--dark`` the dark is subtracted from it as from a flat).
* Each image must have the projections' ``(rows, cols)``; NaN / Inf in any file is refused naming it.
* A flat that is not above the dark in most pixels (:data:`SWAPPED_SHARE`) is refused: the two files are likely
  swapped.
* Readings of ``I - D`` or ``F - D`` below a floor (dark noise, dead pixels, readings without photons) are raised
  to it, with one warning line saying how many: the floor is :data:`FLOOR_SHARE` of the median open-beam signal
  ``F - D``, a transmission of 1e-6 (a line integral of at most about 13.8 at a typical pixel).
* Dead detector pixels (``F - D`` below :data:`DEAD_OPEN_SHARE` of its median, or ``I - D`` below the floor in
  every view) would draw rings:
  their line integrals are replaced in every view by the median of their valid neighbours
  (:func:`repair_dead_pixels`, one warning line saying how many); more than :data:`DEAD_SHARE` of the detector
  dead is refused.
* Saturated readings (at the integer dtype's maximum, or above the open beam by more than noise: a line integral
  below ``-SATURATED_BELOW``, or five photon-noise deviations ``5 / sqrt(median F - D)`` where larger) are counted in
  one warning line (how many, in which share of the views) and kept.
* A flat (or ``--i0``) ``k`` times brighter than the projections' open beam raises every line integral by
  ``log(k)``: when even the lowest :data:`OPEN_BEAM_QUANTILE` of them (:func:`open_beam_floor`) lie above
  :data:`OPEN_BEAM_ABOVE`, one warning names that floor (noise only lowers it: a right flat draws none; an object
  covering the detector in every view does: the line names both); truncation is judged above the floor.

The converted projections then go through the toolkit's one projection check
(:func:`recon.scan_files.check_line_integrals`), so that a flat of another scan is caught as a file of line
integrals would be.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

__all__ = ["CONVERTED_SHARE", "CONVERTED_RATIO", "DEAD_OPEN_SHARE", "DEAD_SHARE", "FLOOR_SHARE", "LOW_I0_SHARE", "OPEN_BEAM_ABOVE", "OPEN_BEAM_QUANTILE", "SATURATED_BELOW", "SWAPPED_SHARE", "check_raw_flags", "load_raw_projections", "open_beam_floor", "read_field",
           "repair_dead_pixels", "to_line_integrals"]

#: The floor of ``I - D`` and ``F - D``, as a share of the median open-beam signal ``F - D``.
FLOOR_SHARE = 1e-6
#: The share of pixels in which the flat must be above the dark (less: the files are likely swapped).
SWAPPED_SHARE = 0.5
#: More readings of ``I - D`` below the floor than this share: the readings are line integrals or a normalised
#: transmission already, not raw readings (converting them again gives no scan).
CONVERTED_SHARE = 0.5
#: A median reading ``I - D`` below this share of the median open-beam signal ``F - D`` (a median transmission of
#: 1e-3, a median line integral of 6.9, which no scan has): the readings are already converted.
CONVERTED_RATIO = 1e-3
#: The most dead detector pixels repaired, as a share of the detector (more: the flat or dark is likely wrong).
DEAD_SHARE = 0.01
#: A pixel whose open-beam signal ``F - D`` is below this share of the median responds to almost no light: dead (a
#: dead pixel reads the dark in the flat too, its ``F - D`` dark noise of either sign, not only at or below the
#: floor; a live pixel's gain varies by tens of per cent, not a hundredfold).
DEAD_OPEN_SHARE = 0.01
#: Line integrals below minus this (readings more than about 5 % above the open beam), or below five photon-noise
#: deviations of the open beam where that is more, count as saturated.
SATURATED_BELOW = 0.05
#: With ``--i0``, more readings than this share above it (beyond noise): ``--i0`` is likely below the open beam.
LOW_I0_SHARE = 0.01
#: The quantile of the line integrals taken for the level of the rays past the object (about 0): :func:`open_beam_floor`.
OPEN_BEAM_QUANTILE = 1e-3
#: That quantile above this (a flat more than about 5 % brighter than the projections' open beam): a warning line.
OPEN_BEAM_ABOVE = 0.05
#: Views converted at a time (bounds the float64 copies of a large stack).
_BLOCK_VIEWS = 32


def check_raw_flags(flat: str | None, dark: str | None, i0: float | None) -> None:
    """Refuse ``--flat`` with ``--i0`` (both give the open beam) and ``--dark`` without either.

    Raises:
        ValueError: naming the flags and files.
    """
    if flat is not None and i0 is not None:
        raise ValueError(f"--flat {flat} and --i0 {i0:g} both give the open-beam intensity: give one (--flat for an "
                         "open-beam image, --i0 for one number)")  # fmt: skip
    if dark is not None and flat is None and i0 is None:
        raise ValueError(f"--dark {dark} needs --flat or --i0: the dark is subtracted from the projections and from "
                         "the open beam, which one of them gives")  # fmt: skip


def read_field(path: str, flag: str, proj_path: str, det_shape: tuple[int, int],
               stack_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
    """A flat or dark file: its images averaged over the first axis.

    Args:
        path: the file (a stack ``(n, rows, cols)`` or one image ``(rows, cols)``, in the projections' layouts).
        flag: ``"--flat"`` or ``"--dark"``, as messages name it.
        proj_path: the projection file, as messages name it.
        det_shape: the projections' ``(rows, cols)``.
        stack_shape: the projections' whole shape, where known: a stack holding this file's ``(rows, cols)`` on
            other axes (saved views last) is then named, with the transpose that fixes it.

    Returns:
        ``(the mean image (rows, cols) in float64, the number of images averaged)``.

    Raises:
        ValueError: missing, unreadable, non-finite or of other ``(rows, cols)`` than the projections; the message
            names both files and shapes.
    """
    from recon.scan_files import read_detector_images

    images = read_detector_images(path, flag, planar=True)[0]
    _warn_if_field_saturated(images, path, flag)
    if tuple(images.shape[1:]) != tuple(det_shape):
        field = tuple(images.shape[1:])
        orders = [o for o in itertools.permutations(range(3)) if stack_shape and len(stack_shape) == 3
                  and (stack_shape[o[1]], stack_shape[o[2]]) == field and o[0] != 0]  # fmt: skip (views not first)
        advice = (f"the projections, of shape {tuple(stack_shape)}, hold these (rows, cols) on their axes {orders[0][1]} "
                  f"and {orders[0][2]}: save them as (views, rows, cols), numpy.transpose(stack, {orders[0]})"
                  if len(orders) == 1 else
                  f"its images are the detector's transposed: save them as (rows, cols), numpy.transpose(images, (0, 2, 1)) "
                  "of a stack, image.T of one image" if field == tuple(det_shape)[::-1] else
                  f"give the {flag[2:]} image of this detector, in the same layout")  # fmt: skip
        raise ValueError(f"{flag} {path} holds images of (rows, cols) = {field} ({images.shape[0]} "
                         f"image{'s' if images.shape[0] > 1 else ''}), but the projections {proj_path} have (rows, cols) "
                         f"= {tuple(det_shape)}: {advice}")  # fmt: skip
    return images.astype(np.float64).mean(axis=0), int(images.shape[0])


def _warn_if_field_saturated(images: np.ndarray, path: str, flag: str) -> None:
    """Print one warning line when a flat or dark holds readings at its integer type's maximum: a saturated open
    beam reads too low, so the line integrals of those pixels come out too high (the projections' own saturation
    check does not see it; the damage looked like truncation)."""
    top = _dtype_max(images)
    pixels = (images == top).any(axis=0) if top is not None else None
    if pixels is None or not pixels.any():
        return
    n, total = int(pixels.sum()), int(pixels.size)
    rows, cols = np.nonzero(pixels)
    where = f"rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()}"
    fix = "shorten its exposure, or leave those pixels out" if flag == "--flat" else "is it the dark field?"
    print(f"warning: {flag} {path}: {n} of {total} pixels ({n / total:.2%}; {where}) read the {images.dtype} maximum "
          f"{top}: saturated, so F - D there is too low and their line integrals too high; {fix}", flush=True)  # fmt: skip


def _check_not_swapped(open_beam: np.ndarray, open_text: str, dark: str | None) -> None:
    """Refuse an open-beam signal ``F - D`` that is not positive in at least :data:`SWAPPED_SHARE` of the pixels.

    Args:
        open_beam: ``F - D`` ``(rows, cols)``.
        open_text: ``"--flat FILE"`` or ``"--i0 VALUE"``, as the message names it.
        dark: the ``--dark`` file (``None``: none given, a dark of 0).
    """
    above = float((open_beam > 0).mean())
    if above < SWAPPED_SHARE:
        cause = (f"are {open_text} and --dark {dark} swapped?" if dark and open_text.startswith("--flat") else
                 "is it the open-beam reading?" if not dark else f"is --dark {dark} the dark image of this detector?")
        raise ValueError(f"{open_text} is above the dark ({f'--dark {dark}' if dark else '0: no --dark'}) in only "
                         f"{above:.0%} of the pixels (fewer than {SWAPPED_SHARE:.0%}; median F - D "
                         f"{float(np.median(open_beam)):.4g}): {cause} The open beam must read more than the dark")  # fmt: skip


def to_line_integrals(counts: np.ndarray, flat: np.ndarray | float, dark: np.ndarray | float) -> tuple[np.ndarray, dict]:
    """``p = -log((I - D) / (F - D))`` in float64, stored as float32, readings below the floor raised to it.

    Args:
        counts: the raw projections ``I`` ``(views, rows, cols)``, any real dtype.
        flat: the open-beam image ``F`` ``(rows, cols)`` or one number.
        dark: the dark image ``D`` ``(rows, cols)`` or one number.

    Returns:
        ``(line integrals (views, rows, cols) float32, {"floor", "median_open", "clipped", "clipped_all",
        "readings", "clipped_open", "pixels", "dead"})``: the floor (:data:`FLOOR_SHARE` of the median of ``F - D``'s
        positive values), how many readings of ``I - D`` and pixels of ``F - D`` of live pixels were below it (those
        of dead pixels are repaired, not counted; ``clipped_all``: the readings of every pixel), and the dead pixels ``(rows, cols)`` (``F - D`` below
        :data:`DEAD_OPEN_SHARE` of its median, ``I - D`` below the floor in every view, or ``I`` at its integer
        type's maximum in every view away from the detector's sides: a stuck pixel, :func:`_isolated`).
    """
    open_beam = np.broadcast_to(np.asarray(flat, np.float64) - np.asarray(dark, np.float64), counts.shape[1:])
    positive = open_beam[open_beam > 0]
    median_open = float(np.median(positive)) if positive.size else 1.0
    floor = FLOOR_SHARE * median_open
    low_open = open_beam < floor
    open_beam, per_pixel = np.maximum(open_beam, floor), np.zeros(counts.shape[1:], np.int64)
    top, at_top = _dtype_max(counts), np.zeros(counts.shape[1:], np.int64)
    p = np.empty(counts.shape, np.float32)
    for start in range(0, counts.shape[0], _BLOCK_VIEWS):
        block = counts[start : start + _BLOCK_VIEWS]
        signal = block.astype(np.float64) - np.asarray(dark, np.float64)
        per_pixel += (signal < floor).sum(axis=0)
        at_top += (block == top).sum(axis=0) if top is not None else 0
        p[start : start + _BLOCK_VIEWS] = -np.log(np.maximum(signal, floor) / open_beam)
    views = counts.shape[0]  # dead: no light in the open beam, or none in any view; stuck at the maximum in every view
    dead = (open_beam < DEAD_OPEN_SHARE * median_open) | (per_pixel == views) | _isolated(at_top == views)
    return p, {"floor": floor, "median_open": median_open, "clipped": int(per_pixel[~dead].sum()),
               "clipped_all": int(per_pixel.sum()),
               "readings": int(counts.size), "clipped_open": int((low_open & ~dead).sum()), "pixels": int(open_beam.size),
               "dead": dead}  # fmt: skip


def _isolated(stuck: np.ndarray) -> np.ndarray:
    """The pixels of ``stuck`` ``(rows, cols)`` in connected groups (8-neighbours, :func:`scipy.ndimage.label`) that
    touch neither the detector's first nor its last column: defective pixels, alone, in clusters or in lines. A group
    at a side is an over-exposed air margin (the beam past the object saturates there in every view): its readings
    stay counted as saturated and are not replaced by neighbours that saturate as well."""
    from scipy import ndimage

    groups, _ = ndimage.label(stuck, structure=np.ones((3, 3), bool))
    at_sides = np.union1d(groups[:, 0], groups[:, -1])
    return stuck & ~np.isin(groups, at_sides[at_sides > 0])


def _dtype_max(images: np.ndarray) -> int | None:
    """The largest value of ``images``' integer type (a saturated reading), ``None`` for floats."""
    return int(np.iinfo(images.dtype).max) if np.issubdtype(images.dtype, np.integer) else None


def repair_dead_pixels(p: np.ndarray, dead: np.ndarray, proj_path: str) -> int:
    """Replace the line integrals of dead detector pixels, in every view, by the median of their valid neighbours
    (the 3 x 3 neighbourhood, widened to 5 x 5 and 7 x 7 where it holds none), in place: a dead pixel's floored
    reading would draw a ring in the reconstruction.

    Args:
        p: the line integrals ``(views, rows, cols)``.
        dead: the dead pixels ``(rows, cols)`` (:func:`to_line_integrals`' ``"dead"``).
        proj_path: the projection file, as messages name it.

    Returns:
        How many pixels were repaired.

    Raises:
        ValueError: more than :data:`DEAD_SHARE` of the detector is dead, naming the count.
    """
    count = int(dead.sum())
    if count > DEAD_SHARE * dead.size:
        raise ValueError(f"projections {proj_path}: {count} of {dead.size} detector pixels ({count / dead.size:.1%}) are "
                         f"dead (F - D below {DEAD_OPEN_SHARE:.0%} of its median, I - D below the floor in every view, or I stuck at its "
                         "type's maximum in every view), more than "
                         f"{DEAD_SHARE:.0%} can be repaired: is the flat (and the dark) of this detector?")  # fmt: skip
    rows, cols = dead.shape
    for r, c in np.argwhere(dead):
        for half in (1, 2, 3):
            r0, r1, c0, c1 = max(r - half, 0), min(r + half + 1, rows), max(c - half, 0), min(c + half + 1, cols)
            valid = ~dead[r0:r1, c0:c1]
            if valid.any():
                p[:, r, c] = np.median(p[:, r0:r1, c0:c1][:, valid], axis=1)
                break
    return count


def _check_not_converted(counts: np.ndarray, dark: np.ndarray | float, clip: dict, proj_path: str, open_text: str) -> None:
    """Refuse readings that are line integrals or a normalised transmission already: more than
    :data:`CONVERTED_SHARE` of them below the floor, or their median below :data:`CONVERTED_RATIO` of the median
    open-beam signal ``F - D`` (``clip``: :func:`to_line_integrals`' record)."""
    sample = counts[:: max(1, counts.shape[0] // 16)].astype(np.float64) - np.asarray(dark, np.float64)
    median, share = float(np.median(sample)), clip["clipped_all"] / max(clip["readings"], 1)
    if share > CONVERTED_SHARE or median < CONVERTED_RATIO * clip["median_open"]:
        open_signal = f"the median open-beam signal F - D, {clip['median_open']:.4g}"
        why = (f"{share:.0%} of the readings I - D are below the floor {clip['floor']:.4g} ({FLOOR_SHARE:g} of "
               f"{open_signal})" if share > CONVERTED_SHARE else
               f"the median reading I - D, {median:.4g}, is {median / clip['median_open']:.2g} of {open_signal}")
        raise ValueError(f"projections {proj_path}: {why} ({open_text}): these look like line "
                         "integrals or normalised transmission already, not raw detector readings; give line integrals "
                         f"without {open_text.split()[0]} (and without --dark), and a normalised transmission I / I0 "
                         "with --i0 1 instead")  # fmt: skip


def _saturation_warning(counts: np.ndarray, p: np.ndarray, proj_path: str, median_open: float,
                        i0: float | None = None, dead: np.ndarray | None = None) -> str | None:  # fmt: skip
    """The one warning line about saturated readings (at the integer dtype's maximum, or above the open beam by
    more than noise: a line integral below ``-max(SATURATED_BELOW, 5 / sqrt(median_open))``, five Poisson
    deviations of photon counts), or ``None`` when there are none. They are kept. With ``i0`` (one open-beam number
    for every pixel) and over :data:`LOW_I0_SHARE` of the readings above it, the line says ``--i0`` looks too low.
    The ``dead`` pixels ``(rows, cols)`` (repaired, a stuck one included) are not counted."""
    top = _dtype_max(counts)
    tolerance = max(SATURATED_BELOW, 5.0 / np.sqrt(median_open))
    saturated = p < -tolerance
    if top is not None:
        saturated |= counts == top
    if dead is not None:
        saturated &= ~dead
    count = int(saturated.sum())
    if not count:
        return None
    views = int(saturated.any(axis=(1, 2)).sum())
    at_top = f"at the {counts.dtype} maximum {top} or " if top is not None else ""
    text = (f"warning: projections {proj_path}: {count} of {saturated.size} readings ({count / saturated.size:.3%}), in "
            f"{views} of {counts.shape[0]} views ({views / counts.shape[0]:.0%}), look saturated ({at_top}more than "
            f"{tolerance:.3g} in line integral above the open beam); kept as they are: their line integrals are "
            "too low")  # fmt: skip
    above = int((p < -tolerance).sum())
    if i0 is not None and above > LOW_I0_SHARE * p.size:
        text += (f"; {above / p.size:.1%} of the readings are above --i0 {i0:g}, the brightest {float(np.exp(-p.min())):.3g} "
                 "times it: --i0 looks below the open-beam reading (give the air's reading, or a flat image)")  # fmt: skip
    return text


def _clip_warning(proj_path: str, clip: dict) -> str | None:
    """The one warning line about readings raised to the floor, or ``None`` when none were."""
    if not clip["clipped"] and not clip["clipped_open"]:
        return None
    parts = [f"{clip[key]} of {clip[total]} {what} ({clip[key] / clip[total]:.3%})" for key, total, what in
             (("clipped", "readings", "readings of I - D"), ("clipped_open", "pixels", "pixels of F - D")) if clip[key]]
    were = "were" if clip["clipped"] + clip["clipped_open"] > 1 else "was"
    return (f"warning: projections {proj_path}: {' and '.join(parts)} {were} below the floor {clip['floor']:.4g} and "
            "raised to it "
            f"(the floor: {FLOOR_SHARE:g} of the median open-beam signal F - D, {clip['median_open']:.4g}; dark noise, "
            "dead pixels or readings without photons)")  # fmt: skip


def load_raw_projections(proj_path: str, flat: str | None = None, dark: str | None = None,
                         i0: float | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Read raw detector images and convert them to line integrals with a flat (or ``i0``) and a dark.

    Args:
        proj_path: the raw projection stack ``(views, rows, cols)`` (:func:`recon.scan_files.load_projections`'
            layouts).
        flat: the open-beam file (``None`` with ``i0``).
        dark: the dark file (``None``: 0).
        i0: the open-beam reading as one number (``None`` with ``flat``).

    Returns:
        ``(line integrals (views, rows, cols) float32, {"flat", "dark", "i0", "open_beam_floor"})``: what converted
        them (absolute paths, ``None`` where not given), which :func:`recon.resume.scan_fingerprint` fingerprints, and
        the level the lowest line integrals read (:func:`open_beam_floor`, warned of above :data:`OPEN_BEAM_ABOVE`).

    Raises:
        ValueError: the flags do not go together (:func:`check_raw_flags`); a file missing, unreadable, non-finite
            or of other ``(rows, cols)``; a flat not above the dark; readings converted already
            (:func:`_check_not_converted`); projections that are no line integrals once
            converted. Each message names the files.
    """
    from recon.scan_files import check_line_integrals, read_detector_images

    check_raw_flags(flat, dark, i0)
    if flat is None and i0 is None:
        raise ValueError("load_raw_projections needs flat or i0 (the open-beam reading)")
    counts = read_detector_images(proj_path)[0]
    shape = tuple(counts.shape[1:])
    F, nf = read_field(flat, "--flat", proj_path, shape, counts.shape) if flat is not None else (float(i0), 0)
    D, nd = read_field(dark, "--dark", proj_path, shape, counts.shape) if dark is not None else (0.0, 0)
    open_text = f"--flat {flat}" if flat is not None else f"--i0 {i0:g}"
    _check_not_swapped(np.broadcast_to(np.asarray(F) - np.asarray(D), shape), open_text, dark)
    p, clip = to_line_integrals(counts, F, D)
    _check_not_converted(counts, D, clip, proj_path, open_text)
    repaired = repair_dead_pixels(p, clip["dead"], proj_path)
    used = [f"F = {open_text}" + (f" ({_images(nf, counts.shape[0])})" if flat else ""),
            f"D = --dark {dark} ({_images(nd, counts.shape[0])})" if dark else "D = 0 (no --dark)"]
    print(f"note: projections {proj_path}: raw detector images converted to line integrals -log((I - D) / (F - D)) "
          f"with {', '.join(used)}", flush=True)  # fmt: skip
    for warning in (_clip_warning(proj_path, clip), _saturation_warning(counts, p, proj_path, clip["median_open"], i0, clip["dead"])):
        if warning:
            print(warning, flush=True)
    if repaired:
        print(f"warning: projections {proj_path}: {repaired} dead detector pixel{'s' if repaired > 1 else ''} (F - D "
              f"below {DEAD_OPEN_SHARE:.0%} of its median, I - D below the floor in every view, or I stuck at its type's "
              "maximum in every view): their line integrals in every view interpolated, the median of their valid "
              "neighbours", flush=True)  # fmt: skip
    check_line_integrals(p, f"projections {proj_path} converted with {open_text}", False,
                         f"is {open_text} the open-beam reading of this scan" + (f", and --dark {dark} its dark?" if dark else "?"))
    if warning := _open_beam_warning(floor := open_beam_floor(p), proj_path, open_text):
        print(warning, flush=True)
    record = {"flat": str(Path(flat).resolve()) if flat else None, "dark": str(Path(dark).resolve()) if dark else None,
              "i0": None if i0 is None else float(i0), "open_beam_floor": floor}  # fmt: skip
    return p, record


def open_beam_floor(p: np.ndarray) -> float:
    """The level the lowest line integrals read: their :data:`OPEN_BEAM_QUANTILE` quantile (in about 32 views at most).

    Args:
        p: the line integrals ``(views, rows, cols)``.

    Returns:
        About 0 (a little below in noise) where some rays pass the object, ``log(k)`` for an open beam ``k`` times
        the projections' own."""
    return float(np.quantile(p[:: max(1, p.shape[0] // _BLOCK_VIEWS)], OPEN_BEAM_QUANTILE))


def _open_beam_warning(floor: float, proj_path: str, open_text: str) -> str | None:
    """The warning line when no pixel reads the open beam (``floor``, :func:`open_beam_floor`, above
    :data:`OPEN_BEAM_ABOVE`), else ``None``; ``open_text``: ``"--flat FILE"`` or ``"--i0 VALUE"``."""
    flat = open_text.startswith("--flat")
    if not floor > OPEN_BEAM_ABOVE:
        return None
    k = float(np.exp(floor))
    fix = "take the flat at the projections' exposure and gain, or scale its F - D by " if flat else "scale --i0 by "
    return (f"warning: projections {proj_path} converted with {open_text}: no pixel reads the open beam: the lowest "
            f"line integrals are about {floor:.3g} (their {OPEN_BEAM_QUANTILE:.1%} quantile). Either the object covers "
            "the whole detector in every view (a sample tube, a body wider than the field of view): then the "
            "projections are truncated and FBP/FDK values biased (a wider detector avoids it; the truncation check "
            f"judges above that level and may stay silent). Or {'the flat' if flat else '--i0'} is e^{floor:.3g} = {k:.3g} times brighter than "
            f"the projections' open beam (another exposure or gain): then every line integral is about {floor:.3g} too "
            f"high and FBP/FDK values are biased: {fix}{1 / k:.3g}")  # fmt: skip


def _images(n: int, views: int) -> str:
    """How many images a flat or dark file's mean is of."""
    if n == 1:
        return "one image"
    return f"the mean of {n} images" + (", as many as views: averaged, not applied per view" if n == views else "")
