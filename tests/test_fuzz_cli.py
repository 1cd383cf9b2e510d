"""A fuzzed command line (issue 15): for every subcommand, argument lists built from its real argparse
flags with valid, boundary and invalid values. Each must end with exit code 0, 2 (one stderr line) or 3,
never an uncaught exception. Runs in-process; the expensive work a valid list would start (compiling a
toy model, loading a checkpoint, training a char-LM, the theory simulations, drawing a figure) is
replaced by a stub that stops the command, so validation is what gets exercised."""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import io
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from toybb.cli import main, make_parser

# default: 8 argument lists per subcommand, the same ones every run; TOYBB_FUZZ_EXAMPLES=N for N random ones
_N = int(os.environ.get("TOYBB_FUZZ_EXAMPLES", "0"))
settings.register_profile("fuzz", max_examples=_N or 8, deadline=None, derandomize=not _N,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("fuzz_slow", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
TRIED: collections.Counter = collections.Counter()
OUTCOMES: collections.Counter = collections.Counter()


class Work(BaseException):
    """Raised by the stubs: the arguments passed validation and real work was about to start."""


def _stop(*a, **k):
    raise Work


STUBS = [("toybb.train.loop", "Trainer"), ("toybb.pretrain.loop", "Pretrainer"), ("toybb.train.trainer", "Trainer"), ("toybb.llm.load", "load"), ("toybb.longctx.toy", "train_char_lm"),
         ("toybb.records", "save_figure")]


def _commands() -> dict[str, argparse.ArgumentParser]:
    """'train', 'longctx toy', ... -> parser, from toybb.cli.make_parser()."""
    out = {}

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[" ".join(prefix)] = parser
            return
        for name, p in subs[0].choices.items():
            walk(p, [*prefix, name])

    walk(make_parser(), [])
    return out


COMMANDS = _commands()

INTS = ["0", "1", "2", "3", "-1", "-7", "8", "64", "99999999999", "1e3", "x", "", "nan"]
FLOATS = ["0", "1", "0.5", "1e-3", "-1", "nan", "inf", "-inf", "1e308", "x", ""]
LISTS = ["", ",", "0", "1", "0,1", "1,2,4", "-1", "a,b", "nan", "1,,2", "none", "99999999"]
WORDS = ["", "none", "x", "softmax", "relu", "sgd", "adam", "learned", "rope", "plain,selfextend", "cpu",
         "prose=stdlib", "=", "a=b", "smollm2-135m-instruct", "1,3"]


def _paths(root: str) -> list[str]:
    """Files and folders a user might pass: existing/missing/binary/empty files, folders, broken run folders."""
    return [os.path.join(root, n) for n in ("missing", "text.txt", "binary.bin", "empty.txt", "folder",
                                            "broken_run", "config.yaml", "bad.json", "folder/missing/deeper",
                                            "text.txt/below", "image.png")]


def _make_files(root: str) -> None:
    os.makedirs(os.path.join(root, "folder"), exist_ok=True)
    os.makedirs(os.path.join(root, "broken_run"), exist_ok=True)
    with open(os.path.join(root, "text.txt"), "w") as f:
        f.write("The history of science is full of surprises. " * 20)
    with open(os.path.join(root, "binary.bin"), "wb") as f:
        f.write(bytes(range(256)) * 4)
    open(os.path.join(root, "empty.txt"), "w").close()
    with open(os.path.join(root, "config.yaml"), "w") as f:
        f.write("model: {d_model: 16}\ntrain: {steps: 2}\n")
    with open(os.path.join(root, "bad.json"), "w") as f:
        f.write('{"base": [1, ')
    with open(os.path.join(root, "broken_run", "config.json"), "w") as f:
        f.write('{"config": {"model": ')
    with open(os.path.join(root, "broken_run", "metrics.csv"), "w") as f:
        f.write("step,seed,lr,loss\n0,0,0.1,2.5\n2,0,0.")


def _values(action: argparse.Action, root: str) -> st.SearchStrategy[str]:
    if action.choices is not None:
        return st.sampled_from([*map(str, action.choices), "bogus"])
    t = action.type
    if t is int:
        return st.sampled_from(INTS)
    if t is float:
        return st.sampled_from(FLOATS)
    if t is not None:  # comma-separated list parsers (--lr, --no-mlp, ...)
        return st.sampled_from(LISTS + FLOATS)
    name = (action.metavar or action.dest or "").lower()
    paths = _paths(root)
    if any(k in name for k in ("dir", "file", "out", "run", "ckpt", "text", "config", "model", "tokenizer",
                                "table", "plot", "trained")):
        return st.sampled_from(paths + WORDS[:3])
    return st.sampled_from(WORDS + LISTS + paths[:3])


def _argv(command: str, root: str) -> st.SearchStrategy[list[str]]:
    parser = COMMANDS[command]
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    positionals = [a for a in actions if not a.option_strings]
    options = [a for a in actions if a.option_strings and a.dest not in ("distributed", "help")]

    @st.composite
    def build(draw):
        argv = command.split()
        for a in draw(st.lists(st.sampled_from(options), max_size=5, unique_by=lambda a: a.dest)) if options else []:
            flag = a.option_strings[-1]
            if a.nargs == 0:
                argv.append(flag)
            elif a.nargs in ("+", "*"):
                argv += [flag, *draw(st.lists(_values(a, root), min_size=1, max_size=2))]
            else:
                argv.append(f"{flag}={draw(_values(a, root))}")
        for a in actions:  # required options not drawn above
            if a.option_strings and a.required and not any(x.startswith(a.option_strings[-1]) for x in argv):
                argv.append(f"{a.option_strings[-1]}={draw(_values(a, root))}")
        for a in positionals:
            n = draw(st.integers(1, 2)) if a.nargs in ("+", "*") else 1
            argv += [draw(_values(a, root)) for _ in range(n)]
        return argv

    return build()


def run_in_process(argv: list[str]) -> tuple[str, str]:
    """(outcome, stderr): outcome is 'exit 0', 'exit 2', 'exit 3' or 'work' (validation passed)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except Work:
            return "work", err.getvalue()
    return f"exit {code}", err.getvalue()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Inputs on disk, the working folder for relative defaults, and the stubs."""
    root = str(tmp_path_factory.mktemp("fuzz"))
    _make_files(root)
    mp = pytest.MonkeyPatch()
    for mod, name in STUBS:  # the function itself, and every toybb module's name for it
        real = getattr(importlib.import_module(mod), name)
        for m in [m for k, m in sys.modules.items() if k.startswith("toybb") and m is not None]:
            for attr, value in list(vars(m).items()):
                if value is real:
                    mp.setattr(m, attr, _stop)
    statements = importlib.import_module("toybb.theory.statements")
    mp.setattr(statements, "ALL_CHECKS", [_stop])
    mp.chdir(root)
    mp.setenv("TOYBB_MODELS", os.path.join(root, "folder"))
    yield root
    mp.undo()
    print("\nfuzzed argument lists per subcommand:", dict(TRIED))
    print("outcomes:", dict(OUTCOMES))


def _fuzz(command: str, root: str, profile: str) -> None:
    @settings(settings.get_profile(profile))
    @given(data=st.data())
    def check(data):
        argv = data.draw(_argv(command, root), label="argv")
        TRIED[command] += 1
        outcome, err = run_in_process(argv)
        OUTCOMES[outcome] += 1
        assert "Traceback" not in err, (argv, err)
        assert outcome in ("exit 0", "exit 2", "exit 3", "work"), (argv, outcome, err)
        if outcome == "exit 2":
            lines = err.strip().splitlines()
            assert len(lines) == 1, (argv, lines)

    check()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fuzz_command_line(command, sandbox):
    _fuzz(command, sandbox, "fuzz")


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fuzz_command_line_long(command, sandbox):
    _fuzz(command, sandbox, "fuzz_slow")
