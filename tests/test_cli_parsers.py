"""Every command-line tool parses its flags with ``medgmae.cli_types.ToolParser``: no abbreviated options, and an
unknown option of a subcommand reported with that subcommand's usage. Checked on the tools themselves."""

from __future__ import annotations

import pytest

from medgmae.data.decathlon import main as datalist_main
from medgmae.data.phantom.cli import main as phantom_main
from medgmae.twod.cli import main as twod_main
from recon.cli import main as recon_main


@pytest.mark.parametrize("main, argv, abbreviated", [
    (phantom_main, ["--out", "X", "--num-cases", "1", "--sha", "16", "16", "16"], "--sha"),
    (datalist_main, ["X", "--validation-frac", "0.3"], "--validation-frac"),
    (recon_main, ["simulate", "--volume", "v.nii.gz", "--geometry", "parallel", "--out", "o", "--phot", "1e5"], "--phot"),
    (twod_main, ["layers", "--checkpoint", "m.pt", "--image", "i.png", "--out", "o", "--num-lay", "4"], "--num-lay"),
])  # fmt: skip
def test_an_abbreviated_option_is_not_taken_for_the_whole_one(main, argv, abbreviated, capsys):
    """argparse took ``--sha`` for ``--shape``: a typo, or a flag of another tool, picked an option silently."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {abbreviated}" in capsys.readouterr().err


@pytest.mark.parametrize("main, argv, usage", [
    (recon_main, ["evaluate", "--recon", "r.nii.gz", "--reference", "f.nii.gz", "--bogus"], "usage: medgmae-recon evaluate"),
    (twod_main, ["edges", "--checkpoint", "m.pt", "--image", "i.png", "--out", "o", "--bogus"], "usage: medgmae-2d edges"),
])  # fmt: skip
def test_an_unknown_option_of_a_subcommand_shows_that_subcommands_usage(main, argv, usage, capsys):
    """The usage printed with the error is the subcommand's (argparse printed the top-level one, which lists only
    the subcommands' names)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and "unrecognized arguments: --bogus" in err, err


@pytest.mark.parametrize("main, argv, said", [
    (recon_main, ["--hel"], "required: command; unrecognized arguments: --hel"),
    (recon_main, ["simulate", "--vol", "v.nii.gz"], "required: --volume, --geometry, --out; unrecognized arguments: --vol"),
    (phantom_main, ["--out", "X", "--num-c", "3"], "required: --num-cases; unrecognized arguments: --num-c"),
])  # fmt: skip
def test_a_missing_argument_error_also_names_the_unknown_options(main, argv, said, capsys):
    """argparse reports missing arguments before unknown options: ``--vol x`` (for ``--volume``) read 'required:
    --volume' alone, hiding the typo; both are named."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("main, argv, flag, usage", [
    (recon_main, ["reconstruct", "--projections", "p.npy", "--geometry", "g.json", "--out", "o", "--iterations", "3",
                  "--iterations", "4"], "--iterations", "usage: medgmae-recon reconstruct"),
    (phantom_main, ["--out", "X", "--num-cases", "1", "--shape", "16", "16", "16", "--shape", "8", "8", "8"], "--shape",
     "usage: medgmae-phantom"),
    (datalist_main, ["X", "--force", "--seed", "1", "--force"], "--force", "usage: medgmae-datalist"),
    (twod_main, ["layers", "--checkpoint", "m.pt", "--image", "i.png", "--out", "o", "--out", "p"], "--out",
     "usage: medgmae-2d layers"),
])  # fmt: skip
def test_an_option_given_twice_is_refused(main, argv, flag, usage, capsys):
    """``--iterations 3 --iterations 4`` ran 4 iterations without a word: the last one silently won."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and err.rstrip().endswith(f"error: {flag} given twice"), err


def test_options_meant_to_repeat_still_repeat():
    from medgmae.cli_types import ToolParser

    p = ToolParser(prog="t")
    p.add_argument("--tag", action="append")
    p.add_argument("-v", action="count", default=0)
    p.add_argument("--n", type=int)
    args = p.parse_args(["--tag", "a", "-v", "--tag", "b", "-v", "--n", "1"])
    assert args.tag == ["a", "b"] and args.v == 2 and args.n == 1


@pytest.mark.parametrize("main, argv, said", [
    (twod_main, ["layers", "--checkpoint", "m.pt", "--image", "i.png", "--out", "o", "--num_layers", "4"],
     "unrecognized arguments: --num_layers 4 (did you mean --num-layers?)"),
    (recon_main, ["simulate", "--volume", "v.nii.gz", "--geometry", "cone", "--out", "o", "--num_views", "3", "--photns", "4"],
     "unrecognized arguments: --num_views 3 --photns 4 (did you mean --views for --num_views, --photons for --photns?)"),
    (phantom_main, ["--out", "X", "--num_cases", "3"], "required: --num-cases; unrecognized arguments: --num_cases (did you mean --num-cases?)"),
    (twod_main, ["edges", "--checkpoint", "m.pt", "--image", "i.png", "--out", "o", "--zzzzqq"], "unrecognized arguments: --zzzzqq\n"),
])  # fmt: skip
def test_an_unknown_option_names_the_option_it_was_likely_meant_to_be(main, argv, said, capsys):
    """A bundle's key spelt as a tool's flag (``--num_layers``; the tools write ``--num-layers``) or a mistyped flag
    is named with the tool's flag it is close to; a flag close to none is named alone."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_a_fraction_given_as_a_percentage_is_refused_with_the_fraction():
    """``--label_fraction 10`` (meant as 10 %) is refused naming 0.1; a number beyond any percentage gets no such
    hint; a fraction passes."""
    import argparse

    from medgmae.cli_types import fraction

    assert fraction("0.1") == 0.1 and fraction("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number in \(0, 1\], got '10' \(a fraction, not a percentage: 10 % is 0.1\)"):
        fraction("10")
    for text, share in (("10%", "0.1"), (" 0.5 %", "0.005")):  # written with its percent sign: the same hint
        with pytest.raises(argparse.ArgumentTypeError, match=rf"got {text!r} \(a fraction, not a percentage: .* % is {share}\)"):
            fraction(text)
    for text in ("150", "0", "-5", "ten", "150%", "%"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            fraction(text)
        assert "percentage" not in str(e.value) and f"got {text!r}" in str(e.value)
