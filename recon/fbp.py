"""Filtered backprojection: FBP for parallel beam and FDK for cone beam.

Both filter the projections row by row with a ramp filter (:mod:`recon.ramp_filter`, re-exported here: Ram-Lak,
optionally apodised by Shepp-Logan, cosine or Hann windows, built in the spatial domain as in Kak & Slaney so it
has no DC bias) and backproject pixel-driven: every voxel is projected onto each view's detector and the filtered
projection is interpolated bilinearly there.

* FBP: ``f(x) = pi / N * sum_i q_i(x . u_i, z)``.
* FDK: projections are pre-weighted by ``dso / sqrt(dso^2 + u^2 + v^2)`` (``u``, ``v`` a pixel's distance from
  the central ray, offset included, on a virtual detector through the isocentre), filtered at the isocentre pixel
  pitch and backprojected with ``(dso / (dso - s))^2`` weights, ``s`` the voxel's coordinate towards the source; ``f(x) = pi / N * sum_i W_i(x)^2 q_i(...)``.

An offset detector (:attr:`CTGeometry.det_offset <recon.geometry.CTGeometry>`) is honoured throughout: a voxel is
back-projected at detector coordinate ``u(x) - offset_u`` (and ``v(x) - offset_v``) from the detector centre, and the
weights above use each pixel's true distance from the central ray; with one offset per view (a flexmap), each view's
own. A half-fan scan (:attr:`CTGeometry.half_fan
<recon.geometry.CTGeometry>`: the detector covers the volume on one side of the central ray only, over a full turn)
measures the rays near the central ray twice and the others once; its projections are weighted first by
:func:`half_fan_weights` (Wang 2002, as RTK's displaced-detector filter), which count each ray once in all.

The ``pi / N`` weight is exact for equispaced views over 180 degrees (parallel) or 360 degrees (either). Other
arcs of at least 180 degrees (cone beam: plus the fan angle) get Parker's redundancy weights
(:func:`parker_weights`); shorter arcs are named by :func:`arc_weighting_note`.

Why not ASTRA's FBP / FDK (astra-toolbox is a dependency for its projectors) or scikit-image's ``iradon``: ASTRA's
FDK runs on CUDA only and its CPU FBP is 2D, ``iradon`` is 2D parallel beam; this module runs both geometries on
the CPU and the GPU alike, on the toolkit's one geometry (any angles, anisotropic voxels, the RTK-style detector
of ``geometry.json``), with Parker weights for short scans and the windowed filters of the CLI's ``--filter``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.whole_numbers import positive_count
from medgmae.terminal import ProgressLines
from recon.angle_checks import degrees_question
from recon.detector_offset import wide_side
from recon.fbp_weights import _arc, _exact_arc, _fan_half_angle, _turns, _whole_turns, half_fan_weights, parker_weights
from recon.fbp_weights import padded_to_both_sides
from recon.geometry import CTGeometry
from recon.projectors.base import check_geometry
from recon.ramp_filter import FILTERS, filter_name as _filter_name, filter_projections, projections_tensor, ramp_filter

__all__ = ["FILTERS", "ramp_filter", "filter_projections", "backproject", "fbp", "arc_weighting_note", "half_fan_weights",
           "parker_weights"]

#: Sampling positions per step of the 3D-grid backprojection (views x batch x slices x H x W; at least one slice):
#: about 200 MB of float32 working tensors per step whatever the number of slices (a 512 x 512 x 200 cone beam built
#: 1.7 GB grids per 4 views whole).
SAMPLES_PER_STEP = 2**23


def _voxel_grid(geometry: CTGeometry, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
    d, h, w = geometry.volume_shape
    sz, sy, sx = geometry.voxel_size
    z = (torch.arange(d, device=device, dtype=dtype) - (d - 1) / 2) * sz
    y = (torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2) * sy
    x = (torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2) * sx
    return z.view(d, 1, 1), y.view(1, h, 1), x.view(1, 1, w)


def _normalise(index: Tensor, n: int) -> Tensor:
    """Detector index to grid_sample's align_corners=True coordinate."""
    return index * (2.0 / (n - 1)) - 1.0 if n > 1 else torch.zeros_like(index)


def backproject(
    filtered: Tensor, geometry: CTGeometry, fdk_weights: bool | None = None, chunk: int = 4, per_slice: bool = True
) -> Tensor:
    """Pixel-driven backprojection ``sum_i w_i(x) q_i(u_i(x), v_i(x))`` (no ``pi / N`` factor).

    Args:
        filtered: ``(B, V, rows, cols)``: a tensor, or a NumPy array (:func:`recon.ramp_filter.projections_tensor`).
        geometry: the scan.
        fdk_weights: apply the ``(dso / (dso - s))^2`` cone-beam weights (default: for cone geometries).
        chunk: views per step; the slices of a step are cut into slabs of at most :data:`SAMPLES_PER_STEP`
            sampling positions (at least one slice each).
        per_slice: a parallel beam is backprojected slice by slice (:func:`_backproject_parallel`); ``False``
            samples the whole 3D grid as for a cone beam (the same values, slower: the reference in the tests).

    Returns:
        ``(B, D, H, W)``.
    """
    g = geometry
    filtered = projections_tensor(filtered)
    g.check_projections(filtered.shape, "filtered projections")
    if fdk_weights is None:
        fdk_weights = g.kind == "cone"
    b = filtered.shape[0]
    rows, cols = g.det_shape
    dtype, device = filtered.dtype, filtered.device
    z, y, x = _voxel_grid(g, device, dtype)
    d, h, w = g.volume_shape
    angles = torch.as_tensor(g.angles, dtype=dtype, device=device)
    offsets = _view_offsets(g, dtype, device)
    out = torch.zeros((b, d, h, w), dtype=dtype, device=device)
    inp_all = filtered.transpose(0, 1)  # (V, B, rows, cols)
    if g.kind == "parallel" and per_slice:
        return _backproject_parallel(inp_all, g, out, chunk)
    slab = max(1, min(d, SAMPLES_PER_STEP // max(1, chunk * b * h * w)))  # slices per step: memory bounded in D
    lines = ProgressLines("back-projecting", g.num_views, "views", bar=False)  # no bar shows it: a line a minute
    for v0 in range(0, g.num_views, chunk):
        lines.update(v0)
        a = angles[v0 : v0 + chunk].view(-1, 1, 1, 1)
        t, mag, wgt = _view_terms(g, x, y, a, fdk_weights)
        off_u, off_v = g.det_offset if offsets is None else offsets[v0 : v0 + chunk].view(-1, 2, 1, 1, 1).unbind(1)
        fc = _normalise((t - off_u) / g.det_spacing[1] + (cols - 1) / 2, cols)  # (c, 1, H, W)
        for z0 in range(0, d, slab):
            zs = z[z0 : z0 + slab]
            v = zs if mag is None else zs * mag  # (c or 1, slab, H or 1, W or 1)
            fr = _normalise((v - off_v) / g.det_spacing[0] + (rows - 1) / 2, rows)
            fc_s, fr_s = torch.broadcast_tensors(fc, fr.expand(a.shape[0], -1, -1, -1))
            grid = torch.stack([fc_s, fr_s], -1).reshape(a.shape[0], zs.shape[0], h * w, 2)
            samp = F.grid_sample(inp_all[v0 : v0 + chunk], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=True).reshape(a.shape[0], b, zs.shape[0], h, w)
            if wgt is not None:
                samp = samp * wgt.unsqueeze(1)
            out[:, z0 : z0 + slab] += samp.sum(0)
    return out


def _view_terms(g: CTGeometry, x: Tensor, y: Tensor, a: Tensor, fdk_weights: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """For views at angles ``a`` ``(c, 1, 1, 1)``: each voxel's detector coordinate ``u`` (mm, before the offset),
    ``(c, 1, H, W)``; a cone beam's magnification (else ``None``) and FDK's ``(dso / (dso - s))^2`` weights (``None``
    unless ``fdk_weights``)."""
    sin, cos = torch.sin(a), torch.cos(a)
    t = x * cos + y * sin  # (c, 1, H, W)
    if g.kind == "parallel":
        return t, None, None
    s = x * sin - y * cos
    mag = g.source_detector / (g.source_origin - s)  # (c, 1, H, W)
    wgt = (g.source_origin / (g.source_origin - s)) ** 2 if fdk_weights else None
    return t * mag, mag, wgt


def _view_offsets(g: CTGeometry, dtype, device) -> Tensor | None:
    """Each view's ``(u, v)`` detector offset, ``(views, 2)``, for a per-view :attr:`CTGeometry.det_offset`; ``None``
    for one offset for all views (used as the numbers it is)."""
    return torch.as_tensor(g.offsets(), dtype=dtype, device=device) if g.per_view_offset else None


def _backproject_parallel(inp_all: Tensor, g: CTGeometry, out: Tensor, chunk: int) -> Tensor:
    """:func:`backproject` of a parallel beam, whose detector row depends on z alone and column on (y, x) alone:
    the rows are first interpolated to the voxels' z (linear, zero outside), then each slice is a 2D
    backprojection, so no ``(views, D, H, W, 2)`` sampling grid is built. Bilinear interpolation is separable, so
    this is the cone-beam path's sampling, slice by slice.

    Args:
        inp_all: ``(V, B, rows, cols)`` filtered projections.
        g: the (parallel) scan.
        out: ``(B, D, H, W)`` zeros to accumulate into.
        chunk: views per step.
    """
    v_all, b, rows, cols = inp_all.shape
    d, h, w = g.volume_shape
    z, y, x = _voxel_grid(g, inp_all.device, inp_all.dtype)
    offsets = _view_offsets(g, inp_all.dtype, inp_all.device)
    off_v = g.det_offset[1] if offsets is None else offsets[:, 1].view(-1, 1, 1)  # a number, or (V, 1, 1)
    fr = _normalise((z.view(1, -1, 1) - off_v) / g.det_spacing[0] + (rows - 1) / 2, rows)  # (1 or V, D, 1)
    at_cols = _normalise(torch.arange(cols, device=inp_all.device, dtype=inp_all.dtype), cols)
    row_grid = torch.stack(torch.broadcast_tensors(at_cols.view(1, 1, -1), fr), -1)  # (1 or V, D, cols, 2)
    angles = torch.as_tensor(g.angles, dtype=inp_all.dtype, device=inp_all.device)
    for v0 in range(0, v_all, chunk):
        part = inp_all[v0 : v0 + chunk]
        c = part.shape[0]
        rg = row_grid.expand(c * b, d, cols, 2) if offsets is None else row_grid[v0 : v0 + c].repeat_interleave(b, 0)
        at_z = F.grid_sample(part.reshape(c * b, 1, rows, cols), rg, mode="bilinear", padding_mode="zeros",
                             align_corners=True)  # (c * B, 1, D, cols): rows at the voxels' z
        a = angles[v0 : v0 + chunk].view(-1, 1, 1)
        off_u = g.det_offset[0] if offsets is None else offsets[v0 : v0 + c, 0].view(-1, 1, 1)
        fc = (x[0] * torch.cos(a) + y[0] * torch.sin(a) - off_u) / g.det_spacing[1] + (cols - 1) / 2  # (c, H, W)
        grid = torch.stack([_normalise(fc, cols), torch.zeros_like(fc)], -1).reshape(c, 1, h * w, 2)
        samp = F.grid_sample(at_z.reshape(c, b * d, 1, cols), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)  # (c, B * D, 1, H * W)
        out += samp.reshape(c, b, d, h, w).sum(0)
    return out


def fbp(proj: Tensor, geometry: CTGeometry, filter_name: str = "ram-lak", chunk: int = 4) -> Tensor:
    """FBP (parallel) or FDK (cone) reconstruction.

    Args:
        proj: ``(B, V, rows, cols)`` or ``(V, rows, cols)`` line integrals: a tensor, or a NumPy array
            (:func:`recon.ramp_filter.projections_tensor`).
        geometry: the scan.
        filter_name: one of :data:`FILTERS`.
        chunk: views backprojected per step (memory knob), a positive int.

    Returns:
        ``(B, D, H, W)`` (or ``(D, H, W)``) attenuation volume in the projections' units per mm.
    """
    check_geometry(geometry)
    name = _filter_name(filter_name)
    chunk = positive_count(chunk, "chunk (views per step)")
    proj = projections_tensor(proj)
    squeeze = proj.dim() == 3
    p = proj.unsqueeze(0) if squeeze else proj
    geometry.check_projections(p.shape)
    if not torch.isfinite(p).all():
        raise ValueError("projections contain NaN or Inf")
    p = p.to(torch.float64 if p.dtype == torch.float64 else torch.float32)
    g = geometry
    parker = parker_weights(g)
    if parker is not None:  # an arc between the exact ones: each ray's two measurements weighted to one (Parker 1982)
        p = p * parker.to(p.dtype).to(p.device)[:, None, :]
    half_fan = half_fan_weights(g)
    if half_fan is not None:  # an offset detector over a full turn: the rays seen twice weighted to once (Wang 2002)
        w = half_fan.to(p.dtype).to(p.device)  # (cols,), or (views, cols) with per-view offsets
        p, g = padded_to_both_sides(p * (w if w.dim() == 1 else w[:, None, :]), g)
    if g.kind == "parallel":
        q = filter_projections(p, g.det_spacing[1], name)
    else:  # each pixel's distance from the central ray (offset included), on the virtual detector at the isocentre
        scale = g.source_origin / g.source_detector
        q = filter_projections(p * _cosine_weights(g, p.dtype, p.device), g.det_spacing[1] * scale, name)
    vol = backproject(q, g, chunk=chunk) * (math.pi / g.num_views)
    return vol[0] if squeeze else vol


def _cosine_weights(g: CTGeometry, dtype, device) -> Tensor:
    """FDK's pre-weights ``so / sqrt(so^2 + u^2 + v^2)``, ``u``, ``v`` each pixel's distance from the central ray
    (offset included) on the virtual detector at the isocentre: ``(rows, cols)``, or ``(views, rows, cols)`` with a
    per-view offset (each view's own)."""
    scale = g.source_origin / g.source_detector
    u, v = (torch.as_tensor(c * scale, dtype=dtype, device=device) for c in g.detector_coords())
    if g.per_view_offset:  # (views, cols) and (views, rows)
        return g.source_origin / torch.sqrt(g.source_origin**2 + u[:, None, :] ** 2 + v[:, :, None] ** 2)
    return g.source_origin / torch.sqrt(g.source_origin**2 + u.view(1, -1) ** 2 + v.view(-1, 1) ** 2)


def arc_weighting_note(geometry: CTGeometry) -> str | None:
    """Why :func:`fbp`'s values are biased for this geometry's arc, or ``None`` when they are not.

    Exact: 180 or 360 degrees, and arcs between weighted by :func:`parker_weights` (cone beam: from 180 degrees
    plus the fan angle on; within a step). Shorter arcs miss some rays: values are biased (by a few per cent inside
    a ball in ``tests/test_recon_fbp.py``'s geometries).
    """
    if geometry.num_views < 2:
        return None
    turns = _turns(geometry)
    if turns is not None:
        return _turns_note(geometry, *turns)
    _, arc, step = _arc(geometry)
    if _exact_arc(geometry, arc, step) or parker_weights(geometry) is not None:
        return None
    if geometry.kind == "cone":
        have, need = math.degrees(arc), 180 + 2 * math.degrees(_fan_half_angle(geometry))
        digits = 0 if round(have) != round(need) else 1  # "about 204 degrees, less than the 204" said nothing
        return (f"the {geometry.num_views} views cover about {have:.{digits}f} degrees, less than the "
                f"{need:.{digits}f} (180 plus the fan angle) a short scan needs: FDK values are biased (the Gaussian "
                "reconstruction, fitted to the projections, is not)")  # fmt: skip
    return (f"the {geometry.num_views} views cover about {math.degrees(arc):.0f} degrees, less than the 180 a "
            "parallel-beam scan needs: FBP values are biased (the Gaussian reconstruction, fitted to the projections, "
            "is not)")  # fmt: skip


def _turns_note(geometry: CTGeometry, arc: float, step: float) -> str | None:
    """:func:`arc_weighting_note` of views that go round more than once: a question whether the angles are degrees
    (:func:`recon.angle_checks.degrees_question`; those that clearly are degrees are refused by :class:`CTGeometry`);
    else ``None`` for whole turns, or, for an arc that is not whole turns, that the rays beyond them count once more
    than the others under FBP's equal weights."""
    question = degrees_question(geometry.angles)
    if question is not None:
        return question
    if _whole_turns(geometry, arc, step):
        return None
    period = 180 if geometry.kind == "parallel" else 360
    return (f"the {geometry.num_views} views cover about {math.degrees(arc):.0f} degrees ({arc / (2 * math.pi):.1f} "
            f"turns), more than one turn but not a whole number of {period}-degree "
            f"{'half turns' if period == 180 else 'turns'}: the rays measured once more than the others weigh more in "
            f"{'FBP' if geometry.kind == 'parallel' else 'FDK'} and bias its values (drop the views beyond the last "
            "whole turn; the Gaussian reconstruction, fitted to the projections, is not biased)")  # fmt: skip


def truncation_note(proj: Tensor | np.ndarray, geometry: CTGeometry, threshold: float = 0.05,
                    floor: float = 0.0) -> str | None:  # fmt: skip
    """Why :func:`fbp`'s values are biased by projections truncated at the detector's sides, or ``None``.

    An object wider than the detector's field of view (the cylinder its columns see) leaves line integrals well
    above air at the outermost columns; the ramp filter then lacks the rest of each row and FBP/FDK values are
    biased (raised toward the edge of the field of view, the object outside it missing). The geometry check only
    asks the detector to cover the cylinder inscribed in the volume's grid, as scanners do, so this is a check of
    the data: each view's outermost columns on either side against the largest line integral.

    Args:
        proj: ``(V, rows, cols)`` line integrals.
        geometry: the scan.
        threshold: the share of the largest line integral an outer column may reach.
        floor: a level no pixel reads below, subtracted from every line integral first: raw images converted with a
            flat brighter than their open beam (:func:`recon.flat_field.open_beam_floor`, warned of there) raise all
            of them, the outer columns' air too, which is no object at the detector's sides.
    """
    p = torch.as_tensor(proj).detach().to("cpu")
    peak = float(p.max()) - floor if p.numel() else 0.0
    if p.dim() != 3 or p.shape[-1] < 3 or not math.isfinite(peak) or peak <= 0:
        return None
    # each view's two outer columns (only they are copied), averaged (noise in air averages out; an object cut on
    # one side still shows at half its value), by their median over the rows that see the object (a cone beam's
    # rows beyond the volume's ends would dilute it); judged over the views by the upper quartile, since an object
    # wider than the field of view is cut in many views, and noise peaks in a few
    seen = p.mean(dim=2, dtype=torch.float64) - floor > threshold * peak  # (V, rows): their mean, as noise averages out
    half_fan = geometry.half_fan
    offset_u = geometry.offsets()[:, 0]
    if half_fan:  # the short side's outer column sees the object by design: the wide side's alone counts
        wide = p[:, :, 0 if wide_side(geometry.det_offset) < 0 else -1].double() - floor
        outer = wide.masked_fill(~seen, float("nan"))
    else:
        outer = ((p[:, :, 0].double() + p[:, :, -1].double()) / 2 - floor).masked_fill(~seen, float("nan"))
    edges = torch.nan_to_num(outer.nanmedian(dim=1).values, nan=0.0)  # (V,)
    share = float(torch.quantile(edges, 0.75)) / peak
    if share <= threshold:
        return None
    worst = int(edges.argmax())
    # seen in every view (a half-fan scan: from one side or the other over the turn; the worst view's offset)
    reach = float(np.abs(offset_u).min() if half_fan else np.abs(offset_u).max())
    width = geometry.det_shape[1] * geometry.det_spacing[1] + (2 if half_fan else -2) * reach
    fov = width if geometry.kind == "parallel" else width * geometry.source_origin / geometry.source_detector
    what = "FBP" if geometry.kind == "parallel" else "FDK"
    less = f" (both less {floor:.3g}, the level no pixel reads below)" if floor else ""
    return (f"the projections at the detector's outer columns reach {100 * share:.0f} % of the largest line integral{less} "
            f"in a quarter of the views (most in view {worst}): the object is wider than the detector's field of view "
            f"({fov:.1f} mm across at the rotation axis), so the projections are truncated and {what} values are "
            "biased (the Gaussian reconstruction fits what the detector saw; a wider detector, or more columns, avoids "
            "it)")  # fmt: skip
