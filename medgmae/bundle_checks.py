"""Checks a bundle runs first, before it reads data or writes anything: its settings and its output folders.

``python -m monai.bundle run ... --max_epochs -3`` hands the config whatever the command line held; read where it is
used, a bad value fails late (after the data pre-check, with partial output written) and often without the key's
name (``invalid literal for int() with base 10: 'abc'``). Each bundle's ``initialize`` list (3D and 2D alike)
therefore starts with :func:`check_settings`, given the settings and the output folders, which raises one
:class:`BundleSettingError` naming every bad key and its value, folders included. True/false keys are checked here
too and read where they are used with :func:`medgmae.cli_types.as_bool`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from medgmae import cli_types
from medgmae.bundle_command_line import (
    bundle_command,
    derived_from_bad_keys,
    unknown_key_lines,
    unknown_key_problems,
)
from medgmae.bundle_errors import summarise_errors
from medgmae.distributed import is_main_process, process_count
from medgmae.files import output_dir_problem

__all__ = ["BundleSettingError", "check_settings", "kind_problem", "mask_ratio_check", "check_output_dirs", "process_problems", "roi_size_check", "unknown_key_problems", "MIN_IMAGE_SIZE"]

logger = logging.getLogger("medgmae")

#: Smallest image edge the 2D trainings accept: their SSIM (GViT's loss, 2D GMAE's validation) uses an 11-pixel window.
MIN_IMAGE_SIZE = 11

#: The value kinds :func:`check_settings` knows, by name (each parses the value's text or raises).
KINDS: dict[str, Callable[[str], Any]] = {
    "int": cli_types.integer,
    "positive_int": cli_types.positive_int,
    "nonneg_int": cli_types.nonneg_int,
    "count_or_all": cli_types.count_or_all,
    "positive_float": cli_types.positive_float,
    "nonneg_float": cli_types.nonneg_float,
    "fraction": cli_types.fraction,
    "unit_interval": cli_types.unit_interval,
    "proper_fraction": cli_types.proper_fraction,
}


class BundleSettingError(ValueError):
    """A bundle setting (a config key, usually given on the command line) that cannot be used."""


def _problem(value: Any, kind: str | Sequence[Any] | Callable[[Any], Any], settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not of ``kind`` (see :func:`check_settings`), ``None`` when it is; ``settings`` are all the
    settings checked together (an ``image_size`` is checked against the ``patch_size`` among them)."""
    if isinstance(kind, str) and kind.startswith("optional_"):  # null: the setting is not given
        if value is None:
            return None
        kind = kind[len("optional_") :]
    if callable(kind):
        try:
            kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            return str(e)
        return None
    if not isinstance(kind, str):
        return None if value in kind else f"expected one of {list(kind)}, got {value!r}"
    if kind == "bool":
        try:
            cli_types.as_bool(value)
        except ValueError:
            return f"expected true or false, got {value!r}"
        return None
    if kind == "image_size":
        return _image_size_problem(value, settings)
    if kind == "schedule_epochs":
        return _schedule_epochs_problem(value, settings)
    if kind in ("roi_size", "roi_edge"):
        patch = settings["patch_size"][0] if "patch_size" in settings else None
        return roi_size_problem(value, patch, cube=kind == "roi_edge")
    if kind.endswith("s") and kind[:-1] in KINDS:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            return "expected a value, got []"
        return next((p for p in (_problem(v, kind[:-1], settings) for v in values) if p), None)
    if isinstance(value, bool):  # int(True) is 1: a flag is not a count
        return f"expected {kind.replace('_', ' ')}, got {value!r}"
    if kind in cli_types.INTEGER_NAMES and isinstance(value, (str, float)) and not cli_types.is_integer_text(value):
        # the configs use the value as given, where MONAI reads --max_epochs 1e2 as the float 100.0
        whole = cli_types.whole_number(value)
        return f"expected {cli_types.INTEGER_NAMES[kind]}, got {value!r}" + (f" (write it as {whole})" if whole is not None else "")
    try:
        KINDS[kind](str(value).strip())
    except argparse.ArgumentTypeError as e:
        return str(e)
    return None


def kind_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not of the :data:`KINDS` name ``kind`` (e.g. ``"nonneg_int"``), as :func:`check_settings`
    says it, else ``None``: for a bundle's own check that starts with a plain kind."""
    return _problem(value, kind, {})


def mask_ratio_check(size: Any, patch_size: Any, ndim: int) -> Callable[[Any], None]:
    """The check of a masked autoencoder's ``mask_ratio`` (``checked_settings``): a number in ``[0, 1)`` that masks
    at least one patch of the crop when it is above 0 (a crop of one patch, or a ratio rounding to no patch, trains
    an autoencoder that sees everything while its log says "masked").

    Args:
        size: the crop's edge (``roi_size`` / ``image_size``, an integer; other values are left to their checks).
        patch_size: the patch edge, likewise.
        ndim: 3 for volumes, 2 for images.

    Returns:
        ``check(mask_ratio)``, raising ``ValueError`` naming the problem.
    """
    from medgmae.networks.vit import visible_patch_count

    def check(value: Any) -> None:
        if problem := kind_problem(value, "proper_fraction"):
            raise ValueError(problem)
        if kind_problem(size, "positive_int") or kind_problem(patch_size, "positive_int") or int(size) < int(patch_size):
            return
        n = (int(size) // int(patch_size)) ** ndim
        if float(value) > 0 and visible_patch_count(n, float(value)) == n:
            raise ValueError(f"{value} masks no patch: a crop of {size} in patches of {patch_size} has {n} patch(es), "
                             f"and {value} of them rounds to none masked (one always stays visible); give a larger "
                             "crop, smaller patches or a larger ratio (0, documented, trains without masking)")  # fmt: skip

    return check


def _image_size_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not a square 2D image edge: an integer of at least :data:`MIN_IMAGE_SIZE` and a multiple of
    the ``patch_size`` setting (when that one is a positive integer; otherwise its own line names it)."""
    if "patch_size" not in settings:
        raise ValueError("an image_size check needs the patch_size setting beside it")
    problem = _problem(value, "positive_int", settings)
    if problem:
        return problem
    size, text = int(str(value).strip()), str(value).strip()
    if size < MIN_IMAGE_SIZE:
        return f"expected at least {MIN_IMAGE_SIZE} (the SSIM uses an {MIN_IMAGE_SIZE}-pixel window), got {text!r}"
    patch = settings["patch_size"][0]
    if _problem(patch, "positive_int", settings) is None and size % int(str(patch).strip()):
        return f"expected a multiple of --patch_size {str(patch).strip()}, got {text!r}"
    return None


def _schedule_epochs_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not the length in epochs of a warm-up + cosine learning-rate schedule covering the run: a
    positive integer of at least the ``max_epochs`` setting (when that one is a positive integer; otherwise its own
    line names it). ``monai.optimizers.WarmupCosineSchedule`` goes on along its cosine past its end, so a shorter
    schedule would bring the learning rate back up to its peak in the last epochs."""
    if "max_epochs" not in settings:
        raise ValueError("a schedule_epochs check needs the max_epochs setting beside it")
    problem = _problem(value, "positive_int", settings)
    if problem:
        return problem
    epochs, maximum = int(str(value).strip()), settings["max_epochs"][0]
    if _problem(maximum, "positive_int", settings) is None and epochs < (last := int(str(maximum).strip())):
        return (f"expected at least --max_epochs {last} (past the schedule's end its cosine brings the learning rate back "
                f"up to its peak), got {str(value).strip()!r}: give --lr_schedule_epochs {last} or more, or leave it out "
                "(it follows --max_epochs)")  # fmt: skip
    return None


def _positive_ints(value: Any) -> list[int] | None:
    """``value`` (an integer, its text, or a list or tuple of them) as a list of positive integers, ``None`` when
    it is not one."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(_problem(v, "positive_int", {}) for v in values):
        return None
    return [int(str(v).strip()) for v in values]


def roi_size_problem(
    value: Any, patch_size: Any = None, cube: bool = False, patch_name: str = "--patch_size"
) -> str | None:
    """Why ``value`` is not a 3D crop size: an integer (a cube's edge) or, unless ``cube``, a list of 3 integers,
    each a positive multiple of the patch size along its axis.

    Args:
        value: the ``roi_size`` setting as given.
        patch_size: the patch size (an integer or 3 of them); ``None``, or a value that is not one (its own check
            names it), checks the form of ``value`` alone.
        cube: accept an integer only (a bundle whose crops are cubes).
        patch_name: how the message names the patch size's setting.

    Returns:
        the problem, ``None`` when there is none.
    """
    sizes = _positive_ints(value)
    listed = isinstance(value, (list, tuple))
    if sizes is None or (listed and (cube or len(value) != 3)):
        return f"expected {'a positive integer' if cube else 'a positive integer or a list of 3'}, got {value!r}"
    patches = _positive_ints(patch_size) if patch_size is not None else None
    if patches is None or len(patches) not in (1, 3):
        return None
    sizes, patches = sizes * (3 // len(sizes)), patches * (3 // len(patches))
    if any(s % p for s, p in zip(sizes, patches)):
        shown = patches[0] if len(set(patches)) == 1 else patches
        return f"expected positive multiples of {patch_name} {shown}, got {value!r}"
    return None


def roi_size_check(patch_size: Any = None, patch_name: str = "--encoder#patch_size") -> Callable[[Any], None]:
    """A ``roi_size`` kind for :func:`check_settings` where the patch size is not a setting of its own (e.g. a key
    of the fine-tuning's ``encoder``): see :func:`roi_size_problem`.

    Args:
        patch_size: the patch size, or ``None`` when it is not known up front (a pre-trained encoder's, read later):
            the form of ``roi_size`` is checked alone.
        patch_name: how the message names the patch size's setting.

    Returns:
        a callable that raises ``ValueError`` naming the problem of a bad ``roi_size``.
    """

    def check(value: Any) -> None:
        problem = roi_size_problem(value, patch_size, patch_name=patch_name)
        if problem:
            raise ValueError(problem)

    return check


def check_settings(
    settings: Mapping[str, tuple[Any, str | Sequence[Any] | Callable[[Any], Any]]],
    output_dirs: Mapping[str, str | Path] | None = None,
    run_kinds: Sequence[str] | None = None,
    torchrun: bool = False,
    multi_gpu_config: str | None = None,
    unused_phantom_keys: Sequence[str] = (),
    unused_keys: Mapping[str, str] | None = None,
) -> bool:
    """Check each setting against its kind, and each output folder; raise one error naming every bad key, and
    every ``--key`` of the command line that the bundle does not have (:func:`unknown_key_problems`), and a config
    started the wrong way (:func:`process_problems`). Also installs :func:`summarise_errors`, so that any later
    failure of the bundle ends with its reason.

    Args:
        settings: ``{key: (value, kind)}``; kind is a name of :data:`KINDS` (``"positive_int"``, ``"int"``...),
            the same name with an ``s`` (one value or a list of them), ``"bool"`` (what
            :func:`~medgmae.cli_types.as_bool` reads), ``"image_size"`` (a square 2D image edge: an integer of at
            least :data:`MIN_IMAGE_SIZE` and a multiple of the ``patch_size`` setting, which must be among
            ``settings``), ``"schedule_epochs"`` (a learning-rate schedule's length: a positive integer of at least
            the ``max_epochs`` setting, which must be among ``settings``), ``"roi_size"`` (a 3D crop: an integer or a list of 3, multiples of the ``patch_size``
            setting when there is one; ``"roi_edge"``: an integer only), any of these names after ``optional_``
            (``"optional_nonneg_int"``: also ``null``, a setting not given), a list of the allowed values, or a
            callable that raises ``ValueError`` (naming the problem) for a bad value (e.g. :func:`roi_size_check`).
        output_dirs: ``{key: path}`` of the output folders, checked as :func:`check_output_dirs` does.
        run_kinds: the model kinds a training bundle writes: a model file, ``encoder.pt`` or training checkpoint of
            another kind in ``output_dirs["output_dir"]`` is a problem (another bundle's run, which this one would
            replace).
        torchrun: the config trains in several processes (a ``multi_gpu_train.json``): it must be started by
            ``torchrun``. Otherwise it runs in one process, and several started by ``torchrun`` are a problem.
        multi_gpu_config: the bundle's multi-process config (e.g. ``"configs/multi_gpu_train.json"``), suggested
            when a one-process config was started by ``torchrun``; ``None``: the bundle has none.
        unused_phantom_keys: settings of the generated phantom data that this run does not use (it reads the
            user's data): each one the command line sets is warned about, as MONAI would take it silently.
        unused_keys: other settings this run does not use, each with why (``{"num_gaussians": "a voxel-mae model
            has no Gaussians"}``): warned about likewise when the command line sets them, at the top level or as a
            component's argument (``--network_def#num_gaussians``).

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line per bad key, ``--key: expected ..., got ...``, then one per unusable folder.
        ValueError: an ``image_size`` kind without a ``patch_size`` setting, or a ``schedule_epochs`` kind without a
            ``max_epochs`` one (a config error, not a bad value).
    """
    summarise_errors(resumable="resume" in settings, **_interrupt_context(settings, output_dirs))  # from here on, a
    # failure of the bundle ends with its reason
    command = bundle_command(None)  # the command line and its config files, read once
    found = {key: p for key, (value, kind) in settings.items() if (p := _problem(value, kind, settings))}
    derived = derived_from_bad_keys(list(found), command)  # e.g. precheck_workers, a copy of a bad --num_workers
    problems = [f"--{key}: {p}" for key, p in found.items() if key not in derived]
    problems += unknown_key_lines(command) + process_problems(torchrun, multi_gpu_config)
    dirs = output_dirs or {}
    folders = _output_dir_problems(dirs) + _other_run_problems(dirs.get("output_dir"), run_kinds)
    _raise_problems(problems, folders)
    _warn_unused(command, unused_phantom_keys, unused_keys or {})
    return True


def _raise_problems(problems: list[str], folders: list[str]) -> None:
    """Raise one :class:`BundleSettingError` naming every bad setting and unusable output folder, if any."""
    if problems or folders:
        kinds = (("bad setting(s)", problems), ("unusable output folder(s)", folders))
        what = " and ".join(name for name, found in kinds if found)
        raise BundleSettingError(f"{what}, nothing was written:\n  " + "\n  ".join(problems + folders))


def _interrupt_context(settings: Mapping[str, tuple], output_dirs: Mapping[str, str | Path] | None) -> dict:
    """What Ctrl-C's advice needs of a training run (:func:`~medgmae.bundle_errors.summarise_errors`): its
    ``output_dir`` and ``resume`` setting, where they are known and valid."""
    out = (output_dirs or {}).get("output_dir")
    try:
        resume = cli_types.as_bool(settings["resume"][0]) if "resume" in settings else None
    except ValueError:  # its own line names it
        resume = None
    return {"output_dir": None if out is None else str(out), "resume": resume}


def _warn_unused(command: tuple | None, phantom_keys: Sequence[str], other_keys: Mapping[str, str]) -> None:
    """Warn (rank 0) about the settings the command line sets that this run does not use (:func:`check_settings`'s
    ``unused_phantom_keys`` and ``unused_keys``): MONAI takes them silently."""
    if command is None or not is_main_process():
        return
    given = [key for key in phantom_keys if key in command[0]]
    if given:
        logger.warning("%s: %s the generated phantom data, which this run does not use (it reads the data given): "
                       "ignored", ", ".join(f"--{k}" for k in given), "this shapes" if len(given) == 1 else "these shape")
    for key, why in other_keys.items():  # also as a component's argument: --network_def#num_gaussians
        for flag in (f for f in command[0] if f == key or f.rsplit("#", 1)[-1] == key):
            logger.warning("--%s: %s: ignored", flag, why)


def process_problems(torchrun: bool, multi_gpu_config: str | None = None) -> list[str]:
    """A line when the config and the way it was started disagree (see :func:`check_settings`).

    A one-process config started by ``torchrun`` (``TORCHELASTIC_RUN_ID`` set) in several processes would run the
    whole job in each, every process removing the others' outputs as an earlier run's; a multi-process config
    without ``torchrun``'s ``RANK`` has no process group to join. A ``WORLD_SIZE`` exported by a job environment
    without ``torchrun`` is not taken for processes started.

    Args:
        torchrun: the config trains in several processes (a ``multi_gpu_train.json``).
        multi_gpu_config: the bundle's multi-process config, suggested to a one-process config under torchrun.

    Returns:
        ``[]``, or the one ``--config_file: ...`` line.
    """
    if torchrun:
        if "RANK" in os.environ:
            return []
        return ["--config_file: this config trains in several processes and is started by torchrun "
                "(`torchrun --standalone --nproc_per_node N -m monai.bundle run ...`; the bundle's README)"]  # fmt: skip
    processes = process_count()
    if "TORCHELASTIC_RUN_ID" not in os.environ or processes <= 1:
        return []
    what = (f"for multi-GPU training add {multi_gpu_config} to --config_file (the README's multi-GPU command)"
            if multi_gpu_config else "start it with `python -m monai.bundle run ...`, without torchrun")
    return [f"--config_file: torchrun runs {processes} processes (WORLD_SIZE={processes}) but this config runs in "
            f"one; each would run the whole job and remove the others' outputs: {what}"]  # fmt: skip


def _output_dir_problems(dirs: Mapping[str, str | Path]) -> list[str]:
    """``--key 'path': problem`` for each output folder that neither is a writable folder nor can be created, or
    that starts with a ``~`` nothing expanded (quoted on the command line, written ``--key=~/...``, or from an
    ``--args_file``): the bundle's writers would make a folder called ``~`` under the current one for some files
    and write others into the home folder (inputs are expanded where they are read)."""

    def problem(path: str | Path) -> str | None:
        if str(path).startswith("~"):
            return (f"starts with '~', which was not expanded (quoted on the command line, or from an args file): "
                    f"give the full path, {os.path.expanduser(str(path))}")  # fmt: skip
        return output_dir_problem(path)

    return [f"--{key} {str(path)!r}: {p}" for key, path in dirs.items() if (p := problem(path))]


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
    def what(name: str, kind: str) -> str:  # an encoder.pt's kind is that of the run it came from
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
