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
weights above use each pixel's true distance from the central ray. A half-fan scan (:attr:`CTGeometry.half_fan
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
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.terminal import ProgressLines
from recon.angle_checks import degrees_question
from recon.geometry import CTGeometry
from recon.ramp_filter import FILTERS, filter_name as _filter_name, filter_projections, ramp_filter

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
        filtered: ``(B, V, rows, cols)``.
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
    g.check_projections(filtered.shape, "filtered projections")
    if fdk_weights is None:
        fdk_weights = g.kind == "cone"
    b = filtered.shape[0]
    rows, cols = g.det_shape
    dtype, device = filtered.dtype, filtered.device
    z, y, x = _voxel_grid(g, device, dtype)
    d, h, w = g.volume_shape
    angles = torch.as_tensor(g.angles, dtype=dtype, device=device)
    out = torch.zeros((b, d, h, w), dtype=dtype, device=device)
    inp_all = filtered.transpose(0, 1)  # (V, B, rows, cols)
    if g.kind == "parallel" and per_slice:
        return _backproject_parallel(inp_all, g, out, chunk)
    slab = max(1, min(d, SAMPLES_PER_STEP // max(1, chunk * b * h * w)))  # slices per step: memory bounded in D
    lines = ProgressLines("back-projecting", g.num_views, "views", bar=False)  # no bar shows it: a line a minute
    for v0 in range(0, g.num_views, chunk):
        lines.update(v0)
        a = angles[v0 : v0 + chunk].view(-1, 1, 1, 1)
        sin, cos = torch.sin(a), torch.cos(a)
        t = x * cos + y * sin  # (c, 1, H, W)
        if g.kind == "parallel":
            mag, wgt = None, None
        else:
            s = x * sin - y * cos
            mag = g.source_detector / (g.source_origin - s)  # (c, 1, H, W)
            t = t * mag
            wgt = (g.source_origin / (g.source_origin - s)) ** 2 if fdk_weights else None
        fc = _normalise((t - g.det_offset[0]) / g.det_spacing[1] + (cols - 1) / 2, cols)  # (c, 1, H, W)
        for z0 in range(0, d, slab):
            zs = z[z0 : z0 + slab]
            v = zs if mag is None else zs * mag  # (c or 1, slab, H or 1, W or 1)
            fr = _normalise((v - g.det_offset[1]) / g.det_spacing[0] + (rows - 1) / 2, rows)
            fc_s, fr_s = torch.broadcast_tensors(fc, fr.expand(a.shape[0], -1, -1, -1))
            grid = torch.stack([fc_s, fr_s], -1).reshape(a.shape[0], zs.shape[0], h * w, 2)
            samp = F.grid_sample(inp_all[v0 : v0 + chunk], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=True).reshape(a.shape[0], b, zs.shape[0], h, w)
            if wgt is not None:
                samp = samp * wgt.unsqueeze(1)
            out[:, z0 : z0 + slab] += samp.sum(0)
    return out


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
    fr = _normalise((z.view(-1) - g.det_offset[1]) / g.det_spacing[0] + (rows - 1) / 2, rows)  # (D,)
    at_cols = _normalise(torch.arange(cols, device=inp_all.device, dtype=inp_all.dtype), cols)
    row_grid = torch.stack(torch.broadcast_tensors(at_cols.view(1, -1), fr.view(-1, 1)), -1)  # (D, cols, 2)
    angles = torch.as_tensor(g.angles, dtype=inp_all.dtype, device=inp_all.device)
    for v0 in range(0, v_all, chunk):
        part = inp_all[v0 : v0 + chunk]
        c = part.shape[0]
        at_z = F.grid_sample(part.reshape(c * b, 1, rows, cols), row_grid.expand(c * b, d, cols, 2), mode="bilinear",
                             padding_mode="zeros", align_corners=True)  # (c * B, 1, D, cols): rows at the voxels' z
        a = angles[v0 : v0 + chunk].view(-1, 1, 1)
        fc = (x[0] * torch.cos(a) + y[0] * torch.sin(a) - g.det_offset[0]) / g.det_spacing[1] + (cols - 1) / 2  # (c, H, W)
        grid = torch.stack([_normalise(fc, cols), torch.zeros_like(fc)], -1).reshape(c, 1, h * w, 2)
        samp = F.grid_sample(at_z.reshape(c, b * d, 1, cols), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)  # (c, B * D, 1, H * W)
        out += samp.reshape(c, b, d, h, w).sum(0)
    return out


def fbp(proj: Tensor, geometry: CTGeometry, filter_name: str = "ram-lak", chunk: int = 4) -> Tensor:
    """FBP (parallel) or FDK (cone) reconstruction.

    Args:
        proj: ``(B, V, rows, cols)`` or ``(V, rows, cols)`` line integrals.
        geometry: the scan.
        filter_name: one of :data:`FILTERS`.
        chunk: views backprojected per step (memory knob).

    Returns:
        ``(B, D, H, W)`` (or ``(D, H, W)``) attenuation volume in the projections' units per mm.
    """
    name = _filter_name(filter_name)
    if not isinstance(proj, Tensor):
        proj = torch.as_tensor(np.asarray(proj))
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
        p, g = _padded_to_both_sides(p * half_fan.to(p.dtype).to(p.device), g)
    if g.kind == "parallel":
        q = filter_projections(p, g.det_spacing[1], name)
    else:  # each pixel's distance from the central ray (offset included), on the virtual detector at the isocentre
        scale = g.source_origin / g.source_detector
        u, v = (torch.as_tensor(c * scale, dtype=p.dtype, device=p.device) for c in g.detector_coords())
        pre = g.source_origin / torch.sqrt(g.source_origin**2 + u.view(1, -1) ** 2 + v.view(-1, 1) ** 2)
        q = filter_projections(p * pre, g.det_spacing[1] * scale, name)
    vol = backproject(q, g, chunk=chunk) * (math.pi / g.num_views)
    return vol[0] if squeeze else vol


def _arc(geometry: CTGeometry) -> tuple[np.ndarray, float, float]:
    """Each view's angle from the start of the arc, the arc (the covered span plus one mean step: a view stands for
    the step around it) and the mean step, in radians."""
    a = np.mod(np.asarray(geometry.angles, dtype=np.float64), 2 * math.pi)
    order = np.sort(a)
    gaps = np.diff(np.concatenate([order, order[:1] + 2 * math.pi]))
    start = order[(int(np.argmax(gaps)) + 1) % len(order)]  # the view after the largest gap
    span = 2 * math.pi - gaps.max()
    step = span / max(1, len(a) - 1)
    return np.mod(a - start, 2 * math.pi), span + step, step


def _turns(geometry: CTGeometry) -> tuple[float, float] | None:
    """``(arc, step)`` in radians of views that go round more than once (the angles as given, not wrapped: the
    span plus one mean step), or ``None`` for a scan within one turn, which :func:`_arc` describes."""
    raw = np.asarray(geometry.angles, dtype=np.float64)
    if len(raw) < 2:
        return None
    step = float(raw.max() - raw.min()) / (len(raw) - 1)
    arc = step * len(raw)
    return (arc, step) if arc > 2 * math.pi + 1.01 * step else None


def _whole_turns(geometry: CTGeometry, arc: float, step: float) -> bool:
    """Whether an arc of several turns is whole turns (parallel beam: half turns) within a step, so that
    :func:`fbp`'s equal weights count every ray as often as every other."""
    period = math.pi if geometry.kind == "parallel" else 2 * math.pi
    return abs(arc - period * round(arc / period)) <= 1.01 * step


def _exact_arc(geometry: CTGeometry, arc: float, step: float) -> bool:
    """Whether ``fbp``'s ``pi / N`` weight is exact for this arc: 180 or 360 degrees (parallel), 360 (cone), within
    a step (one repeated end view is no over-scan to speak of)."""
    exact = (math.pi, 2 * math.pi) if geometry.kind == "parallel" else (2 * math.pi,)
    return any(abs(arc - e) <= 1.01 * step for e in exact)


def _fan_half_angle(geometry: CTGeometry) -> float:
    """The cone beam's half fan angle in the rotation plane: to the outer edge of the detector's outer columns, on
    the side farther from the central ray on an offset detector (0 for parallel beam)."""
    if geometry.kind == "parallel":
        return 0.0
    half_width = geometry.det_shape[1] / 2 * geometry.det_spacing[1] + abs(geometry.det_offset[0])
    return math.atan(half_width / geometry.source_detector)


def parker_weights(geometry: CTGeometry) -> Tensor | None:
    """Parker's short-scan weights ``(V, cols)`` of an arc between 180 degrees plus the fan angle and 360 degrees
    (parallel beam: strictly between 180 and 360, fan angle 0), or ``None`` (an arc FBP weights exactly as it is, or
    one too short to weight).

    Each ray of a short scan is measured once or twice; ``w(beta, gamma)`` (Parker 1982, with the over-scan angle
    ``delta = (span - 180) / 2`` set by the arc, as RTK does, rather than the fan angle) makes the two measurements of
    every ray sum to one, smoothly. ``beta`` is the view's angle from the start of the arc, ``gamma`` the column's fan
    angle. The weights include the arc's scale, ``arc / 180 degrees``, so that :func:`fbp`'s ``pi / N`` factor stays.
    """
    if geometry.num_views < 3 or _turns(geometry) is not None:  # Parker weights one turn at most
        return None
    if geometry.half_fan:  # its views go all round (the geometry checks): half_fan_weights weight it, Parker's not
        return None
    beta, arc, step = _arc(geometry)
    span = arc - step
    if _exact_arc(geometry, arc, step):
        return None
    delta = (span - math.pi) / 2
    cols = geometry.det_shape[1]
    if geometry.kind == "parallel":  # every ray's fan angle is 0: the weights depend on the view alone
        gamma = np.zeros(cols)
    else:
        gamma = -np.arctan(geometry.detector_coords()[0] / geometry.source_detector)  # positive against u
    if delta <= _fan_half_angle(geometry):
        return None
    b, g = beta[:, None], gamma[None, :]
    w = np.ones((len(beta), cols))
    rise, fall = b < 2 * (delta - g), b > math.pi - 2 * g
    w = np.where(rise, np.sin(math.pi / 4 * b / (delta - g)) ** 2, w)
    w = np.where(fall, np.sin(math.pi / 4 * (math.pi + 2 * delta - b) / (delta + g)) ** 2, w)
    return torch.as_tensor(w * arc / math.pi)


def half_fan_weights(geometry: CTGeometry) -> Tensor | None:
    """The redundancy weights ``(cols,)`` of a half-fan scan (:attr:`CTGeometry.half_fan
    <recon.geometry.CTGeometry>`), or ``None`` for any other scan.

    Over a full turn, the ray through the detector at ``u`` from the central ray (fan angle ``g = atan(u / sd)``;
    parallel beam: ``u`` itself) is measured again at ``-u`` (``-g``) half a turn on, where the detector reaches
    there. The detector reaches ``D`` past the central ray on its short side (its half width less ``|offset_u|``), so
    the rays within ``D`` are measured twice and those beyond once. Wang's weights (2002, also RTK's
    ``DisplacedDetectorImageFilter``) are 0 beyond ``-D``, 2 beyond ``D`` and ``1 + sin(pi / 2 * g / g_D)`` between
    (on the side the detector reaches less, mirrored), so that the two measurements of every ray sum to 2, the
    weight a ray measured twice has under :func:`fbp`'s equal ``pi / N`` weights over a full turn; smoothly, so the
    ramp filter sees no edge.
    """
    if not geometry.half_fan:
        return None
    offset = geometry.det_offset[0]
    reach = geometry.det_shape[1] * geometry.det_spacing[1] / 2 - abs(offset)  # past the central ray, short side
    u = torch.as_tensor(geometry.detector_coords()[0] * math.copysign(1.0, offset))  # toward the wide side: positive
    if geometry.kind == "cone":
        angle, limit = torch.atan(u / geometry.source_detector), math.atan(reach / geometry.source_detector)
    else:
        angle, limit = u, reach
    ramp = 1.0 + torch.sin(math.pi / 2 * angle.clamp(-limit, limit) / limit)
    return torch.where(angle >= limit, torch.full_like(ramp, 2.0), torch.where(angle <= -limit, torch.zeros_like(ramp), ramp))


def _padded_to_both_sides(p: Tensor, geometry: CTGeometry) -> tuple[Tensor, CTGeometry]:
    """Weighted half-fan projections ``(B, V, rows, cols)`` padded with zero columns on the detector's short side
    until it reaches as far past the central ray as the wide side, and the geometry of that wider detector (the
    columns given keep their place). The ramp filter's response to the weighted rows spreads past the short edge, and
    the voxels that project there need it (as RTK pads its displaced detector); cut at the edge, it leaves a ghost of
    each object at its mirror image about the axis (5 % of a ball's value in ``tests/test_half_fan.py``)."""
    du, offset = geometry.det_spacing[1], geometry.det_offset[0]
    k = math.ceil(2 * abs(offset) / du - 1e-9)
    padded = F.pad(p, (k, 0) if offset > 0 else (0, k))
    shift = -k * du / 2 if offset > 0 else k * du / 2
    wider = replace(geometry, det_shape=(geometry.det_shape[0], geometry.det_shape[1] + k),
                    det_offset=(offset + shift, geometry.det_offset[1]))  # fmt: skip
    return padded, wider


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
        need = 180 + 2 * math.degrees(_fan_half_angle(geometry))
        return (f"the {geometry.num_views} views cover about {math.degrees(arc):.0f} degrees, less than the "
                f"{need:.0f} (180 plus the fan angle) a short scan needs: FDK values are biased (the Gaussian "
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


def truncation_note(proj: Tensor | np.ndarray, geometry: CTGeometry, threshold: float = 0.05) -> str | None:
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
    """
    p = torch.as_tensor(proj).detach().to("cpu")
    peak = float(p.max()) if p.numel() else 0.0
    if p.dim() != 3 or p.shape[-1] < 3 or not math.isfinite(peak) or peak <= 0:
        return None
    # each view's two outer columns (only they are copied), averaged (noise in air averages out; an object cut on
    # one side still shows at half its value), by their median over the rows that see the object (a cone beam's
    # rows beyond the volume's ends would dilute it); judged over the views by the upper quartile, since an object
    # wider than the field of view is cut in many views, and noise peaks in a few
    seen = p.mean(dim=2, dtype=torch.float64) > threshold * peak  # (V, rows): their mean, as noise averages out
    half_fan = geometry.half_fan
    if half_fan:  # the short side's outer column sees the object by design: the wide side's alone counts
        wide = p[:, :, 0 if geometry.det_offset[0] < 0 else -1].double()
        outer = wide.masked_fill(~seen, float("nan"))
    else:
        outer = ((p[:, :, 0].double() + p[:, :, -1].double()) / 2).masked_fill(~seen, float("nan"))
    edges = torch.nan_to_num(outer.nanmedian(dim=1).values, nan=0.0)  # (V,)
    share = float(torch.quantile(edges, 0.75)) / peak
    if share <= threshold:
        return None
    worst = int(edges.argmax())
    # seen in every view (a half-fan scan: from one side or the other over the turn)
    width = geometry.det_shape[1] * geometry.det_spacing[1] + (2 if half_fan else -2) * abs(geometry.det_offset[0])
    fov = width if geometry.kind == "parallel" else width * geometry.source_origin / geometry.source_detector
    what = "FBP" if geometry.kind == "parallel" else "FDK"
    return (f"the projections at the detector's outer columns reach {100 * share:.0f} % of the largest line integral "
            f"in a quarter of the views (most in view {worst}): the object is wider than the detector's field of view "
            f"({fov:.1f} mm across at the rotation axis), so the projections are truncated and {what} values are "
            "biased (the Gaussian reconstruction fits what the detector saw; a wider detector, or more columns, avoids "
            "it)")  # fmt: skip
