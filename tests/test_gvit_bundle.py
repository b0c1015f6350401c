"""GViT bundle: smoke training on CPU, evaluation, resume (exact, after an interruption), bad input, metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run, verify_metadata
from monai.data import DataLoader
from monai.utils import set_determinism
from PIL import Image

from medgmae.twod.classification_data import load_classification_data, make_dataset
from medgmae.twod.gvit import GViT
from medgmae.engine import GradientClipHandler
from medgmae.twod.gvit_phases import default_phase_handlers
from medgmae.twod.gvit_train import GViTWorkflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "gvit_classification"
TINY = dict(max_epochs=1, num_phantoms=3, image_size=16, patch_size=4, num_gaussians=12, batch_size=32, device="cpu",
            num_explanations=2)


def _bundle_cli(config: str, *args: str, run_id: str = "training") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(BUNDLE / "configs" / config),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", cwd=REPO, env=env, timeout=300)


def _bundle(config: str, run_id: str = "training", **overrides) -> None:
    """``monai.bundle run`` in this process (the CLI path is exercised by the bad-input test)."""
    run(run_id, config_file=str(BUNDLE / "configs" / config), **overrides)


#: third-party notices the bundles filter or avoid (none may reach the console)
FILTERED = ("nvImageCodec", "torch.meshgrid", "Orientationd.__init__:labels")


def test_bundle_train_evaluate_and_resume(tmp_path, capfd, folder_state):
    out = tmp_path / "run"
    _bundle("train.json", output_dir=str(out), **TINY)
    console = "".join(capfd.readouterr())
    assert not any(text in console for text in FILTERED), [t for t in FILTERED if t in console]
    # the closing summary names the confusion matrix and the ellipse explanations that exist
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["files"]["confusion_matrix"]).is_file() and len(summary["explanation_files"]) == 2
    assert all(Path(p).is_file() for p in summary["explanation_files"])
    assert summary["accuracy"] == json.loads((out / "metrics.json").read_text())["accuracy"]
    assert "evaluate.json" in summary["next"]["evaluate"] and str(out) in summary["next"]["evaluate"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    names = metrics["class_names"]
    assert len(names) >= 2 and set(metrics["per_class_accuracy"]) == set(names)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (len(names), len(names)) and cm.sum() == metrics["num_images"] > 0
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert Image.open(out / "confusion_matrix.png").format == "PNG"
    assert len(list((out / "explanations").glob("*.png"))) == 2
    for phase in ("warmup", "classifier", "joint"):
        assert (out / "checkpoints" / phase / "checkpoint_epoch=1.pt").is_file()
    model = GViT.from_checkpoint(out / "model.pt")
    assert model.class_names == names and model.encoder.num_gaussians == 12

    # the evaluation config on the same model and validation split reproduces the training metrics
    task_stamp = (out / "data" / "task.json").stat().st_mtime_ns
    # with the summary's command: no data flags (model.pt records them)
    assert not any(flag in summary["next"]["evaluate"] for flag in ("--num_phantoms", "--seed", "--val_fraction"))
    _bundle("evaluate.json", run_id="evaluating", output_dir=str(out), device="cpu", num_explanations=-1)
    ev = json.loads((out / "eval" / "metrics.json").read_text())
    assert ev["confusion_matrix"] == metrics["confusion_matrix"]
    assert len(list((out / "eval" / "explanations").glob("*.png"))) == ev["num_images"]  # one per image
    assert (out / "data" / "task.json").stat().st_mtime_ns == task_stamp  # the task at the model's size was reused
    ev_summary = json.loads((out / "eval" / "summary.json").read_text())
    assert len(ev_summary["explanation_files"]) == ev["num_images"] and ev_summary["files"]["model"] == str(out / "model.pt")

    # resume of a finished run: every phase restarts from its last checkpoint, nothing is retrained
    before = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    epoch_files = sorted((out / "checkpoints").glob("*/checkpoint_epoch=1.pt"))
    stamps = [p.stat().st_mtime_ns for p in epoch_files]
    _bundle("train.json", output_dir=str(out), resume=True, **TINY)
    assert len(epoch_files) == 3 and [p.stat().st_mtime_ns for p in epoch_files] == stamps  # no epoch was re-run
    after = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)

    # a resume with another batch size is refused at the first phase's start, with the run folder as it was
    state = folder_state(out)
    with pytest.raises(RuntimeError) as refused:
        _bundle("train.json", output_dir=str(out), resume=True, **{**TINY, "batch_size": 16})
    assert "(2 per epoch, batch size 32), but this run has 3 iterations per epoch (batch size 16)" in str(refused.value.__cause__)
    assert folder_state(out) == state


def test_confusion_table_layout():
    from medgmae.twod.gvit_summary import confusion_table

    assert confusion_table([[3, 1], [0, 2]], ["a", "b"]).splitlines() == [
        "| true \\ predicted | a | b |", "| --- | --- | --- |", "| a | 3 | 1 |", "| b | 0 | 2 |"]


def test_bundle_bad_input_fails_clearly(tmp_path):
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(single / "a.png")
    out = tmp_path / "run"
    args = [x for k, v in TINY.items() for x in (f"--{k}", str(v))]
    res = _bundle_cli("train.json", "--output_dir", str(out), "--dataset_dir", str(tmp_path / "single"), *args)
    assert res.returncode != 0
    assert "at least 2 classes" in res.stderr and str(tmp_path / "single") in res.stderr
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


def test_metadata_verifies(tmp_path):
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    schema = str(REPO / "bundles" / "schema" / "meta_schema.json")
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=schema)  # raises when invalid
    del meta["network_data_format"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=schema)


# ----------------------------------------------------------------------------------------------- exact resume
def _shapes_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for cls in ("disc", "bar"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            a = np.zeros((16, 16), np.uint8)
            cy, cx = rng.integers(5, 11, 2)
            if cls == "disc":
                a[(yy - cy) ** 2 + (xx - cx) ** 2 < 10] = 220
            else:
                a[cy - 1 : cy + 1, 2:14] = 220
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


def _workflow(data, out: Path, resume: bool) -> GViTWorkflow:
    set_determinism(seed=0)
    train = DataLoader(make_dataset(data.train, 16, 1), batch_size=4, shuffle=True)
    val = DataLoader(make_dataset(data.val, 16, 1), batch_size=4)
    model = GViT(1, 16, 2, num_gaussians=6, patch_size=4)
    return GViTWorkflow(model, train, val, data.class_names, out, {"warmup": 1, "classifier": 1, "joint": 2},
                        device="cpu", render_backend="torch", num_explanations=0,
                        handlers=default_phase_handlers(resume=resume), cases=data.train)  # fmt: skip


def test_a_resume_names_phases_not_reached_as_starting_not_as_a_wrong_folder(tmp_path, caplog):
    """Interrupted in the classifier phase's first epoch, a resume finds no epoch checkpoint of the classifier or
    joint phase: each is logged as starting from its first epoch, without the warning that asks whether the folder
    is the run's (kept for a resume whose every phase folder is empty)."""
    import logging

    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    build = first.trainer

    def interrupt_the_classifier(phase):
        trainer = build(phase)
        if phase == "classifier":
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda _: (_ for _ in ()).throw(KeyboardInterrupt()))
        return trainer

    first.trainer = interrupt_the_classifier
    with pytest.raises(KeyboardInterrupt):
        first.run()
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        _workflow(data, tmp_path / "run", resume=True).run()
    starts = [r for r in caplog.records if "no checkpoint_epoch=N.pt in" in r.getMessage()]
    assert [Path(r.args[0]).name for r in starts] == ["classifier", "joint"], [r.getMessage() for r in starts]
    assert all(r.levelno == logging.INFO and "is this the folder" not in r.getMessage() for r in starts)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        _workflow(data, tmp_path / "empty", resume=True).run()
    starts = [r for r in caplog.records if "no checkpoint_epoch=N.pt in" in r.getMessage()]
    assert starts[0].levelno == logging.WARNING and "(is this the folder of the run to resume?)" in starts[0].getMessage()


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    straight = _workflow(data, tmp_path / "a", resume=False)
    metrics_a = straight.run()

    interrupted = _workflow(data, tmp_path / "b", resume=False)
    build = interrupted.trainer

    def build_and_interrupt(phase):
        trainer = build(phase)
        if phase == "joint":  # stop in the middle of the second joint epoch
            @trainer.on(Events.ITERATION_COMPLETED(once=len(interrupted.train_loader) + 1))
            def _stop(_):
                raise KeyboardInterrupt("simulated interruption")

        return trainer

    interrupted.trainer = build_and_interrupt
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert (tmp_path / "b" / "checkpoints" / "joint" / "checkpoint_interrupted.pt").is_file()
    assert not (tmp_path / "b" / "model.pt").exists()

    resumed = _workflow(data, tmp_path / "b", resume=True)
    metrics_b = resumed.run()
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert metrics_b["confusion_matrix"] == metrics_a["confusion_matrix"]


def test_a_stop_in_the_closing_evaluation_trains_no_epoch_again(tmp_path, monkeypatch):
    """GViT validates once, after its last phase, whose checkpoints are written by then: Ctrl-C in that evaluation
    keeps every epoch, and the resume trains none again (no iteration runs) and ends as the uninterrupted run (weights,
    each phase's optimiser and scheduler, metrics)."""
    import medgmae.twod.gvit_eval as gvit_eval

    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    straight = _workflow(data, tmp_path / "a", resume=False)
    metrics_a = straight.run()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(gvit_eval, "evaluate_gvit", stopped)
        _workflow(data, tmp_path / "b", resume=False).run()
    resumed, iterations = _workflow(data, tmp_path / "b", resume=True), []
    build = resumed.trainer

    def counted(phase):
        trainer = build(phase)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: iterations.append(phase))
        return trainer

    resumed.trainer = counted
    metrics_b = resumed.run()
    assert iterations == []
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for phase in ("warmup", "classifier", "joint"):
        a, b = (torch.load(d / "checkpoints" / phase / "checkpoint_final.pt", weights_only=True)["objects"]
                for d in (tmp_path / "a", tmp_path / "b"))  # fmt: skip
        assert a["lr_scheduler"] == b["lr_scheduler"]
        ma, mb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert ma.keys() == mb.keys() and all(torch.equal(ma[i][k], mb[i][k]) for i in ma for k in ma[i])
    assert metrics_b["confusion_matrix"] == metrics_a["confusion_matrix"]


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    """A run resumed with another model (here 8 Gaussians instead of 6, which changes no weight's shape) or other
    data settings stops at the start, naming each setting; the same settings resume."""
    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"seed": 0}
    first.run()
    again = _workflow(data, tmp_path / "run", resume=True)
    again.model = GViT(1, 16, 2, num_gaussians=8, patch_size=4)
    again.data_settings = {"seed": 1}
    with pytest.raises(ValueError, match=r"GViT training with other settings \(model\.num_gaussians: saved 6, now 8; "
                                         r"data\.seed: saved 0, now 1\)"):
        again.trainer("warmup").run()
    faster = _workflow(data, tmp_path / "run", resume=True)
    faster.data_settings, faster.kwargs["lr"] = {"seed": 0}, 0.01  # the restored AdamW would keep the saved rate
    with pytest.raises(ValueError, match=r"other settings \(optimiser\.lr: saved 0\.001, now 0\.01\)"):
        faster.trainer("warmup").run()
    same = _workflow(data, tmp_path / "run", resume=True)
    same.data_settings = {"seed": 0}
    same.trainer("warmup").run()  # finished phase: resumes and ends at once


def test_resume_with_another_val_fraction_names_it_with_the_epoch_length(tmp_path):
    """Another val_fraction moves images out of training: the epoch length changes, and the error names val_fraction
    (the recorded split setting) and the training images beside it, not the epoch length alone."""
    shapes = _shapes_dataset(tmp_path / "shapes")
    data = load_classification_data(shapes, val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"val_fraction": 0.25}
    first.run()
    halved = load_classification_data(shapes, val_fraction=0.5)  # 12 training images then, 8 now
    again = _workflow(halved, tmp_path / "run", resume=True)
    again.data_settings = {"val_fraction": 0.5}
    with pytest.raises(ValueError) as refused:
        again.check_resume()
    message = str(refused.value)
    assert "(3 per epoch, batch size 4), but this run has 2 iterations per epoch (batch size 4)" in message
    assert "data.val_fraction: saved 0.25, now 0.5" in message
    assert "GViT training trained on other data: 12 cases then, 8 now" in message


def test_resume_with_a_window_of_a_run_without_one_says_it_had_none(tmp_path):
    """A run trained without a window (null: nothing recorded in its data settings) resumed with one: the error says
    the saved run had no window (None), not that the window was not recorded; so for a checkpoint of an earlier
    version, whose data record lacks the key."""
    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"seed": 0}  # what resolve_classification_data records with window null
    first.run()
    for earlier in (False, True):
        if earlier:
            path = tmp_path / "run" / "checkpoints" / "warmup" / "checkpoint_epoch=1.pt"
            saved = torch.load(path, weights_only=True)
            del saved["objects"]["settings"]["settings"]["data"]["window"]
            torch.save(saved, path)
        windowed = _workflow(data, tmp_path / "run", resume=True)
        windowed.data_settings = {"seed": 0, "window": [0.0, 100.0]}
        with pytest.raises(ValueError, match=r"other settings \(data\.window: saved None, now \[0\.0, 100\.0\]\)"):
            windowed.check_resume()
        same = _workflow(data, tmp_path / "run", resume=True)
        same.data_settings = {"seed": 0}
        same.check_resume()


def test_resume_on_changed_training_images_is_refused(tmp_path):
    """An image replaced by another (its size changed) or an item relabelled is named at the start of a resume;
    the unchanged data resume."""
    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.run()
    _workflow(data, tmp_path / "run", resume=True).trainer("warmup").run()  # finished phase: ends at once
    relabelled = [dict(it) for it in data.train]
    relabelled[0]["label"] = 1 - relabelled[0]["label"]
    again = _workflow(data, tmp_path / "run", resume=True)
    again.cases = relabelled
    with pytest.raises(ValueError, match=r"GViT training trained on other data: .*1 differing"):
        again.check_resume()
    victim = Path(data.train[1]["image"])
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(victim)  # another picture under the same name
    with pytest.raises(ValueError, match=rf"trained on other data: .*{victim.parent.name}/{victim.name}"):
        _workflow(data, tmp_path / "run", resume=True).check_resume()


def test_a_moved_run_of_the_default_task_resumes(tmp_path):
    """Where the default phantom task lies (inside the run folder) is no setting: a run folder moved as a whole
    resumes; another dataset_dir is still refused."""
    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"dataset_dir": "", "default_root": str(tmp_path / "run" / "data"), "seed": 0}
    first.run()
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = _workflow(data, tmp_path / "moved", resume=True)
    moved.data_settings = {"dataset_dir": "", "default_root": str(tmp_path / "moved" / "data"), "seed": 0}
    moved.trainer("warmup").run()  # finished phase: resumes and ends at once
    other = _workflow(data, tmp_path / "moved", resume=True)
    other.data_settings = {"dataset_dir": str(tmp_path / "shapes"), "default_root": "", "seed": 0}
    with pytest.raises(ValueError, match=r"data\.dataset_dir: saved '', now"):
        other.trainer("warmup").run()


def test_a_shorter_phase_on_resume_is_refused_before_any_phase_trains(tmp_path, folder_state):
    """Resumed with fewer joint epochs than its checkpoint has trained, a run stops before the earlier phases
    train or write anything, naming --joint_epochs (it trained them first and then named max_epochs)."""
    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    _workflow(data, tmp_path / "run", resume=False).run()  # warmup 1, classifier 1, joint 2
    before = folder_state(tmp_path / "run")
    again = _workflow(data, tmp_path / "run", resume=True)
    again.epochs = {"warmup": 2, "classifier": 1, "joint": 1}
    with pytest.raises(ValueError, match=r"joint.checkpoint_epoch=2\.pt is at epoch 2, beyond joint_epochs=1"):
        again.run()
    assert folder_state(tmp_path / "run") == before


def test_a_fresh_run_replaces_the_earlier_runs_later_phases(tmp_path, caplog):
    """A fresh run in a used folder removes the earlier run's checkpoints of its other phases once it has saved
    its first checkpoint (so that a later resume cannot take them as its own), and nothing when stopped before."""
    import logging

    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    _workflow(data, tmp_path / "run", resume=False).run()  # warmup 1, classifier 1, joint 2
    ckpts = tmp_path / "run" / "checkpoints"

    def saved(phase):
        return sorted(p.name for p in (ckpts / phase).glob("checkpoint_*.pt"))

    assert saved("classifier") == ["checkpoint_epoch=1.pt", "checkpoint_final.pt"] and saved("joint")
    stopped = _workflow(data, tmp_path / "run", resume=False)
    build = stopped.trainer

    def stop_at_once(phase):
        trainer = build(phase)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda _: (_ for _ in ()).throw(KeyboardInterrupt()))
        return trainer

    stopped.trainer = stop_at_once
    with pytest.raises(KeyboardInterrupt):
        stopped.run()
    assert saved("classifier") and saved("joint")  # stopped before its first save: nothing removed
    fresh = _workflow(data, tmp_path / "run", resume=False)
    fresh.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    with caplog.at_level(logging.INFO, logger="medgmae.gvit"):
        fresh.run()
    assert "classifier: checkpoints (checkpoint_epoch=1.pt, checkpoint_final.pt)" in caplog.text
    assert "results: model.pt, metrics.json" in caplog.text
    assert saved("classifier") == [] and saved("joint") == []
    assert saved("warmup") == ["checkpoint_epoch=1.pt", "checkpoint_final.pt"]


def test_a_resume_with_a_longer_phase_retrains_the_phases_after_it(tmp_path, caplog):
    """Resumed with one more warm-up epoch, a finished run trains it and then the classifier and joint phases
    afresh (their checkpoints followed the shorter warm-up; kept, they were taken as finished and the model came
    out bit for bit the first run's)."""
    import logging

    data = load_classification_data(_shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = _workflow(data, tmp_path / "run", resume=False)
    first.run()  # warmup 1, classifier 1, joint 2
    joint = tmp_path / "run" / "checkpoints" / "joint" / "checkpoint_final.pt"
    before = torch.load(joint, weights_only=True)["engine"]
    resumed = _workflow(data, tmp_path / "run", resume=True)
    resumed.epochs = {"warmup": 2, "classifier": 1, "joint": 2}
    with caplog.at_level(logging.INFO, logger="medgmae.gvit"):
        resumed.run()
    assert "this run trains the 'warmup' phase, so the phases after it start afresh" in caplog.text
    assert "classifier: checkpoints (checkpoint_epoch=1.pt, checkpoint_final.pt)" in caplog.text
    assert "removed from" in caplog.text
    assert torch.load(joint, weights_only=True)["engine"] == before  # the joint phase ran its two epochs again
    s1, s2 = first.model.state_dict(), resumed.model.state_dict()
    assert not all(torch.equal(s1[k], s2[k]) for k in s1)


# ----------------------------------------------------------------------------------------------- configuration
def _parser(tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({**TINY, "dataset_dir": str(_shapes_dataset(tmp_path / "shapes")), "output_dir": str(tmp_path / "run"),
                   "image_size": 16, "num_gaussians": 6, "batch_size": 4, **overrides})  # fmt: skip
    return parser


@pytest.mark.parametrize("value", ["false", "False", "0", False])
def test_string_flags_turn_amp_and_resume_off(tmp_path, value):
    on = _parser(tmp_path / "on", resume=True)  # the shipped default is amp: true
    assert on.get_parsed_content("workflow").amp is True
    assert on.get_parsed_content("train#handlers")[0].resume is True

    off = _parser(tmp_path / "off", amp=value, resume=value)
    workflow = off.get_parsed_content("workflow")
    assert workflow.amp is False
    assert workflow.trainer("warmup")._process_function.amp is False  # the iteration the trainer runs
    assert off.get_parsed_content("train#handlers")[0].resume is False

    bad = _parser(tmp_path / "bad", amp="maybe")
    with pytest.raises(Exception) as err:
        bad.get_parsed_content("workflow")
    assert "amp must be true or false, got 'maybe'" in str(err.value.__cause__)


def test_image_size_is_checked_before_anything_is_written(tmp_path):
    """The first step of the run (``initialize``) checks image_size against patch_size (medgmae.bundle_checks)."""
    for overrides, message in (({"image_size": 8, "patch_size": 4}, "--image_size: expected at least 11"),
                               ({"image_size": 18, "patch_size": 4}, "--image_size: expected a multiple of --patch_size 4, got '18'"),
                               ({"gamma": 0.5}, "--gamma: gamma must be in [0, 0.1]")):  # fmt: skip
        with pytest.raises(Exception) as err:
            _parser(tmp_path, **overrides).get_parsed_content("initialize")
        assert message in str(err.value) + str(err.value.__cause__)
        assert not (tmp_path / "run").exists()
    assert _parser(tmp_path, image_size=20, patch_size=4).get_parsed_content("initialize")[0] is True  # settings and folders
    assert not (tmp_path / "run").exists()


class _GradNormProbe:
    """Records the global gradient norm when the backward pass has completed (after earlier handlers ran)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def attach(self, engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        grads = [p.grad.norm() for p in engine.network.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


def test_handlers_are_config_a_user_can_add_and_override(tmp_path):
    """A handler added to ``train#handlers`` runs in every phase; a listed handler's arguments are overridden by id."""
    overrides = {"warmup_epochs": 1, "classifier_epochs": 1, "joint_epochs": 1, "num_explanations": 0,
                 "render_backend": "torch"}  # fmt: skip
    plain = _parser(tmp_path / "plain", **overrides)
    unclipped = _GradNormProbe()
    plain["train"]["handlers"].append(unclipped)
    set_determinism(seed=0)
    plain.get_parsed_content("workflow").run()
    assert len(unclipped.norms) > 0 and min(unclipped.norms) > 1e-3  # unclipped gradients are larger than the cap

    clipped = _parser(tmp_path / "clipped", **overrides)
    probe = _GradNormProbe()
    clipped["train"]["handlers"] += [{"_target_": "medgmae.engine.GradientClipHandler", "max_norm": 1e-3}, probe]
    clipped["train#handlers#3#log_every"] = 1  # override by id: the PhaseStats entry logs every iteration
    set_determinism(seed=0)
    workflow = clipped.get_parsed_content("workflow")
    workflow.run()
    assert len(probe.norms) == len(unclipped.norms)  # three phases, one record per iteration
    assert max(probe.norms) <= 1e-3 * (1 + 1e-4)
    handlers = clipped.get_parsed_content("train#handlers")
    assert isinstance(handlers[5], GradientClipHandler) and handlers[3].log_every == 1
    assert all((tmp_path / "clipped" / "run" / "checkpoints" / ph / "checkpoint_epoch=1.pt").is_file()
               for ph in ("warmup", "classifier", "joint"))  # fmt: skip


class _LossProbe:
    """Records every iteration's loss, one list per phase (each phase's trainer starts once)."""

    def __init__(self) -> None:
        self.losses: list[list[float]] = []
        self.terms: list[list[tuple]] = []  # (loss_rec, loss_cls) of each iteration

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: (self.losses.append([]), self.terms.append([])))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)

    def _record(self, engine) -> None:
        out = engine.state.output
        self.losses[-1].append(float(out["loss"]))
        self.terms[-1].append(tuple(None if out[k] is None else float(out[k]) for k in ("loss_rec", "loss_cls")))


def test_each_phase_logs_one_line_per_epoch_with_its_mean_loss(tmp_path, caplog):
    """Fewer iterations than ``log_every`` still show progress: every phase logs one line per epoch naming the phase
    and the mean of that epoch's losses (recorded independently here), and no iteration lines by default."""
    import logging
    import re

    parser = _parser(tmp_path, warmup_epochs=1, classifier_epochs=1, joint_epochs=1, num_explanations=0,
                     render_backend="torch", progress_bar=False)  # fmt: skip
    probe = _LossProbe()
    parser["train"]["handlers"].append(probe)
    set_determinism(seed=0)
    with caplog.at_level(logging.INFO):
        parser.get_parsed_content("workflow").run()
    lines = [r.getMessage() for r in caplog.records if re.match(r"epoch \d+/\d+: \w+_loss ", r.getMessage())]
    assert [line.split(":")[1].split()[0] for line in lines] == ["warmup_loss", "classifier_loss", "joint_loss"]
    for line, losses in zip(lines, probe.losses):
        assert line.startswith("epoch 1/1:") and re.search(rf"[(;] ?{len(losses)} iterations", line)
        assert float(line.split()[3]) == pytest.approx(np.mean(losses), abs=1e-5)
    # the joint line also shows the means of its two terms, L_rec and L_cls
    rec, cls = (float(v) for v in re.search(r"\(rec ([\d.]+) \+ cls ([\d.]+);", lines[2]).groups())
    assert rec == pytest.approx(np.mean([t[0] for t in probe.terms[2]]), abs=1e-5)
    assert cls == pytest.approx(np.mean([t[1] for t in probe.terms[2]]), abs=1e-5)
    assert "rec " not in lines[0] and "cls " not in lines[1]
    assert not any("Iter" in r.getMessage() and "_loss" in r.getMessage() for r in caplog.records)
    handlers = parser.get_parsed_content("train#handlers")
    assert handlers[4].progress_bar is False and handlers[3].log_every == 0


def test_summary_after_evaluation_suggests_no_evaluation(tmp_path, caplog):
    """After training the summary suggests evaluating the model; after an evaluation it suggests nothing (the
    evaluation has just run)."""
    from medgmae.twod.gvit_summary import gvit_summary

    metrics = {"accuracy": 0.5, "per_class_accuracy": {"a": 1.0, "b": 0.0}, "num_images": 2, "split": "val",
               "confusion_matrix": [[1, 0], [1, 0]], "class_names": ["a", "b"], "data": {"num_phantoms": 3, "seed": 0,
               "val_fraction": 0.2}}  # fmt: skip
    for folder in (tmp_path, tmp_path / "eval"):
        folder.mkdir(exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    with caplog.at_level("INFO", logger="medgmae.twod"):
        trained = gvit_summary(tmp_path)
        assert "evaluate.json" in trained["next"]["evaluate"] and "next:" in caplog.text
        caplog.clear()
        evaluated = gvit_summary(tmp_path / "eval", tmp_path, stage="evaluation")
    assert evaluated["next"] == {} and "next:" not in caplog.text and "evaluate.json" not in caplog.text
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["next"] == {}
    with pytest.raises(ValueError, match="stage"):
        gvit_summary(tmp_path, stage="testing")


def test_the_readmes_clip_json_lists_the_shipped_handlers():
    """The README's ``clip.json`` replaces ``train#handlers``: its entries before the clip handler are the shipped
    ``train.json``'s, exactly (its NonFiniteLossHandler had a plain ``@amp`` and lacked two settings)."""
    readme = (BUNDLE / "docs" / "README.md").read_text()
    block = readme.split('```json\n{\n    "train#handlers"', 1)[1].split("```", 1)[0]
    clip = json.loads('{"train#handlers"' + block)["train#handlers"]
    shipped = json.loads((BUNDLE / "configs" / "train.json").read_text())["train"]["handlers"]
    assert clip[:-1] == shipped and clip[-1]["_target_"] == "medgmae.engine.GradientClipHandler"
