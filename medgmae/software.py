"""What software a run used, for its records: the toolkit's version (and its git commit when it runs from a checkout),
Python's, the numerical libraries', the CUDA and cuDNN torch was built with, and the GPU it ran on.

The results records of the training runs (pre-training's ``summary.json``, fine-tuning's ``training_cases.json``
and ``metrics.json``, the 2D bundles' ``summary.json`` / ``metrics.json``) and of ``medgmae-recon`` (``reconstruct``'s
``metrics.json``, ``simulate.json``, ``select --json``'s file) and ``medgmae-2d``'s ``<command>.json`` carry :func:`software_versions` under ``"software"``, so that a results folder
says what made it (a resumed training run's records: the software it started with, and each resume's under
``"resumes"``, :mod:`medgmae.engine.start_record`): a fixed seed reproduces a run bit for bit only with the same software and device, and on the CPU
the same torch thread count (``torch_threads``); the data loader workers do not matter
(:class:`~medgmae.engine.seeded_loader.SeededDataLoader`).

Versions are read from the installed packages' metadata (nothing is imported for them); torch's build facts and the
device from torch where it is already loaded.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "software_versions", "checkout_commit"]

#: The distributions whose versions are recorded (a missing optional one is left out).
PACKAGES = ("medgmae", "torch", "monai", "numpy", "nibabel", "SimpleITK", "triton", "gsplat", "astra-toolbox")


def software_versions(device: Any = None) -> dict[str, Any]:
    """The software (and, given ``device``, the GPU) of this run, for its records.

    Args:
        device: the run's torch device (or its name, e.g. ``"cuda:0"``); a CUDA one adds the GPU's name and
            compute capability. ``None`` or a CPU: no GPU entry.

    Returns:
        ``{"python": "3.11.9", "platform": "Linux-...", "packages": {"medgmae": "0.1.0", "torch": "2.13.0", ...},
        "commit": "<git commit>" (a checkout only), "torch_cuda": "12.4" or None, "cudnn": 90100 or None,
        "torch_threads": 8 (a CPU run's weights depend on it: torch's kernels add up per-thread partial sums),
        "gpu": {"name": ..., "capability": "9.0"} (a CUDA device only)}``; JSON-ready.
    """
    record: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                              "packages": dict(_package_versions())}  # fmt: skip
    if (commit := checkout_commit()) is not None:
        record["commit"] = commit
    torch = sys.modules.get("torch")  # the record of a run that loaded torch; none is imported for it
    if torch is not None:
        record["torch_cuda"] = getattr(torch.version, "cuda", None)
        record["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        record["torch_threads"] = torch.get_num_threads()
        if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index
            index = torch.cuda.current_device() if index is None else index
            major, minor = torch.cuda.get_device_capability(index)
            record["gpu"] = {"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
    return record


@lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    """``(distribution, version)`` of each installed one of :data:`PACKAGES`, from their metadata."""
    found = []
    for name in PACKAGES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return tuple(found)


@lru_cache(maxsize=1)
def checkout_commit() -> str | None:
    """The git commit of the toolkit's checkout (an editable install, ``+dirty`` when files differ from it), or
    ``None`` when it is not run from a git checkout or git is not available."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    # this checkout's own repository, whoever owns it (a container's root over a mounted checkout: git refuses a
    # "dubious ownership" folder) and whatever GIT_DIR / GIT_WORK_TREE the caller's environment names
    git = ["git", "-c", f"safe.directory={root}", f"--git-dir={root / '.git'}", f"--work-tree={root}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, env=env)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, env=env)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
