"""The phantom generator: :func:`generate_phantom`, the :class:`Phantom` it returns, labels and grid geometry."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medgmae.data.phantom.anatomy import paint_body, paint_ribs, paint_spine_and_muscles, paint_thorax, paint_viscera
from medgmae.data.phantom.scene import A_REF, B_REF, Scene
from medgmae.host_memory import memory_limit
from medgmae.whole_numbers import nonnegative_count, whole_sizes
from medgmae.words import byte_size

__all__ = ["ORGAN_LABELS", "TISSUE_CLASSES", "DEFAULT_SHAPE", "DEFAULT_SPACING", "GENERATOR_VERSION", "Phantom",
           "PEAK_BYTES_PER_VOXEL", "generate_phantom", "phantom_affine", "shape_memory_problem", "validate_geometry"]

ORGAN_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_splenic_vein",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
    14: "vertebrae",
    15: "bowel",
    16: "lungs",
    17: "ribs",
}
"""Label ids of the phantom's label map (0 = background). 1-13 are BTCV's organs in BTCV's order."""

TISSUE_CLASSES: dict[int, str] = {
    0: "air",
    1: "skin",
    2: "fat",
    3: "muscle",
    4: "soft_tissue",
    5: "bone",
    6: "lung",
    7: "fluid",
    8: "gas",
}
"""Tissue ids of ``Phantom.tissue`` (what each voxel is made of, independent of the organ label)."""

DEFAULT_SHAPE: tuple[int, int, int] = (160, 128, 112)
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
GENERATOR_VERSION = 1
"""Bumped whenever the generated content changes for a given seed (recorded in ``dataset.json``)."""


@dataclass
class Phantom:
    """One synthetic CT case.

    Attributes:
        image: (X, Y, Z) float32 volume in HU, RAS voxel order.
        label: (X, Y, Z) uint8 organ labels, ids as in ``ORGAN_LABELS``.
        affine: (4, 4) float64 voxel-to-world (RAS, mm) matrix.
        spacing: voxel size in mm along the three array axes.
        tissue: (X, Y, Z) uint8 tissue classes, ids as in ``TISSUE_CLASSES``.
        seed: the seed the case was generated from.
        scale: physical mm per reference-adult mm (linear); organ volumes scale with ``scale ** 3``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    tissue: np.ndarray | None = None
    seed: int = 0
    scale: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)

    def organ_volume_ml(self, label_id: int) -> float:
        """Volume of one label in mL (cm^3)."""
        return float(np.count_nonzero(self.label == label_id)) * float(np.prod(self.spacing)) / 1000.0


def validate_geometry(shape: Sequence[int], spacing: Sequence[float] | float) -> tuple[tuple, tuple]:
    """``(shape, spacing)`` as int/float triples; ValueError for a shape that is not three whole numbers >= 8
    (``16.0`` is taken as 16, ``8.7`` or one number refused) or a spacing that is not one or three positive numbers."""
    what = "shape must be three whole numbers >= 8 (X, Y, Z voxels)"
    sizes = whole_sizes(shape, what)
    if len(sizes) != 3 or any(s < 8 for s in sizes):
        raise ValueError(f"{what}, got {shape!r}.")
    parts = (spacing,) * 3 if isinstance(spacing, (numbers.Real, np.generic)) else spacing  # np.float32(4.0) too
    try:
        if isinstance(parts, str) or any(isinstance(s, (bool, np.bool_, str)) for s in parts):
            raise TypeError
        mm = tuple(float(s) for s in parts)
    except (TypeError, ValueError):
        mm = ()
    if len(mm) != 3 or not all(np.isfinite(s) and s > 0 for s in mm):
        raise ValueError(f"spacing must be one or three positive finite numbers (mm), got {spacing!r}.")
    return sizes, mm


#: Memory a case holds per voxel at the peak of its generation and writing (the scene's HU, label, tissue and mask
#: grids, the full-volume temporaries of painting, blurring and noise, the writer's rounded copy): 40.1-40.4 bytes
#: measured with ``tracemalloc`` at shapes from 64 x 64 x 48 to 160 x 128 x 112, rounded up.
PEAK_BYTES_PER_VOXEL = 48


def shape_memory_problem(shape: Sequence[int]) -> str | None:
    """Why a case of ``shape`` cannot be generated here, else ``None``: the memory its generation holds
    (:data:`PEAK_BYTES_PER_VOXEL` per voxel) is more than this process may use
    (:func:`medgmae.host_memory.memory_limit`).

    Args:
        shape: ``(X, Y, Z)`` voxels.

    Returns:
        The problem in one line, or ``None``.
    """
    need, have = PEAK_BYTES_PER_VOXEL * math.prod(int(n) for n in shape), memory_limit()
    if have is None or need <= have:
        return None
    return (f"a phantom of shape {' x '.join(str(int(n)) for n in shape)} needs about {byte_size(need, binary=True)} "
            f"of memory while it is generated ({PEAK_BYTES_PER_VOXEL} bytes per voxel), more than the "
            f"{byte_size(have, binary=True)} this process may use (the machine's memory, or a cgroup or address-space "
            "limit): give a smaller shape")  # fmt: skip


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine of a phantom grid: ``diag(spacing)`` with the volume centre at world (0, 0, 0) mm.

    Args:
        shape: (X, Y, Z) voxels.
        spacing: voxel size in mm along the three axes.

    Returns:
        (4, 4) float64 voxel-to-world matrix.
    """
    shape, spacing = validate_geometry(shape, spacing)
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return affine


def _check_seed_and_noise(seed: int, noise: bool) -> int:
    """``seed`` as an int; ``ValueError`` for a seed that is not a whole number >= 0 (what NumPy's generators take;
    ``"3"`` or ``None`` failed in ``int()`` or a comparison) or a ``noise`` that is not a bool (the string
    ``"false"``, true as a condition, added noise)."""
    seed = nonnegative_count(seed, "seed")
    if not isinstance(noise, (bool, np.bool_)):
        raise ValueError(f"noise must be a bool, got {noise!r}.")
    return seed


def generate_phantom(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | float = DEFAULT_SPACING,
    noise: bool = True,
) -> Phantom:
    """Generate one synthetic abdominal CT case.

    Args:
        seed: random seed, a whole number >= 0; the same seed, shape and spacing give identical arrays.
        shape: (X, Y, Z) voxels in RAS order (each a whole number >= 8; three of them, not one).
        spacing: voxel size in mm, one number or three.
        noise: add correlated Gaussian noise (10-15 HU); False gives the noise-free (partial-volume smoothed) image.
            A bool (a string such as ``"false"`` is refused, not taken as true).

    Returns:
        A ``Phantom`` with ``image`` (X, Y, Z) float32 HU, ``label`` (X, Y, Z) uint8, ``affine`` (4, 4) float64,
        ``spacing`` and ``tissue`` (X, Y, Z) uint8.
    """
    seed = _check_seed_and_noise(seed, noise)
    shape, spacing = validate_geometry(shape, spacing)
    rng = np.random.default_rng(seed)
    U = rng.uniform

    # --- body size and layers (reference mm) ---
    A, B = A_REF * U(0.9, 1.1), B_REF * U(0.85, 1.12)
    fill = U(0.8, 0.92)
    scale = fill * min(shape[0] * spacing[0] / 2 / (A * 1.06), shape[1] * spacing[1] / 2 / (B * 1.04))
    fat = U(8.0, 30.0)  # subcutaneous fat, mm at the flanks
    muscle = U(9.0, 14.0)
    skin = 2.5
    cavity_ab = (A - skin - fat - muscle, B - skin - fat * 1.1 - muscle)
    scene = Scene(shape, spacing, scale, cavity_ab)
    hu_j = lambda mean, sd: float(mean + rng.normal(0.0, sd))  # noqa: E731

    paint_body(scene, rng, A, B, skin, fat, muscle, hu_j)
    paint_viscera(scene, rng, hu_j)
    paint_spine_and_muscles(scene, rng, hu_j)
    paint_thorax(scene, rng, hu_j)
    paint_ribs(scene, rng, A, B, skin, fat, muscle, hu_j)

    # --- partial-volume blur, correlated noise ---
    image = ndimage.gaussian_filter(scene.hu, sigma=0.6, mode="nearest")
    if noise:
        sigma = U(10.0, 15.0)
        white = rng.standard_normal(shape, dtype=np.float32)
        corr = ndimage.gaussian_filter(white, sigma=0.7, mode="wrap")
        image += corr * np.float32(sigma / max(float(corr.std()), 1e-6))
    np.clip(image, -1024.0, 3071.0, out=image)
    return Phantom(
        image=image.astype(np.float32, copy=False),
        label=scene.label,
        affine=phantom_affine(shape, spacing),
        spacing=spacing,
        tissue=scene.tissue,
        seed=int(seed),
        scale=float(scale),
        meta={"body_semi_axes_mm": (A * scale, B * scale), "fat_mm": fat * scale},
    )
