"""Reading a refused resume's flags in tests: the settings a record holds, and the ``(here --flag value ...)`` words
a refusal gives, as a POSIX shell hands them to a command."""

from __future__ import annotations

import re
import subprocess


def leaves(settings: dict, prefix: str = "") -> set[str]:
    """The dotted names of a nested record's settings (``"optimiser.learning_rate"``)."""
    names = set()
    for key, value in settings.items():
        names |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return names


def given_words(message: str) -> dict[str, str]:
    """What a refusal's ``(here ...)`` words give, as a POSIX shell (``sh``) hands them to a command:
    ``{flag: value}``, every part of the message together."""
    parts = re.findall(r'\(here ((?:[^()"]|"[^"]*")*)\)', message)
    said = subprocess.run(["sh", "-c", "printf '%s\\0' " + " ".join(parts)], capture_output=True, text=True, check=True)
    words = said.stdout.split("\0")[:-1]
    assert words and len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2]), words
    return dict(zip((w[2:] for w in words[::2]), words[1::2]))
