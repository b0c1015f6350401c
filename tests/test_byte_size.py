"""The toolkit's one way of writing a size in bytes (:func:`medgmae.words.byte_size`): decimal units for files and
disk room, binary for memory, three significant digits; no message formats a size itself."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medgmae.words import byte_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("count, decimal, binary", [
    (0, "0 bytes", "0 bytes"),
    (1, "1 byte", "1 byte"),
    (999, "999 bytes", "999 bytes"),
    (1000, "1.00 kB", "0.98 KiB"),  # 1000 / 1024 = 0.977
    (1536, "1.54 kB", "1.50 KiB"),
    (23_136, "23.1 kB", "22.6 KiB"),  # 23136 / 1024 = 22.59
    (999_949, "1.00 MB", "977 KiB"),  # 999.949 kB rounds to 1000: the next unit; 999949 / 1024 = 976.5
    (1_966_112, "1.97 MB", "1.88 MiB"),  # 1966112 / 2**20 = 1.875
    (102_400_000, "102 MB", "97.7 MiB"),  # 102400000 / 2**20 = 97.66
    (3 << 29, "1.61 GB", "1.50 GiB"),  # 1,610,612,736 bytes
    (16 << 30, "17.2 GB", "16.0 GiB"),
    (48 * 10**15, "48.0 PB", "42.6 PiB"),  # 48e15 / 2**50 = 42.63
    (12 * 10**17, "1,200 PB", "1,066 PiB"),  # past the largest unit: 1.2e18 / 2**50 = 1065.8
])  # fmt: skip
def test_sizes_read_as_written_by_hand(count, decimal, binary):
    assert byte_size(count) == decimal and byte_size(count, binary=True) == binary


def test_numpy_counts_and_estimates_are_taken():
    assert byte_size(np.int64(2_500_000)) == "2.50 MB" and byte_size(2.5e6) == "2.50 MB"
    assert byte_size(np.float32(1023.7)) == "1.02 kB"
    # an estimate's half byte rounds up, as written by hand (round() gave the even: "0 bytes", "2 bytes")
    assert [byte_size(x) for x in (0.5, 2.5, 1.49)] == ["1 byte", "3 bytes", "1 byte"]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "12", None])
def test_what_is_no_byte_count_is_refused(bad):
    with pytest.raises(ValueError, match="a byte count must be a finite number of 0 or more"):
        byte_size(bad)


def test_no_message_formats_a_size_itself():
    """A number followed by a unit in an f-string (``{n / 1e6:.1f} MB``) in the packages is a formatter of its own:
    there were four, each with its own units and digits."""
    pattern = re.compile(r"\}\s?(kB|MB|GB|TB|PB|KiB|MiB|GiB|TiB|PiB)\b")
    found = [f"{p.relative_to(ROOT)}:{i}" for package in ("medgmae", "recon") for p in sorted((ROOT / package).rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert found == []
