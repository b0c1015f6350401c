"""Running a bundle of this checkout in tests, and the error line it ends with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def run_bundle(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(BUNDLES / config), *overrides]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)


def bundle_keywords(words: list[str]) -> dict:
    """A command line's ``--flag value`` (or ``--flag=value``) words as the keywords of ``monai.bundle.run`` in this
    process, each value read as MONAI's runner reads it from the command line: a Python literal where it is one
    (``2``, ``3.0``, ``[48,48,40]``), else the text itself (``true``, ``cpu``, a path)."""
    import ast

    pairs, i = [], 0
    while i < len(words):
        assert words[i].startswith("--"), words[i:]
        if "=" in words[i]:
            pairs.append(tuple(words[i][2:].split("=", 1)))
            i += 1
        else:
            pairs.append((words[i][2:], words[i + 1]))
            i += 2
    keywords = {}
    for key, text in pairs:
        assert key not in keywords, f"--{key} given twice"
        try:
            keywords[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            keywords[key] = text
    return keywords


def setting_error_text(log: str) -> str:
    """The one BundleSettingError's lines in a bundle's log: its message alone at the very end of the log, with no
    traceback above it (a refusal of the user's input: where it was raised is no news to them)."""
    log = "\n" + log
    assert log.count("\nerror: BundleSettingError: ") == 1 and "Traceback (most recent call last)" not in log, log[-3000:]
    return "BundleSettingError: " + log.split("\nerror: BundleSettingError: ")[1].strip()


def setting_error_in_process(run_id: str, config: str, *overrides: str) -> str:
    """The BundleSettingError's message of ``monai.bundle.run`` of ``config`` (under ``bundles/``) with command-line
    ``overrides``, run in the test's own process (without the seconds a new Python takes to import the toolkit);
    the printed form of such a refusal is :func:`setting_error_text`'s to check."""
    import pytest
    from monai.bundle import run

    with pytest.raises(Exception) as caught:
        run(run_id, config_file=str(BUNDLES / config), logging_file=False, **bundle_keywords(list(overrides)))
    error = caught.value  # MONAI's parser raises a RuntimeError from the toolkit's error
    while error is not None and type(error).__name__ != "BundleSettingError":
        error = error.__cause__
    assert error is not None, repr(caught.value)
    return str(error)


def tensorboard_events(folder: Path):
    """A run's TensorBoard folder read whole (every scalar and image event), as TensorBoard's own reader reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def tensorboard_shown(folder: Path) -> dict:
    """What TensorBoard shows of a run's folder: ``(step, value)`` per scalar tag and the steps per image tag."""
    acc = tensorboard_events(folder)
    shown = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return shown | {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
