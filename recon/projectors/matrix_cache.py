""":class:`~recon.projectors.ray_matrix.RayMatrixProjector`'s matrix kept in a run's output folder, so that the
same command with ``--resume`` (or any later run in that folder on the same scan grid) reads it instead of building
it again.

The file, :data:`MATRIX_FILE`, holds ``A`` as CSR arrays (plain tensors: ``torch.load(weights_only=True)`` reads
it) with the key it was built for: a SHA-256 of the geometry's scan fields (everything but the affine, which does
not enter ``A``), the ray marcher's step, the dtype and the build's version
(:data:`recon.projectors.ray_matrix.BUILD_VERSION`). It is written atomically (write, then rename) right after the
build. A file whose key differs (another geometry, volume grid, step, dtype or build) or that cannot be read is not
used: a note says so, the matrix is built and the file replaced.

A folder shared by runs (``reconstruct --matrix-dir``: the candidates of ``select``, or several scans) holds each
matrix under a name with the key's first 16 hex digits (:data:`SHARED_MATRIX_FILE`), so the matrices of several scans
lie side by side. Its files are only read and replaced, never removed. A reader sees a whole file or none (the write
renames a finished temporary file); two runs that find no file and build at once both build, and the second
rename replaces the first's file with an equal one. A run killed while writing leaves its temporary file, named
after its host and process: each run removes those of processes no longer running on its host, and those unchanged
for a day whoever wrote them (a container's run: :func:`medgmae.temp_names.remove_dead_writers_files`), never one
another run may still be writing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from medgmae.words import byte_size
from medgmae.write_failures import OutputWriteError
from recon.geometry import CTGeometry
from recon.projectors import ray_matrix
from recon.projectors.ray_matrix import RayMatrixProjector

__all__ = ["MATRIX_FILE", "SHARED_MATRIX_FILE", "matrix_key", "matrix_path", "save_matrix", "cached_matrix_projector"]

#: The matrix's file name in a run's output folder.
MATRIX_FILE = "projector_matrix.pt"
#: The matrix's file name in a folder shared by runs (``--matrix-dir``): ``key`` is :func:`matrix_key`'s first 16
#: hex digits.
SHARED_MATRIX_FILE = "projector_matrix-{key}.pt"


def matrix_key(geometry: CTGeometry, step: float = 0.5, dtype: torch.dtype = torch.float32) -> str:
    """SHA-256 of what determines ``A``: the geometry without its affine, the step, the dtype, the build's version
    (:data:`~recon.projectors.ray_matrix.BUILD_VERSION`).

    Args:
        geometry: the scan.
        step: the ray marcher's step (fraction of the smallest voxel), as :func:`cached_matrix_projector` takes it.
        dtype: the matrix's dtype.

    Returns:
        the key, 64 hex digits.
    """
    scan = {k: v for k, v in geometry.to_dict().items() if k != "affine"}
    blob = json.dumps({"geometry": scan, "step": float(step), "dtype": str(dtype), "format": ray_matrix.BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def matrix_path(folder: str | Path, key: str, shared: bool = False) -> Path:
    """Where the matrix of ``key`` is kept in ``folder``.

    Args:
        folder: a run's output folder, or (``shared``) a folder shared by runs.
        key: the matrix's :func:`matrix_key`.
        shared: ``folder`` is shared by runs (``--matrix-dir``): the name holds the key's first 16 hex digits.

    Returns:
        ``folder`` / :data:`MATRIX_FILE`, or ``folder`` / :data:`SHARED_MATRIX_FILE` with the key.
    """
    return Path(folder) / (SHARED_MATRIX_FILE.format(key=key[:16]) if shared else MATRIX_FILE)


def _read(path: Path, key: str, shape: tuple, dtype: torch.dtype) -> tuple[sp.csr_matrix | None, str]:
    """The matrix in ``path`` when it was built for ``key``, else ``None``; and why it is not used."""
    from medgmae.torch_files import load_torch_file

    try:
        saved = load_torch_file(path, what="projector matrix")
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None, "it was built for another geometry, volume grid or projector setting"
        data, indices, indptr = (saved[k].numpy() for k in ("data", "indices", "indptr"))
    except (ValueError, KeyError, AttributeError, OSError) as e:
        return None, f"it cannot be read ({e})"
    try:  # scipy's own structure check: index array lengths, bounds and order within the shape
        if data.dtype != torch.empty(0, dtype=dtype).numpy().dtype:
            raise ValueError(f"dtype {data.dtype}")
        matrix = sp.csr_matrix((data, indices, indptr), shape=shape)
        matrix.check_format(full_check=True)
    except ValueError:
        return None, "its arrays do not form the matrix of this scan"
    return matrix, ""


def cached_matrix_projector(
    geometry: CTGeometry, folder: str | Path, step: float = 0.5, dtype: torch.dtype = torch.float32, shared: bool = False
) -> tuple[RayMatrixProjector, str]:
    """The matrix projector of ``geometry``, read from its file in ``folder`` (:func:`matrix_path`) when that was
    built for it, else built and saved there (atomically).

    Args:
        geometry: the scan.
        folder: the run's output folder, or (``shared``) a folder shared by runs (created if needed).
        step: the ray marcher's step (fraction of the smallest voxel).
        dtype: the matrix's dtype.
        shared: ``folder`` is shared by runs (``--matrix-dir``): the file's name holds the key.

    Returns:
        ``(projector, note)``: a line saying whether the matrix was read, or built and saved (and why a file there
        was not used), after the temporary files of killed writers it removed from a shared ``folder``.
    """
    key = matrix_key(geometry, step, dtype)
    path = matrix_path(folder, key, shared)
    shape = (geometry.num_views * geometry.det_shape[0] * geometry.det_shape[1], int(np.prod(geometry.volume_shape)))
    removed = _remove_killed_writes(folder) if shared else ""
    why = ""
    if path.is_file():
        matrix, why = _read(path, key, shape, dtype)
        if matrix is not None:
            return (RayMatrixProjector(geometry, step, dtype, matrix=matrix),
                    f"{removed}read the matrix from {path} (built for this scan)")
    projector = RayMatrixProjector(geometry, step, dtype)
    try:
        note = save_matrix(projector, folder, shared)
    except OutputWriteError as e:  # a cache: the run goes on with the matrix it built
        note = f"the matrix was not saved, later runs build it again: {e.said}"
    return projector, removed + (f"{path} not used: {why}; " if why else "") + note


def _remove_killed_writes(folder: str | Path) -> str:
    """Remove the temporary matrix files that runs killed while writing left in the shared ``folder`` (their process
    no longer runs on this host, or they are a day old); the words naming them and why, ``""`` for none."""
    from medgmae.temp_names import REMOVED_BECAUSE, remove_dead_writers_files

    removed = remove_dead_writers_files(folder, SHARED_MATRIX_FILE.format(key="*"))
    if not removed:
        return ""
    return f"removed what killed runs left in {folder} ({', '.join(p.name for p in removed)}: {REMOVED_BECAUSE}); "


def save_matrix(projector: RayMatrixProjector, folder: str | Path, shared: bool = False) -> str:
    """Save ``projector``'s matrix in its file in ``folder`` (:func:`matrix_path`; atomically) with its key.

    Args:
        projector: a built matrix projector (its geometry, step and dtype make the key).
        folder: the run's output folder, or (``shared``) a folder shared by runs (created if needed, and removed
            again when the write fails).
        shared: ``folder`` is shared by runs (``--matrix-dir``): the file's name holds the key.

    Returns:
        the line saying where it was saved and its size.
    """
    from medgmae.folder_lock import folder_made
    from medgmae.torch_files import save_torch_atomic

    a, key = projector.a, matrix_key(projector.geometry, projector.step, projector.dtype)
    path = matrix_path(folder, key, shared)
    with folder_made(path.parent):  # a write that fails (a full disk, Ctrl-C) leaves no folder it made
        save_torch_atomic({"key": key, "data": torch.from_numpy(a.data), "indices": torch.from_numpy(a.indices),
                           "indptr": torch.from_numpy(a.indptr)}, path)  # fmt: skip
    size = byte_size(a.data.nbytes + a.indices.nbytes + a.indptr.nbytes, binary=True)  # as the memory budget it fits
    used_by = f"runs with --matrix-dir {folder}" if shared else "--resume"
    return f"saved the matrix in {path} ({size}) for {used_by}"
