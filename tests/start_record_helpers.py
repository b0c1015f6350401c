"""Runs started on one software and resumed on another, in this process: each session's software record made to
name a torch of its own, and what a run's records say of its start and resumes read back."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import medgmae.software

#: the software record as the toolkit makes it, before any test replaces it
REAL_SOFTWARE = medgmae.software.software_versions


def software_named(monkeypatch, torch_version: str) -> dict:
    """From now on, every software record this process makes names torch ``torch_version`` (the rest as made).

    Returns:
        The record a CPU run now makes, as its files hold it.
    """
    def fake(device=None):
        made = REAL_SOFTWARE(device)
        return {**made, "packages": {**made["packages"], "torch": torch_version}}

    monkeypatch.setattr(medgmae.software, "software_versions", fake)
    return json.loads(json.dumps(fake(None)))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def strip_start_records(folder: Path, name: str = "run") -> int:
    """Remove the start record ``name`` from every checkpoint in ``folder`` (and its sub-folders), as the previous
    release wrote them; returns how many checkpoints held one."""
    stripped = 0
    for path in sorted(Path(folder).rglob("checkpoint_*.pt")):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        stripped += saved["objects"].pop(name, None) is not None
        torch.save(saved, path)
    return stripped
