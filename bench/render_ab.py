"""Renderer A/B across revisions: ``bench/render.py`` of this tree against that of an earlier commit, in turns.

A noisy machine drifts by 2x within minutes, so one table per revision taken minutes apart compares little. This
script runs the same ``bench/render.py`` command in this tree and in a temporary ``git worktree`` of ``--base``,
alternating ``--rounds`` times (this, base, this, base, ...), and prints per case the median forward and
forward+backward times of each and the median of the per-round ratios base / this.

Usage::

    python bench/render_ab.py --base c9f33bb --rounds 5 -- --quick --cases sparse --repeats 5 --budget 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows(table: str) -> dict:
    """``{(case, K, path): (fwd ms, fwd+bwd ms)}`` from a ``bench/render.py`` markdown table, read by its header's
    column names (on a GPU it has more columns than on the CPU: peak memory, the ratios to the floor)."""
    out, columns = {}, None
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "case":
            columns = {name: i for i, name in enumerate(cells)}
        elif columns and len(cells) == len(columns) and cells[0] in ("dense", "sparse"):
            out[(cells[0], cells[columns["K"]], cells[columns["backend"]])] = (
                float(cells[columns["fwd ms"]]), float(cells[columns["fwd+bwd ms"]]))  # fmt: skip
    if table.strip() and not out:
        raise ValueError(f"no rows read from bench/render.py's table (its columns changed?):\n{table[:500]}")
    return out


def _run(tree: Path, bench_args: list) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.md"
        env = dict(os.environ, PYTHONPATH=str(tree))
        subprocess.run([sys.executable, str(tree / "bench" / "render.py"), *bench_args, "--out", str(out)],
                       cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
        return _rows(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the arguments of bench/render.py")
    args = p.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        try:
            runs = {"this": [], "base": []}
            for r in range(args.rounds):
                for name, tree in (("this", ROOT), ("base", base_tree)):
                    runs[name].append(_run(tree, bench_args))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    print(f"base {args.base}, {args.rounds} rounds, bench/render.py {' '.join(bench_args)}\n")
    print("| case | K | path | base fwd ms | this fwd ms | base fwd+bwd ms | this fwd+bwd ms | fwd+bwd base/this |")
    print("|---|---|---|---|---|---|---|---|")
    for key in runs["this"][0]:
        if key not in runs["base"][0]:
            continue
        this = [r[key] for r in runs["this"]]
        base = [r[key] for r in runs["base"]]
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        ratio = statistics.median(b[1] / t[1] for b, t in zip(base, this))
        print(f"| {key[0]} | {key[1]} | {key[2]} | {med(base, 0):.1f} | {med(this, 0):.1f} | {med(base, 1):.1f} "
              f"| {med(this, 1):.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
