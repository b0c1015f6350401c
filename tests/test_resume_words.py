"""The flags and values a refused resume names (medgmae.engine.resume_words), on their own: values quoted so that a
POSIX shell hands them over whole (checked with ``sh`` itself), the flag forms checked, settings reached only through
sections, and what a flag cannot give said in words that name the flag."""

from __future__ import annotations

import subprocess

import pytest

from medgmae.engine.resume_words import check_flags, flag_value, resume_flags, unflagged


def _through_sh(words: list[str]) -> list[str]:
    """The words as ``sh`` hands them to a command (each printed between NULs)."""
    said = subprocess.run(["sh", "-c", "printf '%s\\0' " + " ".join(words)], capture_output=True, text=True, check=True)
    return said.stdout.split("\0")[:-1]


@pytest.mark.parametrize("value", ["/data/my scans", "C:\\dir\\", "x\\$HOME", "a`echo hi`b", 'say "hi"', "$HOME", ""])
def test_a_value_comes_back_whole_from_the_shell(value):
    assert _through_sh([flag_value(value)]) == [value]


def test_plain_values_stay_unquoted_and_a_space_is_quoted():
    assert [flag_value(v) for v in ("/data/x_1.nii.gz", 6, True, None)] == ["/data/x_1.nii.gz", "6", "true", "null"]
    assert flag_value("a b") == '"a b"'


def test_the_flag_forms_are_checked():
    """A component's ``::`` is written ``#`` in every form; a list of three, or a sized form of a list of names, is
    no form."""
    flags = {"w": [["network_def::a_min", "network_def::a_max"], "items"], "p": ["network_def::patch", "side"]}
    assert check_flags(flags) == {"w": (("network_def#a_min", "network_def#a_max"), "items"), "p": ("network_def#patch", "side")}
    for bad in (["x", "side", "extra"], [["x"], "side"], [["x"], "edge"]):
        with pytest.raises(ValueError, match=r"^flags\['a'\] must be a flag name"):
            check_flags({"a": bad})


def test_a_setting_under_a_value_that_is_no_section_has_no_saved_value():
    """``model.size`` where the saved record holds ``model`` as one number: no value to give, nothing named."""
    diff, saved = ["model.size: saved (not recorded), now 3"], {"model": 5}
    assert resume_flags({"model.size": "size"}, diff, saved) == [] and unflagged({"model.size": "size"}, diff, saved) == {}


def test_a_setting_the_saved_record_lacks_is_left_out():
    assert unflagged({}, ["new: saved (not recorded), now 3", "old: saved 1, now 2"], {"old": 1}) == {"old": ""}


@pytest.mark.parametrize("sizes", [[1.5, 1.5], [True, True], [], "16"], ids=["fractions", "booleans", "none", "text"])
def test_sizes_that_are_no_whole_numbers_give_no_words_and_say_what_the_flag_takes(sizes):
    """A sized flag gives no words for sizes that are not whole numbers (nor for no sizes at all), and the line says
    what the flag takes, naming it whole."""
    diff, saved = ["patch: saved ..., now [8, 8]"], {"patch": sizes}
    side, edge = {"patch": ["patch_size", "side"]}, {"patch": ["patch_size", "edge"]}
    assert resume_flags(side, diff, saved) == [] and resume_flags(edge, diff, saved) == []
    assert unflagged(side, diff, saved) == {"patch": "--patch_size takes whole-number sizes, one or one a side"}
    assert unflagged(edge, diff, saved) == {"patch": "--patch_size takes one size for every side"}


def test_values_not_one_for_each_flag_say_what_the_flags_take():
    flags, diff = {"window": [["a_min", "a_max"], "items"]}, ["window: saved [1.0, 2.0, 3.0], now [0.0, 1.0]"]
    assert resume_flags(flags, diff, {"window": [1.0, 2.0, 3.0]}) == []
    assert unflagged(flags, diff, {"window": [1.0, 2.0, 3.0]}) == {"window": "--a_min / --a_max take one value each"}
    assert resume_flags(flags, diff, {"window": [-175.0, 250.0]}) == ["--a_min -175.0", "--a_max 250.0"]
