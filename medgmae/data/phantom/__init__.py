"""Synthetic abdominal CT phantoms with organ labels, deterministic from a seed.

Each phantom is a volume in Hounsfield units (HU) with a label map of abdominal organs, built from smooth analytic
shapes: an elliptical body outline varying along the craniocaudal axis with skin, subcutaneous fat and muscle
layers; organs as ellipsoids and tubes deformed by low-frequency random displacement fields; a lumbar/lower
thoracic spine with cortical shell, cancellous bone, discs and spinal canal; lower ribs; lung bases above a
two-domed diaphragm; bowel loops and stomach with gas and fluid. Per case the body size, fat thickness, organ
positions, sizes, orientations, shapes and HU values vary, and correlated Gaussian noise is added.

Geometry:
    * Arrays are in RAS voxel order: axis 0 runs from the patient's left to right (+x = Right), axis 1 from
      posterior to anterior, axis 2 from inferior to superior. The affine is ``diag(spacing)`` with the volume
      centre at world (0, 0, 0) mm, so ``nibabel.aff2axcodes(affine) == ("R", "A", "S")``.
    * The anatomy is laid out in a reference adult frame (mm) and scaled isotropically so that the body fills
      80-92 % of the in-plane field of view; any shape and spacing therefore shows a whole abdomen. The
      craniocaudal window is centred on the upper abdomen (kidneys, pancreas, liver, lung bases). With the default
      ``shape=(160, 128, 112)`` at 1.5 mm (a 240 x 192 x 168 mm field of view) the body is about 200 x 150 mm
      across, i.e. a small adult at roughly 0.65x adult linear size: organ volumes are about 0.3x adult values.
    * Values are non-contrast CT: liver ~55 HU, spleen ~47, kidneys ~32, blood ~40, fat ~-100, muscle ~50,
      cancellous bone ~330, cortical bone ~750, lung ~-860, gas and outside air -1000.

The label ids follow BTCV's 13 organs (1-13) with four additions (14-17); see ``ORGAN_LABELS``.

Modules: :mod:`~medgmae.data.phantom.generator` (:func:`generate_phantom`, :class:`Phantom`, labels, affine),
:mod:`~medgmae.data.phantom.anatomy` (the organs and tissues), :mod:`~medgmae.data.phantom.scene` (grids and shape
primitives), :mod:`~medgmae.data.phantom.writer` (:func:`write_phantom_dataset`) and
:mod:`~medgmae.data.phantom.cli` (the ``medgmae-phantom`` command).
"""

from medgmae.data.phantom.cli import main
from medgmae.data.phantom.generator import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    GENERATOR_VERSION,
    ORGAN_LABELS,
    TISSUE_CLASSES,
    Phantom,
    generate_phantom,
    phantom_affine,
)
from medgmae.data.phantom.writer import case_seeds, write_phantom_dataset

__all__ = [
    "ORGAN_LABELS",
    "TISSUE_CLASSES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "GENERATOR_VERSION",
    "Phantom",
    "generate_phantom",
    "phantom_affine",
    "case_seeds",
    "write_phantom_dataset",
    "main",
]
