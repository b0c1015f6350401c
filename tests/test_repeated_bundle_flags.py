"""A bundle flag given twice (``--max_epochs 1 --max_epochs 2``) is refused with the other settings' problems:
MONAI's runner took the last value without a word."""

from __future__ import annotations

from bundle_helpers import run_bundle

from medgmae.bundle_command_line import bundle_command, repeated_flag_lines

RUNNER = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"


def test_each_repeated_flag_is_one_line_with_its_values(tmp_path):
    config = tmp_path / "train.json"
    config.write_text('{"max_epochs": 2, "batch_size": 1, "seed": 0}')
    argv = [RUNNER, "run", "training", "--config_file", str(config), "--max_epochs", "1", "--batch_size", "2",
            "--max-epochs=3", "--seed", "1", "--seed", "2", "--seed", "3"]  # fmt: skip
    command = bundle_command(argv)
    assert repeated_flag_lines(command) == ["--max_epochs given twice ('1', '3'): give it once",
                                            "--seed given three times ('1', '2', '3'): give it once"]  # fmt: skip
    assert command.flags["max_epochs"] == "3"  # the value MONAI's runner takes, as before
    argv = [RUNNER, "run", "training", "--config_file", str(config), "--max_epochs", "1"]
    assert repeated_flag_lines(bundle_command(argv)) == []
    assert repeated_flag_lines(None) == []  # not the bundle runner: no opinion


def test_a_bundle_refuses_a_repeated_flag_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "medgmae_pretrain/configs/train.json", "--output_dir", str(out), "--max_epochs", "1",
                      "--max_epochs", "2", "--batch_size", "-1")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--max_epochs given twice ('1', '2'): give it once" in log
    assert "--batch_size: expected a positive integer" in log  # named with the other settings' problems
    assert not out.exists()
