"""``bench/render_ab.py`` reads ``bench/render.py``'s table by its column names: on a GPU the table has more columns
(peak memory, ratios to the floor) and a parser counting 12 cells read no row, printing an empty A/B table."""

from __future__ import annotations

import pytest

from bench_helpers import load_bench

HEAD = "| case | B | K | shape | sigma | box pairs | in-cutoff pairs | backend | fwd ms | fwd+bwd ms | fwd ns/pair | fwd+bwd ns/pair |"
ROW = "| dense | 8 | 2048 | 96^3 | 1-2 | 10 | 8 | triton | 1.25 | 3.5 | 0.1 | 0.2 |"


def test_the_cpu_and_the_gpu_tables_are_both_read():
    ab = load_bench("render_ab")
    cpu = "\n".join([HEAD, "|" + "---|" * 12, ROW])
    gpu = "\n".join([HEAD + " peak MiB | fwd / floor | fwd+bwd / floor |", "|" + "---|" * 15, ROW + " 512 | 1.9 | 2.2 |"])
    for table in (cpu, gpu):
        assert ab._rows(table) == {("dense", "2048", "triton"): (1.25, 3.5)}
    with pytest.raises(ValueError, match="no rows read"):
        ab._rows("| name | value |\n|---|---|\n| dense | 1 |")
