"""What the toolkit runs on in this environment, as ``medgmae-info`` reports it (:func:`environment_report`): the
software (:func:`medgmae.software.software_versions`), the CPUs, the host's memory (:mod:`medgmae.host_memory`),
the GPUs, and per pipeline the backend its ``auto`` setting chooses here and why.

Each choice is made by the function the pipeline itself calls, never by a copy of its rules: ``--device auto`` by
:func:`medgmae.engine.devices.resolve_device`, the 3D renderer by :func:`medgmae.render.resolve_backend`, the 2D
renderer by :func:`medgmae.twod.gsplat_backend.resolve_backend_2d`, ``medgmae-recon reconstruct``'s projector by
:func:`recon.projectors.resolve_backend` and ``simulate``'s by the same after
:func:`recon.projectors.simulation_backend`. The projector depends on the scan, so it is reported for two example
scans (:data:`EXAMPLE_SHAPE`). Only the words of *why* are written here. Nothing is built and no data is read (on a
GPU, the 2D renderer's probe loads gsplat's CUDA extension, building it once as the first 2D run would); a missing
optional package is reported with what takes its place.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import torch

from medgmae.engine.devices import resolve_device
from medgmae.host_memory import memory_limit, physical_memory
from medgmae.software import PACKAGES, software_versions
from medgmae.words import byte_size

__all__ = ["EXAMPLE_SHAPE", "EXAMPLE_VIEWS", "OPTIONAL", "environment_report", "example_geometry", "optional_installed"]

#: The example scan the projectors are chosen for: ``(D, H, W)`` voxels of 1 mm.
EXAMPLE_SHAPE = (64, 64, 64)
#: Its views per beam kind (the cone beam's sparse matrix fits the CPU budget at this count).
EXAMPLE_VIEWS = {"parallel": 180, "cone": 60}
#: The optional packages: the module imported, and what takes its place where it is missing.
OPTIONAL = {
    "triton": ("triton", "the 3D renderer renders with PyTorch, also on a GPU (slower)"),
    "gsplat": ("gsplat", "the 2D renderer uses the PyTorch compositor, also on a GPU"),
    "astra-toolbox": ("astra", "medgmae-recon projects with the PyTorch ray marcher (cone beam on the CPU: the "
                               "sparse matrix where it fits)"),
}  # fmt: skip


def optional_installed(distribution: str) -> bool:
    """Whether the optional package ``distribution`` (a key of :data:`OPTIONAL`) can be imported, by its pipeline's
    own check where it has one (:func:`medgmae.render.triton_installed`,
    :func:`recon.projectors.astra_proj.astra_installed`), else found by ``importlib.util.find_spec`` (as gsplat is
    looked for before its use).

    Raises:
        ValueError: a package that is not one of :data:`OPTIONAL`.
    """
    if distribution not in OPTIONAL:
        raise ValueError(f"not an optional package: {distribution!r}; expected one of {sorted(OPTIONAL)}")
    if distribution == "astra-toolbox":
        from recon.projectors.astra_proj import astra_installed

        return astra_installed()
    if distribution == "triton":
        from medgmae.render import triton_installed

        return triton_installed()
    try:
        return importlib.util.find_spec(OPTIONAL[distribution][0]) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent package
        return False


def _software() -> dict[str, Any]:
    """The toolkit, Python, torch and the packages (a missing one ``None``), and the optional packages missing."""
    record = software_versions()
    packages = record["packages"]
    missing = {name: why for name, (_, why) in OPTIONAL.items() if not optional_installed(name)}
    return {
        "toolkit": {"version": packages.get("medgmae"), "commit": record.get("commit")},
        "python": record["python"],
        "platform": record["platform"],
        "torch": {"version": packages.get("torch"), "cuda": record.get("torch_cuda"), "cudnn": record.get("cudnn"),
                  "threads": record.get("torch_threads")},
        "packages": {name: packages.get(name) for name in PACKAGES if name not in ("medgmae", "torch")},
        "missing": missing,
    }  # fmt: skip


def _host() -> dict[str, Any]:
    """The CPUs (all, and those this process may run on: what the bundles' loader workers are counted from) and the
    host's memory and this process's limit."""
    from medgmae.distributed import usable_cpus

    return {"cpus": {"count": os.cpu_count(), "usable": usable_cpus()},
            "memory": {"physical": physical_memory(), "limit": memory_limit()}}  # fmt: skip


def _gpus() -> list[dict[str, Any]]:
    """Each CUDA device torch sees: its index, name, memory in bytes and compute capability."""
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(index)
        found.append({"index": index, "name": p.name, "memory": int(p.total_memory), "capability": f"{p.major}.{p.minor}"})
    return found


def _device() -> dict[str, str]:
    """What ``--device auto`` resolves to (:func:`~medgmae.engine.devices.resolve_device`) and why."""
    device = resolve_device("auto")
    if device.type == "cuda":
        why = "torch sees a CUDA device"
    elif torch.version.cuda is None:
        why = "torch sees no CUDA device (a CPU build of torch)"
    else:
        why = f"torch sees no CUDA device (a CUDA {torch.version.cuda} build of torch)"
    return {"chosen": str(device), "why": why}


def _renderer_3d(device: torch.device) -> dict[str, str]:
    """The 3D renderer ``backend="auto"`` uses on ``device`` (:func:`medgmae.render.resolve_backend`) and why."""
    from medgmae.render import resolve_backend

    render_log = logging.getLogger("medgmae.render")
    said, render_log.disabled = render_log.disabled, True  # its fallback warning is for a render, not this report
    try:
        chosen = resolve_backend("auto", device)
    finally:
        render_log.disabled = said
    if chosen == "triton":
        return {"chosen": chosen, "why": "Triton's kernels on the CUDA device"}
    if device.type == "cuda":
        return {"chosen": chosen, "why": "triton is not installed: the PyTorch renderer on the CUDA device (slower)"}
    return {"chosen": chosen, "why": f"{device} is not a CUDA device: the PyTorch renderer (Triton's kernels run on CUDA)"}


def _renderer_2d(device: torch.device) -> dict[str, str]:
    """The 2D renderer ``backend="auto"`` uses on ``device``
    (:func:`medgmae.twod.gsplat_backend.resolve_backend_2d`) and why."""
    from medgmae.twod.gsplat_backend import gsplat_problem, resolve_backend_2d

    chosen = resolve_backend_2d("auto", device)
    if device.type != "cuda":
        return {"chosen": chosen, "why": f"{device} is not a CUDA device: the PyTorch compositor (gsplat renders on CUDA only)"}
    if chosen == "gsplat":
        return {"chosen": chosen, "why": "gsplat's CUDA extension loads"}
    return {"chosen": chosen, "why": f"gsplat is unavailable ({gsplat_problem()}): the PyTorch compositor"}


def example_geometry(kind: str):
    """The example scan of ``kind`` (``"parallel"`` or ``"cone"``) the projectors are chosen for: the default
    geometry of :data:`EXAMPLE_SHAPE` at 1 mm with :data:`EXAMPLE_VIEWS` views."""
    from recon.geometry import CTGeometry

    make = CTGeometry.parallel if kind == "parallel" else CTGeometry.cone
    return make(EXAMPLE_SHAPE, 1.0, num_angles=EXAMPLE_VIEWS[kind])


def _projector_why(geometry, request: str, chosen: str, device: torch.device) -> str:
    """Why ``request`` gave ``chosen`` for ``geometry`` on ``device`` (:func:`recon.projectors.resolve_backend`)."""
    from recon.projectors import MATRIX_BUDGET_BYTES, estimate_matrix_bytes
    from recon.projectors.astra_proj import astra_cpu_problem, astra_installed

    if request != "auto":
        return "simulate asks for it: one pass over the scan costs less than building the sparse matrix"
    astra = "astra-toolbox is not installed" if not astra_installed() else None
    if device.type == "cuda":
        return "ASTRA has CUDA" if chosen == "astra" else (astra or "ASTRA has no CUDA here")
    if chosen == "astra":
        return "ASTRA's 2D projectors take this parallel-beam scan"
    if geometry.kind == "parallel":
        return astra or f"ASTRA's CPU projectors cannot take it: {astra_cpu_problem(geometry)}"
    need, budget = (byte_size(n, binary=True) for n in (estimate_matrix_bytes(geometry), MATRIX_BUDGET_BYTES))
    fits = "fits" if chosen == "matrix" else "is over"
    return f"ASTRA has no CPU cone beam; the sparse matrix, up to {need}, {fits} the {budget} budget"


def _projectors(device: torch.device, geometries: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``medgmae-recon reconstruct``'s and ``simulate``'s projector for each of ``geometries`` (name: geometry) on
    ``device``, keyed ``"<command> <name>"``."""
    from recon.projectors import describe_backend, resolve_backend, simulation_backend

    report = {}
    for name, geometry in geometries.items():
        for command, request in (("reconstruct", "auto"), ("simulate", simulation_backend(geometry, device))):
            chosen = resolve_backend(geometry, request, device)
            report[f"{command} {name}"] = {"chosen": chosen, "how": describe_backend(chosen, device),
                                           "why": _projector_why(geometry, request, chosen, device)}  # fmt: skip
    return report


def _scan(geometry_file: str | os.PathLike | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the scans the projectors are chosen for, by name; what the report says of them)``: the example scans, or
    the scan of ``geometry_file`` (a ``geometry.json``, read as ``medgmae-recon`` reads it; its errors name it)."""
    if geometry_file is None:
        scans = {kind: example_geometry(kind) for kind in EXAMPLE_VIEWS}
        return scans, {"shape": list(EXAMPLE_SHAPE), "voxel_mm": [1.0, 1.0, 1.0], "views": dict(EXAMPLE_VIEWS)}
    from recon.geometry import CTGeometry

    geometry = CTGeometry.load(os.path.expanduser(os.fspath(geometry_file)))
    said = {"file": os.fspath(geometry_file), "kind": geometry.kind, "shape": list(geometry.volume_shape),
            "voxel_mm": [float(v) for v in geometry.voxel_size], "views": int(len(geometry.angles))}  # fmt: skip
    return {"scan": geometry}, said


def _disk(path: str | os.PathLike) -> dict[str, Any]:
    """The free room a run writing into ``path`` finds (:func:`medgmae.write_failures.free_room`)."""
    from medgmae.write_failures import free_room

    room = free_room(path)
    measured, free = room if room is not None else (None, None)
    return {"path": os.fspath(path), "measured": None if measured is None else os.fspath(measured), "free": free}


def environment_report(path: str | os.PathLike | None = None, geometry: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything ``medgmae-info`` reports, JSON-ready.

    Args:
        path: a folder whose free room is reported (``None``: none).
        geometry: a scan's ``geometry.json`` whose projectors are reported (``None``: the example scans').

    Returns:
        ``{"toolkit", "python", "platform", "torch", "packages", "missing", "cpus", "memory", "gpus", "device",
        "renderers": {"3d", "2d"}, "projectors": {"reconstruct parallel", ...}, "example_scan"}`` (with
        ``geometry``: ``"projectors": {"reconstruct scan", "simulate scan"}`` and ``"scan"``) and ``"disk"`` with
        ``path``; each choice is ``{"chosen", "why"}`` (a projector's also ``"how"``).

    Raises:
        ValueError: a ``geometry`` file that cannot be read as a geometry (the message names it).
    """
    scans, said = _scan(geometry)  # the user's file first: its error before anything is probed
    report = {**_software(), **_host(), "gpus": _gpus(), "device": _device()}
    device = torch.device(report["device"]["chosen"])
    report["renderers"] = {"3d": _renderer_3d(device), "2d": _renderer_2d(device)}
    report["projectors"] = _projectors(device, scans)
    report["example_scan" if geometry is None else "scan"] = said
    if path is not None:
        report["disk"] = _disk(path)
    return report
