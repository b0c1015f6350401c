"""The gvit_classification bundle: train, evaluate and resume end to end, bad input, metadata, its flags and
handlers as config, per-epoch log lines and the closing summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, verify_metadata
from monai.utils import set_determinism
from PIL import Image

from medgmae.twod.gvit import GViT
from medgmae.engine import GradientClipHandler

from gvit_helpers import REPO, BUNDLE, TINY, gvit_bundle_command, run_gvit_bundle, shapes_dataset


#: third-party notices the bundles filter or avoid (none may reach the console)
FILTERED = ("nvImageCodec", "torch.meshgrid", "Orientationd.__init__:labels")


def test_bundle_train_evaluate_and_resume(tmp_path, capfd, folder_state):
    out = tmp_path / "run"
    run_gvit_bundle("train.json", output_dir=str(out), **TINY)
    console = "".join(capfd.readouterr())
    assert not any(text in console for text in FILTERED), [t for t in FILTERED if t in console]
    # the closing summary names the confusion matrix and the ellipse explanations that exist
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert Path(summary["files"]["confusion_matrix"]).is_file() and len(summary["explanation_files"]) == 2
    assert all(Path(p).is_file() for p in summary["explanation_files"])
    assert summary["accuracy"] == json.loads((out / "metrics.json").read_text(encoding="utf-8"))["accuracy"]
    assert "evaluate.json" in summary["next"]["evaluate"] and str(out) in summary["next"]["evaluate"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
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
    # the file alone says the seed and loader workers that metrics.json records
    assert model.run_settings == {"seed": metrics["data"]["seed"], "num_workers": metrics["data"]["num_workers"]} == {
        "seed": 0, "num_workers": 0}

    # the evaluation config on the same model and validation split reproduces the training metrics
    task_stamp = (out / "data" / "task.json").stat().st_mtime_ns
    # with the summary's command: no data flags (model.pt records them)
    assert not any(flag in summary["next"]["evaluate"] for flag in ("--num_phantoms", "--seed", "--val_fraction"))
    run_gvit_bundle("evaluate.json", run_id="evaluating", output_dir=str(out), device="cpu", num_explanations=-1)
    ev = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert ev["confusion_matrix"] == metrics["confusion_matrix"]
    assert len(list((out / "eval" / "explanations").glob("*.png"))) == ev["num_images"]  # one per image
    assert (out / "data" / "task.json").stat().st_mtime_ns == task_stamp  # the task at the model's size was reused
    ev_summary = json.loads((out / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert len(ev_summary["explanation_files"]) == ev["num_images"] and ev_summary["files"]["model"] == str(out / "model.pt")
    # a model in a folder this user cannot write (a shared model store), its own data and --eval_dir elsewhere: the
    # evaluation writes nothing into output_dir, so it is not asked to be writable (it was, and refused)
    elsewhere = tmp_path / "elsewhere"
    run_gvit_bundle("evaluate.json", run_id="evaluating", output_dir="/proc/self/store", model_path=str(out / "model.pt"),
                    dataset_dir=str(out / "data"), eval_dir=str(elsewhere), device="cpu", num_explanations=0)  # fmt: skip
    assert json.loads((elsewhere / "metrics.json").read_text(encoding="utf-8"))["num_images"] > 0
    assert json.loads((elsewhere / "summary.json").read_text(encoding="utf-8"))["files"]["model"] == str(out / "model.pt")

    # resume of a finished run: every phase restarts from its last checkpoint, nothing is retrained
    before = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    epoch_files = sorted((out / "checkpoints").glob("*/checkpoint_epoch=1.pt"))
    stamps = [p.stat().st_mtime_ns for p in epoch_files]
    run_gvit_bundle("train.json", output_dir=str(out), resume=True, **TINY)
    assert len(epoch_files) == 3 and [p.stat().st_mtime_ns for p in epoch_files] == stamps  # no epoch was re-run
    after = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)

    # a resume with another batch size is refused at the first phase's start, with the run folder as it was
    state = folder_state(out)
    with pytest.raises(RuntimeError) as refused:
        run_gvit_bundle("train.json", output_dir=str(out), resume=True, **{**TINY, "batch_size": 16})
    assert "(2 per epoch, batch size 32), but this run has 3 iterations per epoch (batch size 16)" in str(refused.value.__cause__)
    assert folder_state(out) == state


def test_a_resume_with_other_phantom_task_settings_leaves_the_run_folder_as_it_was(tmp_path, folder_state):
    """The default phantom task lies in the run folder: a resume with another image_size or num_phantoms is refused
    naming the setting, saved and now, before the task is cleared or written again (its task.json and slices were
    regenerated, then the checkpoints refused the new data); the run's own settings still resume."""
    out, tiny = tmp_path / "run", {**TINY, "num_explanations": 0}
    run_gvit_bundle("train.json", output_dir=str(out), **tiny)
    state = folder_state(out)
    for key, value in (("image_size", 24), ("num_phantoms", 4)):
        with pytest.raises(RuntimeError) as refused:
            run_gvit_bundle("train.json", output_dir=str(out), resume=True, **{**tiny, key: value})
        assert folder_state(out) == state, key
        message = str(refused.value.__cause__)
        assert f"trained on a phantom task generated with other settings ({key}: saved {tiny[key]}, now {value})" in message
    epoch_files = sorted((out / "checkpoints").glob("*/checkpoint_epoch=1.pt"))
    run_gvit_bundle("train.json", output_dir=str(out), resume=True, **tiny)
    assert len(epoch_files) == 3 and all(state[str(p.relative_to(out))][1] == p.stat().st_mtime_ns for p in epoch_files)
    assert folder_state(out / "data") == {k[5:]: v for k, v in state.items() if k.startswith("data/")}


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
    res = gvit_bundle_command("train.json", "--output_dir", str(out), "--dataset_dir", str(tmp_path / "single"), *args)
    assert res.returncode != 0
    assert "at least 2 classes" in res.stderr and str(tmp_path / "single") in res.stderr
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


def test_metadata_verifies(tmp_path):
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text(encoding="utf-8"))
    schema = str(REPO / "bundles" / "schema" / "meta_schema.json")
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=schema)  # raises when invalid
    del meta["network_data_format"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=schema)


def _parser(tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({**TINY, "dataset_dir": str(shapes_dataset(tmp_path / "shapes")), "output_dir": str(tmp_path / "run"),
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
    assert json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))["next"] == {}
    with pytest.raises(ValueError, match="stage"):
        gvit_summary(tmp_path, stage="testing")


def test_the_readmes_clip_json_lists_the_shipped_handlers():
    """The README's ``clip.json`` replaces ``train#handlers``: its entries before the clip handler are the shipped
    ``train.json``'s, exactly (its NonFiniteLossHandler had a plain ``@amp`` and lacked two settings)."""
    readme = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    block = readme.split('```json\n{\n    "train#handlers"', 1)[1].split("```", 1)[0]
    clip = json.loads('{"train#handlers"' + block)["train#handlers"]
    shipped = json.loads((BUNDLE / "configs" / "train.json").read_text(encoding="utf-8"))["train"]["handlers"]
    assert clip[:-1] == shipped and clip[-1]["_target_"] == "medgmae.engine.GradientClipHandler"
