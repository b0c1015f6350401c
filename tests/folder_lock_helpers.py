"""The fixture the folder-lock tests share: another process holding a folder, as a live run does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture()
def other_run(tmp_path):
    """Start another process holding a folder (as a live run does); yields a function taking the folder, and
    ends the process after the test."""
    procs = []

    def hold(folder: Path) -> subprocess.Popen:
        code = textwrap.dedent(f"""
            import sys
            from medgmae.folder_lock import hold_folder
            hold_folder({str(folder)!r})
            print("held", flush=True)
            sys.stdin.read()
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)
