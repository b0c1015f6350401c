"""Gaussians as binary ``.ply`` in the 3D Gaussian Splatting attribute convention.

The vertex element carries ``x, y, z``, ``nx, ny, nz`` (zeros), ``f_dc_0..2`` (grey colour from the intensity),
``opacity`` (a logit), ``scale_0..2`` (natural-log scales), ``rot_0..3`` (quaternion ``w, x, y, z``), so the files
open in 3DGS viewers, plus ``intensity`` (the Gaussian's intensity as is) and ``sigma_0..2`` (linear scales, so that
:func:`load_ply` returns exactly what :func:`save_ply` was given: ``exp(log(s))`` is not always ``s`` in float32).
Header comments record the frame, the volume shape and the voxel-to-world affine when given, and the cutoff: the
Mahalanobis distance at which the rendering that made the volume cut each Gaussian (3 by default; 3DGS viewers draw
them whole, and a 3D Gaussian holds about 3 % of its mass beyond 3). Centres in the world
frame (RAS millimetres, the toolkit's world) carry 3D Slicer's ``SPACE=RAS`` comment: Slicer takes a mesh file
without one as LPS and would show the Gaussians mirrored in x and y against the scan. (The file has vertices and no
faces, as 3DGS files do; VTK's PLY reader, which Slicer uses, loads such a file as points without cells, which Slicer
does not draw: :mod:`medgmae.ellipsoids` writes the same Gaussians as a mesh of ellipsoids it draws.)

PLY is written with NumPy rather than a PLY library because only this fixed, flat layout is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae.engine.devices import usable_device
from medgmae.files import atomic_write
from medgmae.gaussians import Gaussians3D
from medgmae.whole_numbers import positive_sizes

__all__ = ["save_ply", "load_ply", "PlyMeta", "PLY_FRAMES"]

#: The frames a PLY's centres may be in (recorded in its header): voxel indices, the model's normalised frame, or
#: the world (RAS millimetres).
PLY_FRAMES = ("voxel", "normalized", "world")

_SH_C0 = 0.28209479177387814  # zeroth spherical-harmonic constant used by 3DGS for f_dc
_FIELDS = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
    + ["intensity"]
    + [f"sigma_{i}" for i in range(3)]
)


class PlyMeta(dict):
    """Header metadata read back by :func:`load_ply`: ``frame`` (str), ``shape`` (tuple), ``affine`` (4x4) and
    ``cutoff`` (float; ``None`` where the file records none)."""


def save_ply(
    path: str | os.PathLike,
    gaussians: Gaussians3D,
    frame: str = "voxel",
    shape: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    cutoff: float | None = None,
) -> Path:
    """Write one set of Gaussians (batch size 1) to a binary little-endian ``.ply``, atomically.

    Args:
        path: output file.
        gaussians: a :class:`Gaussians3D` with ``B == 1``.
        frame: the coordinate frame of the centres (``"voxel"``, ``"normalized"`` or ``"world"``), recorded in the
            header.
        shape: the volume shape the Gaussians belong to, three whole numbers >= 1, recorded in the header.
        affine: 4x4 voxel-to-world matrix, recorded in the header.
        cutoff: the Mahalanobis distance at which the rendering of the volume cut each Gaussian, recorded in the
            header (module docstring).

    Returns:
        The path written.

    Raises:
        ValueError: a batch of more than one, an unknown frame, non-finite values or scales not positive, a shape
            that is not three positive whole numbers, an affine that is not 4x4, a cutoff that is not positive.
    """
    shape = None if shape is None else positive_sizes(shape, 3, "shape (the volume's three sizes)", scalar=False)
    if gaussians.batch_size != 1:
        raise ValueError(f"save_ply writes one set of Gaussians: got batch size {gaussians.batch_size}; index it first")
    if frame not in PLY_FRAMES:
        raise ValueError(f"frame must be one of {PLY_FRAMES} (world: RAS millimetres), got {frame!r}")
    m, s, q, i = (t.detach().to("cpu", torch.float32).numpy()[0] for t in gaussians.tensors())
    for name, values in (("means", m), ("scales", s), ("rotations", q), ("intensities", i)):
        if not np.isfinite(values).all():
            raise ValueError(f"{name} must be finite to be written (found NaN or Inf)")
    if not (s > 0).all():
        raise ValueError("scales must be positive to be written as log-scales")
    k = m.shape[0]
    data = np.zeros(k, dtype=[(f, "<f4") for f in _FIELDS])
    for j, name in enumerate("xyz"):
        data[name] = m[:, j]
    grey = (np.clip(i, 0.0, 1.0) - 0.5) / _SH_C0
    for j in range(3):
        data[f"f_dc_{j}"] = grey
        data[f"scale_{j}"] = np.log(s[:, j].astype(np.float64)).astype(np.float32)
        data[f"sigma_{j}"] = s[:, j]
    alpha = np.clip(np.abs(i), 1e-4, 1 - 1e-4).astype(np.float64)
    data["opacity"] = np.log(alpha / (1 - alpha)).astype(np.float32)
    for j in range(4):
        data[f"rot_{j}"] = q[:, j]
    data["intensity"] = i
    header = _header(k, frame, shape, affine, cutoff)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(data.tobytes())
    return Path(path)


def _header(k: int, frame: str, shape: Sequence[int] | None, affine: np.ndarray | None, cutoff: float | None = None) -> list[str]:
    """The header lines of a ``.ply`` of ``k`` Gaussians, recording their frame, volume shape, affine and cutoff."""
    header = ["ply", "format binary_little_endian 1.0", "comment medgmae gaussians", f"comment frame {frame}"]
    if frame == "world":
        header.append("comment SPACE=RAS")  # 3D Slicer's coordinate-system comment (see the module docstring)
    if shape is not None:
        header.append("comment shape " + " ".join(str(v) for v in shape))
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {a.shape}")
        header.append("comment affine " + " ".join(repr(float(v)) for v in a.ravel()))
    if cutoff is not None:
        if not float(cutoff) > 0:
            raise ValueError(f"cutoff must be a positive Mahalanobis distance, got {cutoff}")
        header.append(f"comment cutoff {float(cutoff)!r}")
    header.append(f"element vertex {k}")
    header += [f"property float {f}" for f in _FIELDS]
    header.append("end_header")
    return header


def _read_header(lines: list[str], path: Path) -> tuple[PlyMeta, list[str], int]:
    """The :class:`PlyMeta` comments, vertex property names and vertex count of a PLY header (``path`` for errors)."""
    meta, props, count, in_vertex = PlyMeta(frame="voxel", shape=None, affine=None, cutoff=None), [], None, False
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format" and parts[1:2] != ["binary_little_endian"]:
            raise ValueError(f"{path}: only binary_little_endian PLY is supported, got '{line}'")
        if parts[0] == "comment" and len(parts) > 2:
            if parts[1] == "frame":
                meta["frame"] = parts[2]
            elif parts[1] == "shape":
                meta["shape"] = tuple(int(v) for v in parts[2:])
            elif parts[1] == "affine":
                meta["affine"] = np.array([float(v) for v in parts[2:]], dtype=np.float64).reshape(4, 4)
            elif parts[1] == "cutoff":
                meta["cutoff"] = float(parts[2])
        elif parts[0] == "element":
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
        elif parts[0] == "property" and in_vertex:
            if parts[1] not in ("float", "float32"):
                raise ValueError(f"{path}: vertex property '{parts[-1]}' is {parts[1]}, only float is supported")
            props.append(parts[-1])
    if count is None:
        raise ValueError(f"{path}: no vertex element")
    return meta, props, count


def load_ply(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Gaussians3D, PlyMeta]:
    """Read Gaussians written by :func:`save_ply` or by 3DGS tools (binary little-endian float vertices).

    Files from other tools need ``x, y, z, scale_0..2, rot_0..3``; the intensity comes from ``intensity`` when
    present, otherwise from the grey level of ``f_dc_0`` (``0.5 + C0 * f_dc_0``).

    Args:
        path: the file.
        device: where the Gaussians are put (:func:`~medgmae.engine.devices.usable_device`: CUDA on a machine
            without it is refused before the file is read).

    Returns:
        ``(gaussians, meta)`` with ``B == 1`` and :class:`PlyMeta` from the header comments.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not a binary little-endian PLY with the needed float properties; a device that is not here.
    """
    device = usable_device(device)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (missing 'ply' magic or 'end_header')")
    meta, props, count = _read_header(raw[:end].decode("ascii", errors="replace").splitlines(), path)
    needed = ["x", "y", "z", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in needed if p not in props]
    if missing:
        raise ValueError(f"{path}: missing vertex properties {missing}")
    body = raw[end + len(b"end_header\n") :]
    dtype = np.dtype([(p, "<f4") for p in props])
    if len(body) < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated ({len(body)} bytes of vertex data, {count * dtype.itemsize} expected)")
    data = np.frombuffer(body, dtype=dtype, count=count)
    means = np.stack([data["x"], data["y"], data["z"]], -1)
    if all(f"sigma_{j}" in props for j in range(3)):
        scales = np.stack([data[f"sigma_{j}"] for j in range(3)], -1)
    else:
        scales = np.exp(np.stack([data[f"scale_{j}"] for j in range(3)], -1))
    quats = np.stack([data[f"rot_{j}"] for j in range(4)], -1)
    if "intensity" in props:
        inten = np.array(data["intensity"])
    elif "f_dc_0" in props:
        inten = 0.5 + _SH_C0 * np.array(data["f_dc_0"])
    else:
        inten = np.ones(count, np.float32)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(0).to(device)  # noqa: E731
    return Gaussians3D(to(means), to(scales), to(quats), to(inten)), meta
