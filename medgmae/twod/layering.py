"""Zero-shot tools on 2D GMAE's Gaussians (GMAE paper, section 4.3): depth layering, figure-ground, edges.

All three start from the same operation: sort the K Gaussians of an image by depth and cut the sorted list into
``L`` equal groups (layers ``l_0`` nearest, ..., ``l_{L-1}``). Then

* **layering** renders each layer on its own (the layer stack) and the first ``k`` Gaussians for growing ``k``
  (the partial renders, ``k = 32, 64, ..., K``);
* **layer assignment**: with ``R_n`` the rendering of layers ``l_0 .. l_n`` (``R_{-1}`` the empty background), a
  pixel belongs to the last layer ``n`` whose addition changes it by more than a threshold,
  ``max_c |R_n - R_{n-1}| > threshold`` (pixels no layer changes get ``-1``);
* **figure-ground**: the pixels assigned to a layer at or beyond a split layer are foreground (near, large
  Gaussians carry the low-frequency background, far, small ones the detail of objects);
* **edges**: discontinuities of the layer assignment between 4-neighbours, at granularities ``l@L``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from medgmae.twod.gmae import SplatGaussians
from medgmae.twod.layering_defaults import DEFAULT_GRANULARITIES, DEFAULT_NUM_LAYERS
from medgmae.twod.render import render_gaussians_2d
from medgmae.whole_numbers import positive_count

__all__ = [
    "DEFAULT_GRANULARITIES",
    "DEFAULT_NUM_LAYERS",
    "default_granularities",
    "default_num_layers",
    "depth_layers",
    "layer_ids",
    "render_layers",
    "cumulative_renders",
    "composite_layers",
    "partial_render_counts",
    "partial_renders",
    "layer_assignment",
    "figure_ground",
    "edges_from_assignment",
    "zero_shot_edges",
    "mask_iou",
]


def default_num_layers(num_gaussians: int) -> int:
    """:data:`DEFAULT_NUM_LAYERS`, or ``num_gaussians`` when fewer (a layer needs a Gaussian)."""
    return min(DEFAULT_NUM_LAYERS, int(num_gaussians))


def default_granularities(num_gaussians: int) -> list[int]:
    """The :data:`DEFAULT_GRANULARITIES` up to ``num_gaussians`` (``[num_gaussians]`` when none is)."""
    return [n for n in DEFAULT_GRANULARITIES if n <= num_gaussians] or [int(num_gaussians)]


def _check(gaussians: SplatGaussians, num_layers: int) -> int:
    """``num_layers`` as an int (a whole number, ``np.int64(4)`` or ``4.0`` too: :func:`positive_count`), at most
    the Gaussians' count; ``ValueError`` otherwise, or for Gaussians of another type."""
    if not isinstance(gaussians, SplatGaussians):
        raise ValueError(f"expected SplatGaussians, got {type(gaussians).__name__}")
    num_layers = positive_count(num_layers, "num_layers")
    if num_layers > gaussians.num_gaussians:
        raise ValueError(f"num_layers ({num_layers}) exceeds the number of Gaussians ({gaussians.num_gaussians})")
    return num_layers


def depth_layers(gaussians: SplatGaussians, num_layers: int) -> list[Tensor]:
    """Split the depth-sorted Gaussians into ``num_layers`` equal groups (sizes differ by at most one).

    Args:
        gaussians: ``B`` images' Gaussians.
        num_layers: ``L``.

    Returns:
        ``L`` index tensors ``(B, K_l)`` into the Gaussian dimension, nearest layer first; together a partition
        of ``0 .. K-1`` for every image.
    """
    return list(torch.tensor_split(gaussians.depth_order(), _check(gaussians, num_layers), dim=1))


def layer_ids(gaussians: SplatGaussians, num_layers: int) -> Tensor:
    """``(B, K)`` layer index of every Gaussian (0 = nearest layer)."""
    ids = torch.empty(gaussians.means.shape[:2], dtype=torch.long, device=gaussians.means.device)
    for n, idx in enumerate(depth_layers(gaussians, num_layers)):
        ids.scatter_(1, idx, n)
    return ids


def render_layers(
    gaussians: SplatGaussians, num_layers: int, image_size: Sequence[int], backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Render every layer on its own (the layer stack).

    Returns:
        ``(colors, alphas)``: ``(B, L, C, H, W)`` and ``(B, L, 1, H, W)`` (black background).
    """
    colors, alphas = [], []
    for idx in depth_layers(gaussians, num_layers):
        c, a = render_gaussians_2d(*gaussians.take(idx).tensors(), image_size, backend, return_alpha=True)
        colors.append(c)
        alphas.append(a)
    return torch.stack(colors, 1), torch.stack(alphas, 1)


def composite_layers(colors: Tensor, alphas: Tensor) -> Tensor:
    """Front-to-back "over" compositing of a layer stack: ``sum_l C_l prod_{m<l} (1 - A_m)``.

    Equals the rendering of all Gaussians together (up to the renderer's early stop at transmittance 1e-4).

    Args:
        colors: ``(B, L, C, H, W)`` premultiplied layer colours.
        alphas: ``(B, L, 1, H, W)`` layer opacities.

    Returns:
        ``(B, C, H, W)``.
    """
    trans = torch.cumprod(torch.cat([torch.ones_like(alphas[:, :1]), 1.0 - alphas[:, :-1]], 1), dim=1)
    return (colors * trans).sum(1)


def cumulative_renders(
    gaussians: SplatGaussians, num_layers: int, image_size: Sequence[int], backend: str = "auto"
) -> Tensor:
    """``(B, L, C, H, W)``: entry ``n`` renders layers ``l_0 .. l_n`` together; the last is the full rendering."""
    layers = depth_layers(gaussians, num_layers)
    out = []
    for n in range(len(layers)):
        idx = torch.cat(layers[: n + 1], dim=1)
        out.append(render_gaussians_2d(*gaussians.take(idx).tensors(), image_size, backend))
    return torch.stack(out, 1)


def partial_render_counts(num_gaussians: int, start: int = 32) -> list[int]:
    """``[start, 2 start, 4 start, ...]`` below ``num_gaussians``, then ``num_gaussians`` (the paper's K's)."""
    if num_gaussians < 1 or start < 1:
        raise ValueError(f"need positive num_gaussians and start, got {num_gaussians}, {start}")
    counts, k = [], start
    while k < num_gaussians:
        counts.append(k)
        k *= 2
    return counts + [num_gaussians]


def partial_renders(
    gaussians: SplatGaussians, counts: Sequence[int], image_size: Sequence[int], backend: str = "auto"
) -> Tensor:
    """Render the ``k`` nearest Gaussians for each ``k`` in ``counts``; returns ``(B, len(counts), C, H, W)``."""
    order = gaussians.depth_order()
    k_total = gaussians.num_gaussians
    if not counts or any(not 1 <= int(k) <= k_total for k in counts):
        raise ValueError(f"counts must be non-empty and within 1..{k_total}, got {list(counts)}")
    return torch.stack(
        [render_gaussians_2d(*gaussians.take(order[:, : int(k)]).tensors(), image_size, backend) for k in counts], 1
    )


def layer_assignment(cumulative: Tensor, threshold: float = 0.05) -> Tensor:
    """Per-pixel layer: the last layer whose addition changes the pixel by more than ``threshold``.

    Args:
        cumulative: ``(B, L, C, H, W)`` from :func:`cumulative_renders`.
        threshold: minimum change (max over channels, image units).

    Returns:
        ``(B, H, W)`` long tensor in ``-1 .. L-1`` (-1: no layer changes the pixel enough).
    """
    if cumulative.dim() != 5:
        raise ValueError(f"cumulative renders must be (B, L, C, H, W), got {tuple(cumulative.shape)}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    prev = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], 1)
    changed = (cumulative - prev).abs().amax(2) > threshold  # (B, L, H, W)
    layer = torch.arange(cumulative.shape[1], device=cumulative.device).view(1, -1, 1, 1)
    return torch.where(changed, layer, torch.full_like(layer, -1)).amax(1)


def figure_ground(assignment: Tensor, split: int, num_layers: int | None = None) -> Tensor:
    """Foreground mask ``(B, H, W)`` bool: pixels assigned to layer ``split`` or a farther one.

    Args:
        assignment: :func:`layer_assignment`'s ``(B, H, W)`` layer per pixel (``-1``: none).
        split: the first foreground layer, ``0 <= split`` (a negative one is refused; without ``num_layers``, one
            past the last layer makes no pixel foreground).
        num_layers: the layers ``assignment`` came from; when given, ``split`` must be below it (as ``medgmae-2d
            segment --split`` must).

    Raises:
        ValueError: ``split`` negative, or not below ``num_layers``.
    """
    if int(split) < 0 or (num_layers is not None and int(split) >= int(num_layers)):
        upper = f"..{int(num_layers) - 1}" if num_layers is not None else " or more"
        beyond = f" (num_layers is {int(num_layers)})" if num_layers is not None else ""
        raise ValueError(f"split must be in 0{upper}, got {split}{beyond}")
    return assignment >= int(split)


def edges_from_assignment(assignment: Tensor) -> Tensor:
    """``(B, H, W)`` bool: pixels whose layer differs from their right or lower neighbour (4-connectivity)."""
    if assignment.dim() != 3:
        raise ValueError(f"assignment must be (B, H, W), got {tuple(assignment.shape)}")
    edges = torch.zeros_like(assignment, dtype=torch.bool)
    dx = assignment[:, :, 1:] != assignment[:, :, :-1]
    dy = assignment[:, 1:, :] != assignment[:, :-1, :]
    edges[:, :, :-1] |= dx
    edges[:, :-1, :] |= dy
    return edges


def zero_shot_edges(
    gaussians: SplatGaussians,
    image_size: Sequence[int],
    granularities: Sequence[int] = (4, 8, 16),
    threshold: float = 0.05,
    backend: str = "auto",
) -> dict[int, Tensor]:
    """Edge maps ``{L: (B, H, W) bool}`` from the layer assignments at ``l@L`` for each ``L`` in ``granularities``."""
    return {
        int(n): edges_from_assignment(layer_assignment(cumulative_renders(gaussians, n, image_size, backend), threshold))
        for n in granularities
    }


def mask_iou(pred: Tensor, reference: Tensor) -> Tensor:
    """Intersection over union of boolean masks over the last two dims (1 where both are empty)."""
    if pred.shape != reference.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(pred.shape)} and {tuple(reference.shape)}")
    pred, reference = pred.bool(), reference.bool()
    inter = (pred & reference).sum((-2, -1)).float()
    union = (pred | reference).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
