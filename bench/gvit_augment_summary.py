"""Summarise ``bench/gvit_augment_study.sh``: validation accuracy per model with and without augmentation.

Reads ``OUT_DIR/<arm>_<schedule>_s<seed>.json`` (``bench/gvit_compare.py``'s ``results.json``) and prints, per
schedule, a Markdown table of each model's accuracy per seed and arm, the means, and the paired difference
(augment - plain) with how many seeds it was positive for.

Example::

    python bench/gvit_augment_summary.py runs/gvit_augment
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

NAME = re.compile(r"^(plain|augment)_(short|long)_s(\d+)\.json$")


def load(folder: Path) -> dict:
    """``{schedule: {seed: {arm: {model: accuracy}}}}`` from the study's files."""
    runs: dict = {}
    for path in sorted(folder.glob("*.json")):
        if m := NAME.match(path.name):
            arm, sched, seed = m.group(1), m.group(2), int(m.group(3))
            models = json.loads(path.read_text())["models"]
            runs.setdefault(sched, {}).setdefault(seed, {})[arm] = {k: v["accuracy"] for k, v in models.items()}
    return runs


def table(seeds: dict) -> list[str]:
    """The Markdown rows of one schedule: only seeds with both arms."""
    pairs = {s: arms for s, arms in sorted(seeds.items()) if {"plain", "augment"} <= arms.keys()}
    if not pairs:
        return ["(no seed with both arms)"]
    models = list(next(iter(pairs.values()))["plain"])
    head = " | ".join(f"s{s} plain / aug" for s in pairs)
    rows = [f"| model | {head} | mean plain | mean aug | aug - plain (mean; > 0 in) |",
            "|---|" + "---|" * (len(pairs) + 3)]
    for model in models:
        plain = [pairs[s]["plain"][model] for s in pairs]
        aug = [pairs[s]["augment"][model] for s in pairs]
        diff = [a - p for a, p in zip(aug, plain)]
        cells = " | ".join(f"{p:.3f} / {a:.3f}" for p, a in zip(plain, aug))
        wins = sum(d > 0 for d in diff)
        rows.append(f"| {model} | {cells} | {statistics.mean(plain):.3f} | {statistics.mean(aug):.3f} | "
                    f"{statistics.mean(diff):+.3f} ({wins} of {len(diff)}) |")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="the study's OUT_DIR")
    args = ap.parse_args(argv)
    runs = load(args.folder)
    if not runs:
        ap.error(f"{args.folder}: no <arm>_<schedule>_s<seed>.json files of bench/gvit_augment_study.sh")
    for sched in ("short", "long"):
        if sched in runs:
            print(f"\n{sched} schedule\n")
            print("\n".join(table(runs[sched])))


if __name__ == "__main__":
    main()
