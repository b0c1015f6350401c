"""Every command the documentation shows is one the code takes: the README's and the bundle READMEs' command-line
tool calls and bundle runs, and ``bench/RESULTS.md``'s benchmark commands (each number there names the command that
made it). A flag renamed or removed in the code, a setting dropped from a config, or a section renamed leaves a
documented command that fails; these tests name it.

Tool and benchmark commands are parsed by their own ``argparse`` parsers (parsing only: nothing runs); a bundle run's
config files must exist, hold the section it runs and every ``--key`` it sets. Optional parts written ``[...]`` are
kept, and of alternatives written ``a \\| b`` the first is taken; commands with shell variables or ``<placeholders>``
are left out.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bundles").glob("*/docs/README.md"))]
TOOLS = {"medgmae-recon": "recon.cli", "medgmae-2d": "medgmae.twod.cli", "medgmae-phantom": "medgmae.data.phantom.cli",
         "medgmae-datalist": "medgmae.data.decathlon"}  # fmt: skip
# Flags of ``monai.bundle run`` itself, not settings of a config.
RUN_FLAGS = {"config_file", "meta_file", "logging_file", "args_file"}


def _text(doc: str) -> str:
    """The document with shell continuation lines joined, and an inline code span that wraps read as one line
    (outside fenced code blocks); a code block's lines stay lines, each a command."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    parts = re.split(r"(```.*?```)", text, flags=re.S)
    unwrapped = lambda p: re.sub(r"`[^`]+`", lambda m: m.group(0).replace("\n", " "), p)  # noqa: E731
    text = "".join(p if p.startswith("```") else unwrapped(p) for p in parts)
    return re.sub(r"\\\n\s*", " ", text)


def _plain(args: str) -> str:
    """Optional flags ``[--flag ...]`` kept, innermost first; of alternatives ``a \\| b`` the first."""
    while True:
        inner = re.sub(r"\[(-[^\[\]]*)\]", lambda m: m.group(1).split("\\|")[0], args)
        if inner == args:
            break
        args = inner
    return re.sub(r"(\S+?)(?:\\\|\S+)+", r"\1", args)


def _documented(pattern: str, docs: list[str]) -> list[tuple[str, str, str]]:
    """``(document, command, its arguments)`` of every match of ``pattern`` (groups: command, arguments) in code."""
    found = []
    for doc in docs:
        for match in re.finditer(pattern, _text(doc)):
            args = match.group(2).split(" #")[0].split(";")[0].strip()
            if re.search(r"[$<{]|\.\.\.|(?<![\w./-])[A-Z]+(?![\w./-])", args):
                continue  # shell variables, placeholders (<file>, FOLDER), brace expansion, elisions
            found.append((doc, match.group(1), _plain(args)))
    return sorted(set(found))


class _Parsed(Exception):
    pass


def _parses(run, argv: list[str]) -> str | None:
    """Run ``run`` with ``sys.argv = argv`` until its parser has parsed: ``None``, or the parser's error."""
    from medgmae.cli_types import ToolParser

    saved = {(cls, name): getattr(cls, name) for cls in (argparse.ArgumentParser, ToolParser) for name in ("parse_args", "error")
             if name in vars(cls)}  # fmt: skip

    def parse_only(parse):
        def parsed(self, args=None, namespace=None):
            parse(self, args, namespace)
            raise _Parsed

        return parsed

    def error(self, message):
        raise _Parsed(message)

    for (cls, name), method in saved.items():
        setattr(cls, name, parse_only(method) if name == "parse_args" else method)
    argparse.ArgumentParser.error, saved_argv, sys.argv = error, sys.argv, argv
    try:
        run()
    except _Parsed as done:
        return str(done) or None
    except SystemExit as e:
        return f"exited with {e.code} before its parser finished"
    finally:
        for (cls, name), method in saved.items():
            setattr(cls, name, method)
        sys.argv = saved_argv
    return "no argparse parser was reached"


BENCH = _documented(r"python (bench/[a-z_0-9]+\.py)([^`\n]*)", ["bench/RESULTS.md", *DOCS])
TOOL_CALLS = [c for c in _documented(r"\b(medgmae-(?:recon|2d|phantom|datalist))((?: +[^`\n\s][^`\n]*)?)", DOCS)
              if len(shlex.split(c[2])) > 1 and not (c[1] in ("medgmae-recon", "medgmae-2d") and c[2].startswith("-"))]
# (prose names a flag: "medgmae-2d --window", "medgmae-recon --init medgmae", with no subcommand)
BUNDLE_RUNS = _documented(r"-m monai\.bundle run (\w+)([^`\n]*)", DOCS)


def test_the_documents_show_commands_of_each_kind():
    """The extraction finds what the documents hold (it finding nothing would pass every test below)."""
    assert len(BENCH) > 40 and len(TOOL_CALLS) > 8 and len(BUNDLE_RUNS) > 20
    assert {c[1] for c in TOOL_CALLS} == set(TOOLS)


@pytest.mark.parametrize("doc, script, args", BENCH, ids=[f"{b[1]} {b[2]}"[:90] for b in BENCH])
def test_a_documented_benchmark_command_parses(doc, script, args, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    problem = _parses(lambda: runpy.run_path(str(ROOT / script), run_name="__main__"), [script, *shlex.split(args)])
    assert problem is None, f"{doc}: python {script} {args}: {problem}"


@pytest.mark.parametrize("doc, tool, args", TOOL_CALLS, ids=[f"{t[1]} {t[2]}"[:90] for t in TOOL_CALLS])
def test_a_documented_tool_command_parses(doc, tool, args):
    import importlib

    main = importlib.import_module(TOOLS[tool]).main
    problem = _parses(lambda: main(shlex.split(args)), [tool, *shlex.split(args)])
    assert problem is None, f"{doc}: {tool} {args}: {problem}"


def _config(path: str) -> dict:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


@pytest.mark.parametrize("doc, section, args", BUNDLE_RUNS, ids=[f"{r[1]} {r[2]}"[:90] for r in BUNDLE_RUNS])
def test_a_documented_bundle_run_names_what_its_configs_hold(doc, section, args):
    tokens = shlex.split(args)
    flags = {t[2:]: tokens[i + 1] if i + 1 < len(tokens) else None for i, t in enumerate(tokens) if t.startswith("--")}
    files = flags.get("config_file")
    assert files, f"{doc}: monai.bundle run {section} {args}: no --config_file"
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f"{doc}: monai.bundle run {section}: no config {missing}"
    keys = set().union(*(_config(f) for f in files))
    assert section in keys, f"{doc}: monai.bundle run {section}: {files} hold no section {section!r}"
    unknown = sorted(set(flags) - keys - RUN_FLAGS)
    assert not unknown, f"{doc}: monai.bundle run {section} {args}: {files} have no settings {unknown}"
