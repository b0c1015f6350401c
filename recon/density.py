"""Adaptive density control of the Gaussian reconstruction: the toolkit's rule and 3DGR-CT's published one.

Both work on a :class:`~recon.gaussian_recon.GaussianReconstructor` in place (parameters and Adam moments, through
:func:`replace_rows`) and return counts ``{"cloned", "split", "pruned"}``. New Gaussians start with zero Adam moments.

* :func:`densify_toolkit`: the ``densify_fraction`` Gaussians with the largest *mean* positional-gradient norm
  since the last round (above ``grad_threshold``) are densified by ``split_rule``:

  - ``"sample"`` (the default; the split as in 3D Gaussian splatting): small Gaussians (largest scale ``<=
    split_scale``) cloned (a copy drawn from the Gaussian at half its spread, both at half intensity), large ones
    split (two children drawn from the rotated Gaussian, scales / 1.6, the parent's intensity, so about half its
    mass). A round lowers
    the PSNR for a few dozen iterations (by up to about 5 dB with a coarse budget), but the children are narrower
    on every axis.
  - ``"moments"``: each is split in two along its largest axis (:func:`split_moments`): children at ``mu +- a
    s_max e_max`` (``a = split_offset``), that axis's scale times ``sqrt(1 - a^2)``, intensity times ``1 / (2
    sqrt(1 - a^2))``, so the pair has the parent's mass, mean and covariance and the rendered volume barely
    changes at the round. Measured (bench/RESULTS.md, "Density control"): no drop at any round, +0.7 dB at the end
    with a coarse budget (30 voxels per Gaussian) on 90 views, but 0.1-0.5 dB below ``"sample"`` at the end on
    the other scans, whose finer budgets gain more from children narrower on every axis.

  It then prunes ``|intensity| < prune_intensity`` and a largest scale over ``prune_scale`` of the smallest
  volume side, and never grows past ``max_gaussians``.
* :func:`densify_3dgr_ct`: SigmaLDC/3DGR-CT's ``GaussianModel.densify_and_prune`` (models/gaussian_model.py):
  every Gaussian whose *current* positional-gradient norm is at least ``grad_threshold`` is cloned in place
  (largest scale ``<= split_scale``: same centre, both at half the sigmoid intensity) or split (two children with
  centres drawn from ``N(mu, diag(s^2))`` in the unrotated frame, scales / 1.6, the same intensity; the parent is
  removed); then Gaussians with a sigmoid intensity below ``prune_intensity`` or a smallest scale below
  ``prune_min_scale`` are pruned. It runs only while there are fewer than ``max_gaussians`` Gaussians.

Lengths (``split_scale``, ``prune_min_scale``, ``grad_threshold``) are in the reconstructor's length unit
(``config.length_unit``): voxels, or the largest volume side for ``"volume"`` (3DGR-CT's normalised frame).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medgmae.gaussians import Gaussians3D
from recon.growth import toolkit_additions


__all__ = ["densify_toolkit", "densify_3dgr_ct", "replace_rows", "split_moments"]

_PARAMS = ("means", "log_scales", "quats", "intensities")


def replace_rows(rec, keep: Tensor, new: dict[str, Tensor] | None) -> None:
    """Keep rows ``keep`` of every parameter of ``rec`` (and their Adam moments) and append ``new`` rows (zero
    moments); the density statistics restart."""
    for group in rec.optimizer.param_groups:
        name = group["name"]
        old = group["params"][0]
        state = rec.optimizer.state.pop(old, None)
        extra = new[name] if new else old.new_zeros((0, *old.shape[1:]))
        p = torch.nn.Parameter(torch.cat([old.detach()[keep], extra], 0).contiguous())
        if state is not None:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.cat([state[key][keep], torch.zeros_like(extra)], 0)
            rec.optimizer.state[p] = state
        group["params"][0] = p
        rec.params[name] = p
    rec._reset_stats()
    rec.last_grad_norm = None


def split_moments(means: Tensor, scales: Tensor, rot: Tensor, intensities: Tensor, offset: float) -> dict[str, Tensor]:
    """Split each Gaussian in two along its largest axis, keeping its mass, mean and covariance.

    The children sit at ``mu +- a s e`` (``s``: the largest scale, ``e``: its axis, ``a = offset``) with that
    axis's scale times ``sqrt(1 - a^2)`` and the intensity (peak value) times ``1 / (2 sqrt(1 - a^2))``: each
    child has half the mass, and the pair's covariance along ``e`` is ``a^2 s^2 + (1 - a^2) s^2 = s^2``.

    Args:
        means: ``(N, 3)`` centres.
        scales: ``(N, 3)`` standard deviations along the axes of ``rot``.
        rot: ``(N, 3, 3)`` rotation matrices; column ``j`` is the direction of axis ``j``.
        intensities: ``(N,)`` peak values (linear, not logits).
        offset: ``a`` in ``(0, 1)``.

    Returns:
        ``{"means", "log_scales", "intensities"}`` of the ``2 N`` children, the ``+`` children first.
    """
    if not 0 < offset < 1:
        raise ValueError(f"offset must be in (0, 1), got {offset}")
    axis = scales.argmax(-1)
    rows = torch.arange(scales.shape[0], device=scales.device)
    step = (offset * scales[rows, axis]).unsqueeze(-1) * rot[rows, :, axis]
    shrink = math.sqrt(1.0 - offset * offset)
    child_scales = scales.clone()
    child_scales[rows, axis] *= shrink
    return {
        "means": torch.cat([means + step, means - step], 0),
        "log_scales": child_scales.log().repeat(2, 1),
        "intensities": (intensities / (2.0 * shrink)).repeat(2),
    }


@torch.no_grad()
def densify_toolkit(rec) -> dict:
    """The toolkit's density control (see the module docstring). ``rec``: the reconstructor."""
    c, p, dev = rec.config, rec.params, rec.device
    k = p["means"].shape[0]
    avg = rec.grad_accum / rec.grad_count.clamp_min(1) * rec.length
    scales = p["log_scales"].exp()
    n_pick = toolkit_additions(c, k)  # the rule recon.growth projects the count by
    chosen = torch.zeros(k, dtype=torch.bool, device=dev)
    if n_pick > 0:
        top = torch.topk(avg, n_pick).indices
        chosen[top[avg[top] > c.grad_threshold]] = True
    rot = Gaussians3D(p["means"][None], scales[None], p["quats"][None], p["intensities"][None]).rotation_matrices()[0]
    if c.split_rule == "moments":
        clone, split = torch.zeros_like(chosen), chosen
        new = split_moments(p["means"][split], scales[split], rot[split], p["intensities"][split], c.split_offset)
        new["quats"] = p["quats"][split].repeat(2, 1)
    else:
        big = scales.max(-1).values > c.split_scale * rec.length
        clone, split = chosen & ~big, chosen & big
        new = _sample_children(rec, clone, split, scales, rot)
    limit = c.prune_scale * min(rec.geometry.volume_shape) if c.prune_scale > 0 else math.inf
    prune = (rec.activated_intensities().abs() < c.prune_intensity) | (scales.max(-1).values > limit) | split
    if c.prune_min_scale > 0:
        prune |= scales.min(-1).values < c.prune_min_scale * rec.length
    keep = (~prune).nonzero().squeeze(-1)
    if keep.numel() + new["means"].shape[0] == 0:  # never prune everything
        keep = torch.arange(k, device=dev)
    replace_rows(rec, keep, new)
    return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum() - split.sum())}


def _sample_children(rec, clone: Tensor, split: Tensor, scales: Tensor, rot: Tensor) -> dict[str, Tensor]:
    """``split_rule="sample"``: the copies of the cloned rows (whose intensities are halved in place) and two
    drawn children per split row.

    A row with centre ``mu``, scales ``s`` and rotation ``R`` (column ``j``: axis ``j``) gives a clone at ``mu +
    R diag(s / 2) z`` (its scales and quaternion, half its intensity), and split children at ``mu + R diag(s) z``
    (scales ``s / 1.6``, its quaternion and intensity), ``z ~ N(0, I)`` from ``rec.generator``.

    Returns:
        ``{"means", "log_scales", "quats", "intensities"}`` of the clones, the first children, then the second.
    """
    p, dev = rec.params, rec.device

    def sample(mask: Tensor, shrink: float) -> dict[str, Tensor]:
        n = int(mask.sum())
        z = torch.randn(n, 3, generator=rec.generator).to(dev) * scales[mask]
        return {
            "means": p["means"][mask] + (rot[mask] @ z.unsqueeze(-1)).squeeze(-1) * shrink,
            "log_scales": p["log_scales"][mask] - math.log(1.6 if shrink == 1.0 else 1.0),
            "quats": p["quats"][mask],
            "intensities": p["intensities"][mask] * (1.0 if shrink == 1.0 else 0.5),
        }

    parts = [sample(clone, 0.5), sample(split, 1.0), sample(split, 1.0)]
    p["intensities"][clone] *= 0.5
    return {n: torch.cat([part[n] for part in parts], 0) for n in _PARAMS}


@torch.no_grad()
def densify_3dgr_ct(rec) -> dict:
    """3DGR-CT's density control (see the module docstring). ``rec``: the reconstructor (sigmoid intensities)."""
    c, p, dev, unit = rec.config, rec.params, rec.device, rec.length
    k = p["means"].shape[0]
    if k >= c.max_gaussians:  # train_ct_recon.py: `if gaussians.get_xyz.shape[-2] < config['max_gaussians']`
        return {"cloned": 0, "split": 0, "pruned": 0}
    grads = rec.last_grad_norm if rec.last_grad_norm is not None else torch.zeros(k, device=dev)
    scales = p["log_scales"].exp()
    selected = grads * unit >= c.grad_threshold  # gradient with respect to positions in the normalised frame
    big = scales.max(-1).values > c.split_scale * unit
    clone, split = selected & ~big, selected & big
    # clone in place: sigmoid(new logit) = sigmoid(old logit) / 2 for the parent and the copy
    half = torch.logit(torch.sigmoid(p["intensities"][clone]) / 2)
    p["intensities"][clone] = half
    new_clone = {n: p[n][clone] for n in _PARAMS}
    # split into N = 2 children drawn from N(mu, diag(s^2)) (not rotated, as published), scales / (0.8 N)
    n_split = int(split.sum())
    std = scales[split].repeat(2, 1)
    z = torch.randn(std.shape, generator=rec.generator).to(dev) * std
    new_split = {
        "means": p["means"][split].repeat(2, 1) + z,
        "log_scales": (scales[split].repeat(2, 1) / (0.8 * 2)).log(),
        "quats": p["quats"][split].repeat(2, 1),
        "intensities": p["intensities"][split].repeat(2),
    }
    new = {n: torch.cat([new_clone[n], new_split[n]], 0) for n in _PARAMS}

    def pruned(rows: dict[str, Tensor]) -> Tensor:
        low = torch.sigmoid(rows["intensities"]) < c.prune_intensity
        return low | (rows["log_scales"].exp().min(-1).values < c.prune_min_scale * unit)

    drop_old = pruned(p) | split
    drop_new = pruned(new)
    keep = (~drop_old).nonzero().squeeze(-1)
    if keep.numel() + int((~drop_new).sum()) == 0:  # never prune everything
        keep, drop_new = torch.arange(k, device=dev), torch.zeros_like(drop_new)
    replace_rows(rec, keep, {n: v[~drop_new] for n, v in new.items()})
    n_pruned = int(drop_old.sum()) - n_split + int(drop_new.sum())
    return {"cloned": int(clone.sum()), "split": n_split, "pruned": n_pruned}
