"""Zero-shot inference with a pre-trained MedGMAE: a scan in; its Gaussians (``.ply`` in world millimetres), their
rendering (NIfTI on the input's own grid and affine) and a PNG of orthogonal slices out.

The Gaussians come from :func:`medgmae.zeroshot.zero_shot_gaussians`, which prepares the scan with the
pre-processing recorded in ``model.pt`` (orientation, spacing, HU window) and tiles it with sliding windows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from medgmae.data.reader import read_volume, volume_stem
from medgmae.engine import resolve_device
from medgmae.engine.figures import grey_rgb, label_tile, mid_slices, save_png, tile_grid
from medgmae.files import save_nifti_atomic
from medgmae.networks.medgmae import MedGMAE
from medgmae.zeroshot import ZeroShotResult, zero_shot_gaussians

__all__ = ["GaussianInference", "slices_figure", "slices_png"]

logger = logging.getLogger("medgmae.mae_training")

_VIEWS = ("sagittal", "coronal", "axial")


def slices_figure(
    volumes: Sequence[np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    names: Sequence[str] | None = None,
    title: str = "",
    size: int = 256,
) -> np.ndarray:
    """One labelled row per volume of its sagittal, coronal and axial mid-slices, shown radiologically
    (:func:`medgmae.engine.figures.mid_slices`) and drawn to scale: a millimetre is the same number of pixels along
    every axis, so an anisotropic scan is not squashed.

    Args:
        volumes: RAS-ordered 3D arrays ``(D, H, W)`` of one shape with values in ``[0, 1]`` (clipped), e.g.
            ``[input, rendering]``.
        spacing: voxel size (mm) along ``(D, H, W)`` (R-L, A-P, I-S).
        names: one label per row (default: ``volume 0``, ``volume 1``...).
        title: text above the figure.
        size: pixels of the longest side of the volume (mm) in the slices.

    Returns:
        ``(H, W, 3)`` uint8 RGB image: tiles under 14-pixel labels, 2-pixel gaps, a 14-pixel title band.
    """
    names = list(names) if names is not None else [f"volume {i}" for i in range(len(volumes))]
    sp = tuple(float(s) for s in spacing)
    if not volumes or len(names) != len(volumes):
        raise ValueError(f"slices_figure needs volumes and one name each, got {len(volumes)} and {len(names)}")
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing!r}")
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    if any(v.ndim != 3 or v.shape != volumes[0].shape for v in volumes):
        raise ValueError(f"slices_figure needs 3D volumes of one shape, got {[v.shape for v in volumes]}")
    scale = size / max(n * s for n, s in zip(volumes[0].shape, sp))  # pixels per mm
    pixel_mm = [(sp[2], sp[1]), (sp[2], sp[0]), (sp[1], sp[0])]  # (row, column) mm of sagittal, coronal, axial
    width = 6 * max(len(f"{n}: {v}") for n in names for v in _VIEWS) + 6  # room for the longest label
    rows = [[_labelled(_to_scale(grey_rgb(view), mm, scale), f"{name}: {label}", width)
             for view, mm, label in zip(mid_slices(v), pixel_mm, _VIEWS)] for v, name in zip(volumes, names)]  # fmt: skip
    return label_tile(tile_grid(rows), title)


def _to_scale(img: np.ndarray, pixel_mm: tuple[float, float], scale: float) -> np.ndarray:
    """An ``(h, w, 3)`` image of pixels of ``pixel_mm = (row, column)`` mm resized to ``scale`` pixels per mm."""
    h, w = max(1, round(img.shape[0] * pixel_mm[0] * scale)), max(1, round(img.shape[1] * pixel_mm[1] * scale))
    resample = Image.NEAREST if h >= img.shape[0] and w >= img.shape[1] else Image.BILINEAR
    return np.asarray(Image.fromarray(img).resize((w, h), resample))


def _labelled(img: np.ndarray, text: str, width: int) -> np.ndarray:
    """:func:`~medgmae.engine.figures.label_tile` of ``img`` centred on a black canvas at least ``width`` wide."""
    pad = max(0, width - img.shape[1])
    return label_tile(np.pad(img, ((0, 0), (pad // 2, pad - pad // 2), (0, 0))), text)


def slices_png(
    volumes: Sequence[np.ndarray], path: str | Path, spacing: Sequence[float] = (1.0, 1.0, 1.0),
    names: Sequence[str] | None = None, title: str = "",
) -> Path:  # fmt: skip
    """Write :func:`slices_figure` of ``volumes`` as a PNG, atomically; returns the path."""
    return save_png(slices_figure(volumes, spacing, names, title), path)


class GaussianInference:
    """Predict the Gaussians of a whole scan with a pre-trained MedGMAE / MedGMAE* and render them back.

    Args:
        model_path: ``model.pt`` or a training checkpoint of a MedGMAE model (its recorded pre-processing is used).
        image_path: input scan (NIfTI, NRRD, MetaImage or a DICOM series folder), in HU.
        output_dir: destination folder; files are named after the input.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        overlap: minimum overlap of the sliding windows, in voxels of the model's grid.
        batch_size: windows per decoder call.
        output_hu: write the rendering in HU within the model's window ``[a_min, a_max]`` (otherwise in the model's
            intensity units, within its intensity range); see :func:`_rendered_output`.
    """

    def __init__(
        self,
        model_path: str | Path,
        image_path: str | Path,
        output_dir: str | Path,
        device: str = "auto",
        overlap: int = 0,
        batch_size: int = 2,
        output_hu: bool = True,
    ) -> None:
        if not str(image_path).strip():
            raise ValueError("no input volume given: set image (e.g. --image /path/to/ct.nii.gz)")
        self.model_path, self.image_path, self.output_dir = Path(model_path), Path(image_path), Path(output_dir)
        if not self.image_path.exists():
            raise FileNotFoundError(f"input volume not found: {self.image_path}")
        self.device = resolve_device(device)
        self.overlap, self.batch_size, self.output_hu = int(overlap), int(batch_size), bool(output_hu)

    def _stem(self) -> str:
        return volume_stem(self.image_path)

    def run(self) -> dict[str, Path]:
        """Run and write ``<name>_gaussians.ply``, ``<name>_rendered.nii.gz`` and ``<name>_slices.png``.

        Returns:
            The written paths by kind (``ply``, ``nifti``, ``png``).
        """
        volume = read_volume(self.image_path)  # input errors first, before the model is loaded
        model = MedGMAE.from_checkpoint(
            self.model_path, needed_for="zero-shot inference needs a medgmae or medgmae-star model.pt"
        ).to(self.device).eval()
        res = zero_shot_gaussians(volume.array, volume.affine, model, overlap=self.overlap, batch_size=self.batch_size)
        with torch.no_grad():
            rendered = res.voxel.to(self.device).render(res.shape, model.cutoff, model.render_backend)[0].cpu().numpy()
        return self._write(volume.array, volume.affine, res, rendered)

    def _write(self, scan: np.ndarray, affine: np.ndarray, res: ZeroShotResult, rendered: np.ndarray) -> dict[str, Path]:
        from medgmae.ply import save_ply

        stem, out = self._stem(), self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {"nifti": out / f"{stem}_rendered.nii.gz", "png": out / f"{stem}_slices.png",
                                  "ply": out / f"{stem}_gaussians.ply"}  # fmt: skip
        data = _rendered_output(rendered, res.spec, self.output_hu)
        save_nifti_atomic(data, affine, paths["nifti"])
        b0, b1 = res.spec.intensity_range
        pictures = [(res.spec.window(scan) - b0) / (b1 - b0), np.clip((rendered - b0) / (b1 - b0), 0, 1)]
        spacing = _ras_spacing(affine)
        title = f"{stem}: {' x '.join(f'{s:.2f}' for s in spacing)} mm (R-L x A-P x I-S)"
        slices_png([_to_ras(v, affine) for v in pictures], paths["png"], spacing, ("input", "rendering"), title)
        save_ply(paths["ply"], res.world, frame="world", shape=res.shape, affine=affine)
        logger.info("%d Gaussians; wrote %s", res.world.num_gaussians, ", ".join(str(p) for p in paths.values()))
        return paths


def _rendered_output(rendered: np.ndarray, spec, output_hu: bool) -> np.ndarray:
    """The rendering as written: clipped to the model's intensity range when its training clipped intensities
    (the model cannot represent values outside its window: overlapping Gaussians and MedGMAE*'s levels add up
    past it), then in HU within the window ``[a_min, a_max]`` when ``output_hu``, as float32."""
    if spec.clip:
        lo, hi = sorted(spec.intensity_range)
        rendered = np.clip(rendered, lo, hi)
    return (spec.unwindow(rendered) if output_hu else rendered).astype(np.float32)


def _ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the axes of :func:`_to_ras`'s array (R-L, A-P, I-S)."""
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    out = [0.0, 0.0, 0.0]
    for axis, (ras_axis, _) in enumerate(nib.orientations.io_orientation(affine)):
        out[int(ras_axis)] = float(zooms[axis])
    return out[0], out[1], out[2]


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array reoriented (axis permutations and flips only) to the closest RAS order, for pictures."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(volume, ornt)
