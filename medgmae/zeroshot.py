"""Zero-shot Gaussians of a whole scan from a pre-trained MedGMAE decoder.

:func:`zero_shot_gaussians` is the one implementation of "the decoder's Gaussians for a whole scan"; the
pre-training bundle's ``inference`` and the reconstruction's ``medgmae`` initialisation both call it.

1. The scan (array ``(I, J, K)`` + index -> world affine, any orientation, any spacing) is prepared with the
   model's recorded :class:`~medgmae.preprocessing.PreprocessingSpec` transforms (MONAI ``Orientationd`` ->
   ``Spacingd`` -> ``ScaleIntensityRanged``): the decoder sees exactly what pre-training fed it.
2. The prepared array is tiled into windows of the model's input size with at least ``overlap`` voxels of overlap
   (the last window flush with the end; padding with the window's value of air when the scan is smaller).
3. The windows are decoded unmasked in batches; each Gaussian is kept by the one window that owns its centre
   (window boundaries are the middles of the overlaps), so no Gaussian is duplicated and none is lost.
4. The Gaussians are mapped exactly (centres and full covariances) from the prepared grid to world millimetres
   and to the scan's own voxel frame, using the affine MONAI reports for the prepared array.
"""

from __future__ import annotations

import itertools
import math
import os
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from medgmae.whole_numbers import positive_count, whole_number
from medgmae.gaussians import Gaussians3D
from medgmae.terminal import ProgressLines, progress_bars_shown
from medgmae.preprocessing import PreprocessingSpec, model_preprocessing, spec_with_overrides
from medgmae.volume_units import warn_if_not_hu

__all__ = ["ZeroShotResult", "zero_shot_gaussians", "prepare_scan", "window_origins"]

logger = logging.getLogger("medgmae")


@dataclass
class ZeroShotResult:
    """What :func:`zero_shot_gaussians` returns.

    Attributes:
        voxel: Gaussians (``B = 1``) in the scan's voxel-index frame (array axes ``(I, J, K)``), intensities in the
            model's units (see ``spec``).
        world: the same Gaussians in world millimetres (RAS+ scanner frame).
        shape: the scan's shape ``(I, J, K)``.
        affine: the scan's ``(4, 4)`` index -> world matrix.
        spec: the pre-processing used.
        window_affines: ``(W, 4, 4)`` window-voxel -> world matrix of every decoded window.
        grid: the scan's shape on the model's grid (``spec``'s orientation and spacing), before any padding to
            one window; ``None``: not recorded.
        window: the model's window ``(3,)`` in voxels; ``None``: ``spec.input_size``.
    """

    voxel: Gaussians3D
    world: Gaussians3D
    shape: tuple[int, int, int]
    affine: np.ndarray
    spec: PreprocessingSpec
    window_affines: np.ndarray
    grid: tuple[int, int, int] | None = None
    window: tuple[int, int, int] | None = None

    def no_gaussians_reason(self) -> str:
        """Why the decoder may have placed no Gaussian in the scan, for an error when :attr:`voxel` is empty: a
        scan mostly padding in the model's window, else one that the HU window shows as all one value."""
        padded = _padding_words(self.grid, self.window or self.spec.input_size, self.spec) if self.grid else None
        if padded:
            return f"{padded}; give a scan of the field of view the model was pre-trained on"
        a0, a1 = self.spec.hu_window
        return (f"is the scan empty? (the model sees HU in [{a0:g}, {a1:g}]; a scan all below or all above it is "
                "one value to the model)")


def window_origins(n: int, w: int, overlap: int) -> tuple[list[int], list[float]]:
    """Window origins along one axis and the ownership boundaries between consecutive windows.

    Args:
        n: axis length (voxels).
        w: window length.
        overlap: minimum overlap between consecutive windows, in ``[0, w)``.

    Returns:
        ``(origins, bounds)``: origins with stride ``w - overlap``, the last flush with the end (``[0]`` when
        ``n <= w``); ``bounds[i]`` is the voxel coordinate between windows ``i`` and ``i + 1`` (the middle of
        their overlap), so every position belongs to exactly one window.
    """
    if n <= w:
        return [0], []
    stride = max(1, w - overlap)
    origins = sorted(set(list(range(0, n - w, stride)) + [n - w]))
    bounds = [0.5 * (b + a + w) - 0.5 for a, b in zip(origins, origins[1:])]
    return origins, bounds


def prepare_scan(volume: Tensor | np.ndarray, affine: np.ndarray, spec: PreprocessingSpec) -> tuple[Tensor, np.ndarray]:
    """Apply ``spec``'s transforms to a scan.

    Args:
        volume: ``(I, J, K)`` HU values.
        affine: ``(4, 4)`` index -> world (mm).
        spec: the pre-processing.

    Returns:
        ``(array (I', J', K') float32 in model units, affine (4, 4) float64 of the prepared grid)``.
    """
    from monai.data import MetaTensor
    from monai.transforms import Compose

    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32) if not isinstance(volume, Tensor) else volume.float())
    aff = np.asarray(affine, dtype=np.float64)
    _check_scan_shape(tuple(vol.shape))
    if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"the affine must be a finite, non-singular 4x4 matrix, got\n{aff}")
    if not np.allclose(aff[3], [0.0, 0.0, 0.0, 1.0], rtol=0.0, atol=1e-9):
        raise ValueError(f"the affine's last row must be [0, 0, 0, 1], got {aff[3].tolist()}")
    if not torch.isfinite(vol).all():
        raise ValueError("the scan contains NaN or infinite voxels")
    img = MetaTensor(vol.detach().cpu()[None], affine=torch.from_numpy(aff))
    out = Compose(spec.transforms(keys=["image"]))({"image": img})["image"]
    return out.as_tensor()[0].float(), np.asarray(out.affine, dtype=np.float64)


def _check_scan_shape(shape: tuple[int, ...]) -> None:
    """``ValueError`` naming ``volume`` unless ``shape`` is three non-zero sizes (a channel-first ``(1, I, J, K)``
    volume, as MONAI's loaders give, is told to drop its channel)."""
    if len(shape) != 3 or 0 in shape:
        fix = " (a channel-first (1, I, J, K) volume: give volume[0])" if len(shape) == 4 and shape[0] == 1 else ""
        raise ValueError(f"volume must be a 3D (I, J, K) scan with voxels, got shape {shape}{fix}")


def _window_affine(prepared_affine: np.ndarray, origin: Sequence[int]) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = origin
    return prepared_affine @ shift


def _owned(g: Gaussians3D, tile: Sequence[int], axes: list, n: Sequence[int]) -> Tensor:
    """Mask of the Gaussians (prepared-grid voxel frame) whose centre the window ``tile`` owns."""
    m = g.means[0]
    ok = torch.ones(m.shape[0], dtype=torch.bool, device=m.device)
    for ax in range(3):
        origins, bounds = axes[ax]
        lo = bounds[tile[ax] - 1] if tile[ax] > 0 else -0.5
        hi = bounds[tile[ax]] if tile[ax] < len(origins) - 1 else n[ax] - 0.5
        ok &= (m[:, ax] >= lo) & (m[:, ax] < hi)
    return ok


def _default_decoder(model) -> Callable[[Tensor, np.ndarray], Gaussians3D]:
    """The model's own decoding, fed windows in its weights' dtype (a model turned to float64) and giving float32
    Gaussians; ``ValueError`` for half-precision weights (its Gaussian heads compute in float32, as under autocast)."""
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the model's weights are {dtype}: its Gaussian heads compute in float32; decode with the "
                         "float32 model (model.float()), under torch.autocast for half-precision speed")  # fmt: skip

    def decode(windows: Tensor, _affines: np.ndarray) -> Gaussians3D:
        return model.predict_gaussians(windows.to(dtype), mask_ratio=0.0).to(torch.float32)

    return decode


def _check_inputs(volume: Any, model: Any, decode: Callable | None) -> None:
    """``ValueError`` naming what to give instead for a path given as the scan or the model, a model without a
    Gaussian decoder (a voxel-MAE, a fine-tuned UNETR) and a 2D model."""
    if isinstance(volume, (str, os.PathLike)):
        raise ValueError(f"volume must be an (I, J, K) array, got the path {str(volume)!r}: read it with "
                         "medgmae.data.read_volume(path), which gives its array and affine")  # fmt: skip
    if isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a loaded MedGMAE, got the path {str(model)!r}: load it with "
                         "medgmae.networks.MedGMAE.from_checkpoint(path)")  # fmt: skip
    size = getattr(model, "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) != 3:
        raise ValueError(f"zero-shot Gaussians of a 3D scan need a 3D MedGMAE model; this {type(model).__name__} "
                         f"takes {len(size)}D inputs {tuple(size)} (2D zero-shot tools: medgmae-2d)")  # fmt: skip
    if decode is None and not callable(getattr(model, "predict_gaussians", None)):
        raise ValueError(f"zero-shot Gaussians need a MedGMAE or MedGMAE* model (a Gaussian decoder); got a "
                         f"{type(model).__name__}, which predicts none")  # fmt: skip


#: The share of the model's window that padding may fill before zero-shot inference says so (the rule of
#: :class:`medgmae.data.input_checks.WarnIfPaddedd` for training crops).
MAX_PADDING = 0.25


def _padding_words(grid: Sequence[int], window: Sequence[int], spec: PreprocessingSpec) -> str | None:
    """``"the scan is AxBxC voxels at the model's ... mm, smaller than its ... window: N % of the window is padding
    with air"`` when padding fills more than :data:`MAX_PADDING` of the window, else ``None``."""
    from medgmae.data.input_checks import padding_share

    padding = padding_share(grid, window)
    if padding <= MAX_PADDING:
        return None
    return (f"the scan is {'x'.join(map(str, grid))} voxels at the model's {'x'.join(f'{v:g}' for v in spec.spacing)} "
            f"mm, smaller than its {'x'.join(map(str, window))} window: {100 * padding:.0f} % of the window is padding "
            "with air")  # fmt: skip


def _warn_if_padded(grid: Sequence[int], window: Sequence[int], spec: PreprocessingSpec, count: int) -> None:
    """Warn when the scan, on the model's grid, is so much smaller than its window that the decoder, trained on
    full windows, places few Gaussians in it (:func:`_padding_words`). Not when it placed none: the consumers then
    refuse the result, saying why (:meth:`ZeroShotResult.no_gaussians_reason`)."""
    padded = _padding_words(grid, window, spec)
    if padded and count:
        logger.warning("zero-shot: %s, and only %d of the decoder's Gaussians lie in the scan; give a scan of the "
                       "field of view the model was pre-trained on", padded, count)  # fmt: skip


def _spec_and_window(
    model: torch.nn.Module, spec: PreprocessingSpec | dict | None, overlap: int, batch_size: int, warned: bool = False
) -> tuple[PreprocessingSpec, tuple[int, int, int]]:
    """The pre-processing in use and the model's window ``(3,)``; ``ValueError`` for a bad overlap or batch size, or
    a ``spec`` whose sizes are not the model's; a given ``spec`` whose spacing, HU window or orientation differs from
    the model's recorded one is used with a warning naming both (:func:`spec_with_overrides`' for the first two)
    unless the caller ``warned`` of them already."""
    if isinstance(spec, dict):  # e.g. a checkpoint's "preprocessing" entry as saved
        spec = PreprocessingSpec.from_dict(spec, source="spec")
    if spec is not None and not isinstance(spec, PreprocessingSpec):
        raise ValueError(f"spec must be a PreprocessingSpec (or its dict), got {type(spec).__name__}")
    given = spec is not None
    spec = spec or model_preprocessing(model, "the model")
    win = getattr(model, "img_size", spec.input_size)
    win = tuple(int(w) for w in (win if isinstance(win, (tuple, list)) else (win,) * 3))
    if given and tuple(spec.input_size) != win:
        raise ValueError(f"spec's input_size {tuple(spec.input_size)} is not the model's window {win}: give the "
                         "model's own spec (model.preprocessing) with only the settings to change replaced")  # fmt: skip
    recorded = getattr(model, "preprocessing", None)
    if given and not warned and isinstance(recorded, PreprocessingSpec):  # warns of a spacing / HU window not the recorded one
        spec_with_overrides(recorded, spec.spacing, spec.hu_window, source="the model (model.preprocessing)")
        if spec.orientation != recorded.orientation:  # the axes the model's windows are cut along
            logger.warning("orientation %s differs from the orientation %s recorded in the model (model.preprocessing): "
                           "the model sees its windows along other axes than it was trained on", spec.orientation,
                           recorded.orientation)  # fmt: skip
    try:
        whole = whole_number(overlap)
    except TypeError:
        whole = -1
    if whole < 0 or any(whole >= w for w in win):
        raise ValueError(f"overlap must be a whole number of voxels in [0, {min(win)}), got {overlap!r}")
    positive_count(batch_size, "batch_size")
    return spec, win


def _checked_inputs(
    volume: Any, model: Any, spec: PreprocessingSpec | dict | None, settings: dict, decode: Callable | None, source: str,
    overrides_warned: bool = False,
) -> tuple[PreprocessingSpec, tuple[int, int, int]]:
    """:func:`_check_inputs` and :func:`_spec_and_window`, a check of ``min_intensity`` and the scan's shape, and
    :func:`~medgmae.volume_units.warn_if_not_hu` of the scan (once, before any work); ``settings`` holds
    ``overlap``, ``batch_size`` and ``min_intensity``."""
    _check_inputs(volume, model, decode)
    spec, win = _spec_and_window(model, spec, settings["overlap"], settings["batch_size"], overrides_warned)
    low = settings["min_intensity"]
    try:
        number = math.nan if isinstance(low, (bool, str)) else float(low)
    except (TypeError, ValueError):
        number = math.nan
    if not number < math.inf:  # NaN kept every Gaussian's comparison false, so dropped them all
        raise ValueError(f"min_intensity must be a number below infinity (model units), got {low!r}")
    _check_scan_shape(tuple(int(s) for s in np.shape(volume)))
    warn_if_not_hu(volume if isinstance(volume, (Tensor, np.ndarray)) else np.asarray(volume), spec, source)
    return spec, win


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _tiles(axes: list) -> list[tuple[int, int, int]]:
    """The windows of ``axes`` (per axis, :func:`window_origins`' origins and boundaries), as index triples."""
    return list(itertools.product(*(range(len(origins)) for origins, _ in axes)))


def _decode_windows(
    x: Tensor,
    prep_affine: np.ndarray,
    n: tuple[int, ...],
    win: tuple[int, int, int],
    axes: list,
    decode: Callable[[Tensor, np.ndarray], Gaussians3D],
    device: torch.device,
    batch_size: int,
    min_intensity: float,
) -> tuple[list[Gaussians3D], list[np.ndarray]]:
    """Decode the windows in batches and keep each window's own Gaussians, in prepared-grid voxels.

    Args:
        x: the prepared scan, padded to at least one window ``(I, J, K)``.
        prep_affine: ``(4, 4)`` index -> world of the prepared scan.
        n: the prepared scan's shape before padding.
        win: the model's window ``(3,)``.
        axes: per axis, the window origins and boundaries (:func:`window_origins`); the windows are every
            combination of one origin per axis (:func:`_tiles`).
        decode: ``(windows (B, 1, *window), window_affines (B, 4, 4)) -> Gaussians3D``.
        device: where the windows are decoded.
        batch_size: windows per decoder call.
        min_intensity: drop Gaussians at or below this intensity (model units).

    Returns:
        ``(kept, window_affines)``: the Gaussians each window owns, and the ``(B, 4, 4)`` affines of each batch.
    """
    kept, win_affines, tiles = [], [], _tiles(axes)
    bar = tqdm(total=len(tiles), unit="window", desc="zero-shot", leave=False, disable=not progress_bars_shown())
    lines = ProgressLines("zero-shot", len(tiles), "windows", logger.info)  # a line a minute where no bar shows
    for t0 in range(0, len(tiles), batch_size):
        batch = tiles[t0 : t0 + batch_size]
        orgs = [tuple(axes[a][0][t[a]] for a in range(3)) for t in batch]
        affs = np.stack([_window_affine(prep_affine, o) for o in orgs])
        win_affines.append(affs)
        inp = torch.stack([x[a : a + win[0], b : b + win[1], c : c + win[2]] for a, b, c in orgs])[:, None]
        pred = decode(inp.to(device), affs).to("cpu").to_voxel(win)
        for i, (tile, org) in enumerate(zip(batch, orgs)):
            g = pred[i]
            g = Gaussians3D(g.means + torch.tensor(org, dtype=g.means.dtype), g.scales, g.quats, g.intensities)
            ok = _owned(g, tile, axes, n) & (g.intensities[0] > min_intensity)
            kept.append(Gaussians3D(g.means[:, ok], g.scales[:, ok], g.quats[:, ok], g.intensities[:, ok]))
        bar.update(len(batch))
        lines.update(t0 + len(batch))
    bar.close()
    return kept, win_affines


def _world_and_scan(merged: Gaussians3D, prep_affine: np.ndarray, affine: np.ndarray) -> tuple[Gaussians3D, Gaussians3D]:
    """Gaussians of the prepared grid's index frame in world mm and in the scan's index frame (``affine``'s)."""
    prep = torch.from_numpy(prep_affine)
    to_scan = torch.from_numpy(np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ prep_affine)
    return merged.transformed(prep[:3, :3], prep[:3, 3]), merged.transformed(to_scan[:3, :3], to_scan[:3, 3])


@torch.no_grad()
def zero_shot_gaussians(
    volume: Tensor | np.ndarray,
    affine: np.ndarray,
    model: torch.nn.Module,
    spec: PreprocessingSpec | dict | None = None,
    overlap: int = 0,
    batch_size: int = 2,
    min_intensity: float = 0.0,
    decode: Callable[[Tensor, np.ndarray], Gaussians3D] | None = None,
    source: str = "the volume",
    overrides_warned: bool = False,
) -> ZeroShotResult:
    """The decoder's Gaussians for a whole scan (see the module docstring for the steps).

    Args:
        volume: ``(I, J, K)`` scan in HU (one in 1/mm or in ``[0, 1]`` is warned about: :func:`warn_if_not_hu`).
        affine: ``(4, 4)`` index -> world (mm) of ``volume`` (non-identity, oblique and anisotropic are fine).
        model: a MedGMAE (``predict_gaussians(x, mask_ratio=0.0)`` -> normalised-frame :class:`Gaussians3D`,
            ``img_size``, and ``preprocessing`` when loaded from a checkpoint).
        spec: the pre-processing (a :class:`PreprocessingSpec` or its ``to_dict()``); default: the model's
            recorded one (``model.preprocessing``), else the toolkit's default with a warning.
        overlap: minimum overlap between windows in prepared-grid voxels, in ``[0, window)``.
        batch_size: windows per decoder call.
        min_intensity: drop Gaussians at or below this intensity (model units).
        decode: ``(windows (B, 1, *window), window_affines (B, 4, 4)) -> Gaussians3D`` (normalised frame of
            each window); default: the model's ``predict_gaussians``. Tests use it to plug in an oracle.
        source: the scan's name in that warning (its file, say).
        overrides_warned: the caller has warned of ``spec``'s values that differ from the model's recorded ones
            (naming the model's file, as ``medgmae-recon`` does): not warned of again.

    Returns:
        The :class:`ZeroShotResult`; it may hold no Gaussian (a scan of one slice, an empty one: check
        ``result.voxel.num_gaussians`` and :meth:`ZeroShotResult.no_gaussians_reason`, as the toolkit's commands do).

    Raises:
        ValueError: a path given as ``volume`` or ``model``, a model without a Gaussian decoder or of 2D inputs, a
            ``spec`` whose input size is not the model's window, a bad ``overlap``, ``batch_size`` or
            ``min_intensity``, or a scan that is not a finite, non-empty 3D array with a non-singular affine.
    """
    settings = {"overlap": overlap, "batch_size": batch_size, "min_intensity": min_intensity}
    spec, win = _checked_inputs(volume, model, spec, settings, decode, source, overrides_warned)
    scan_shape = tuple(int(s) for s in np.shape(volume))
    x, prep_affine = prepare_scan(volume, affine, spec)
    n = tuple(x.shape)
    air = float(spec.window(torch.tensor(-1000.0)))
    x = F.pad(x, tuple(p for w, m in zip(win[::-1], n[::-1]) for p in (0, max(0, w - m))), value=air)
    axes = [window_origins(m, w, int(overlap)) for m, w in zip(n, win)]
    tiles = _tiles(axes)
    decode = decode or _default_decoder(model)
    logger.info("zero-shot: decoding %d %s of %s on a %s prepared grid, %d per call", len(tiles),
                "window" if len(tiles) == 1 else "windows", win, n, int(batch_size))  # fmt: skip
    kept, win_affines = _decode_windows(x, prep_affine, n, win, axes, decode, _model_device(model),
                                        int(batch_size), min_intensity)  # fmt: skip
    merged = Gaussians3D.cat(kept, dim=1)
    world, voxel = _world_and_scan(merged, prep_affine, affine)
    logger.info("zero-shot: %d Gaussians from %d %s of %s on a %s prepared grid", merged.num_gaussians, len(tiles),
                "window" if len(tiles) == 1 else "windows", win, n)  # fmt: skip
    _warn_if_padded(n, win, spec, merged.num_gaussians)
    return ZeroShotResult(voxel, world, scan_shape, np.asarray(affine, dtype=np.float64), spec,
                          np.concatenate(win_affines), grid=n, window=win)
