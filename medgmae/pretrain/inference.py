"""Zero-shot inference with a pre-trained MedGMAE: a volume in; its Gaussians (``.ply``), their rendering
(NIfTI, on the input's grid and affine) and a PNG of orthogonal slices out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensityRange
from PIL import Image

from medgmae.engine import atomic_write, resolve_device
from medgmae.gaussians import Gaussians3D
from medgmae.networks.medgmae import MedGMAE

__all__ = ["GaussianInference", "slices_png"]

logger = logging.getLogger("medgmae.pretrain")


def slices_png(volumes: Sequence[np.ndarray], path: str | Path) -> Path:
    """Write one row per volume of its three central orthogonal slices (values in ``[0, 1]``) as a PNG.

    Args:
        volumes: 3D arrays ``(D, H, W)`` of one shape, e.g. ``[input, rendering]``.
        path: output ``.png``.
    """
    rows = []
    for v in volumes:
        if v.ndim != 3:
            raise ValueError(f"slices_png needs 3D volumes, got shape {v.shape}")
        c = [s // 2 for s in v.shape]
        # sagittal, coronal, axial of a RAS-ordered array, rotated so that superior / anterior is up
        views = [np.rot90(v[c[0], :, :]), np.rot90(v[:, c[1], :]), np.rot90(v[:, :, c[2]])]
        h = max(x.shape[0] for x in views)
        views = [np.pad(x, ((0, h - x.shape[0]), (0, 0))) for x in views]
        rows.append(np.concatenate(views, axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows], axis=0)
    img = Image.fromarray((np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8), mode="L")
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


class GaussianInference:
    """Predict the Gaussians of a whole volume with a pre-trained MedGMAE / MedGMAE* and render them back.

    The volume is scaled like the training crops (HU ``[a_min, a_max]`` to ``[0, 1]``, clipped), resized to the
    model's input size, and encoded unmasked. The predicted Gaussians live in the normalised frame of the whole
    volume, so they are rendered directly on the input's own voxel grid and saved with the input's affine.

    Args:
        model_path: ``model.pt`` or a training checkpoint of a MedGMAE model.
        image_path: input volume (NIfTI, NRRD, MHA or a DICOM series folder).
        output_dir: destination folder; files are named after the input.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        a_min, a_max: HU window used in pre-training.
        output_hu: write the rendering in HU (otherwise in the ``[0, 1]`` training scale).
    """

    def __init__(
        self,
        model_path: str | Path,
        image_path: str | Path,
        output_dir: str | Path,
        device: str = "auto",
        a_min: float = -175.0,
        a_max: float = 250.0,
        output_hu: bool = True,
    ) -> None:
        if not a_max > a_min:
            raise ValueError(f"a_max ({a_max}) must exceed a_min ({a_min})")
        if not str(image_path).strip():
            raise ValueError("no input volume given: set image (e.g. --image /path/to/ct.nii.gz)")
        self.model_path, self.image_path, self.output_dir = Path(model_path), Path(image_path), Path(output_dir)
        if not self.image_path.exists():
            raise FileNotFoundError(f"input volume not found: {self.image_path}")
        self.device = resolve_device(device)
        self.a_min, self.a_max, self.output_hu = float(a_min), float(a_max), bool(output_hu)

    def _stem(self) -> str:
        name = self.image_path.name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    def load(self) -> tuple[torch.Tensor, np.ndarray]:
        """``((1, D, H, W) scaled volume, 4x4 affine)``; rejects non-3D or non-finite images naming the file."""
        try:
            img = Compose([LoadImage(image_only=True), EnsureChannelFirst()])(str(self.image_path))
        except Exception as e:
            raise ValueError(f"{self.image_path}: cannot read the volume ({type(e).__name__}: {e})") from e
        if img.dim() != 4 or img.shape[0] != 1:
            raise ValueError(f"{self.image_path}: expected a single-channel 3D volume, got shape {tuple(img.shape)}")
        if not torch.isfinite(img.as_tensor()).all():
            raise ValueError(f"{self.image_path}: the volume contains NaN or infinite voxels")
        affine = np.asarray(img.affine, dtype=np.float64)
        scaled = ScaleIntensityRange(self.a_min, self.a_max, 0.0, 1.0, clip=True)(img)
        return torch.as_tensor(scaled.as_tensor(), dtype=torch.float32), affine

    @torch.no_grad()
    def predict(self, model: MedGMAE, volume: torch.Tensor) -> tuple[Gaussians3D, torch.Tensor]:
        """Gaussians (normalised frame) and their ``(D, H, W)`` rendering on the volume's own grid."""
        x = Resize(model.img_size, mode="trilinear")(volume).as_tensor() if tuple(volume.shape[1:]) != model.img_size else volume
        g = model.predict_gaussians(x.unsqueeze(0).to(self.device), mask_ratio=0.0)
        shape = tuple(volume.shape[1:])
        rendered = g.to_voxel(shape).render(shape, model.cutoff, model.render_backend)[0]
        return g, rendered.cpu()

    def run(self) -> dict[str, Path]:
        """Run and write ``<name>_gaussians.ply``, ``<name>_rendered.nii.gz`` and ``<name>_slices.png``.

        Returns:
            The written paths by kind (``ply``, ``nifti``, ``png``).
        """
        volume, affine = self.load()  # input errors first, before the model is loaded
        model = MedGMAE.from_checkpoint(self.model_path).to(self.device).eval()
        gaussians, rendered = self.predict(model, volume)
        stem, out = self._stem(), self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        data = rendered.numpy().astype(np.float32)
        if self.output_hu:
            data = data * (self.a_max - self.a_min) + self.a_min
        paths["nifti"] = out / f"{stem}_rendered.nii.gz"
        with atomic_write(paths["nifti"]) as tmp:
            nib.save(nib.Nifti1Image(data, affine), str(tmp))
        paths["png"] = slices_png([volume[0].numpy(), np.clip(rendered.numpy(), 0, 1)], out / f"{stem}_slices.png")
        paths["ply"] = self._save_ply(gaussians, tuple(volume.shape[1:]), affine, out / f"{stem}_gaussians.ply")
        logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        return paths

    def _save_ply(self, gaussians: Gaussians3D, shape: tuple[int, ...], affine: np.ndarray, path: Path) -> Path:
        """Gaussians in the input's voxel frame, with its shape and voxel-to-world affine in the header."""
        from medgmae.ply import save_ply

        return save_ply(path, gaussians.to_voxel(shape)[0].to("cpu"), frame="voxel", shape=shape, affine=affine)
