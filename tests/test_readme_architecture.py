"""The README's "Architecture" section names every module of the two packages and every bench script, so that each
is found from it in one step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _architecture_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Architecture\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _named(section: str) -> set[str]:
    """Every file or folder name written in backticks, by its last path component."""
    names = set()
    for quoted in re.findall(r"`([^`\n]+)`", section):
        for word in re.split(r"[\s,()]+", quoted):
            if word:
                names.add(word.rstrip("/").rsplit("/", 1)[-1])
    return names


def test_every_package_module_is_named_in_the_architecture_section():
    named = _named(_architecture_section())
    missing = [
        str(path.relative_to(ROOT))
        for package in ("medgmae", "recon")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts and path.name not in named
    ]
    folders = [
        str(path.relative_to(ROOT))
        for package in ("medgmae", "recon")
        for path in sorted((ROOT / package).rglob("__init__.py"))
        if path.parent != ROOT / package and path.parent.name not in named
    ]
    assert not missing and not folders, (missing, folders)


def test_every_bench_script_is_named_in_the_architecture_section():
    named = _named(_architecture_section())
    scripts = sorted(p.name for p in (ROOT / "bench").iterdir() if p.suffix in (".py", ".sh"))
    assert [s for s in scripts if s not in named] == []
