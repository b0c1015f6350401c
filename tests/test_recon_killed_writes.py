"""What a ``medgmae-recon`` run killed while writing (SIGKILL, the OOM killer) left of its output, a staging folder
beside an output folder or a temporary file beside an output file, is removed by the next run of a command writing
there, which says so in one line; a live writer's files (this process) and another host's stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from medgmae.temp_names import host_tag
from recon.cli import main

from recon_cli_helpers import ct, simulated  # noqa: F401 - fixtures


def _left(path: Path, pid: int, host: str | None = None, folder: bool = False) -> Path:
    """A file (or a staging folder holding one) of a writer ``host``.``pid``, last changed two minutes ago."""
    writer = f"{host or host_tag()}.{pid}-"
    path = path.parent / path.name.format(writer=writer)
    if folder:
        path.mkdir(parents=True)
        (path / "projections.npy").write_bytes(b"partial")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    then = time.time() - 120
    for p in (path, *path.rglob("*")):
        os.utime(p, (then, then))
    return path


def test_simulate_removes_a_killed_runs_staging_folder_and_temporary_files(tmp_path, ct, dead_pid, capsys):  # noqa: F811
    out = tmp_path / "scan"
    dead = [_left(tmp_path / ".scan.staging-{writer}abcd_123", dead_pid, folder=True),
            _left(out / ".tmp-{writer}0123456789ab-fbp.nii.gz", dead_pid)]
    kept = [_left(tmp_path / ".scan.staging-{writer}efgh_456", os.getpid(), folder=True),
            _left(out / ".tmp-{writer}ba9876543210-fbp.nii.gz", dead_pid, host="another-host"),
            _left(tmp_path / ".other.staging-{writer}ijkl_789", dead_pid, folder=True)]  # another output's
    assert main(["simulate", "--volume", str(ct[0]), "--geometry", "parallel", "--views", "4", "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    said = [line for line in capsys.readouterr().out.splitlines() if "killed write" in line]
    assert said == [f"note: removed what 2 killed writes left of {out}: {dead[1]}, {dead[0]} (their writer no longer "
                    "runs on this host, or they were unchanged for 24 hours)"]
    assert not any(p.exists() for p in dead) and all(p.exists() for p in kept)


def test_fbp_removes_a_killed_runs_temporary_file_beside_its_output(tmp_path, simulated, dead_pid, capsys):  # noqa: F811
    out = tmp_path / "f" / "f.nii.gz"
    dead = _left(out.parent / ".tmp-{writer}0123456789ab-f.nii.gz", dead_pid)
    live = _left(out.parent / ".tmp-{writer}ba9876543210-f.nii.gz", os.getpid())
    other = _left(out.parent / ".tmp-{writer}00112233aabb-g.nii.gz", dead_pid)  # another output's: its own run clears it
    args = ["fbp", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "killed write" in line]
    assert said == [f"note: removed what 1 killed write left of {out}: {dead} (their writer no longer runs on this "
                    "host, or they were unchanged for 24 hours)"]
    assert not dead.exists() and live.exists() and other.exists() and out.is_file()
    assert main(args) == 0 and "killed write" not in capsys.readouterr().out  # nothing more to say
