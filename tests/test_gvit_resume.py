"""Resuming GViT's phased training: bit for bit, through a stop in the closing evaluation, refused for changed
settings, data or phase lengths, and what a fresh run or a longer phase does to later phases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from PIL import Image

from medgmae.engine.restore import ResumeRefused
from medgmae.twod.classification_data import load_classification_data
from medgmae.twod.gvit import GViT

from gvit_helpers import assert_as_uninterrupted, count_iterations, gvit_workflow, shapes_dataset


def test_a_resume_names_phases_not_reached_as_starting_not_as_a_wrong_folder(tmp_path, caplog):
    """Interrupted in the classifier phase's first epoch, a resume finds no epoch checkpoint of the classifier or
    joint phase: each is logged as starting from its first epoch, without the warning that asks whether the folder
    is the run's (kept for a resume whose every phase folder is empty)."""
    import logging

    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
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
        gvit_workflow(data, tmp_path / "run", resume=True).run()
    starts = [r for r in caplog.records if "no checkpoint_epoch=N.pt in" in r.getMessage()]
    assert [Path(r.args[0]).name for r in starts] == ["classifier", "joint"], [r.getMessage() for r in starts]
    assert all(r.levelno == logging.INFO and "is this the folder" not in r.getMessage() for r in starts)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        gvit_workflow(data, tmp_path / "empty", resume=True).run()
    starts = [r for r in caplog.records if "no checkpoint_epoch=N.pt in" in r.getMessage()]
    assert starts[0].levelno == logging.WARNING and "(is this the folder of the run to resume?)" in starts[0].getMessage()


#: the phases' epochs of the runs the resumes compare with: 2 each, so that a stop in any phase's second epoch resumes
#: that phase from its first epoch's checkpoint (optimiser and scheduler inside the phase) and then crosses into the
#: phases after it, which train other parameters with their own optimisers (3 iterations per epoch)
EPOCHS = {"warmup": 2, "classifier": 2, "joint": 2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted runs (:data:`EPOCHS`) that the resumes compare with, by ``augment``, each run once for the
    module: its data, folder, weights and metrics."""
    runs = {}

    def run(augment: bool) -> dict:
        if augment not in runs:
            root = tmp_path_factory.mktemp("gvit_uninterrupted")
            data = load_classification_data(shapes_dataset(root / "shapes"), val_fraction=0.25)
            straight = gvit_workflow(data, root / "run", resume=False, augment=augment, epochs=EPOCHS)
            metrics = straight.run()
            weights = {k: v.clone() for k, v in straight.model.state_dict().items()}
            runs[augment] = {"data": data, "dir": root / "run", "weights": weights, "metrics": metrics}
        return runs[augment]

    return run


@pytest.mark.parametrize(("phase", "augment"), [("warmup", False), ("classifier", False), ("joint", False), ("joint", True)])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, uninterrupted, phase, augment):
    """Stopped in the first iteration of a phase's second epoch, a run resumes that phase from its first epoch's
    checkpoint and then trains the phases after it (other trained parameters, other optimisers) as the uninterrupted
    run: the stopped epoch again and every later phase's epochs, then the same weights, optimiser and scheduler
    states and metrics. With the paper's augmentation too: its flips and crops are drawn again as the uninterrupted
    run drew them."""
    straight = uninterrupted(augment)
    interrupted = gvit_workflow(straight["data"], tmp_path / "b", resume=False, augment=augment, epochs=EPOCHS)
    build, per_epoch = interrupted.trainer, len(interrupted.train_loader)

    def build_and_interrupt(name):
        trainer = build(name)
        if name == phase:
            @trainer.on(Events.ITERATION_COMPLETED(once=per_epoch + 1))
            def _stop(_):
                raise KeyboardInterrupt("simulated interruption")

        return trainer

    interrupted.trainer = build_and_interrupt
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert (tmp_path / "b" / "checkpoints" / phase / "checkpoint_interrupted.pt").is_file()
    assert not (tmp_path / "b" / "model.pt").exists()

    resumed = gvit_workflow(straight["data"], tmp_path / "b", resume=True, augment=augment, epochs=EPOCHS)
    iterations = count_iterations(resumed)
    metrics = resumed.run()
    later = list(EPOCHS)[list(EPOCHS).index(phase) :]  # the stopped epoch again (from checkpoint_epoch=1.pt), then on
    assert iterations == [p for p in later for _ in range(EPOCHS[p] * per_epoch - (per_epoch if p == phase else 0))]
    assert_as_uninterrupted(straight, tmp_path / "b", resumed.model, metrics)


def test_a_stop_in_the_closing_evaluation_trains_no_epoch_again(tmp_path, monkeypatch, uninterrupted):
    """GViT validates once, after its last phase, whose checkpoints are written by then: Ctrl-C in that evaluation
    keeps every epoch, and the resume trains none again (no iteration runs) and ends as the uninterrupted run (weights,
    each phase's optimiser and scheduler, metrics)."""
    import medgmae.twod.gvit_eval as gvit_eval

    straight = uninterrupted(False)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(gvit_eval, "evaluate_gvit", stopped)
        gvit_workflow(straight["data"], tmp_path / "b", resume=False, epochs=EPOCHS).run()
    resumed = gvit_workflow(straight["data"], tmp_path / "b", resume=True, epochs=EPOCHS)
    iterations = count_iterations(resumed)
    metrics = resumed.run()
    assert iterations == []
    assert_as_uninterrupted(straight, tmp_path / "b", resumed.model, metrics)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    """A run resumed with another model (here 8 Gaussians instead of 6, which changes no weight's shape) or other
    data settings stops at the start, naming each setting; the same settings resume."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"seed": 0}
    first.run()
    again = gvit_workflow(data, tmp_path / "run", resume=True)
    again.model = GViT(1, 16, 2, num_gaussians=8, patch_size=4)
    again.data_settings = {"seed": 1}
    with pytest.raises(ValueError, match=r"GViT training with other settings \(model\.num_gaussians: saved 6, now 8; "
                                         r"data\.seed: saved 0, now 1\)"):
        again.trainer("warmup").run()
    faster = gvit_workflow(data, tmp_path / "run", resume=True)
    faster.data_settings, faster.kwargs["lr"] = {"seed": 0}, 0.01  # the restored AdamW would keep the saved rate
    with pytest.raises(ValueError, match=r"other settings \(optimiser\.lr: saved 0\.001, now 0\.01\)"):
        faster.trainer("warmup").run()
    same = gvit_workflow(data, tmp_path / "run", resume=True)
    same.data_settings = {"seed": 0}
    same.trainer("warmup").run()  # finished phase: resumes and ends at once


def test_resume_with_another_val_fraction_names_it_with_the_epoch_length(tmp_path):
    """Another val_fraction moves images out of training: the epoch length changes, and the error names val_fraction
    (the recorded split setting) and the training images beside it, not the epoch length alone."""
    shapes = shapes_dataset(tmp_path / "shapes")
    data = load_classification_data(shapes, val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"val_fraction": 0.25}
    first.run()
    halved = load_classification_data(shapes, val_fraction=0.5)  # 12 training images then, 8 now
    again = gvit_workflow(halved, tmp_path / "run", resume=True)
    again.data_settings = {"val_fraction": 0.5}
    with pytest.raises(ResumeRefused) as refused:  # a refusal of the settings given: the bundle prints it alone
        again.check_resume()
    message = str(refused.value)
    assert "(3 per epoch, batch size 4), but this run has 2 iterations per epoch (batch size 4)" in message
    assert "data.val_fraction: saved 0.25, now 0.5" in message
    assert "GViT training trained on other data: 12 images then, 8 now" in message


def test_resume_with_a_window_of_a_run_without_one_says_it_had_none(tmp_path):
    """A run trained without a window (null: nothing recorded in its data settings) resumed with one: the error says
    the saved run had no window (None), not that the window was not recorded; so for a checkpoint of an earlier
    version, whose data record lacks the key."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"seed": 0}  # what resolve_classification_data records with window null
    first.run()
    for earlier in (False, True):
        if earlier:
            path = tmp_path / "run" / "checkpoints" / "warmup" / "checkpoint_epoch=1.pt"
            saved = torch.load(path, weights_only=True)
            del saved["objects"]["settings"]["settings"]["data"]["window"]
            torch.save(saved, path)
        windowed = gvit_workflow(data, tmp_path / "run", resume=True)
        windowed.data_settings = {"seed": 0, "window": [0.0, 100.0]}
        with pytest.raises(ValueError, match=r"other settings \(data\.window: saved None, now \[0\.0, 100\.0\]\)"):
            windowed.check_resume()
        same = gvit_workflow(data, tmp_path / "run", resume=True)
        same.data_settings = {"seed": 0}
        same.check_resume()


def test_resume_on_changed_training_images_is_refused(tmp_path):
    """An image replaced by another (its size changed) or an item relabelled is named at the start of a resume;
    the unchanged data resume."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.run()
    gvit_workflow(data, tmp_path / "run", resume=True).trainer("warmup").run()  # finished phase: ends at once
    relabelled = [dict(it) for it in data.train]
    relabelled[0]["label"] = 1 - relabelled[0]["label"]
    again = gvit_workflow(data, tmp_path / "run", resume=True)
    again.cases = relabelled
    with pytest.raises(ValueError, match=r"GViT training trained on other data: .*1 differing"):
        again.check_resume()
    victim = Path(data.train[1]["image"])
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(victim)  # another picture under the same name
    with pytest.raises(ValueError, match=rf"trained on other data: .*{victim.parent.name}/{victim.name}"):
        gvit_workflow(data, tmp_path / "run", resume=True).check_resume()


def test_a_moved_run_of_the_default_task_resumes(tmp_path):
    """Where the default phantom task lies (inside the run folder) is no setting: a run folder moved as a whole
    resumes; another dataset_dir is still refused."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"dataset_dir": "", "default_root": str(tmp_path / "run" / "data"), "seed": 0}
    first.run()
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = gvit_workflow(data, tmp_path / "moved", resume=True)
    moved.data_settings = {"dataset_dir": "", "default_root": str(tmp_path / "moved" / "data"), "seed": 0}
    moved.trainer("warmup").run()  # finished phase: resumes and ends at once
    other = gvit_workflow(data, tmp_path / "moved", resume=True)
    other.data_settings = {"dataset_dir": str(tmp_path / "shapes"), "default_root": "", "seed": 0}
    with pytest.raises(ValueError, match=r"data\.dataset_dir: saved '', now"):
        other.trainer("warmup").run()


def test_a_run_that_recorded_where_its_default_task_lay_resumes(tmp_path):
    """GViT bundle 0.1.0 before 34480cb recorded the default phantom task's folder (``data.default_root``) in each
    phase checkpoint's settings; today's record has no such key, and such a run was refused whatever its settings
    ("data.default_root: saved '...', now (not set)"). The key is dropped from the saved record; the others are
    still compared."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.data_settings = {"dataset_dir": "", "seed": 0}
    first.run()
    for path in (tmp_path / "run" / "checkpoints" / "warmup").glob("*.pt"):  # the record as that release wrote it
        saved = torch.load(path, weights_only=True)
        saved["objects"]["settings"]["settings"]["data"]["default_root"] = str(tmp_path / "elsewhere" / "data")
        torch.save(saved, path)
    again = gvit_workflow(data, tmp_path / "run", resume=True)
    again.data_settings = {"dataset_dir": "", "default_root": str(tmp_path / "run" / "data"), "seed": 0}
    again.check_resume()
    again.trainer("warmup").run()  # finished phase: resumes and ends at once
    other = gvit_workflow(data, tmp_path / "run", resume=True)
    other.data_settings = {"dataset_dir": "", "default_root": str(tmp_path / "run" / "data"), "seed": 1}
    with pytest.raises(ValueError, match=r"other settings \(data\.seed: saved 0, now 1\)"):
        other.check_resume()


def test_a_run_whose_phase_checkpoints_record_no_settings_is_refused_in_one_line_naming_the_flags(tmp_path):
    """GViT bundle 0.1.0 as of b829c86 wrote phase checkpoints without settings or cases records; that release's
    classifier used 6 octaves. Such a resume was not compared and failed later on a weight of another size (three
    tracebacks); it is refused at the start, once for all phases, naming the flag that resumes it."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.epochs = {"warmup": 1, "classifier": 1, "joint": 1}
    first.run()
    for path in (tmp_path / "run" / "checkpoints").glob("*/*.pt"):  # the checkpoints as that release wrote them
        saved = torch.load(path, weights_only=True)
        saved["objects"] = {k: v for k, v in saved["objects"].items() if k not in ("settings", "cases")}
        torch.save(saved, path)
    again = gvit_workflow(data, tmp_path / "run", resume=True)
    again.epochs = {"warmup": 1, "classifier": 1, "joint": 1}
    with pytest.raises(ResumeRefused) as refused:
        again.check_resume()
    said = str(refused.value)
    assert len(said.splitlines()) == 1, said
    folders = str(tmp_path / "run" / "checkpoints" / "{warmup,classifier,joint}" / "checkpoint_epoch=1.pt")
    assert f"cannot resume from checkpoint {folders} ('settings')" in said, said
    assert "(model.classifier_freqs: saved 6, now 2). Resume with the saved settings (here --classifier_freqs 6) or" in said


def test_a_shorter_phase_on_resume_is_refused_before_any_phase_trains(tmp_path, folder_state):
    """Resumed with fewer joint epochs than its checkpoint has trained, a run stops before the earlier phases
    train or write anything, naming --joint_epochs (it trained them first and then named max_epochs)."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    gvit_workflow(data, tmp_path / "run", resume=False).run()  # warmup 1, classifier 1, joint 2
    before = folder_state(tmp_path / "run")
    again = gvit_workflow(data, tmp_path / "run", resume=True)
    again.epochs = {"warmup": 2, "classifier": 1, "joint": 1}
    with pytest.raises(ValueError, match=r"joint.checkpoint_epoch=2\.pt is at epoch 2, beyond joint_epochs=1"):
        again.run()
    assert folder_state(tmp_path / "run") == before


def test_a_fresh_run_replaces_the_earlier_runs_later_phases(tmp_path, caplog):
    """A fresh run in a used folder removes the earlier run's checkpoints of its other phases once it has saved
    its first checkpoint (so that a later resume cannot take them as its own), and nothing when stopped before."""
    import logging

    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    gvit_workflow(data, tmp_path / "run", resume=False).run()  # warmup 1, classifier 1, joint 2
    ckpts = tmp_path / "run" / "checkpoints"

    def saved(phase):
        return sorted(p.name for p in (ckpts / phase).glob("checkpoint_*.pt"))

    assert saved("classifier") == ["checkpoint_epoch=1.pt", "checkpoint_final.pt"] and saved("joint")
    stopped = gvit_workflow(data, tmp_path / "run", resume=False)
    build = stopped.trainer

    def stop_at_once(phase):
        trainer = build(phase)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda _: (_ for _ in ()).throw(KeyboardInterrupt()))
        return trainer

    stopped.trainer = stop_at_once
    with pytest.raises(KeyboardInterrupt):
        stopped.run()
    assert saved("classifier") and saved("joint")  # stopped before its first save: nothing removed
    fresh = gvit_workflow(data, tmp_path / "run", resume=False)
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

    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False)
    first.run()  # warmup 1, classifier 1, joint 2
    joint = tmp_path / "run" / "checkpoints" / "joint" / "checkpoint_final.pt"
    before = torch.load(joint, weights_only=True)["engine"]
    resumed = gvit_workflow(data, tmp_path / "run", resume=True)
    resumed.epochs = {"warmup": 2, "classifier": 1, "joint": 2}
    with caplog.at_level(logging.INFO, logger="medgmae.gvit"):
        resumed.run()
    assert "this run trains the 'warmup' phase, so the phases after it start afresh" in caplog.text
    assert "classifier: checkpoints (checkpoint_epoch=1.pt, checkpoint_final.pt)" in caplog.text
    assert "removed from" in caplog.text
    assert torch.load(joint, weights_only=True)["engine"] == before  # the joint phase ran its two epochs again
    s1, s2 = first.model.state_dict(), resumed.model.state_dict()
    assert not all(torch.equal(s1[k], s2[k]) for k in s1)


def test_a_task_of_another_version_is_refused_with_advice_the_user_can_follow(tmp_path):
    """Settings the user gave can be changed back; a task another version of the toolkit made cannot be remade by
    any setting, so the refusal says to train into a new folder instead."""
    import json

    from medgmae.engine.restore import ResumeRefused
    from medgmae.twod.phantom_task import _task_params, check_phantom_task_resume

    (tmp_path / "checkpoints" / "warmup").mkdir(parents=True)
    (tmp_path / "checkpoints" / "warmup" / "checkpoint_epoch=1.pt").write_bytes(b"")
    params = _task_params(4, seed=0, image_size=16)

    def refusal(saved: dict, **given) -> str:
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / "task.json").write_text(json.dumps({"params": saved}), encoding="utf-8")
        with pytest.raises(ResumeRefused) as e:
            check_phantom_task_resume(tmp_path / "data", tmp_path, **({"num_cases": 4, "seed": 0, "image_size": 16} | given))
        return str(e.value)

    assert "Resume with the interrupted run's phantom settings" in refusal(params, image_size=24)
    older = refusal({**params, "version": params["version"] - 1})
    assert "task version" in older and "train into a new output_dir" in older and "Resume with" not in older
