"""``medgmae-runs-table`` given one run folder twice (again, through a link, or spelt another way): one row, and
the summary counts the run once."""

from __future__ import annotations

from medgmae.finetune.runs_table import main, runs_table

from finetune_helpers import fake_run


def test_a_run_given_again_or_through_a_link_is_listed_once(tmp_path, capsys):
    """The run ``a``, a link to it and ``a/.`` make one row and one run in the summary (with a line for each repeat);
    another run with the same values stays its own row."""
    a = fake_run(tmp_path / "a", 0.1, 10, 0, training_seed=0, epochs=4, best=(0.5, 3))
    b = fake_run(tmp_path / "b", 0.1, 10, 1, training_seed=1, epochs=4, best=(0.5, 3))
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    assert main([str(a), str(tmp_path / "link"), f"{a}/.", str(b), "--summary", "best_dice"]) == 0
    said = capsys.readouterr()
    rows = [line for line in said.out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert [line.split(" | ")[0] for line in rows] == [f"| {a}", f"| {b}"], said.out
    summary = said.out.split("best_dice by setting", 1)[1]
    assert "| scratch | 0.1000 | 2 | 2 |" in summary, summary  # two runs, not four
    _, rows, messages = runs_table([a, a, b])  # one object given twice (the Python API)
    assert [row["run"] for row in rows] == [str(a), str(b)] and len(messages) == 1, messages
    assert said.err.splitlines() == [
        f"medgmae-runs-table: {tmp_path / 'link'} is the run folder {a} (given twice, or a link to it): listed once",
        f"medgmae-runs-table: {a}/. is the run folder {a} (given twice, or a link to it): listed once",
    ]
