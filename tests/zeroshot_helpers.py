"""The analytic scans, affines and recording decoder that the zero-shot tests share."""

from __future__ import annotations

import math

import numpy as np
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.preprocessing import PreprocessingSpec

SPEC = PreprocessingSpec(spacing=2.0, input_size=24, patch_size=4)
SHAPE = (40, 30, 22)
SPACING = np.array([1.2, 1.7, 3.1])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """The rotation about z by ``az`` after y by ``ay`` after x by ``ax`` (radians)."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def scan_affine(kind: str) -> np.ndarray:
    """index -> RAS world: RAS-ordered, LPS-ordered (i towards the left, j posterior) or oblique (rotated ~17 deg)."""
    a = np.eye(4)
    direction = {"ras": np.eye(3), "lps": np.diag([-1.0, -1.0, 1.0]), "oblique": rotation(0.3, -0.2, 0.25)}[kind]
    a[:3, :3] = direction * SPACING
    a[:3, 3] = [-20.0, 35.0, -110.0]
    return a


def world_points(affine: np.ndarray, shape) -> np.ndarray:
    """The world coordinates of every voxel of a grid of ``shape`` under ``affine``, as ``(*shape, 3)``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (idx @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def scan_centre(affine: np.ndarray) -> np.ndarray:
    """The world coordinates of the centre of a ``SHAPE`` scan under ``affine``."""
    return affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0) + affine[:3, 3]


def blob_hu(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Water background with a bright blob 8 mm to the right, 5 mm anterior and 12 mm superior of the centre."""
    d = points - (centre + np.array([8.0, 5.0, 12.0]))
    return 200.0 * np.exp(-(d**2).sum(-1) / (2 * 7.0**2))


class Probe(torch.nn.Module):
    """A 'model' that records the windows (and their claimed world frames) it is given."""

    img_size = SPEC.input_size

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[torch.Tensor] = []
        self.affines: list[np.ndarray] = []

    def decode(self, windows: torch.Tensor, affines: np.ndarray) -> Gaussians3D:
        self.windows += list(windows[:, 0])
        self.affines += list(affines)
        b = windows.shape[0]
        return Gaussians3D(torch.full((b, 1, 3), 0.5), torch.full((b, 1, 3), 0.05), torch.tensor([[[1.0, 0, 0, 0]]]).expand(b, 1, 4),
                           torch.ones(b, 1))  # fmt: skip
