"""The rules every flag follows (toybb.cliargs): help and default shown for every option of every
subcommand, list flags accumulate, scalar flags given twice and renamed flags are one-line errors."""

from __future__ import annotations

import argparse

import pytest

from toybb.cli import main, make_parser
from toybb.cliargs import FLOATS, INTS, RENAMED_FLAGS, DefaultsFormatter, Parser, add_list
from toybb.texts import read_source, resolve_source


def _parsers():
    """'train', 'longctx toy', ... -> parser, for every (sub-)subcommand of `toybb`."""
    out = {}

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[" ".join(prefix)] = parser
        for name, p in (subs[0].choices.items() if subs else ()):
            walk(p, [*prefix, name])

    walk(make_parser(), [])
    return out


PARSERS = _parsers()


def test_every_option_of_every_subcommand_has_help():
    missing = [f"{cmd} {a.option_strings[0] if a.option_strings else a.dest}"
               for cmd, p in PARSERS.items() for a in p._actions if not (a.help or "").strip()]
    assert not missing, missing
    assert {"longctx toy", "longctx ppl-length", "ppl", "train", "probe"} <= set(PARSERS)


def test_every_help_shows_its_default():
    for cmd, p in PARSERS.items():
        for a in p._actions:
            if a.help != argparse.SUPPRESS and a.default not in (None, False, argparse.SUPPRESS, (), []) and a.option_strings:
                assert "default" in DefaultsFormatter(cmd)._get_help_string(a).lower(), (cmd, a.option_strings)
        assert "(default: )" not in " ".join(p.format_help().split()), cmd  # an empty default is not shown
    assert "(default: float32)" in PARSERS["ppl"].format_help()
    assert "(default: 1,2,4)" in PARSERS["longctx toy"].format_help()


def test_renamed_table_names_real_commands_and_new_flags():
    for cmd, table in RENAMED_FLAGS.items():
        flags = {s for a in PARSERS[cmd]._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        for old, new in table.items():
            assert old not in flags, (cmd, old)
            assert new in flags or new.startswith("the positional"), (cmd, new)


def _parse(argv):
    p = Parser(prog="t")
    add_list(p, "--lr", FLOATS, None, "learning rates")
    add_list(p, "--layers", INTS, (1, 2), "layers")
    p.add_argument("--steps", type=int, default=3, help="steps")
    p.add_argument("--quiet", action="store_true", help="quiet")
    return p.parse_args(argv)


def test_list_flag_accumulates_when_repeated():
    assert _parse(["--lr", "1e-3", "--lr", "2e-3"]).lr == _parse(["--lr", "1e-3,2e-3"]).lr == (1e-3, 2e-3)
    assert _parse([]).layers == (1, 2) and _parse(["--layers", "5", "--layers", "6,7"]).layers == (5, 6, 7)
    assert "_toybb_given" not in vars(_parse(["--steps", "4"]))


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "1", "--steps", "2"], "--steps given twice"),
    (["--quiet", "--quiet"], "--quiet given twice"),
])
def test_scalar_flag_given_twice_is_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--steps", "2", "--steps", "3"], "--steps given twice"),
    (["longctx", "toy", "--out", "{tmp}", "--context", "16"], "--context was renamed --seq-len"),
    (["longctx", "posvec", "m", "--out", "{tmp}", "--texts", "a"], "--texts was renamed --text"),
    (["longctx", "stream", "m", "--out", "{tmp}", "--window", "8"], "--window was renamed --recent"),
    (["longctx", "ppl-length", "--model", "m", "--out", "{tmp}"], "--model was renamed"),
    (["ppl", "m", "--text", "t", "--window", "8"], "--window was renamed --seq-len"),
    (["train", "--stpes", "5"], "unknown flag --stpes; did you mean --steps"),
    (["sweep", "f.yaml", "--dry-rn"], "did you mean --dry-run"),
    (["intervene", "m", "--out", "{tmp}", "--domian", "a=b"], "did you mean --domain"),
    (["ppl", "m", "t.txt"], "unexpected argument 't.txt'; a text is given as --text t.txt"),
    (["probe", "m", "t.txt", "--out", "{tmp}"], "a text is given as --text t.txt"),
    (["ppl", "m"], "give the text to score: --text SOURCE"),
])
def test_command_line_rules_end_to_end(argv, needle, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_repeated_list_flags_of_real_commands_accumulate(tmp_path):
    p = make_parser()
    a = p.parse_args(["longctx", "stream", "m", "--out", str(tmp_path), "--sinks", "1", "--sinks", "2,3"])
    assert a.sinks == (1, 2, 3)
    a = p.parse_args(["figures", "--only", "theory", "--only", "circuit,interventions"])
    assert a.only == ("theory", "circuit", "interventions")
    a = p.parse_args(["train", "--lr", "1e-3", "--lr", "2e-3"])
    assert a.lr == (1e-3, 2e-3)


def test_text_sources_resolve_under_toybb_data(tmp_path, monkeypatch):
    (tmp_path / "prose").mkdir()
    (tmp_path / "prose" / "a.txt").write_text("hello world")
    monkeypatch.setenv("TOYBB_DATA", str(tmp_path))
    assert resolve_source("prose/a.txt") == str(tmp_path / "prose" / "a.txt")
    assert read_source("prose") == "hello world" and resolve_source("pydoc") == "pydoc"
    from toybb.errors import ConfigError

    with pytest.raises(ConfigError, match="TOYBB_DATA"):
        resolve_source("prose/missing.txt")


def test_one_flag_per_concept():
    """--text SOURCE wherever one text is meant, --domain NAME=SOURCE wherever several named ones are, --step N
    wherever a MODEL is read."""
    def flags(cmd):
        return {o: a for a in PARSERS[cmd]._actions for o in a.option_strings}
    for cmd in ("ppl", "intervene", "probe", "longctx stream", "series"):
        assert flags(cmd)["--text"].metavar == "SOURCE", cmd
    for cmd in ("intervene", "probe"):
        assert flags(cmd)["--domain"].metavar == "NAME=SOURCE", cmd
    for cmd in ("ppl", "intervene", "probe", "inspect", "longctx stream"):  # a checkpoint of a pretrain folder
        assert flags(cmd)["--step"].type is int and flags(cmd)["--step"].default is None, cmd


def test_edit_fields_need_no_shell_quoting():
    from toybb.intervene_cli import _parse_edit

    a = _parse_edit("blocks.*.attn.z:scale:layer=3,head=0,2,value=0.5,position=first:5")
    b = _parse_edit("blocks.*.attn.z:scale:layer=3;head=0,2;value=0.5;position=first:5")
    assert a == b and a.sel == {"layer": "3", "head": "0,2", "position": "first:5"} and a.value == 0.5


def test_train_help_shows_the_presets_values():
    text = " ".join(PARSERS["train"].format_help().split())
    assert "the preset's)" not in text
    assert "training steps (default: 5000 with --preset cpu, 10000 with paper)" in text
    assert "number of trigger tokens (default: 3)" in text


def test_public_names_and_one_error_class_per_mistake():
    import toybb
    from toybb.models.capture import Capture
    from toybb.models.sites import SiteError

    assert {"load", "Edit", "Error"} <= set(dir(toybb))
    for bad in ("blocks.*.resid_post@nrm", 3):  # a bad reduction is a site mistake, like a bad site
        with pytest.raises(SiteError):
            Capture((bad,))
