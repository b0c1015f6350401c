"""``reconstruct --resume``: a saved state resumes only the run of its scan and settings (exit 2 otherwise, the
message naming the state file and every differing field, the output folder untouched)."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from recon_cli_helpers import with_defaults

from medgmae.data.phantom import generate_phantom
from recon.cli import main
from recon.state import NewerStateError, check_state

from model_helpers import tiny_model_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _simulate(d: Path, shape, seed: int) -> Path:
    ph = generate_phantom(seed, shape=shape, spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(d / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(d / "ct.nii.gz"), "--geometry", "parallel", "--views", "8", "--out", str(d / "scan"), "--device", "cpu"]) == 0
    return d / "scan"


def _args(scan: Path, out: Path, *extra, proj: Path | None = None) -> list[str]:
    return ["reconstruct", *with_defaults(["--projections", str(proj or scan / "projections.npy"), "--geometry",
            str(scan / "geometry.json"), "--out", str(out), "--no-progress", "--device", "cpu", "--num-gaussians", "100",
            "--checkpoint-every", "0"], extra)]  # fmt: skip


def _contents(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.parent.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 4-iteration run of a 16 x 16 x 12 scan, another (8 x 8 x 8) scan, and projections of the first altered."""
    d = tmp_path_factory.mktemp("resume")
    (d / "a").mkdir(), (d / "b").mkdir()
    scan, other = _simulate(d / "a", (16, 16, 12), 1), _simulate(d / "b", (8, 8, 8), 2)
    altered = d / "altered.npy"
    p = np.load(scan / "projections.npy")
    p[0, 0, 0] += 0.01
    np.save(altered, p)
    out = d / "runs" / "rec"
    assert main(_args(scan, out, "--iterations", "4")) == 0
    return scan, other, altered, out


def test_resume_refuses_another_scan_or_other_settings(saved, capsys):
    scan, other, altered, out = saved
    state = out / "recon_state.pt"
    shape_a, shape_b = (list(np.load(s / "projections.npy", mmap_mode="r").shape) for s in (scan, other))
    cases = {
        "another scan": (_args(other, out, "--iterations", "6", "--resume"),
                         [f"projections_shape: saved {shape_a}, now {shape_b}", "projections_sha256", "geometry_sha256"]),
        "altered projections": (_args(scan, out, "--iterations", "6", "--resume", proj=altered), ["projections_sha256"]),
        "--tv": (_args(scan, out, "--iterations", "6", "--resume", "--tv", "0.5"), ["--tv: saved 0.0, now 0.5"]),
        "--init": (_args(scan, out, "--iterations", "6", "--resume", "--init", "random"), ["--init: saved 'fbp', now 'random'"]),
        "--num-gaussians": (_args(scan, out, "--iterations", "6", "--resume", "--num-gaussians", "50"),
                            ["--num-gaussians: saved 100, now 50"]),
        "--preset": (_args(scan, out, "--iterations", "6", "--resume", "--preset", "3dgr-ct"), ["--preset: saved 'toolkit', now '3dgr-ct'"]),
        "--max-gaussians": (_args(scan, out, "--iterations", "6", "--resume", "--max-gaussians", "500"),
                            ["--max-gaussians: saved None, now 500"]),
        "fewer iterations": (_args(scan, out, "--iterations", "2", "--resume"), ["is at iteration 4 but --iterations is 2"]),
    }  # fmt: skip
    before = _contents(out)
    for name, (args, messages) in cases.items():
        capsys.readouterr()
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert f"--resume: {state}" in err and all(m in err for m in messages), (name, err)
        if name == "altered projections":
            assert "geometry_sha256" not in err and "--tv" not in err
        assert _contents(out) == before, name  # nothing written, nothing left behind
    # the same scan and settings resume, to a longer run (a note says the schedules follow the new length)
    assert main(_args(scan, out, "--iterations", "6", "--resume")) == 0
    said = capsys.readouterr()
    assert "the saved run was planned for 4 iterations; the learning-rate and density-control schedules now follow --iterations 6" in said.err
    assert f"resuming from {state} at iteration 4 (rebuilding the --init fbp start it replaces)" in said.out
    assert "initialising the Gaussians" not in said.out
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["iterations"] == 6 and metrics["scan"]["projections_shape"] == shape_a


def test_older_states_without_a_fingerprint_resume_with_a_warning(saved, tmp_path, capsys):
    scan, _, _, out = saved
    old = tmp_path / "old"
    old.mkdir()
    state = torch.load(out / "recon_state.pt", weights_only=True)
    del state["run_info"]
    torch.save(state, old / "recon_state.pt")
    capsys.readouterr()
    assert main(_args(scan, old, "--iterations", "20", "--resume", "--preset", "3dgr-ct")) == 2  # its preset is checked
    assert f"--resume: {old / 'recon_state.pt'} was written with --preset toolkit, not 3dgr-ct" in capsys.readouterr().err
    assert main(_args(scan, old, "--iterations", str(state["iteration"] + 2), "--resume")) == 0
    assert "records no scan fingerprint" in capsys.readouterr().err


def test_a_state_of_a_newer_version_is_refused_and_one_without_a_version_resumes(saved, tmp_path, capsys):
    """A state records its layout version (1); one of a later version (written by a newer release) is refused as
    soon as it is read, naming the file, both versions and the update (exit 2, the folder untouched); one without
    the field (written before it was recorded) resumes."""
    scan, _, _, out = saved
    state = torch.load(out / "recon_state.pt", weights_only=True)
    assert state["version"] == 1
    newer, old = tmp_path / "newer", tmp_path / "old"
    newer.mkdir(), old.mkdir()
    torch.save({**state, "version": 2}, newer / "recon_state.pt")
    torch.save({k: v for k, v in state.items() if k != "version"}, old / "recon_state.pt")
    before = _contents(newer)
    capsys.readouterr()
    assert main(_args(scan, newer, "--iterations", str(state["iteration"] + 2), "--resume")) == 2
    said = capsys.readouterr()
    assert (f"--resume: {newer / 'recon_state.pt'}: written by a newer release of the toolkit (reconstruction state "
            "version 2; this one reads version 1): update the toolkit to resume it; or start a new run") in said.err
    assert "resuming" not in said.out and _contents(newer) == before
    with pytest.raises(NewerStateError, match=r"^the reconstruction state: written by a newer release"):  # no file
        check_state({**state, "version": 2})
    assert main(_args(scan, old, "--iterations", str(state["iteration"] + 2), "--resume")) == 0
    assert f"resuming from {old / 'recon_state.pt'} at iteration {state['iteration']}" in capsys.readouterr().out
    assert torch.load(old / "recon_state.pt", weights_only=True)["version"] == 1  # saved again in this layout


@pytest.mark.parametrize("kind", ["other", "medgmae"])
def test_a_state_of_another_kind_is_refused_before_any_work(saved, tmp_path, capsys, kind):
    """A recon_state.pt that is not a reconstruction's (a pre-trained model.pt copied over it: kind 'medgmae') is
    refused naming it and its kind (exit 2) as soon as it is read: no resume line, no projector, no start built."""
    scan, _, _, _ = saved
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"kind": kind, "iteration": 0, "state_dict": {"w": torch.zeros(2)}}, other / "recon_state.pt")
    capsys.readouterr()
    assert main(_args(scan, other, "--iterations", "6", "--resume")) == 2
    said = capsys.readouterr()
    assert (f"cannot resume from {other / 'recon_state.pt'}: not a Gaussian reconstruction checkpoint (kind "
            f"{kind!r}, not 'recon-gaussians'); start a new run (without --resume, or another --out)") in said.err
    assert "resuming" not in said.out and "building the projector" not in said.out and "initialising" not in said.out
    assert sorted(p.name for p in other.iterdir()) == ["recon_state.pt"]


def test_ctrl_c_says_where_the_state_is_and_exits_130(saved, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the optimisation: one line naming the last saved state and --resume, exit 130, no outputs
    but the state; before any state was saved, the line says so and nothing is written."""
    from recon_cli_helpers import stop_at_iteration

    from recon.gaussian_recon import GaussianReconstructor

    scan = saved[0]
    step = stop_at_iteration(monkeypatch, 3)
    for out, every, said in ((tmp_path / "early", "5", "no state was saved yet (the first is saved at iteration 5)"),
                             (tmp_path / "end", "500", "no state was saved yet (the first is saved at the end of the run, iteration 6)"),
                             (tmp_path / "rec", "2", f"the last state (iteration 2) is saved in {tmp_path / 'rec' / 'recon_state.pt'}")):  # fmt: skip
        capsys.readouterr()
        args = _args(scan, out, "--iterations", "6", "--checkpoint-every", every)
        assert main(args) == 130
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and said in err and "Traceback" not in err, err
        assert _contents(out) == ({} if every != "2" else {"recon_state.pt": _contents(out)["recon_state.pt"]})
        assert not list(tmp_path.rglob(".*"))
    assert "--resume continues it" in err
    monkeypatch.setattr(GaussianReconstructor, "step", step)
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["iterations"] == 6


def test_sigterm_stops_as_ctrl_c_does_and_exits_143(saved, tmp_path, monkeypatch, capsys):
    """A real SIGTERM (kill, a batch system's time limit) mid-run: the line names the saved state, exit 143, only
    the state is left, and --resume finishes the run; the handler is the previous one again afterwards."""
    import os
    import signal

    from recon.gaussian_recon import GaussianReconstructor

    step = GaussianReconstructor.step

    def terminated_step(self):
        if self.iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self)

    monkeypatch.setattr(GaussianReconstructor, "step", terminated_step)
    out = tmp_path / "rec"
    args = _args(saved[0], out, "--iterations", "6", "--checkpoint-every", "2")
    before = signal.getsignal(signal.SIGTERM)
    assert main(args) == 143
    err = capsys.readouterr().err
    assert f"terminated (SIGTERM): the last state (iteration 2) is saved in {out / 'recon_state.pt'}" in err, err
    assert "Traceback" not in err and set(_contents(out)) == {"recon_state.pt"}
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(GaussianReconstructor, "step", step)
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["iterations"] == 6


def test_ctrl_c_during_a_refit_says_whose_state_is_saved(saved, tmp_path, monkeypatch, capsys):
    """With --holdout-views and --refit the state file is the held-out run's (the refit saves none): the line says
    so wherever the interruption falls."""
    from recon.gaussian_recon import GaussianReconstructor

    step, calls = GaussianReconstructor.step, []

    def interrupted_step(self):
        calls.append(self.config.holdout_views)
        if self.config.holdout_views == 0 and self.iteration == 1:  # in the refit on every view
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(GaussianReconstructor, "step", interrupted_step)
    out = tmp_path / "rec"
    args = _args(saved[0], out, "--iterations", "4", "--holdout-views", "2", "--eval-every", "2", "--refit",
                 "--checkpoint-every", "2")  # fmt: skip
    assert main(args) == 130 and 0 in calls
    err = capsys.readouterr().err
    assert (f"of the run with 2 views held out is saved in {out / 'recon_state.pt'} (the --refit run on every view "
            "saves no state: it runs again after that run)") in err, err


def test_resumed_time_counts_the_run_before_the_interruption(saved, tmp_path, monkeypatch, capsys):
    """On a clock that advances 10 s per optimisation step (nothing else takes time), 6 iterations take 60 s
    however they are split: interrupted after iteration 2 (its state saved there), resumed, interrupted after
    iteration 4 and resumed again; ``metrics.json`` lists both resumes, each with its session's software, and
    the first session's. A state
    written without the time (an older version) gives the time since the resume, said so."""
    import types

    import recon.gaussian_recon as gr

    clock = [0.0]
    monkeypatch.setattr(gr, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    step = gr.GaussianReconstructor.step

    def timed_step(self):
        if (self.iteration, clock[0]) in ((2, 20.0), (4, 1020.0)):
            raise KeyboardInterrupt
        clock[0] += 10.0
        return step(self)

    monkeypatch.setattr(gr.GaussianReconstructor, "step", timed_step)
    out = tmp_path / "rec"
    args = _args(saved[0], out, "--iterations", "6", "--eval-every", "2", "--checkpoint-every", "2")
    session = lambda n: monkeypatch.setattr("medgmae.software.software_versions", lambda *a, **k: {"session": n})  # noqa: E731
    session(1)
    assert main(args) == 130
    clock[0] = 1000.0  # the resumed process's clock starts anywhere
    session(2)
    assert main([*args, "--resume"]) == 130
    clock[0] = 3000.0
    capsys.readouterr()
    session(3)
    assert main([*args, "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["time_seconds"] == pytest.approx(60.0)
    assert [(h["iteration"], h["seconds"]) for h in metrics["history"]] == [(2, 20.0), (4, 40.0), (6, 60.0)]
    assert [(r["iteration"], r["seconds_before"]) for r in metrics["resumes"]] == [(2, 20.0), (4, 40.0)]
    assert metrics["resumed"] == metrics["resumes"][-1]
    assert [r["software"] for r in metrics["resumes"]] == [{"session": 2}, {"session": 3}]
    assert metrics["software"] == {"session": 3} and metrics["first_session_software"] == {"session": 1}
    assert "6 iterations in 60.0 s in all (40.0 s before the resume at iteration 4)" in capsys.readouterr().out
    state = torch.load(out / "recon_state.pt", weights_only=True)
    assert state["seconds"] == pytest.approx(60.0)
    del state["seconds"]
    torch.save(state, out / "recon_state.pt")
    clock[0] = 5000.0
    assert main([*args, "--resume"]) == 0  # 6 of 6 done: no step, no time
    assert "6 iterations in 0.0 s since the resume at iteration 6 (the state saved no earlier time)" in capsys.readouterr().out


def test_a_new_run_over_a_saved_state_says_it_replaces_it(saved, tmp_path, capsys):
    """Without --resume, a folder holding a run's recon_state.pt is named at the start (the new run replaces it;
    --resume would continue it); an empty folder gets no such note."""
    import shutil

    scan, _, _, out = saved
    again = shutil.copytree(out, tmp_path / "rec")
    capsys.readouterr()
    assert main(_args(scan, again, "--iterations", "2")) == 0
    assert f"note: {again} holds an earlier run's recon_state.pt" in capsys.readouterr().err
    assert torch.load(again / "recon_state.pt", weights_only=True)["iteration"] == 2
    assert main(_args(scan, tmp_path / "fresh", "--iterations", "2")) == 0
    assert "holds an earlier run's" not in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_or_fbp_whose_content_changed_at_the_same_path(saved, tmp_path, capsys):
    """The start a resume rebuilds (and metrics.json's initial Gaussians and start) come from --checkpoint and --fbp:
    a file rewritten in place (pre-training rewrites model.pt every epoch) is refused, naming it; the same files
    resume, also moved elsewhere (a note says so; they were refused as other settings); a state that recorded no
    content (an older version) resumes with a warning."""
    scan = saved[0]
    model, fbp = tmp_path / "model.pt", tmp_path / "fbp.nii.gz"
    tiny_model_file(model, seed=0)
    fbp.write_bytes((scan / "fbp.nii.gz").read_bytes())
    out = tmp_path / "runs" / "run"  # _contents: the runs folder only, not the files changed beside it
    flags = ("--init", "medgmae", "--checkpoint", str(model), "--fbp", str(fbp))
    assert main(_args(scan, out, "--iterations", "2", *flags)) == 0
    state = out / "recon_state.pt"
    before, original_model, original_fbp = _contents(out), model.read_bytes(), fbp.read_bytes()
    img = nib.load(str(fbp))
    changes = {"--checkpoint": (model, lambda: tiny_model_file(model, seed=1)),
               "--fbp": (fbp, lambda: nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32) * 1.01, img.affine), str(fbp)))}  # fmt: skip
    for flag, (path, change) in changes.items():
        change()
        capsys.readouterr()
        assert main(_args(scan, out, "--iterations", "4", "--resume", *flags)) == 2, flag
        said = capsys.readouterr()
        assert f"--resume: {state}: {flag} {path} changed since the saved run read it (sha256 saved " in said.err, said.err
        assert "Restore the file the run started from, or start a new run" in said.err and "resuming" not in said.out
        other = "--fbp" if flag == "--checkpoint" else "--checkpoint"
        assert f"{other} " not in said.err.split(str(state))[1]  # only the changed file is named
        assert _contents(out) == before, flag
        model.write_bytes(original_model), fbp.write_bytes(original_fbp)
    old = torch.load(state, weights_only=True)
    del old["run_info"]["files"]  # as an older version wrote it
    torch.save(old, tmp_path / "old_state.pt")
    assert main(_args(scan, out, "--iterations", "4", "--resume", *flags)) == 0  # the same files resume
    assert "changed since" not in capsys.readouterr().err
    (tmp_path / "old_state.pt").replace(state)
    assert main(_args(scan, out, "--iterations", "6", "--resume", *flags)) == 0
    assert "records no fingerprint of the content of --checkpoint, --fbp (an older version" in capsys.readouterr().err
    # the same files moved elsewhere (a model folder moved or copied) resume, each said; other bytes there do not
    moved = tmp_path / "moved"
    moved.mkdir()
    model.replace(moved / "model.pt"), fbp.replace(moved / "fbp.nii.gz")
    flags = ("--init", "medgmae", "--checkpoint", str(moved / "model.pt"), "--fbp", str(moved / "fbp.nii.gz"))
    assert main(_args(scan, out, "--iterations", "8", "--resume", *flags)) == 0
    said = capsys.readouterr().out
    for flag, name in (("--checkpoint", "model.pt"), ("--fbp", "fbp.nii.gz")):
        assert (f"note: --resume: {flag} {(moved / name).resolve()} holds the same bytes as the saved run's "
                f"{(tmp_path / name).resolve()} (moved or copied): resuming with it") in said, said
    tiny_model_file(tmp_path / "model.pt", seed=1)  # other bytes at another path: a setting that differs
    other = ("--init", "medgmae", "--checkpoint", str(tmp_path / "model.pt"), "--fbp", str(moved / "fbp.nii.gz"))
    assert main(_args(scan, out, "--iterations", "10", "--resume", *other)) == 2
    said = capsys.readouterr()
    assert "--checkpoint" in said.err and "resuming with it" not in said.out  # no note before a refusal


def test_a_checkpoint_rewritten_while_it_is_read_is_refused(saved, tmp_path, capsys, monkeypatch):
    """The fingerprint a resume compares was taken after the model was loaded: a pre-training run rewriting model.pt
    in between gave a start built from one file and a fingerprint of another. Now taken before and after: refused,
    naming the file, nothing written."""
    import recon.reconstruct_command as command

    scan = saved[0]
    model = tmp_path / "model.pt"
    tiny_model_file(model, seed=0)
    load = command._load_model

    def load_then_rewrite(args):  # the writer's next epoch lands while this run reads the file
        loaded = load(args)
        tiny_model_file(model, seed=1)
        return loaded

    monkeypatch.setattr(command, "_load_model", load_then_rewrite)
    out = tmp_path / "run"
    assert main(_args(scan, out, "--iterations", "2", "--init", "medgmae", "--checkpoint", str(model))) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {model.resolve()} changed while it was read" in err, err
    assert not out.exists()


def test_a_truncated_state_advises_a_new_run(saved, tmp_path, capsys):
    """A recon_state.pt cut short cannot be 'written or copied again' (the loader's advice for model files): the
    message says to start a new run."""
    import shutil

    scan, _, _, out = saved
    cut = shutil.copytree(out, tmp_path / "cut")
    data = (cut / "recon_state.pt").read_bytes()
    (cut / "recon_state.pt").write_bytes(data[: len(data) // 2])
    assert main(_args(scan, cut, "--iterations", "6", "--resume")) == 2
    err = capsys.readouterr().err
    assert "not a complete PyTorch file: truncated or damaged" in err and "start a new run (without --resume" in err, err
    assert "write or copy the reconstruction state again" not in err
    (cut / "recon_state.pt").write_bytes(bytes(len(data)))  # zeroed: no PyTorch file at all
    assert main(_args(scan, cut, "--iterations", "6", "--resume")) == 2
    err = capsys.readouterr().err
    assert (f"{cut / 'recon_state.pt'}: not a PyTorch file (a reconstruction state written by torch.save is a zip "
            "archive); is this the right path? If it is: start a new run (without --resume, or another --out)") in err, err


def test_a_detached_fbp_header_fingerprinted_alone_by_an_earlier_release_resumes(tmp_path):
    """A state an earlier release saved holds a ``.mhd`` start's header SHA-256 alone (hashlib's, here); its resume
    is not refused as a changed file (the data file is fingerprinted from now on), also moved elsewhere, while
    another header content is."""
    import hashlib

    from medgmae.data.fingerprint import path_fingerprint
    from recon.resume import _changed_files, _follow_moved_files

    header = tmp_path / "fbp.mhd"
    (tmp_path / "fbp.raw").write_bytes(np.zeros(8, "<f4").tobytes())
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_FLOAT\n"
                      "ElementDataFile = fbp.raw\n", encoding="ascii")  # fmt: skip
    now = {"files": {"--fbp": path_fingerprint(header)}, "settings": {"start FBP": f"--fbp {header.resolve()}"}}
    legacy = {"path": str(header.resolve()), "sha256": hashlib.sha256(header.read_bytes()).hexdigest()}
    assert legacy["sha256"] != now["files"]["--fbp"]["sha256"]  # the header and its data now
    assert _changed_files({"files": {"--fbp": legacy}}, now, tmp_path / "recon_state.pt") == []
    other = {**legacy, "sha256": hashlib.sha256(b"another header").hexdigest()}
    assert len(_changed_files({"files": {"--fbp": other}}, now, tmp_path / "recon_state.pt")) == 1
    moved = {"path": "/elsewhere/fbp.mhd", "sha256": legacy["sha256"]}
    saved = {"files": {"--fbp": moved}, "settings": {"start FBP": "--fbp /elsewhere/fbp.mhd"}}
    followed, notes = _follow_moved_files(saved, now)
    assert followed["settings"]["start FBP"] == f"--fbp {header.resolve()}" and len(notes) == 1
