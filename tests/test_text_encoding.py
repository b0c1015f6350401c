"""Text files are read and written as UTF-8 whatever the locale: a batch node or container with the C locale
(ASCII) must read a datalist, CSV list or geometry naming a ``Nebenniere_rechts_ü`` and write colour tables and
Dice tables with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Python under the C locale with neither locale coercion nor UTF-8 mode: its default text encoding is ASCII.
ASCII_ENV = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
             "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip


def _in_ascii_locale(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ASCII_ENV, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)  # fmt: skip


def test_the_default_encoding_of_the_subprocess_is_ascii(tmp_path):
    """The premise of the tests below (else they would pass on code that reads with the locale's encoding)."""
    proc = _in_ascii_locale("import locale; print(locale.getpreferredencoding(False))", tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() in ("ANSI_X3.4-1968", "ascii", "US-ASCII"), proc.stdout


def test_datalists_csv_lists_and_colour_tables_are_utf8_in_an_ascii_locale(tmp_path):
    names = ["background", "Nebenniere rechts ü", "Leber"]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {str(i): n for i, n in enumerate(names)},
                                                       "training": [{"image": "ct_ß.nii.gz"}]}, ensure_ascii=False),
                                           encoding="utf-8")  # fmt: skip
    for image in ("a.png", "b.png"):  # file names in ASCII: a C-locale process cannot name others on disk
        (tmp_path / image).write_bytes(b"")
    (tmp_path / "list.csv").write_text("\ufeffpath,label\na.png,lésion\nb.png,normal\n", encoding="utf-8")
    code = (
        "from medgmae.data.datalist import load_datalist_json\n"
        "from medgmae.finetune.color_table import write_color_table\n"
        "from medgmae.twod.classification_data import read_csv_list\n"
        "doc = load_datalist_json('dataset.json')\n"
        "write_color_table('labels.ctbl', list(doc['labels'].values()))\n"
        "items, classes = read_csv_list('list.csv')\n"
        "print(doc['training'][0]['image'].encode('utf-8').hex(), '|'.join(classes).encode('utf-8').hex())\n"
    )
    proc = _in_ascii_locale(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image, classes = (bytes.fromhex(h).decode("utf-8") for h in proc.stdout.split())
    assert image == "ct_ß.nii.gz" and classes == "lésion|normal"  # the CSV's byte-order mark is not in 'path'
    table = (tmp_path / "labels.ctbl").read_text(encoding="utf-8")
    assert "1 Nebenniere_rechts_ü " in table and "2 Leber " in table


def test_the_gpu_check_finds_its_tests_among_files_in_utf8(tmp_path):
    """The GPU check lists the test files holding GPU tests; some test files hold non-ASCII text."""
    code = ("import sys; sys.path.insert(0, 'bench')\n"
            "from gpu_check_parts import gpu_test_files\n"
            "print(len(gpu_test_files()))\n")  # fmt: skip
    proc = _in_ascii_locale(code, REPO)
    assert proc.returncode == 0 and int(proc.stdout.strip()) > 0, proc.stderr[-2000:]
    assert any(not p.read_bytes().isascii() for p in (REPO / "tests").glob("test_*.py"))
