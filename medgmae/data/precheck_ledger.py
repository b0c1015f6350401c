"""The pre-check's ledger: the files that passed it (path, size, modification time), one record per set of check
settings, in ``precheck.json`` beside the disk cache (:mod:`medgmae.data.precheck` reads and rewrites it), and the
claim under which one process at a time checks files into it (jobs started together on one cache: the others wait
for its new ledger and check only what it did not, :func:`ledger_claim`)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from medgmae.data.fingerprint import file_fingerprint

__all__ = ["LEDGER_FILE", "OTHER_RECORDS", "fingerprint", "ledger_claim", "ledger_records", "load_ledger",
           "other_records", "still_true", "well_formed"]  # fmt: skip

#: Name of the record of checked files (inside the cache folder).
LEDGER_FILE = "precheck.json"


def fingerprint(item: dict, keys: Sequence[str]) -> list:
    """``[path, size, mtime_ns]`` of each file (or folder) of ``item`` (:func:`~medgmae.data.fingerprint.
    file_fingerprint`; ``None`` for a missing one)."""
    return [[str(Path(item[key])), *(file_fingerprint(item[key]) or (None, None))] for key in keys if key in item]


def still_true(fingerprint: list) -> bool:
    """Whether every file of a ledger entry (:func:`fingerprint`) is still there with its recorded size and time:
    an entry of a file since changed or removed is not kept (the ledger would grow with every edit)."""
    return all([*(file_fingerprint(path) or (None, None))] == [size, mtime] for path, size, mtime in fingerprint)


def ledger_records(path: Path | None) -> list[dict]:
    """The ledger's records, one per set of check settings (``{"settings": ..., "passed": [...]}``): a fine-tuning
    run (labels checked) and a pre-training run (images only) sharing one cache folder each keep theirs. A ledger
    of the earlier one-record form is that one record; an unreadable one, or one of another shape, is none, and
    entries not of the form :func:`fingerprint` writes are left out."""
    if path is None or not path.is_file():
        return []
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    records = (ledger.get("records", [ledger]) if isinstance(ledger, dict) else None) or []
    records = records if isinstance(records, list) else []
    return [{"settings": r["settings"], "passed": [fp for fp in r["passed"] if well_formed(fp)]} for r in records
            if isinstance(r, dict) and isinstance(r.get("settings"), dict) and isinstance(r.get("passed"), list)]  # fmt: skip


def well_formed(fingerprint: Any) -> bool:
    """Whether a ledger entry is a list of ``[path, size, mtime_ns]`` as :func:`fingerprint` writes them."""
    return isinstance(fingerprint, list) and all(
        isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) for f in fingerprint
    )


def load_ledger(path: Path | None, settings: dict) -> set:
    """The fingerprints that passed the check under ``settings``."""
    record = next((r for r in ledger_records(path) if r["settings"] == settings), {})
    return {json.dumps(f) for f in record.get("passed", [])}


#: Records of other check settings a ledger keeps besides the current run's (the most recently written ones).
OTHER_RECORDS = 4


def other_records(path: Path, settings: dict) -> list[dict]:
    """The records a rewrite keeps besides ``settings``' own: those of other settings checked by this version
    (the same ``checks`` and grid tolerance; an older version's never match again) holding any pass, at most
    :data:`OTHER_RECORDS`, as they are (their entries of files since changed never match, so they are not stat'ed
    again here: on a network file system that is seconds per thousand files)."""
    same_version = {k: settings[k] for k in ("checks", "grid_tolerance")}
    kept = [r for r in ledger_records(path) if r["settings"] != settings and r["passed"]
            and all(r["settings"].get(k) == v for k, v in same_version.items())]  # fmt: skip
    return kept[-OTHER_RECORDS:]


@contextmanager
def ledger_claim(ledger: Path | None) -> Iterator[None]:
    """Check files into ``ledger`` under its claim (:func:`medgmae.data.cache_claims.claimed`): while another process
    checks files into it, wait for its new ledger (or its end), so that the check then reads only the files that
    process did not pass. A folder made for the claim (a first run's cache) is removed again if the check leaves it
    empty (a data error writes no ledger there). Nothing is claimed without a ledger (``None``) or where the folder
    cannot be made."""
    from medgmae.data.cache_claims import claimed

    if ledger is None:
        yield
        return
    made = not ledger.parent.exists()
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # no claim can be made: checked unclaimed
        made = False
    try:
        unusable = ledger.stat()  # the ledger now: only a rewrite of it counts as the other check's
    except OSError:
        unusable = None
    try:
        with claimed(ledger, unusable, work="pre-check"):
            yield
    finally:
        if made:
            try:
                ledger.parent.rmdir()  # only when empty (a data error, a ledger written later, or none at all)
            except OSError:
                pass
