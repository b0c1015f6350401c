"""The bundle flags and saved values that a refused resume names (``--num_gaussians 8``), quoted for a POSIX shell.

A record (:class:`~medgmae.engine.records.SettingsRecord`, :class:`~medgmae.mae_training.ModelConfigRecord`) maps
each setting it compares to the bundle flag that gives it (:func:`check_flags`); a refusal names the words that give
the saved values (:func:`resume_flags`) and, so that they do not read as enough, the differing settings no flag
gives (:func:`unflagged`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

__all__ = ["Flag", "check_flags", "resume_flags", "unflagged", "flag_value"]

_ABSENT = object()

#: A checked flag (:func:`check_flags`): a flag, ``(flag, "side")``, ``(flag, "edge")`` or
#: ``((flag, ...), "items")``.
Flag = str | tuple[str, str] | tuple[tuple[str, ...], str]

#: The forms of a flag that takes sizes: ``"side"`` one number or a list, ``"edge"`` one number only.
_SIZE_FORMS = ("side", "edge")


def _dotted(settings: Mapping, name: str) -> Any:
    """The value of ``name`` (``"model.classifier_freqs"``) in nested ``settings``, :data:`_ABSENT` if none."""
    value: Any = settings
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


#: Characters a flag's value may hold unquoted in a POSIX shell (others: the value is put in double quotes).
_SHELL_SAFE = re.compile(r"[\w@%+=:,./-]+")


def flag_value(value: Any) -> str:
    """A setting's value as a bundle flag takes it on a shell command line: ``true``, ``6``, ``null``, text as it
    is; in double quotes where the shell would split or expand it (``"[-1000.0, 1000.0]"``, ``""``, a path with a
    space)."""
    text = value if isinstance(value, str) else json.dumps(value)
    if _SHELL_SAFE.fullmatch(text):
        return text
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'


def check_flags(flags: Mapping[str, Any] | None) -> dict[str, Flag]:
    """A record's ``flags`` (:func:`resume_flags`), checked: ``{setting: flag}``, ``{setting: [flag, "side"]}``,
    ``{setting: [flag, "edge"]}`` or ``{setting: [[flag, flag, ...], "items"]}``; a component's flag as the command
    line writes it (``network_def#min_scale``, which a bundle config's parser hands over as
    ``network_def::min_scale``).

    Raises:
        ValueError: not a mapping, or a value of another form, naming it.
    """
    if flags is not None and not isinstance(flags, Mapping):
        raise ValueError(f"flags must map each setting to its bundle flag, got {flags!r}")
    checked: dict[str, Flag] = {}
    for name, flag in (flags or {}).items():  # MONAI's config parser reads "network_def#x" as "network_def::x"
        form = flag[1] if isinstance(flag, Sequence) and not isinstance(flag, str) and len(flag) == 2 else None
        if isinstance(flag, str):
            checked[str(name)] = flag.replace("::", "#")
        elif form in _SIZE_FORMS and isinstance(flag[0], str):
            checked[str(name)] = (flag[0].replace("::", "#"), form)
        elif form == "items" and _flag_names(flag[0]):
            checked[str(name)] = (tuple(f.replace("::", "#") for f in flag[0]), "items")
        else:
            raise ValueError(f"flags[{name!r}] must be a flag name, [flag, 'side'], [flag, 'edge'] or [[flag, ...], "
                             f"'items'], got {flag!r}")  # fmt: skip
    return checked


def _flag_names(names: Any) -> bool:
    """Whether ``names`` is a non-empty list of flag names (an ``"items"`` form's)."""
    return isinstance(names, Sequence) and not isinstance(names, str) and bool(names) and all(isinstance(n, str) for n in names)


def _named(diff: Sequence[str]) -> list[str]:
    """The settings a refusal's lines name (``"name: saved X, now Y"``), in order."""
    return [line.partition(": ")[0] for line in diff]


def resume_flags(flags: Mapping[str, Any], diff: Sequence[str], saved: Mapping) -> list[str]:
    """The ``--flag value`` words that give the saved values of the settings a refusal names.

    Args:
        flags: ``{setting: flag}`` (:func:`check_flags`), the setting dotted (``"optimiser.learning_rate"``); a flag
            that takes one size for every axis or a list of them is ``[flag, "side"]``: the saved sizes, all equal,
            as that one number (``[32, 32, 32]``: ``--patch_size 32``), else as the quoted list
            (``--patch_size "[8, 8, 16]"``); one that takes one number only is ``[flag, "edge"]`` (sizes that differ:
            no words, :func:`unflagged` names them); a setting whose values each have a flag of their own is
            ``[[flag, flag], "items"]``: the saved ``[-175.0, 250.0]`` as ``--a_min -175.0 --a_max 250.0``.
        diff: the refusal's lines (:func:`~medgmae.settings_diff.settings_differences`, ``"name: saved X, now Y"``).
        saved: the saved settings (nested, as the names are dotted).

    Returns:
        ``["--learning_rate 0.0005", '--window "[-350.0, 400.0]"', ...]`` in the order of ``flags``, each once; a
        setting the saved record lacks, sizes its flag cannot give, or values not one for each flag, left out.
    """
    words: list[str] = []
    named = set(_named(diff))
    for name, flag in check_flags(flags).items():
        if name in named:
            words += [w for w in _flag_words(flag, _dotted(saved, name)) or [] if w not in words]
    return words


def unflagged(flags: Mapping[str, Any], diff: Sequence[str], saved: Mapping) -> dict[str, str]:
    """The settings a refusal names whose saved value no flag gives (:func:`resume_flags` gives words for the
    others): those with no flag, and those whose flag cannot say the value (an ``"edge"`` flag and sizes that
    differ, sizes that are not whole numbers, an ``"items"`` flag and another number of values). A setting the
    saved record lacks is left out (no value to give).

    Returns:
        ``{setting: why}``, in the order of ``diff``: ``why`` is ``""`` for a setting with no flag, else what its
        flag takes (``"--image_size takes one size for every side"``, ``"--patch_size takes whole-number sizes, one
        or one a side"``, ``"--a_min / --a_max take one value each"``).
    """
    checked, out = check_flags(flags), {}
    for name in _named(diff):
        value = _dotted(saved, name)
        if value is _ABSENT or name in out:
            continue
        if name not in checked:
            out[name] = ""
        elif _flag_words(checked[name], value) is None:
            out[name] = _takes(checked[name])
    return out


def _takes(flag: tuple[Any, str]) -> str:
    """What a sized or ``"items"`` flag (:func:`check_flags`) takes, said where it cannot give a saved value."""
    names, form = flag
    if form == "items":
        return f"{' / '.join('--' + n for n in names)} take one value each"
    if form == "edge":
        return f"--{names} takes one size for every side"
    return f"--{names} takes whole-number sizes, one or one a side"


def _flag_words(flag: Flag, value: Any) -> list[str] | None:
    """The ``--flag value`` words of one checked flag (:func:`check_flags`) giving a saved ``value``: none for
    :data:`_ABSENT`, ``None`` for a value its form cannot give."""
    if value is _ABSENT:
        return []
    if isinstance(flag, str):
        return [f"--{flag} {flag_value(value)}"]
    names, form = flag
    if form in _SIZE_FORMS:
        sides = value if isinstance(value, list) else [value]
        if not sides or not all(isinstance(v, int) and not isinstance(v, bool) for v in sides):
            return None
        if all(v == sides[0] for v in sides):
            return [f"--{names} {sides[0]}"]
        return [f"--{names} {flag_value(sides)}"] if form == "side" else None
    if not isinstance(value, list) or len(value) != len(names):  # "items": one value for each flag
        return None
    return [f"--{n} {flag_value(v)}" for n, v in zip(names, value)]
