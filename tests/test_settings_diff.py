"""The one "saved vs now" comparison of a checkpoint's or state's settings with the current run's
(:func:`medgmae.settings_diff.settings_differences`), used by every resume check."""

import subprocess
import sys

import numpy as np
import pytest

from medgmae.settings_diff import settings_differences


def test_equal_settings_give_no_lines():
    settings = {"model": {"num_gaussians": 2048, "img_size": [96, 96, 96]}, "lr": 1e-4, "amp": True, "name": None}
    assert settings_differences(settings, settings) == []
    # what a record becomes after JSON or torch.save: tuples as lists, numpy scalars, float32-rounded floats
    saved = {"model": {"num_gaussians": np.int64(2048), "img_size": (96, 96, 96)}, "lr": float(np.float32(1e-4)),
             "amp": np.bool_(True), "name": None}  # fmt: skip
    assert settings_differences(saved, settings) == []


def test_each_differing_setting_is_one_line_in_one_wording():
    saved = {"num_gaussians": 2048, "mode": "clamp", "lr": 1e-4}
    now = {"num_gaussians": 1024, "mode": "logit", "lr": 2e-4}
    assert settings_differences(saved, now) == [
        "num_gaussians: saved 2048, now 1024", "mode: saved 'clamp', now 'logit'", "lr: saved 0.0001, now 0.0002"]


def test_keys_missing_on_either_side_are_named():
    lines = settings_differences({"a": 1, "old": "x", "none": None}, {"a": 1, "new": 3, "none": None})
    assert lines == ["new: saved (not recorded), now 3", "old: saved 'x', now (not set)"]
    # a key holding None is not the same as a key that is absent
    assert settings_differences({"k": None}, {}) == ["k: saved None, now (not set)"]


def test_a_setting_added_since_at_its_none_default_matches_a_record_without_it():
    """A record written before a setting existed (GViT's data settings before ``window``) resumes when the setting
    is at its default, None (the behaviour before it); another value is named."""
    saved = {"data": {"seed": 0}}
    assert settings_differences(saved, {"data": {"seed": 0, "window": None}}) == []
    assert settings_differences(saved, {"data": {"seed": 0, "window": [-1000, 1000]}}) == [
        "data.window: saved (not recorded), now [-1000, 1000]"]


def test_floats_within_tolerance_are_equal_and_bools_are_not_numbers():
    assert settings_differences({"tv": 0.1}, {"tv": 0.1 * (1 + 1e-8)}) == []
    assert settings_differences({"tv": 2}, {"tv": 2.0}) == []
    assert settings_differences({"tv": 0.1}, {"tv": 0.1001}) == ["tv: saved 0.1, now 0.1001"]
    assert settings_differences({"tv": 0.1}, {"tv": 0.1001}, rel_tol=0.01) == []
    assert settings_differences({"tv": 0.0}, {"tv": 1e-12}) == ["tv: saved 0.0, now 1e-12"]  # no absolute slack
    assert settings_differences({"flag": 1}, {"flag": True}) == ["flag: saved 1, now True"]
    assert settings_differences({"n": 3}, {"n": "3"}) == ["n: saved 3, now '3'"]


def test_nested_mappings_by_dotted_key_and_lists_as_whole_values():
    saved = {"model": {"k": 6, "size": [16, 16], "deep": {"x": 1}}, "data": {"seed": 0, "fractions": [0.5, 0.25]}}
    now = {"model": {"k": 8, "size": [16, 16, 16], "deep": {"x": 1}}, "data": {"seed": 0, "fractions": [0.5, 0.25 + 1e-12]}}
    assert settings_differences(saved, now) == ["model.k: saved 6, now 8", "model.size: saved [16, 16], now [16, 16, 16]"]
    # a mapping on one side only is one line with the whole value
    assert settings_differences({"pre": None}, {"pre": {"a": 1}}) == ["pre: saved None, now {'a': 1}"]
    # lists of mappings compare element by element
    assert settings_differences({"l": [{"a": 1.0}]}, {"l": [{"a": 1}]}) == []
    assert settings_differences({"l": [{"a": 1}]}, {"l": [{"b": 1}]}) == ["l: saved [{'a': 1}], now [{'b': 1}]"]


def test_lines_follow_the_current_order_then_saved_only_keys_sorted():
    now = {"z": 1, "a": 1, "m": {"y": 1, "b": 1}}
    lines = settings_differences({"a": 2, "m": {"b": 2, "y": 2}, "z": 2, "q": 0, "c": 0}, now)
    assert [line.split(":")[0] for line in lines] == ["z", "a", "m.y", "m.b", "c", "q"]
    reordered = settings_differences({"c": 0, "q": 0, "z": 2, "m": {"y": 2, "b": 2}, "a": 2}, now)
    assert reordered == lines  # the saved record's order does not matter


def test_labels_name_settings_by_their_dotted_key():
    lines = settings_differences({"init": {"num_gaussians": 100, "x": 1}}, {"init": {"num_gaussians": 50, "x": 2}},
                                 labels={"init.num_gaussians": "--num-gaussians"})  # fmt: skip
    assert lines == ["--num-gaussians: saved 100, now 50", "init.x: saved 1, now 2"]


def test_non_mappings_are_refused():
    with pytest.raises(ValueError, match="saved settings must be a mapping, got list"):
        settings_differences([1], {})
    with pytest.raises(ValueError, match="current settings must be a mapping, got NoneType"):
        settings_differences({}, None)


def test_the_reconstruction_resume_check_stays_free_of_ignite_and_monai():
    code = "import sys, recon.resume; print(sorted(m for m in ('ignite', 'monai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
