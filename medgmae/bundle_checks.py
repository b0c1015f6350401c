"""Checks a bundle runs first, before it reads data or writes anything: its settings and its output folders.

``python -m monai.bundle run ... --max_epochs -3`` hands the config whatever the command line held; read where it is
used, a bad value fails late (after the data pre-check, with partial output written) and often without the key's
name (``invalid literal for int() with base 10: 'abc'``). Each bundle's ``initialize`` list (3D and 2D alike)
therefore starts with :func:`check_settings`, given the settings and the output folders, which raises one
:class:`BundleSettingError` naming every bad key and its value, folders included. True/false keys are checked here
too and read where they are used with :func:`medgmae.cli_types.as_bool`; a text is checked with each ``#`` that MONAI's
parser made ``::`` back (:func:`medgmae.cli_types.as_given`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Container, Mapping, Sequence

from medgmae import cli_types
from medgmae.bundle_command_line import (
    BundleCommand,
    bundle_command,
    derived_from_bad_keys,
    is_bundle_command_line,
    repeated_flag_lines,
    unknown_key_lines,
    unknown_key_problems,
)
from medgmae.bundle_errors import INTERRUPTED_SKIP_WRITTEN, InputRefusal, summarise_errors
from medgmae.bundle_in_process import initialising_workflow, scope_run
from medgmae.distributed import is_main_process, process_count
from medgmae.files import output_dir_problem
from medgmae.folder_lock import hold_folder
from medgmae.setting_kinds import setting_problem
from medgmae.words import plural

__all__ = ["BundleSettingError", "check_base_config", "check_settings", "check_output_dirs", "process_problems",
           "unknown_key_problems"]

logger = logging.getLogger("medgmae")

class BundleSettingError(InputRefusal):
    """A bundle setting (a config key, usually given on the command line) that cannot be used."""


def check_settings(
    settings: Mapping[str, tuple[Any, str | Sequence[Any] | Callable[[Any], Any]]],
    output_dirs: Mapping[str, str | Path] | None = None,
    run_kinds: Sequence[str] | None = None,
    torchrun: bool = False,
    multi_gpu_config: str | None = None,
    unused_phantom_keys: Sequence[str] = (),
    unused_keys: Mapping[str, str] | None = None,
    hold: str | None = None,
) -> bool:
    """Check each setting against its kind, and each output folder; raise one error naming every bad key, and
    every ``--key`` of the command line that the bundle does not have (:func:`unknown_key_problems`) or that it gives
    more than once (:func:`~medgmae.bundle_command_line.repeated_flag_lines`; a run from Python: its keywords), and a
    config started the wrong way (:func:`process_problems`). A command line gets :func:`summarise_errors` too.

    Args:
        settings: ``{key: (value, kind)}``; the kinds (``"positive_int"``, ``"bool"``, ``"roi_size"``, a list of the
            allowed values, a callable...) are listed in :mod:`medgmae.setting_kinds`.
        output_dirs: ``{key: path}`` of the output folders, checked as :func:`check_output_dirs` does.
        run_kinds: the model kinds a training bundle writes: a model file, ``encoder.pt`` or training checkpoint of
            another kind in ``output_dirs["output_dir"]`` is a problem (another bundle's run, which this one would
            replace); that folder is then held for the run (:func:`_hold_output_dir`: one run at a time in it).
        hold: the key in ``output_dirs`` of the folder an evaluation or inference writes into, held as that one is.
        torchrun: the config trains in several processes (a ``multi_gpu_train.json``): it must be started by
            ``torchrun``. Otherwise it runs in one process, and several started by ``torchrun`` are a problem.
        multi_gpu_config: the bundle's multi-process config, by its path in this checkout (e.g.
            ``"bundles/unetr_finetune/configs/multi_gpu_train.json"``), suggested when a one-process config was
            started by ``torchrun`` (as the sibling of the config file given, :func:`process_problems`); ``None``:
            the bundle has none.
        unused_phantom_keys: settings of the generated phantom data that this run does not use (it reads the
            user's data): each one the command line sets is warned about, as MONAI would take it silently.
        unused_keys: other settings this run does not use, each with why (``{"num_gaussians": "a voxel-mae model
            has no Gaussians"}``): warned about likewise when the command line sets them, at the top level or as a
            component's argument (``--network_def#num_gaussians``), or below it (``--encoder#hidden_size``).

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line per bad key, ``--key: expected ..., got ...``, then one per unusable folder.
        ValueError: an ``image_size`` kind without a ``patch_size`` setting, or a ``schedule_epochs`` kind without a
            ``max_epochs`` one (a config error, not a bad value).
    """
    context = _interrupt_context(settings, output_dirs)  # what the advice after Ctrl-C needs
    if is_bundle_command_line():  # a later failure of the command ends with its reason (from Python: the exception)
        summarise_errors(resumable="resume" in settings and (hold is None or INTERRUPTED_SKIP_WRITTEN), **context)
    command = bundle_command(None)  # the command line (or the call from Python) and its config files, read once
    found = {k: p for k, (value, kind) in settings.items() if (p := setting_problem(cli_types.as_given(value, k), kind, settings))}
    derived = derived_from_bad_keys(list(found), command)  # e.g. precheck_workers, a copy of a bad --num_workers
    problems = [f"--{key}: {p}" for key, p in found.items() if key not in derived]
    problems += unknown_key_lines(command) + repeated_flag_lines(command)
    problems += process_problems(torchrun, multi_gpu_config, command)
    dirs = output_dirs or {}
    folders = _output_dir_problems(dirs, None if command is None else command.flags)
    if not any(line.startswith("--output_dir ") for line in folders):  # a folder that cannot be looked up is not read
        folders += _other_run_problems(dirs.get("output_dir"), run_kinds)
    _raise_problems(problems, folders)
    _hold_output_dir(dirs, "output_dir" if run_kinds else hold, not torchrun, context["resume"])
    _warn_unused(command, unused_phantom_keys, unused_keys or {})
    return True


def _raise_problems(problems: list[str], folders: list[str]) -> None:
    """Raise one :class:`BundleSettingError` naming every bad setting and unusable output folder, if any."""
    if problems or folders:

        kinds = (("bad setting", problems), ("unusable output folder", folders))
        what = " and ".join(plural(len(found), name) for name, found in kinds if found)
        raise BundleSettingError(f"{what}, nothing was written:\n  " + "\n  ".join(problems + folders))


def _hold_output_dir(dirs: Mapping[str, str | Path], key: str | None, one_process_run: bool,
                     resume: bool | None = None) -> None:
    """Hold the output folder ``dirs[key]`` (:func:`~medgmae.folder_lock.hold_folder`, rank 0) for a one-process run:
    one run at a time in its folder (a multi-process config holds it once its process group exists,
    :func:`~medgmae.folder_lock.hold_run_folder`). A command line holds it from here to its exit; a bundle run from
    Python (a notebook's ``monai.bundle.run``) while its workflow's ``run`` goes on
    (:func:`~medgmae.bundle_in_process.scope_run`); a config expression evaluated alone, with no workflow to run,
    does not hold it.

    Args:
        dirs: the output folders by config key.
        key: the key of the folder the run writes into (``output_dir`` for training); ``None``: none is held.
        one_process_run: the bundle runs in one process, not under torchrun.
        resume: a training run's ``resume`` setting, for the advice after Ctrl-C in a run from Python.

    Raises:
        FolderInUse: another process holds it; the message names ``--key``, the folder and that process.
    """
    if not (key and dirs.get(key) and one_process_run and is_main_process()):
        return
    if is_bundle_command_line():
        hold_folder(dirs[key], f"--{key}")
    elif (workflow := initialising_workflow()) is not None:
        scope_run(workflow, dirs[key], f"--{key}", resume, training=key == "output_dir")


def _interrupt_context(settings: Mapping[str, tuple], output_dirs: Mapping[str, str | Path] | None) -> dict:
    """What Ctrl-C's advice needs of a training run (:func:`~medgmae.bundle_errors.summarise_errors`): its
    ``output_dir`` and ``resume`` setting, where they are known and valid."""
    out = (output_dirs or {}).get("output_dir")
    try:
        resume = cli_types.as_bool(settings["resume"][0]) if "resume" in settings else None
    except ValueError:  # its own line names it
        resume = None
    return {"output_dir": None if out is None else str(out), "resume": resume}


def _warn_unused(command: BundleCommand | None, phantom_keys: Sequence[str], other_keys: Mapping[str, str]) -> None:
    """Warn (rank 0) about the settings the command line sets that this run does not use (:func:`check_settings`'s
    ``unused_phantom_keys`` and ``unused_keys``): MONAI takes them silently."""
    if command is None or not is_main_process():
        return
    given = [key for key in phantom_keys if key in command.flags]
    if given:
        logger.warning("%s: %s the generated phantom data, which this run does not use (it reads the data given): "
                       "ignored", ", ".join(f"--{k}" for k in given), "this shapes" if len(given) == 1 else "these shape")
    for key, why in other_keys.items():  # also as a component's argument (--network_def#num_gaussians) or part
        for flag in (f for f in command.flags if f == key or f.startswith(f"{key}#") or f.rsplit("#", 1)[-1] == key):
            logger.warning("--%s: %s: ignored", flag, why)


def process_problems(torchrun: bool, multi_gpu_config: str | None = None,
                     command: BundleCommand | None = None) -> list[str]:
    """A line when the config and the way it was started disagree (see :func:`check_settings`).

    A one-process config started by ``torchrun`` (``TORCHELASTIC_RUN_ID`` set) in several processes would run the
    whole job in each, every process removing the others' outputs as an earlier run's; a multi-process config
    without ``torchrun``'s ``RANK`` has no process group to join. A ``WORLD_SIZE`` exported by a job environment
    without ``torchrun`` is not taken for processes started.

    Args:
        torchrun: the config trains in several processes (a ``multi_gpu_train.json``).
        multi_gpu_config: the bundle's multi-process config, suggested to a one-process config under torchrun: by
            the path of the config file given's sibling (:func:`multi_gpu_files`), so that the command can be pasted.
        command: the command line (:func:`~medgmae.bundle_command_line.bundle_command`), whose config files the
            suggestion names; ``None``: the checkout's files, by their absolute paths.

    Returns:
        ``[]``, or the one ``--config_file: ...`` line.
    """
    if not torchrun and multi_gpu_config and command is not None:
        early = [f for f in command.files[:-1] if Path(str(f)).name == Path(multi_gpu_config).name]
        if early:  # listed before this config, which replaced its settings: MONAI merges in order
            return [adds_to_line(os.path.expanduser(str(early[0])), os.path.expanduser(str(command.files[-1])), False)]
    if torchrun:
        if "RANK" in os.environ:
            return []
        return ["--config_file: this config trains in several processes and is started by torchrun "
                "(`torchrun --standalone --nproc_per_node N -m monai.bundle run ...`; the bundle's README)"]  # fmt: skip
    processes = process_count()
    if "TORCHELASTIC_RUN_ID" not in os.environ or processes <= 1:
        return []
    if multi_gpu_config:
        one, multi = multi_gpu_files(multi_gpu_config, command)
        what = (f"for multi-GPU training list {multi} after {one} in --config_file: "
                f"{multi_gpu_command(one, multi, processes)}")
    else:
        what = "start it with `python -m monai.bundle run ...`, without torchrun"
    return [f"--config_file: torchrun runs {processes} processes (WORLD_SIZE={processes}) but this config runs in "
            f"one; each would run the whole job and remove the others' outputs: {what}"]  # fmt: skip


def multi_gpu_command(one: str, multi: str, processes: int | str = "N") -> str:
    """The README's multi-GPU command for a one-process config and the multi-process config listed after it (paths
    as the user would type them), with ``...`` for the command's other flags."""
    return (f"`torchrun --standalone --nproc_per_node {processes} -m monai.bundle run training "
            f"--config_file \"['{one}','{multi}']\" ...`")


def multi_gpu_files(multi_gpu_config: str, command: BundleCommand | None) -> tuple[str, str]:
    """The one-process config and its multi-process sibling by paths that work from the current folder: the first
    config file of ``command`` that has a sibling named as ``multi_gpu_config`` (as given, ``~`` expanded), else
    this checkout's ``train.json`` beside ``multi_gpu_config`` (absolute).

    Args:
        multi_gpu_config: the multi-process config by its path in this checkout.
        command: the command line, or ``None``.

    Returns:
        ``(one-process config, multi-process config)``.
    """
    name = Path(multi_gpu_config).name
    for given in command.files if command is not None else []:
        path = Path(os.path.expanduser(str(given)))
        if path.name != name and (path.parent / name).is_file():
            return str(path), str(path.parent / name)
    multi = Path(__file__).resolve().parents[1] / multi_gpu_config
    return str(multi.with_name("train.json")), str(multi)


def check_base_config(base: str = "train.json", added: str = "multi_gpu_train.json") -> bool:
    """Refuse a config that adds to another (a ``multi_gpu_train.json`` adds multi-process training to its
    ``train.json``) given first or alone on a ``python -m monai.bundle run`` command line: MONAI failed merging its
    ``train#sampler`` keys, or without them at its first reference to a ``train.json`` key. The first step of such
    a config's ``initialize`` list; it installs :func:`summarise_errors` so that the refusal ends with its line, on
    every rank under torchrun. The config's ``"+train": {}`` keys (MONAI merges nothing into ``train.json``'s
    ``train``) give its ``train#sampler`` keys a parent when it is given alone, so that it is read and this runs.

    Args:
        base: the name of the config that must come first, looked for beside the one given.
        added: the name of the config that adds to it.

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line naming the file given and the command listing it after ``base``.
    """
    if is_bundle_command_line():
        summarise_errors()
    command = bundle_command(None)
    if command is None or not command.files:
        return True
    first = os.path.expanduser(str(command.files[0]))
    if len(command.files) > 1 and Path(first).name != added:
        return True
    raise BundleSettingError(adds_to_line(first, str(Path(first).parent / base)))


def adds_to_line(added: str, base: str, alone: bool = True) -> str:
    """The refusal of a config that adds to ``base`` (a ``multi_gpu_train.json`` to its ``train.json``) given alone
    or before it, naming the command that lists it after ``base`` (paths as given); ``alone``: the refusal is the
    whole error (it then says that nothing was written), else one line of :func:`check_settings`' list."""
    processes = process_count() if process_count() > 1 else "N"
    return (f"--config_file: {added} adds multi-GPU training to {Path(base).name} and does not run alone or before "
            f"it: list it after {base} in --config_file, {multi_gpu_command(base, added, processes)}"
            + ("; nothing was written" if alone else ""))  # fmt: skip


def _output_dir_problems(dirs: Mapping[str, str | Path], given: Container[str] | None = None) -> list[str]:
    """``--key 'path': problem`` for each output folder that neither is a writable folder nor can be created, or
    that starts with a ``~`` nothing expanded (quoted on the command line, written ``--key=~/...``, or from an
    ``--args_file``): the bundle's writers would make a folder called ``~`` under the current one for some files
    and write others into the home folder (inputs are expanded where they are read). A folder inside another that
    is named is left out unless ``given`` (the command line's flags) holds its key."""

    def problem(path: str | Path) -> str | None:
        if str(path).startswith("~"):
            return (f"starts with '~', which was not expanded (quoted on the command line, or from an args file): "
                    f"give the full path, {os.path.expanduser(str(path))}")  # fmt: skip
        return output_dir_problem(path)

    bad = {key: (str(path), p) for key, path in dirs.items() if (p := problem(path))}
    return [f"--{key} {path!r}: {p}" for key, (path, p) in bad.items() if not _inside_named(key, path, bad, given)]


def _inside_named(key: str, path: str, bad: Mapping[str, tuple], given: Container[str] | None) -> bool:
    """Whether the bad folder ``key`` (``path``) sits in another bad folder and the command line did not set it: a
    folder made from ``--output_dir`` (``--cache_dir``, ``--tensorboard_dir``), whose line would repeat that one's."""
    if given is None or key in given:
        return False
    return any(other != key and path.startswith(p.rstrip("/\\") + os.sep) for other, (p, _) in bad.items())


#: The files a training bundle's output folder may hold, read for their model's kind by :func:`_other_run_problems`
#: (besides the newest ``checkpoint_epoch=N.pt``).
RUN_MODEL_FILES = ("model.pt", "best_model.pt", "encoder.pt", "checkpoint_final.pt")


def _other_run_problems(output_dir: str | Path | None, run_kinds: Sequence[str] | None) -> list[str]:
    """A ``--output_dir`` line naming the model files and training checkpoints there of a kind this bundle does not
    write: the folder holds another bundle's run (a 2D run started in a 3D pre-training folder would remove its
    checkpoints and models)."""
    if output_dir is None or not run_kinds:
        return []
    from medgmae.checkpoint import CHECKPOINT_KINDS, model_file_kind  # torch: imported where a folder is checked
    from medgmae.engine.resume import latest_checkpoint

    newest = latest_checkpoint(output_dir)
    names = RUN_MODEL_FILES + ((newest.name,) if newest is not None else ())
    found = {name: model_file_kind(Path(output_dir) / name) for name in names}
    other = {name: kind for name, kind in found.items() if kind is not None and kind not in run_kinds}
    if not other:
        return []
    def what(name: str, kind: str) -> str:  # an encoder.pt's kind says 2D ("gmae2d") or 3D ("medgmae") pre-training
        if name == "encoder.pt":
            return f"{name} (a pre-trained ViT encoder of a {'2D' if kind == 'gmae2d' else '3D'} pre-training run)"
        return f"{name} of kind {kind!r} ({CHECKPOINT_KINDS.get(kind, 'unknown')})"

    files = ", ".join(what(name, kind) for name, kind in other.items())
    return [f"--output_dir {str(output_dir)!r}: holds {files}: another bundle's run, which this run "
            f"({', '.join(run_kinds)}) would replace; give another --output_dir"]  # fmt: skip


def check_output_dirs(**dirs: str | Path) -> bool:
    """Check that each output folder (by config key) exists as a writable folder or can be created; create nothing.

    Bundles with settings to check pass their folders to :func:`check_settings` instead, so that one error names
    both.

    Args:
        dirs: ``key=path``, e.g. ``export_path=...``.

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line per unusable folder, naming its key and path.
    """
    return check_settings({}, output_dirs=dirs)
