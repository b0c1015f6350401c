"""Zero-shot inference with a pre-trained MedGMAE: a scan in; its Gaussians (``.ply`` in world millimetres, and as
ellipsoids 3D Slicer draws, ``.vtk``), their rendering (NIfTI on the input's own grid and affine) and a PNG of
orthogonal slices out.

The Gaussians come from :func:`medgmae.zeroshot.zero_shot_gaussians`, which prepares the scan with the
pre-processing recorded in ``model.pt`` (orientation, spacing, HU window) and tiles it with sliding windows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medgmae.data.datalist import DatasetError
from medgmae.data.precheck import single_slice_problem
from medgmae.data.reader import read_volume, volume_stem
from medgmae.engine import resolve_device
from medgmae.engine.figures import mid_slices, orthogonal_views, ras_oriented, save_png, voxel_sizes
from medgmae.files import save_nifti_atomic
from medgmae.missing_paths import missing_path_message
from medgmae.networks.medgmae import MedGMAE
from medgmae.preprocessing import describe_preprocessing, model_preprocessing
from medgmae.temp_names import NAME_BYTES, fitted_name
from medgmae.zeroshot import ZeroShotResult, zero_shot_gaussians
from medgmae.whole_numbers import nonnegative_count, positive_count

__all__ = ["GaussianInference", "model_path_check", "overlap_check", "picture_views", "slices_png", "volume_path_check"]

logger = logging.getLogger("medgmae.mae_training")

#: What zero-shot inference needs of its model file (the wrong-kind message).
NEEDED_FOR = "zero-shot inference needs a medgmae or medgmae-star model.pt"


def _model_window(path: Any) -> int:
    """The smallest edge of the input window of the MedGMAE / MedGMAE* model file ``path``, read memory-mapped (its
    kind and config, not its weights); ``ValueError`` naming the file when it is missing or of another kind."""
    from medgmae.checkpoint import load_checkpoint

    if not str(path or "").strip():
        raise ValueError("no model given: set model_path (e.g. --model_path runs/medgmae_pretrain/model.pt)")
    try:
        ckpt = load_checkpoint(Path(str(path)).expanduser(), MedGMAE.checkpoint_kinds, NEEDED_FOR, mmap=True)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    size = ckpt.config.get("img_size", 96)
    return min(int(v) for v in size) if isinstance(size, (list, tuple)) else int(size)


def model_path_check(value: Any) -> None:
    """The ``model_path`` kind of the inference bundle's settings check
    (:func:`medgmae.bundle_checks.check_settings`): a MedGMAE / MedGMAE* model file, named with the other bad
    settings before anything is read or written."""
    _model_window(value)


def volume_path_check(value: Any) -> None:
    """The ``image`` kind: a path given and existing (its contents are read, and named if unusable, by
    :func:`~medgmae.data.reader.read_volume` when the run starts)."""
    if not str(value or "").strip():
        raise ValueError("no input volume given: set image (e.g. --image /path/to/ct.nii.gz)")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ValueError(missing_path_message(path, f"input volume not found: {path}"))


def overlap_check(model_path: Any) -> Callable[[Any], None]:
    """The ``overlap`` kind: a whole number of voxels, at least 0 and below the window of the model at
    ``model_path`` (when that file reads; its own check names it otherwise)."""
    from medgmae.cli_types import nonneg_int

    def check(value: Any) -> None:
        overlap = nonneg_int(str(value).strip())
        try:
            window = _model_window(model_path)
        except ValueError:
            return
        if overlap >= window:
            raise ValueError(f"expected fewer voxels than the model's input window ({window}), got {overlap}")

    return check


def slices_png(
    views: Sequence[Sequence[np.ndarray]], path: str | Path, spacing: Sequence[float] = (1.0, 1.0, 1.0),
    names: Sequence[str] | None = None, title: str = "",
) -> Path:  # fmt: skip
    """Write :func:`~medgmae.engine.figures.orthogonal_views` of ``views`` (per volume, the three
    :func:`~medgmae.engine.figures.mid_slices` of a RAS-ordered volume, in ``[0, 1]``) as a PNG, atomically;
    returns the path."""
    return save_png(orthogonal_views(views, spacing, names, title), path)


def picture_views(
    scan: np.ndarray, rendered: np.ndarray, affine: np.ndarray, spec
) -> tuple[list[list[np.ndarray]], tuple[float, float, float]]:  # fmt: skip
    """The mid-slices of the PNG's two rows, cut before any arithmetic: the scan windowed to the model's intensities
    and the rendering clipped to them, each scaled to ``[0, 1]``, in RAS order (:func:`ras_oriented`, a view: flips
    and transposes only), so a 512 x 512 x 400 scan costs three slices, not several float copies of it.

    Args:
        scan: ``(I, J, K)`` input volume in HU, in the index order of ``affine``.
        rendered: ``(I, J, K)`` rendering in the model's intensity units.
        affine: ``(4, 4)`` voxel-to-RAS-mm matrix of both.
        spec: the model's :class:`~medgmae.preprocessing.PreprocessingSpec`.

    Returns:
        ``([input views, rendering views], spacing)``: three 2D slices per row (:func:`mid_slices` of the
        RAS-ordered ``(D, H, W)`` volume) and the voxel size (mm) along ``(D, H, W)``.
    """
    b0, b1 = spec.intensity_range
    (scan_ras, spacing), (rendered_ras, _) = ras_oriented(scan, affine), ras_oriented(rendered, affine)
    views = [[(spec.window(s) - b0) / (b1 - b0) for s in mid_slices(scan_ras)],
             [np.clip((s - b0) / (b1 - b0), 0, 1) for s in mid_slices(rendered_ras)]]  # fmt: skip
    return views, spacing


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
        overlap, batch_size = nonnegative_count(overlap, "overlap"), positive_count(batch_size, "batch_size")
        if not str(image_path).strip():
            raise ValueError("no input volume given: set image (e.g. --image /path/to/ct.nii.gz)")
        self.model_path, self.image_path = Path(model_path).expanduser(), Path(image_path).expanduser()
        self.output_dir = Path(output_dir)  # a '~' here is refused by the bundle's settings check
        if not self.image_path.exists():
            raise FileNotFoundError(missing_path_message(self.image_path, f"input volume not found: {self.image_path}"))
        self.device = resolve_device(device)
        self.overlap, self.batch_size, self.output_hu = overlap, batch_size, bool(output_hu)

    def _stem(self) -> str:
        """The input's file name without its ending, in the file system's 255 bytes with the longest ending added
        (``_rendered.nii.gz``; :func:`~medgmae.temp_names.fitted_name`)."""
        return fitted_name(volume_stem(self.image_path), limit=NAME_BYTES - len("_rendered.nii.gz"))

    def run(self) -> dict[str, Path]:
        """Run and write ``<name>_gaussians.ply``, ``<name>_ellipsoids.vtk`` (:mod:`medgmae.ellipsoids`; only up to
        :data:`~medgmae.ellipsoids.MESH_LIMIT` Gaussians: above it a log line gives the command that writes it),
        ``<name>_rendered.nii.gz`` and ``<name>_slices.png``. An earlier run's ``<name>_ellipsoids.vtk`` is removed
        before any of them is written, so that a stop leaves it beside no file of this run's.

        Returns:
            The written paths by kind (``ply``, ``mesh`` where it was written, ``nifti``, ``png``).
        """
        volume = _read_scan(self.image_path)  # input errors first, before the model is loaded
        if flat := single_slice_problem(self.image_path, volume.array.shape):  # its Gaussians would all fall outside
            raise DatasetError(flat)
        model = MedGMAE.from_checkpoint(
            self.model_path, needed_for=NEEDED_FOR
        ).to(self.device).eval()
        spec = model_preprocessing(model, str(self.model_path))
        recorded = f"recorded in {self.model_path.resolve()}" if model.preprocessing is not None else "default"
        logger.info("%s", describe_preprocessing(spec, dict.fromkeys(("orientation", "spacing", "hu_window"), recorded), "window"))
        res = zero_shot_gaussians(volume.array, volume.affine, model, spec, overlap=self.overlap,
                                  batch_size=self.batch_size, source=str(self.image_path))  # warns of a unit not HU
        if res.voxel.num_gaussians == 0:  # an empty .ply and a constant rendering would say nothing
            raise DatasetError(f"{self.image_path}: the decoder placed no Gaussian in the scan, nothing was written: "
                             f"{res.no_gaussians_reason()}")  # fmt: skip
        with torch.no_grad():
            rendered = res.voxel.to(self.device).render(res.shape, model.cutoff, model.render_backend)[0].cpu().numpy()
        return self._write(volume.array, volume.affine, res, rendered, model.cutoff)

    def _write(self, scan: np.ndarray, affine: np.ndarray, res: ZeroShotResult, rendered: np.ndarray, cutoff: float) -> dict[str, Path]:
        from medgmae.ellipsoids import over_mesh_limit, save_ellipsoids, skipped_mesh_message
        from medgmae.ply import save_ply

        stem, out = self._stem(), self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {"nifti": out / f"{stem}_rendered.nii.gz", "png": out / f"{stem}_slices.png",
                                  "ply": out / f"{stem}_gaussians.ply", "mesh": out / f"{stem}_ellipsoids.vtk"}  # fmt: skip
        data = _rendered_output(rendered, res.spec, self.output_hu)
        _warn_if_another_scans(paths["nifti"], stem, data.shape, affine)
        paths["mesh"].unlink(missing_ok=True)  # an earlier run's, before this run's first file: never beside them
        save_nifti_atomic(data, affine, paths["nifti"])
        views, spacing = picture_views(scan, rendered, affine, res.spec)
        a0, a1 = res.spec.hu_window
        title = (f"{stem}: voxels {voxel_sizes(spacing)}; "
                 f"grey window [{a0:.4g}, {a1:.4g}] HU")  # fmt: skip
        slices_png(views, paths["png"], spacing, ("input", "rendering"), title)
        save_ply(paths["ply"], res.world, frame="world", shape=res.shape, affine=affine, cutoff=cutoff)
        if over_mesh_limit(res.world.num_gaussians):
            mesh = paths.pop("mesh")
            logger.info("%s", skipped_mesh_message(res.world.num_gaussians, paths["ply"], mesh))
        else:
            save_ellipsoids(paths["mesh"], res.world)  # the same world Gaussians, drawn: Slicer does not draw the .ply
        logger.info("%d Gaussians; wrote %s", res.world.num_gaussians, ", ".join(str(p) for p in paths.values()))
        return paths


def _read_scan(path: Path):
    """:func:`~medgmae.data.reader.read_volume` of the scan, its refusal (not a volume, corrupt, several DICOM
    series...) a :class:`~medgmae.data.datalist.DatasetError` naming the file, which the bundle prints alone as the
    pre-training's pre-check and the fine-tuning's segmentation print theirs (no traceback)."""
    try:
        return read_volume(path)
    except (ValueError, OSError) as e:  # the reader's messages name the file
        raise DatasetError(str(e) if str(path) in str(e) else f"{path}: {e}") from e


def _warn_if_another_scans(path: Path, stem: str, shape: Sequence[int], affine: np.ndarray) -> None:
    """Warn when ``path`` (``<stem>_rendered.nii.gz``) exists with another grid than this input's: outputs of another scan of the same name
    (``ct.nii.gz`` and ``ct.nrrd``, or two folders' ``ct.nii.gz``) are about to be replaced by this one's."""
    import nibabel as nib

    if not path.is_file():
        return
    try:
        old = nib.load(str(path))
        same = tuple(old.shape) == tuple(shape) and np.allclose(old.affine, affine, atol=1e-3)
    except Exception:  # unreadable: it is replaced all the same
        same = False
    if not same:
        logger.warning("%s held the outputs of another scan (another grid) of the same name; they are replaced by "
                       "this input's (give another --inference_dir to keep both)", path.parent / f"{stem}_*")


def _rendered_output(rendered: np.ndarray, spec, output_hu: bool) -> np.ndarray:
    """The rendering as written: clipped to the model's intensity range when its training clipped intensities
    (the model cannot represent values outside its window: overlapping Gaussians and MedGMAE*'s levels add up
    past it), then in HU within the window ``[a_min, a_max]`` when ``output_hu``, as float32."""
    if spec.clip:
        lo, hi = sorted(spec.intensity_range)
        rendered = np.clip(rendered, lo, hi)
    return (spec.unwindow(rendered) if output_hu else rendered).astype(np.float32)
