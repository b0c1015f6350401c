"""The kinds of value a bundle setting can be, and the checks of crop, patch and mask settings, by which
:func:`medgmae.bundle_checks.check_settings` names every bad key at a bundle's start (a kind's name, e.g.
``"positive_int"``, or a check built here, e.g. :func:`roi_size_check`, in a config's ``checked_settings``).

A setting's kind is one of:

- a name of :data:`KINDS` (``"positive_int"``, ``"int"``...), or the same name with an ``s`` (one value or a list
  of them);
- ``"bool"``: what :func:`~medgmae.cli_types.as_bool` reads;
- ``"image_size"``: a square 2D image edge, an integer of at least :data:`MIN_IMAGE_SIZE` and a multiple of the
  ``patch_size`` setting, which must be among ``settings``;
- ``"schedule_epochs"``: a learning-rate schedule's length, a positive integer of at least the ``max_epochs``
  setting, which must be among ``settings``;
- ``"warmup_epochs"``: a warm-up's length in epochs, a non-negative integer below the ``lr_schedule_epochs``
  setting, which must be among ``settings``;
- ``"roi_size"``: a 3D crop, an integer or a list of 3, multiples of the ``patch_size`` setting when there is one
  (``"roi_edge"``: an integer only);
- any of these names after ``optional_`` (``"optional_nonneg_int"``: also ``null``, a setting not given);
- a list of the allowed values;
- a callable that raises ``ValueError`` (naming the problem) for a bad value (e.g. :func:`roi_size_check`).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Sequence

from medgmae import cli_types
from medgmae.words import plural

__all__ = [
    "KINDS", "MIN_IMAGE_SIZE", "kind_problem", "encoder_check", "mask_ratio_check", "num_gaussians_check", "phantom_cases_check", "phantom_shape_check", "roi_size_check",
    "roi_size_problem", "setting_problem",
]  # fmt: skip

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
    "finite_float": cli_types.finite_float,
    "fraction": cli_types.fraction,
    "factor": cli_types.factor,
    "unit_interval": cli_types.unit_interval,
    "proper_fraction": cli_types.proper_fraction,
}


def setting_problem(value: Any, kind: str | Sequence[Any] | Callable[[Any], Any], settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not of ``kind``, ``None`` when it is; ``settings`` are all the settings checked together (an
    ``image_size`` is checked against the ``patch_size`` among them); the kinds are listed in this module's
    docstring."""
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
    if kind == "warmup_epochs":
        return _warmup_epochs_problem(value, settings)
    if kind == "hu_window_max":
        return _hu_window_max_problem(value, settings)
    if kind in ("roi_size", "roi_edge"):
        patch = settings["patch_size"][0] if "patch_size" in settings else None
        return roi_size_problem(value, patch, cube=kind == "roi_edge")
    if kind.endswith("s") and kind[:-1] in KINDS:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            return "expected a value, got []"
        return next((p for p in (setting_problem(v, kind[:-1], settings) for v in values) if p), None)
    if isinstance(value, bool):  # int(True) is 1: a flag is not a count
        return f"expected {kind.replace('_', ' ')}, got {value!r}"
    if kind in cli_types.INTEGER_NAMES and isinstance(value, (str, float)) and not cli_types.is_integer_text(value):
        # the configs use the value as given, where MONAI reads --max_epochs 1e2 as the float 100.0
        whole = cli_types.whole_number_text(value)
        return f"expected {cli_types.INTEGER_NAMES[kind]}, got {value!r}" + (f" (write it as {whole})" if whole is not None else "")
    try:
        KINDS[kind](str(value).strip())
    except argparse.ArgumentTypeError as e:
        return str(e)
    return None


def kind_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not of the :data:`KINDS` name ``kind`` (e.g. ``"nonneg_int"``), as :func:`check_settings`
    says it, else ``None``: for a bundle's own check that starts with a plain kind."""
    return setting_problem(value, kind, {})


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
        if kind_problem(size, "positive_int") or kind_problem(patch_size, "positive_int") or int(size) % int(patch_size):
            return  # named by their own checks
        n = (int(size) // int(patch_size)) ** ndim
        if float(value) > 0 and visible_patch_count(n, float(value)) == n:

            more = "" if n == 1 else " or a larger ratio"  # one patch stays visible whatever the ratio
            raise ValueError(f"{value} masks no patch: a crop of {size} in patches of {patch_size} has {plural(n, 'patch')}, "
                             f"and a share of {value} of them rounds to none (one always stays visible); give a larger "
                             f"crop, smaller patches{more} (0, documented, trains without masking)")  # fmt: skip

    return check


def num_gaussians_check(size: Any, ndim: int, model_kind: str = "medgmae") -> Callable[[Any], None]:
    """The check of a Gaussian masked autoencoder's ``num_gaussians`` K (``checked_settings``): a positive integer
    whose Gaussians, those of every MedGMAE* level counted (``m_l * K`` each, :data:`~medgmae.networks.medgmae.LEVEL_MULTIPLIERS`), are at
    most the crop's voxels (pixels in 2D). More Gaussians than voxels describe nothing more, and their rendering
    buffers fail the allocator only after the data were read and written.

    Args:
        size: the crop's edge (``roi_size`` / ``image_size``, an integer; other values are left to their checks).
        ndim: 3 for volumes, 2 for images.
        model_kind: ``"medgmae-star"`` counts its levels' Gaussians; ``"voxel-mae"`` has none (no bound).

    Returns:
        ``check(num_gaussians)``, raising ``ValueError`` naming the value and the bound.
    """
    from medgmae.networks.medgmae import LEVEL_MULTIPLIERS

    def check(value: Any) -> None:
        if problem := kind_problem(value, "positive_int"):
            raise ValueError(problem)
        if kind_problem(size, "positive_int") or model_kind == "voxel-mae":
            return  # the crop is named by its own check; a voxel-MAE has no Gaussians
        cells, what = int(size) ** ndim, "voxels" if ndim == 3 else "pixels"
        per_k = sum(LEVEL_MULTIPLIERS) if model_kind == "medgmae-star" else 1
        bound = cells // per_k
        if int(value) > bound:
            levels = f" over medgmae-star's {per_k} Gaussians per K (levels {' + '.join(map(str, LEVEL_MULTIPLIERS))})"
            shape = f"a {size}^3 crop" if ndim == 3 else f"a {size} x {size} image"
            raise ValueError(f"expected at most {bound} (the {cells} {what} of {shape}"
                             f"{levels if per_k > 1 else ''}), got {value!r}")  # fmt: skip

    return check


def encoder_check(value: Any) -> None:
    """The check of fine-tuning's ``encoder`` (a scratch encoder's architecture, ``checked_settings``): a mapping
    whose ``hidden_size``, ``num_layers`` and ``num_heads`` are positive integers, ``num_heads`` and 6 (the 3D
    sine-cosine position embedding's share per axis and direction) dividing ``hidden_size``, and ``mlp_ratio`` a
    positive number, as :class:`~medgmae.networks.vit.ViT` needs them (``--encoder#num_heads 5`` stopped in a
    traceback once the data were checked).

    Raises:
        ValueError: naming the first problem (the setting's line names ``--encoder``; the key is named in it).
    """
    if not isinstance(value, dict):
        raise ValueError(f"expected the encoder's settings (hidden_size, num_layers, num_heads...), got {value!r}")
    for key in ("hidden_size", "num_layers", "num_heads", "patch_size"):
        if key in value and (problem := kind_problem(value[key], "positive_ints" if key == "patch_size" else "positive_int")):
            raise ValueError(f"{key}: {problem}")
    if "mlp_ratio" in value and (problem := kind_problem(value["mlp_ratio"], "positive_float")):
        raise ValueError(f"mlp_ratio: {problem}")
    width, heads = int(value.get("hidden_size", 768)), int(value.get("num_heads", 12))
    if width % heads:
        raise ValueError(f"num_heads {heads} must divide hidden_size {width} (--encoder#num_heads, --encoder#hidden_size)")
    if width % 6:
        raise ValueError(f"hidden_size {width} must be a multiple of 6 (the 3D sine-cosine position embedding; --encoder#hidden_size)")


def phantom_cases_check(value: Any) -> None:
    """The check of fine-tuning's ``phantom_cases`` (``checked_settings``): an integer of at least 2, one case to
    train on and one to validate on (1 was refused later, mid-start, as ``num_validation must be in [0, 0]``).

    Raises:
        ValueError: naming the problem.
    """
    if problem := kind_problem(value, "positive_int"):
        raise ValueError(problem)
    if int(str(value).strip()) < 2:
        raise ValueError(f"expected at least 2 (one case to train on and one to validate on), got {value!r}")


def phantom_shape_check(generated: bool = True) -> Callable[[Any], None]:
    """The check of a bundle's ``phantom_shape`` (``checked_settings``): ``null`` (the generator's default) or positive
    integers; when the run generates its phantoms (``generated``: no data of the user's), a shape whose generation
    needs more memory than the machine has (or a cgroup or address-space limit allows) is refused
    (:func:`~medgmae.data.phantom.generator.shape_memory_problem`, ``medgmae-phantom``'s check), before the
    phantoms' folder is made.

    Returns:
        ``check(phantom_shape)``, raising ``ValueError`` naming the problem.
    """
    from medgmae.data.phantom.generator import shape_memory_problem

    def check(value: Any) -> None:
        if value is None:
            return
        if problem := kind_problem(value, "positive_ints"):
            raise ValueError(problem)
        shape = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if generated and len(shape) == 3 and (problem := shape_memory_problem(shape)):
            raise ValueError(problem)

    return check


def _image_size_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not a square 2D image edge: an integer of at least :data:`MIN_IMAGE_SIZE` and a multiple of
    the ``patch_size`` setting (when that one is a positive integer; otherwise its own line names it)."""
    if "patch_size" not in settings:
        raise ValueError("an image_size check needs the patch_size setting beside it")
    problem = setting_problem(value, "positive_int", settings)
    if problem:
        return problem
    size, text = int(str(value).strip()), str(value).strip()
    if size < MIN_IMAGE_SIZE:
        return f"expected at least {MIN_IMAGE_SIZE} (the SSIM uses an {MIN_IMAGE_SIZE}-pixel window), got {text!r}"
    patch = settings["patch_size"][0]
    if setting_problem(patch, "positive_int", settings) is None and size % int(str(patch).strip()):
        return f"expected a multiple of --patch_size {str(patch).strip()}, got {text!r}"
    return None


def _schedule_epochs_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not the length in epochs of a warm-up + cosine learning-rate schedule covering the run: a
    positive integer of at least the ``max_epochs`` setting (when that one is a positive integer; otherwise its own
    line names it). ``monai.optimizers.WarmupCosineSchedule`` goes on along its cosine past its end, so a shorter
    schedule would bring the learning rate back up to its peak in the last epochs."""
    if "max_epochs" not in settings:
        raise ValueError("a schedule_epochs check needs the max_epochs setting beside it")
    problem = setting_problem(value, "positive_int", settings)
    if problem:
        return problem
    epochs, maximum = int(str(value).strip()), settings["max_epochs"][0]
    if setting_problem(maximum, "positive_int", settings) is None and epochs < (last := int(str(maximum).strip())):
        return (f"expected at least --max_epochs {last} (past the schedule's end its cosine brings the learning rate back "
                f"up to its peak), got {str(value).strip()!r}: give --lr_schedule_epochs {last} or more, or leave it out "
                "(it follows --max_epochs)")  # fmt: skip
    return None


def _warmup_epochs_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not the warm-up of a warm-up + cosine schedule: a non-negative integer below the
    ``lr_schedule_epochs`` setting (when that one is usable; otherwise its own line names it). A warm-up as long as
    the schedule only ramps the learning rate up: it never reaches its peak before the run ends, nor decays."""
    if "lr_schedule_epochs" not in settings:
        raise ValueError("a warmup_epochs check needs the lr_schedule_epochs setting beside it")
    if problem := setting_problem(value, "nonneg_int", settings):
        return problem
    warmup, schedule = int(str(value).strip()), settings["lr_schedule_epochs"]
    if setting_problem(*schedule, settings) is None and warmup > 0 and warmup >= (epochs := int(str(schedule[0]).strip())):
        return (f"expected fewer than the schedule's {epochs} epochs (--lr_schedule_epochs, which follows --max_epochs "
                f"unless given), got {str(value).strip()!r}: the learning rate would only ramp up, never reach its peak "
                "nor decay")  # fmt: skip
    return None


def _hu_window_max_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not the upper end of an HU window: a finite number above the ``a_min`` setting (when that
    one is a finite number; otherwise its own line names it, not this one)."""
    if "a_min" not in settings:
        raise ValueError("a hu_window_max check needs the a_min setting beside it")
    problem = setting_problem(value, "finite_float", settings)
    if problem:
        return problem
    lower = settings["a_min"][0]
    if setting_problem(lower, "finite_float", settings) is None and float(str(value)) <= float(str(lower)):
        return f"expected a number above --a_min {str(lower).strip()} (the HU window's lower end), got {str(value).strip()!r}"
    return None


def _positive_ints(value: Any) -> list[int] | None:
    """``value`` (an integer, its text, or a list or tuple of them) as a list of positive integers, ``None`` when
    it is not one."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(setting_problem(v, "positive_int", {}) for v in values):
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
