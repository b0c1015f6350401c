"""The fine-tuning run's validation picture (``segmentation.png``) in the patient's frame."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image


class _Engine:
    def __init__(self, output):
        self.state = type("State", (), {"output": output, "epoch": 3})()


def _ras_index_of(affine: np.ndarray, shape: tuple, world: np.ndarray) -> np.ndarray:
    """Where the RAS-ordered copy of an array holds the voxel nearest ``world`` (mm): the index along each RAS
    axis counts voxels from the lowest coordinate, worked out from the world positions of all voxels."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    points = grid @ affine[:3, :3].T + affine[:3, 3]
    nearest = points[np.argmin(np.linalg.norm(points - world, axis=1))]
    return np.array([np.unique(np.round(points[:, k], 6)).searchsorted(np.round(nearest[k], 6)) for k in range(3)])


def test_segmentation_picture_is_drawn_in_the_patients_frame_with_its_directions(tmp_path):
    """A validation case in an LPS-like, permuted, anisotropic array order (a spec orientation other than RAS) was
    drawn as if it were RAS: left and right, front and back swapped under "sagittal / coronal / axial" titles. The
    picture reorients it by its affine (a structure at the patient's right-anterior-superior corner is at the high
    end of every RAS axis of the drawn arrays) and marks the edges with the directions; an array without an affine
    is drawn as it is, without letters."""
    from medgmae.engine.figures import LETTER_COLOUR
    from medgmae.finetune.report import SegmentationPicture

    shape = (20, 24, 16)
    affine = np.array([[0.0, -1.5, 0.0, 40.0], [-0.8, 0.0, 0.0, 30.0], [0.0, 0.0, 2.5, -20.0], [0, 0, 0, 1]])
    label = np.zeros(shape, np.int64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    corner = world.reshape(-1, 3).max(0)  # the right-anterior-superior corner of the scan
    label[np.linalg.norm(world - corner, axis=-1) < 6.0] = 1
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    for with_affine in (True, False):
        picture = SegmentationPicture(tmp_path / str(with_affine))
        (tmp_path / str(with_affine)).mkdir()
        img = torch.from_numpy(image)[None]
        item = {"image": MetaTensor(img, affine=torch.from_numpy(affine)) if with_affine else img,
                "pred": torch.from_numpy(label)[None], "label": torch.from_numpy(label)[None]}  # fmt: skip
        engine = _Engine([item])
        picture._capture(engine)
        picture(engine)
        drawn = picture._case["label"]
        blob = np.argwhere(drawn > 0).mean(0)
        png = np.asarray(Image.open(tmp_path / str(with_affine) / "segmentation.png").convert("RGB"))
        yellow = np.all(png == LETTER_COLOUR, axis=-1).sum()
        if with_affine:
            expected = _ras_index_of(affine, shape, corner)
            assert drawn.shape == (shape[1], shape[0], shape[2])
            assert np.all(np.abs(blob - expected) < 3), (blob, expected)  # the high end of every RAS axis
            assert yellow > 50  # R/L, A/P, S/I at each of six tiles' edges
        else:
            assert drawn.shape == shape and yellow == 0


def test_the_picture_and_the_slicer_colour_table_colour_a_class_alike(tmp_path):
    """A structure has one colour in ``segmentation.png`` and ``labels.ctbl``: class 1 is the first of the 20
    distinct colours (230, 25, 75), class 21 wraps to it, and a full-strength overlay shows the table's colours."""
    from medgmae.finetune.color_table import write_color_table
    from medgmae.finetune.report import overlay

    names = ["background"] + [f"organ {c}" for c in range(1, 22)]
    write_color_table(tmp_path / "labels.ctbl", names)
    rows = [line.split() for line in (tmp_path / "labels.ctbl").read_text().splitlines() if not line.startswith("#")]
    table = {int(r[0]): tuple(int(v) for v in r[-4:-1]) for r in rows}
    assert table[0] == (0, 0, 0) and table[1] == (230, 25, 75) and table[21] == table[1] and table[20] == (128, 128, 128)
    labels = np.arange(22).reshape(2, 11)
    shown = overlay(np.full(labels.shape, 0.5), labels, alpha=1.0)
    assert all(tuple(shown[i, j]) == table[int(labels[i, j])] for i in range(2) for j in range(11) if labels[i, j])
    assert tuple(shown[0, 0]) == (128, 128, 128)  # background stays grey (0.5 of 255, rounded)
