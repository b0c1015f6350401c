"""Ctrl-C while a console command still imports torch and MONAI: one line on stderr and exit status 130, as Ctrl-C
during its work gives, not Python's traceback (``medgmae.launch``)."""

from __future__ import annotations

import importlib
import os
import runpy
import signal
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from medgmae import launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def _interrupted_import(name: str, *args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_interrupt_while_importing_each_script(script, monkeypatch, capsys):
    """Every console script goes through the launcher: Ctrl-C in its module's import is one line and 130."""
    module, _, function = SCRIPTS[script].partition(":")
    assert module == "medgmae.launch"
    monkeypatch.setattr(launch, "import_module", _interrupted_import)
    ends = _recorded_ends(monkeypatch)
    assert getattr(launch, function)() == 130 and ends == [130]
    assert capsys.readouterr().err == f"{script}: interrupted while starting: nothing was written\n"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_runs_its_own_command(script, monkeypatch):
    """The module a script imports is the command of that name (its parser's ``prog``), and its ``main`` runs."""
    asked = []

    def recording_import(name: str):
        asked.append(name)
        return types.SimpleNamespace(main=lambda: 7)

    monkeypatch.setattr(launch, "import_module", recording_import)
    ends = _recorded_ends(monkeypatch)
    assert getattr(launch, SCRIPTS[script].partition(":")[2])() == 7 and ends == [7]
    assert importlib.import_module(asked[0]).build_parser().prog == script


def test_interrupt_a_command_does_not_handle(monkeypatch, capsys):
    """Ctrl-C out of a ``main`` that does not catch it itself: one line, 130; other exits pass through."""

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "import_module", lambda name: types.SimpleNamespace(main=interrupted))
    assert launch.run("medgmae-2d", "medgmae.twod.cli") == 130
    assert capsys.readouterr().err == "medgmae-2d: interrupted\n"

    def refused():
        sys.exit(2)

    monkeypatch.setattr(launch, "import_module", lambda name: types.SimpleNamespace(main=refused))
    with pytest.raises(SystemExit) as stopped:
        launch.run("medgmae-2d", "medgmae.twod.cli")
    assert stopped.value.code == 2


def test_medgmae_2d_imports_its_work_through_the_launcher(tmp_path, monkeypatch, capsys):
    """``medgmae-2d`` parses its flags, then imports its subcommands' work (torch, the model) through
    :func:`medgmae.launch.run`: Ctrl-C while that loads is one line and 130, nothing written; without it, the work's
    ``main`` gets the parsed flags."""
    from medgmae.twod.cli import main

    argv = ["edges", "--checkpoint", str(tmp_path / "m.pt"), "--image", str(tmp_path / "i.png"),
            "--out", str(tmp_path / "o")]
    monkeypatch.setattr(launch, "import_module", _interrupted_import)
    assert main(argv) == 130
    assert capsys.readouterr().err == "medgmae-2d: interrupted while starting: nothing was written\n"
    assert not (tmp_path / "o").exists()
    asked = []
    work = types.SimpleNamespace(main=lambda args: (args.command, args.granularities))
    monkeypatch.setattr(launch, "import_module", lambda name: asked.append(name) or work)
    assert main([*argv, "--granularities", "4"]) == ("edges", [4])
    assert asked == ["medgmae.twod.zero_shot_command"]


@pytest.mark.parametrize("package, script", [("recon", "medgmae-recon"), ("medgmae.data.phantom", "medgmae-phantom")])
def test_python_dash_m_goes_through_the_launcher(package, script, monkeypatch, capsys):
    """``python -m recon`` and ``python -m medgmae.data.phantom`` handle Ctrl-C in their imports as the scripts do."""
    importlib.import_module(package)  # the package itself, as ``python -m`` imports it before ``__main__``
    monkeypatch.setattr(launch, "import_module", _interrupted_import)
    _recorded_ends(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module(package, run_name="__main__")
    assert stopped.value.code == 130
    assert capsys.readouterr().err == f"{script}: interrupted while starting: nothing was written\n"


def test_importing_recon_loads_no_torch():
    """``python -m recon`` imports the package before its ``__main__``: that import is light, so Ctrl-C while torch
    loads reaches the launcher."""
    code = "import sys, recon; print('torch' in sys.modules, recon.CTGeometry.__module__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.split() == ["False", "recon.geometry"]


def _recorded_ends(monkeypatch) -> list:
    """Record :func:`medgmae.launch.ended`'s statuses instead of ending the test's own process by a signal."""
    ends = []
    monkeypatch.setattr(launch, "ended", lambda status: ends.append(status) or status)
    return ends


@pytest.mark.parametrize("signum, said", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_a_signal_while_importing_a_command(tmp_path, signum, said):
    """A real SIGINT or SIGTERM while the command's module imports (a module that says so, then waits): stderr holds
    the one line, and the process ends by that signal (status 130 / 143 in a shell), as Python does for an uncaught
    Ctrl-C, so that a shell loop over runs stops. SIGTERM (a batch time limit in the first seconds) ended it silently."""
    (tmp_path / "slow_command.py").write_text(
        "import time\nprint('importing', flush=True)\ntime.sleep(60)\n\ndef main():\n    return 0\n", encoding="utf-8")
    code = "import sys; from medgmae.launch import ended, run; sys.exit(ended(run('medgmae-slow', 'slow_command')))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # as a shell starts a command: SIGINT at its default (a pytest-xdist worker ignores it, and a child inherits that)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "importing\n"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signum
    assert err == f"medgmae-slow: {said} while starting: nothing was written\n"


@pytest.mark.parametrize("own_handler", [False, True])
def test_sigterm_during_a_command_without_its_own_handling(tmp_path, own_handler):
    """SIGTERM while a command that installs no SIGTERM handler works (``medgmae-2d``, a batch time limit): one line
    on stderr and the process ends by the signal; it ended silently. A command with its own handler keeps it."""
    own = "import signal\nsignal.signal(signal.SIGTERM, lambda s, f: print('own handler', flush=True))\n"
    (tmp_path / "working_command.py").write_text(
        "import time\n\ndef main():\n" + "".join(f"    {line}\n" for line in own.splitlines() if own_handler)
        + "    print('working', flush=True)\n    time.sleep(3 if {0} else 60)\n    return 0\n".format(own_handler),
        encoding="utf-8")  # fmt: skip
    code = "import sys; from medgmae.launch import ended, run; sys.exit(ended(run('medgmae-busy', 'working_command')))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline() == "working\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    if own_handler:
        assert (proc.returncode, out, err) == (0, "own handler\n", "")
    else:
        assert (proc.returncode, err) == (-signal.SIGTERM, "medgmae-busy: terminated (SIGTERM)\n")


def test_sigterm_while_medgmae_datalist_works_is_not_taken_for_ctrl_c(tmp_path):
    """``medgmae-datalist`` answers Ctrl-C itself (130); a SIGTERM while it lists the folder (here sent from inside
    its work) ends in the launcher's SIGTERM line and by SIGTERM, not as a Ctrl-C."""
    (tmp_path / "cases").mkdir()
    code = ("import os, signal, sys, time\nimport medgmae.data.decathlon as d\nfrom medgmae import launch\n"
            "def listing(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n"
            f"d.decathlon_datalist = listing\nsys.argv = ['medgmae-datalist', {str(tmp_path / 'cases')!r}]\n"
            "sys.exit(launch.datalist())\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "medgmae-datalist: terminated (SIGTERM)"
    assert not (tmp_path / "cases" / "dataset.json").exists()


@pytest.mark.parametrize("status, signum", [(130, signal.SIGINT), (143, signal.SIGTERM), (0, None), (2, None)])
def test_a_command_stopped_by_a_signal_ends_by_it(tmp_path, status, signum):
    """A command that handled Ctrl-C or SIGTERM itself (said what it left, returned 130 / 143) ends by that signal;
    its output is written first; any other status is the exit status."""
    (tmp_path / "stopped_command.py").write_text(
        f"def main():\n    print('left: state_0010.pt')\n    return {status}\n", encoding="utf-8")
    code = "import sys; from medgmae.launch import ended, run; sys.exit(ended(run('medgmae-x', 'stopped_command')))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == (-signum if signum else status)
    assert proc.stdout == "left: state_0010.pt\n"


def test_ending_by_the_signal_runs_the_exit_handlers_first_and_only_on_posix(tmp_path, monkeypatch):
    """The process ends by the signal after Python's own shutdown work (an exit handler a command registered, as
    logging and torch do, still runs); on Windows ``os.kill`` would end it with the signal's number (2, bad input),
    so the status is returned."""
    code = ("import atexit, sys; from medgmae.launch import ended; "
            "atexit.register(lambda: print('handler ran', flush=True)); sys.exit(ended(130))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == -signal.SIGINT and proc.stdout == "handler ran\n"
    monkeypatch.setattr(launch.os, "name", "nt")
    monkeypatch.setattr(launch, "_END_BY", [])
    assert launch.ended(130) == 130 and launch._END_BY == []
