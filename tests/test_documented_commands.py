"""Every command the documentation shows is one the code takes: the README's and the bundle READMEs' command-line
tool calls and bundle commands, and ``bench/RESULTS.md``'s benchmark commands (each number there names the command
that made it). A flag renamed or removed in the code, a setting dropped from a config, or a section renamed leaves a
documented command that fails; these tests name it.

Tool and benchmark commands are parsed by their own ``argparse`` parsers (parsing only: nothing runs, so checks a
script makes after parsing, such as ``bench/recon.py``'s ``--set KEY=VALUE``, are not made); a bundle command's
config and metadata files must exist, and a run's configs hold the section it runs and every ``--key`` it sets, a
``verify_net_in_out`` / ``ckpt_export`` its network. Each reading of a command is checked: optional parts written
``[...]`` kept, and each alternative of ``a \\| b`` in turn. Placeholders are filled in: a shell variable with the
value the document assigns it (``common="..."``) or ``1``, an upper-case word such as ``FOLDER`` or ``I0`` with
``1``, a brace expansion ``{a,b}`` with its first name; only a command with an elision (``...``) or a ``<placeholder>``
(which may stand for a subcommand) is left out, and those are counted, so that a new one shows.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import os
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bundles").glob("*/docs/README.md"))]
TOOLS = {"medgmae-recon": "recon.cli", "medgmae-2d": "medgmae.twod.cli", "medgmae-phantom": "medgmae.data.phantom.cli",
         "medgmae-runs-table": "medgmae.finetune.runs_table",
         "medgmae-datalist": "medgmae.data.decathlon", "medgmae-ellipsoids": "medgmae.ellipsoids_cli",
         "medgmae-info": "medgmae.info_cli"}  # fmt: skip
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


def _variants(args: str) -> list[str]:
    """Every reading of ``args``: each optional group ``[--flag ...]`` kept (innermost first), and each alternative
    of ``a \\| b``, in a group or between words, in turn."""
    group = re.search(r"\[(-[^\[\]]*)\]", args)
    if group:
        alternatives = [a.strip() for a in group.group(1).split("\\|")]
        if not all(a.startswith("-") for a in alternatives):  # [--init fbp\|random]: one flag's values
            alternatives = [group.group(1)]
        return [v for alt in alternatives for v in _variants(args[: group.start()] + alt + args[group.end() :])]
    words = re.search(r"(\S+?)((?:\\\|\S+)+)", args)
    if words:
        choices = [words.group(1), *words.group(2).split("\\|")[1:]]
        return [v for w in choices for v in _variants(args[: words.start()] + w + args[words.end() :])]
    return [args]


def _filled(args: str, assigned: dict[str, str]) -> str:
    """``args`` with its placeholders filled in (module docstring)."""
    args = re.sub(r"\$\{?(\w+)\}?", lambda m: assigned.get(m.group(1), "1"), args)
    args = re.sub(r"\{([^{},\s]+),[^{}\s]*\}", r"\1", args)
    return re.sub(r"(?<![\w./-])[A-Z][A-Z0-9_]*(?![\w./-])", "1", args)


SKIPPED: list[str] = []


def _documented(pattern: str, docs: list[str], name=lambda m: m.group(1)) -> list[tuple[str, str, str]]:
    """``(document, command, its arguments)`` of every reading of every match of ``pattern`` (groups: command,
    arguments; ``name`` makes the command of a match) in the documents."""
    found = []
    for doc in docs:
        text = _text(doc)
        assigned = dict(re.findall(r"\b(\w+)=\"([^\"]*)\"", text))
        for match in re.finditer(pattern, text):
            args = match.group(2).split(" #")[0].split(";")[0].split(" && ")[0].strip()
            if "..." in args or re.search(r"<[^<>]*>", args):
                SKIPPED.append(f"{doc}: {match.group(0)}")
                continue
            found += [(doc, name(match), _filled(v, assigned).strip()) for v in _variants(args)]
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


BENCH = [(doc, f"bench/{script}", args) for doc, script, args in _documented(
    r"python (?:(?:\.\./)+(?:bench/)?|bench/)([a-z_0-9]+\.py)([^`\n]*)", ["bench/RESULTS.md", *DOCS])
    if (ROOT / "bench" / script).is_file()]  # fmt: skip
TOOL_CALLS = [c for c in _documented(r"\b(medgmae-(?:recon|2d|phantom|datalist|runs-table|ellipsoids|info))((?: +[^`\n\s][^`\n]*)?)", DOCS)
              if len(shlex.split(c[2])) > 1 and not (c[1] in ("medgmae-recon", "medgmae-2d") and c[2].startswith("-"))]
# (prose names a tool with one flag: "medgmae-2d --window", "medgmae-recon --init medgmae", no subcommand)
BUNDLE = [c for c in _documented(r"-m monai\.bundle (run|verify_metadata|verify_net_in_out|ckpt_export)((?: [^`\n]*)?)", DOCS)
          if c[2]]  # fmt: skip  (prose names a command alone: "monai.bundle verify_metadata")


def test_the_documents_show_commands_of_each_kind():
    """The extraction finds what the documents hold (it finding nothing would pass every test below), and leaves
    out few commands."""
    assert len(BENCH) > 60 and len(TOOL_CALLS) > 12 and len(BUNDLE) > 30
    assert {c[1] for c in TOOL_CALLS} == set(TOOLS)
    assert {c[1] for c in BUNDLE} == {"run", "verify_metadata", "verify_net_in_out", "ckpt_export"}
    assert len(SKIPPED) <= 5, SKIPPED


@pytest.mark.parametrize("doc, script, args", BENCH, ids=[f"{b[1]} {b[2]}"[:90] for b in BENCH])
def test_a_documented_benchmark_command_parses(doc, script, args, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    environment = dict(os.environ)  # a script may set its own at import (triton_aot.py drops TRITON_INTERPRET),
    try:  # which the later tests of this worker would inherit: the Triton kernels then refused CPU tensors
        problem = _parses(lambda: runpy.run_path(str(ROOT / script), run_name="__main__"), [script, *shlex.split(args)])
    finally:
        os.environ.clear()
        os.environ.update(environment)
    assert problem is None, f"{doc}: python {script} {args}: {problem}"


@pytest.mark.parametrize("doc, tool, args", TOOL_CALLS, ids=[f"{t[1]} {t[2]}"[:90] for t in TOOL_CALLS])
def test_a_documented_tool_command_parses(doc, tool, args):
    import importlib

    main = importlib.import_module(TOOLS[tool]).main
    problem = _parses(lambda: main(shlex.split(args)), [tool, *shlex.split(args)])
    assert problem is None, f"{doc}: {tool} {args}: {problem}"


def _config(path: str) -> dict:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


@pytest.mark.parametrize("doc, command, args", BUNDLE, ids=[f"{r[1]} {r[2]}"[:90] for r in BUNDLE])
def test_a_documented_bundle_command_names_what_its_files_hold(doc, command, args):
    tokens = shlex.split(args)
    first = tokens.pop(0) if tokens and not tokens[0].startswith("--") else None
    flags = {t[2:]: tokens[i + 1] if i + 1 < len(tokens) else None for i, t in enumerate(tokens) if t.startswith("--")}
    shown = f"{doc}: monai.bundle {command} {args}"
    files = flags.get("config_file")
    files = [] if files is None else ast.literal_eval(files) if files.startswith("[") else [files]
    inputs = files + [flags[k] for k in ("meta_file",) if k in flags] + ([flags["filepath"]] if command == "verify_metadata" else [])
    missing = [f for f in inputs if not (ROOT / f).is_file()]
    assert not missing, f"{shown}: no file {missing}"
    if command == "verify_metadata":
        return
    assert files, f"{shown}: no --config_file"
    keys = set().union(*(_config(f) for f in files))
    if command != "run":  # verify_net_in_out / ckpt_export NET_ID: the network's key
        assert first in keys, f"{shown}: {files} hold no network {first!r}"
        return
    section = first or "run"  # monai.bundle's default run id
    assert section in keys, f"{shown}: {files} hold no section {section!r}"
    unknown = sorted(set(flags) - keys - RUN_FLAGS)
    assert not unknown, f"{shown}: {files} have no settings {unknown}"
