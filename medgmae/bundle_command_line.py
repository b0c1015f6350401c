"""The command line of a ``python -m monai.bundle run`` call, read once: its flags (and ``--args_file`` keys), its
config files and their top-level keys, the keys the configs do not have (MONAI adds a misspelt
``--max_epoch 5`` as a new key that nothing reads), and the flags given more than once (MONAI takes the last). :func:`medgmae.bundle_checks.check_settings` reports these with
the settings' own problems.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
import weakref
from pathlib import Path
from typing import Any, NamedTuple, Sequence

__all__ = ["FLAG_ALIASES", "NOT_GIVEN", "RUNNER_ARGS", "BundleCommand", "bundle_command", "command_line_flags", "config_folder",
           "derived_from_bad_keys", "given_setting", "is_bundle_command_line", "repeated_flag_lines", "unknown_key_lines", "unknown_key_problems"]


#: Other tools' names of the bundles' settings, suggested when given (too far apart for a spelling match).
FLAG_ALIASES = {"lr": "learning_rate", "epochs": "max_epochs", "bs": "batch_size", "data_dir": "dataset_dir",
                "data": "dataset_dir", "out": "output_dir", "out_dir": "output_dir", "workers": "num_workers",
                "gpu": "device", "spacing": "pixdim", "roi": "roi_size", "pretrained_path": "pretrained",
                # the bundles' own two names of the phantom count: fine-tuning counts labelled cases
                "num_phantoms": "phantom_cases", "phantom_cases": "num_phantoms"}  # fmt: skip

#: Settings one bundle has and another takes elsewhere: a flag's notes, each given where the config has all the keys
#: it names (the first that applies), in place of a spelling match.
_FLAG_NOTES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "a_min": ((("hu_range",), "fine-tuning's HU window is --hu_range [a_min, a_max]"),
              (("window",), "this bundle's intensity window is --window [low, high]")),
    "a_max": ((("hu_range",), "fine-tuning's HU window is --hu_range [a_min, a_max]"),
              (("window",), "this bundle's intensity window is --window [low, high]")),
    "hu_range": ((("a_min", "a_max"), "pre-training's HU window is --a_min and --a_max"),
                 (("window",), "this bundle's intensity window is --window [low, high]")),
    "orientation": (
        (("pretrained", "encoder"), "the orientation comes from --pretrained's recorded pre-processing; RAS from scratch"),
        (("checkpoint", "preprocessing_spec"), "the orientation comes from --checkpoint's recorded pre-processing"),
    ),
    "patch_size": (
        (("pretrained", "encoder"), "the patch size comes from --pretrained's recorded architecture; --encoder#patch_size "
                                    "from scratch"),
        (("checkpoint", "preprocessing_spec"), "the patch size comes from --checkpoint's recorded network"),
    ),
    "num_gaussians": ((("pretrained", "encoder"), "the Gaussian count is pre-training's decoder setting: fine-tuning "
                                                  "takes only --pretrained's encoder"),),
}  # fmt: skip

#: MONAI's reserved keys of a config component (``--val#pictures#_disabled_ true`` switches one off).
_MONAI_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")

#: ``monai.bundle run``'s own arguments (not config keys).
RUNNER_ARGS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")


class BundleCommand(NamedTuple):
    """A ``python -m monai.bundle run`` command line, read by :func:`bundle_command`."""

    #: ``--name value`` flags by name (hyphens as underscores, the last value of a repeated one, as MONAI takes it),
    #: with the ``--args_file`` keys the command line does not give; a run from Python: its keyword overrides, their
    #: values as given (not text).
    flags: dict[str, Any]
    #: its config files, in order.
    files: list[str]
    #: their merged top-level keys (MONAI's own merge).
    config: dict[str, Any]
    #: the values of each flag given more than once.
    repeated: dict[str, list[str]]


def _flags(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``--name value`` / ``--name=value`` flags of a command line, by name (hyphens read as underscores; the last
    value of a name given more than once, as MONAI takes it), and the values of each name given more than once."""
    given: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            continue
        name, eq, value = token[2:].partition("=")
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            value, i = argv[i], i + 1
        given.setdefault(name.replace("-", "_"), []).append(value)
    return {k: v[-1] for k, v in given.items()}, {k: v for k, v in given.items() if len(v) > 1}


def _is_bundle_run(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a ``python -m monai.bundle ...`` command line (as each process of ``torchrun`` sees it)."""
    return bool(argv) and argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py")


def command_line_flags(argv: Sequence[str] | None = None) -> dict[str, str]:
    """The ``--name value`` flags of a ``python -m monai.bundle run`` command line (``sys.argv`` when ``None``) as
    typed, before MONAI's runner reads ``2024_01`` as a number; ``{}`` for any other command line."""
    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return {}
    return _flags(argv[1:])[0]


#: :func:`given_setting`'s answer for a setting that neither the run nor its config files give.
NOT_GIVEN = object()


def given_setting(key: str) -> Any:
    """The top-level setting ``key`` of the running bundle as given, before MONAI's config parser read it (which
    makes every ``#`` in a text ``::``): the text the command line typed for ``--key`` (a list's literal read as the
    list), else its ``--args_file`` value or the keyword of a run from Python, else its config files' value;
    :data:`NOT_GIVEN` when none gives it or this is no bundle run.

    Args:
        key: the setting's name, e.g. ``"dataset_dir"``.

    Returns:
        The value as given (text, a list, a number...), or :data:`NOT_GIVEN`.
    """
    typed = command_line_flags()
    if key in typed:
        value = typed[key]
        if value.strip().startswith(("[", "(")):
            try:  # the text of a list, which MONAI's runner reads as the list
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                pass
        return value
    command = bundle_command(None)
    return NOT_GIVEN if command is None else command.flags.get(key, command.config.get(key, NOT_GIVEN))


def is_bundle_command_line() -> bool:
    """Whether this process is a ``python -m monai.bundle`` command (one process of ``torchrun`` too), not a bundle
    run from Python (a notebook, a script or a test calling ``monai.bundle.run``)."""
    return _is_bundle_run(sys.argv)


def bundle_command(argv: Sequence[str] | None) -> BundleCommand | None:
    """The :class:`BundleCommand` (flags, config files, their merged top-level keys, repeated flags) of a ``python
    -m monai.bundle run`` command line (``sys.argv`` when ``None``), the keys of its ``--args_file`` among the flags (the command line's
    win, as in MONAI's runner), and the values of each flag the command line gives more than once; ``None`` for
    anything else or files this cannot read. With ``argv`` ``None`` in a process that is no such command, the
    bundle run from Python that is running (:func:`_call_in_process`: its keyword overrides as the flags, their
    values as given), if any."""
    if argv is None and not _is_bundle_run(sys.argv):
        return _call_in_process()
    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return None
    flags, repeated = _flags(argv[1:])
    return _read_configs(flags, repeated)


#: The :class:`BundleCommand` of each workflow a run from Python initialised (:func:`_call_in_process`), read back
#: while that workflow runs: ``monai.bundle.run`` calls its ``run`` once ``create_workflow`` has returned.
_RECORDED: weakref.WeakKeyDictionary[Any, BundleCommand] = weakref.WeakKeyDictionary()


def _call_in_process() -> BundleCommand | None:
    """The bundle run from Python that calls this, as a :class:`BundleCommand`: ``monai.bundle.run(...)`` (and
    ``create_workflow``, which it calls) keeps its merged arguments in a local variable while it initialises the
    workflow, the only place that still holds which keys were given (MONAI adds a misspelt ``max_epoch=1`` to the
    config as a new key that nothing reads). Its keys other than the workflow's own arguments (``meta_file``,
    ``run_id``...) are the flags. What is read there is kept for that workflow (:data:`_RECORDED`, as long as the
    workflow lives) and answered again from any of its methods on the stack (its ``run``, its ``finalize``, a later
    ``initialize``); the innermost call wins (a bundle run from another's run). ``None`` when no such call is running
    (a ``ConfigWorkflow`` built directly keeps no record of its overrides) or its files cannot be read."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "create_workflow" and code.co_filename.replace("\\", "/").endswith("monai/bundle/scripts.py"):
            command = _create_workflow_command(frame.f_locals)
            workflow = frame.f_locals.get("workflow_")  # set before its initialize runs
            if command is not None and workflow is not None:
                _RECORDED[workflow] = command
            return command
        if _RECORDED and _is_workflow(owner := frame.f_locals.get("self")) and owner in _RECORDED:
            return _RECORDED[owner]
        frame = frame.f_back
    return None


def _is_workflow(value: Any) -> bool:
    """Whether ``value`` is a MONAI bundle workflow (``BundleWorkflow``)."""
    from monai.bundle import BundleWorkflow

    return isinstance(value, BundleWorkflow)


def _create_workflow_command(local: dict[str, Any]) -> BundleCommand | None:
    """The :class:`BundleCommand` of the locals of MONAI's ``create_workflow`` (its merged ``_args`` and
    ``config_file``); ``None`` without them or where the files cannot be read."""
    merged, files = local.get("_args"), local.get("config_file")
    if not isinstance(merged, dict) or files is None:
        return None
    import inspect

    from monai.bundle import ConfigWorkflow

    own = set(inspect.signature(ConfigWorkflow.__init__).parameters) | {"workflow_name"}
    flags = {k: v for k, v in merged.items() if k not in own}
    return _read_configs({**flags, "config_file": files}, {})


def _read_configs(flags: dict[str, Any], repeated: dict[str, list[str]]) -> BundleCommand | None:
    """The :class:`BundleCommand` of ``flags`` (with ``--args_file`` keys and ``config_file``), ``None`` where its
    files cannot be read."""
    try:
        if flags.get("args_file"):
            from monai.bundle import ConfigParser

            flags = {**ConfigParser.load_config_file(flags["args_file"]), **flags}
        files = flags.get("config_file", "")
        files = [files] if isinstance(files, os.PathLike) else files  # a run from Python: a Path, or a list of them
        if isinstance(files, str):  # a list literal, or MONAI's comma-separated names
            files = ast.literal_eval(files) if files.strip().startswith("[") else [f for f in files.split(",") if f.strip()]
        files = [os.fspath(f) for f in files]
        from monai.bundle import ConfigParser

        # MONAI's own merge: a later file's "net#opts" key lands under "net", as the run will see it
        config: dict[str, Any] = dict(ConfigParser.load_config_files(files))
    except (ValueError, SyntaxError, OSError, AttributeError, TypeError):
        return None
    return BundleCommand(flags, files, config, repeated)


def config_folder(bundle: str, argv: Sequence[str] | None = None) -> str:
    """The absolute folder of the running bundle config, for the defaults that name a file of its own bundle (its
    ``metadata.json``) whatever folder the command runs in: the folder of the first ``--config_file`` of a ``python
    -m monai.bundle run`` command line (where MONAI itself looks for the bundle's ``metadata.json`` and
    ``logging.conf``), else this checkout's ``bundles/<bundle>/configs`` (a config run in-process).

    Args:
        bundle: the bundle folder of the config asking, e.g. ``"unetr_finetune"``.
        argv: the command line (``sys.argv`` when ``None``).
    """
    command = bundle_command(argv)
    if command is not None and command.files:
        return str(Path(command.files[0]).expanduser().resolve().parent)
    return str(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs")


def repeated_flag_lines(command: BundleCommand | None) -> list[str]:
    """One ``--key given twice`` line per flag a command line read by :func:`bundle_command` gives more than once
    (MONAI's runner would take the last value without a word)."""
    if command is None:
        return []
    times = {2: "twice", 3: "three times"}
    return [f"--{name} given {times.get(len(values), f'{len(values)} times')} ({', '.join(map(repr, values))}): give it once"
            for name, values in command.repeated.items()]  # fmt: skip


def derived_from_bad_keys(bad: Sequence[str], command: BundleCommand | None) -> set[str]:
    """The bad keys whose config value is a bare reference to another bad key (``"precheck_workers":
    "@num_workers"``) and that the command line (:func:`bundle_command`) does not set: their problem is that
    key's, named once."""
    if command is None:
        return set()
    flags, config = command.flags, command.config
    refs = {k: v[1:] for k, v in config.items() if isinstance(v, str) and v.startswith("@") and v[1:].isidentifier()}
    return {k for k in bad if k not in flags and refs.get(k) in bad}


def unknown_key_problems(argv: Sequence[str] | None = None) -> list[str]:
    """``--key`` flags of a ``python -m monai.bundle run`` command line that name no top-level key of its config
    files, each with a note where the setting is another bundle's or comes from elsewhere (``--a_min`` to fine-tuning:
    its ``--hu_range``), else the key it is another tool's name of (:data:`FLAG_ALIASES`) or the closest key: MONAI
    adds such an override as a new key that nothing reads, so a misspelled ``--max_epoch 5`` was silently ignored.
    Nested overrides (``--network_def#num_gaussians``) are checked part by part (:func:`_nested_key_problem`).

    Args:
        argv: the command line (``sys.argv``); anything but MONAI's bundle runner, or config files this cannot read
            gives no problems (nothing to compare with).

    Returns:
        One ``--key: ...`` line per unknown key.
    """
    return unknown_key_lines(bundle_command(argv))


def unknown_key_lines(command: BundleCommand | None) -> list[str]:
    """:func:`unknown_key_problems` of a command line read by :func:`bundle_command`."""
    if command is None:
        return []
    flags, files, config = command.flags, command.files, command.config
    keys = set(config)
    problems = []
    for name in flags:
        if name in RUNNER_ARGS:
            continue
        if name.split("#")[0] in keys:
            problems += [f"--{name}: {p}" for p in [_nested_key_problem(config, name.split("#"))] if p]
            continue
        key = name.split("#")[0]
        notes = [note for needs, note in _FLAG_NOTES.get(key, ()) if all(k in keys for k in needs)]
        if key in FLAG_ALIASES or key in _FLAG_NOTES:  # a known other name: no unrelated spelling match
            close = [a for a in [FLAG_ALIASES.get(key)] if a in keys]
        else:
            close = difflib.get_close_matches(key, sorted(keys), n=1)
        hint = f" ({notes[0]})" if notes else f" (did you mean --{close[0]}?)" if close else ""
        problems.append(f"--{name}: not a setting of {', '.join(Path(f).name for f in files)}{hint}")
    return problems


def _nested_key_problem(config: dict, parts: Sequence[str]) -> str:
    """What is wrong with the nested override ``#``-joined ``parts`` of ``config`` (``""``: nothing known to be).

    A part missing from a mapping is refused, with the closest sibling key, unless it is the last part under a
    ``_target_`` mapping whose component takes that argument (:func:`_arguments`; the hint also draws on them), or,
    where its arguments cannot be told (``**kwargs``), a name close to none the config lists: that adds an argument the
    config does not list, as MONAI intends (``--lr_scheduler#warmup_multiplier 0.1``). Parts past a list or a ``@``
    reference are not checked (MONAI's own errors)."""
    node: Any = config
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return ""
        if part in node:
            node = node[part]
            continue
        if part in _MONAI_KEYS:
            return ""
        arguments = _arguments(node["_target_"]) if "_target_" in node else set()
        names = sorted({k for k in node if not k.startswith("_")} | (arguments or set()))
        close = difflib.get_close_matches(part, names, n=1)
        if i == len(parts) - 1 and "_target_" in node and (part in (arguments or ()) or (arguments is None and not close)):
            return ""  # a new argument of the component (any name close to no listed one, for **kwargs), as MONAI intends
        where = "#".join(parts[:i])
        hint = f" (did you mean {where}#{close[0]}?)" if close else ""
        return f"'{part}' is not a key of {where}{hint}"
    return ""


def _arguments(target: Any) -> set[str] | None:
    """The argument names of the component ``target`` (a ``_target_``: a dotted path or a name MONAI's locator
    knows); ``None`` when it cannot be told (an expression, a component that cannot be found or imported, ``**kwargs``)."""
    import inspect
    import pydoc

    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    try:  # a module that fails to import is MONAI's to report when (and if) the component is built
        obj = pydoc.locate(target)
        if obj is None and "." not in target:
            from monai.bundle import ComponentLocator

            module = ComponentLocator().get_component_module_name(target)
            module = module[0] if isinstance(module, list) and module else module
            obj = pydoc.locate(f"{module}.{target}") if isinstance(module, str) else None
        params = inspect.signature(obj).parameters if obj is not None else None
    except Exception:  # noqa: BLE001 - pydoc.ErrorDuringImport, a builtin without a signature...
        params = None
    if params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)
