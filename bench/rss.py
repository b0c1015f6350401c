"""Resident memory of this process, and the arguments of the bench scripts that measure it in child processes.

A script measuring the peak memory of one way of doing something runs each round in a fresh process (so that
``ru_maxrss`` is that round's own) and takes the difference from the resident memory just before the measured call.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

from medgmae.cli_types import positive_int


def rss_mib() -> float:
    """This process's resident memory now (``VmRSS``) in MiB; NaN where ``/proc`` does not say."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_round_arguments(p: argparse.ArgumentParser, repeats: int) -> None:
    """``--repeats``, ``--json`` and the hidden ``--one-run WAY FOLDER`` of a child process's round."""
    p.add_argument("--repeats", type=positive_int, default=repeats, help=f"rounds of the two (default: {repeats})")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--one-run", nargs=2, metavar=("WAY", "FOLDER"), help=argparse.SUPPRESS)
