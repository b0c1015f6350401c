"""bench/gloo_exit.py with one trial of two processes, so that the script cannot rot between runs."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_one_trial_of_each_way_is_counted_in_one_json_line_each(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gloo_exit.py"), "--trials", "1", "--processes", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["way"] for line in lines] == ["gather-destroy", "gather-destroy-collect", "bundle-before", "bundle-now"]
    assert all(line["trials"] == 1 and line["processes"] == 2 and line["aborts"] in (0, 1) for line in lines)
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "gloo_exit.py"), "--trials", "0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--trials" in bad.stderr
    some = subprocess.run([sys.executable, str(REPO / "bench" / "gloo_exit.py"), "--ways", "gather-destroy", "no-such-way"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert some.returncode == 2 and "no-such-way" in some.stderr  # --ways takes the named ways only
