"""Flags shared by every `toybb` subcommand, and the rules every flag follows.

- A list flag takes comma-separated values and accumulates when repeated (`--lr 1e-3 --lr 2e-3` is
  `--lr 1e-3,2e-3`); flags whose items contain commas (`--edit`, `--domain`) are repeated instead.
- A scalar flag given twice is an error (one line, exit 2), not a silent override.
- A flag renamed since an earlier release is an error naming the new one (`RENAMED_FLAGS`); an unknown flag,
  subcommand or choice names the closest ones (`--stpes`, `trian`: did you mean --steps, train?); a stray
  positional of a command that takes `--text` says to give it as `--text` (the old `toybb ppl MODEL FILE` form).
- A list flag given nothing (`--lr ,`) is an error, not the default.
- One flag per concept: `--text SOURCE` wherever one text is meant, `--domain NAME=SOURCE` (repeated) wherever
  several named texts are compared.
- Every help text shows the default (`DefaultsFormatter`).
Imported by CLIs in several layers, so it imports only `toybb.errors` and `toybb.texts` (standard library only).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Callable

from toybb.device import start_distributed
from toybb.errors import ConfigError
from toybb.texts import BUILTINS

MODEL_HELP = "HF model directory, .gguf file, `toybb pretrain` folder, or a name from `toybb models`"
TEXT_HELP = (f"text SOURCE: a text file, a folder, a .jsonl file (field 'text') or a built-in corpus "
             f"({', '.join(BUILTINS)}); relative paths are also looked up under $TOYBB_DATA when it is set")

# command ("ppl", "longctx toy") -> {old flag: what replaces it}
RENAMED_FLAGS: dict[str, dict[str, str]] = {
    "ppl": {"--max-tokens": "--tokens", "--window": "--seq-len"},
    "longctx ppl-length": {"--model": "the positional MODEL", "--texts": "--text", "--length": "--tokens",
                           "--lengths": "--seq-len", "--window": "--sliding-window"},
    "longctx passkey": {"--model": "the positional MODEL", "--lengths": "--seq-len"},
    "longctx stream": {"--model": "the positional MODEL", "--window": "--recent"},
    "longctx posvec": {"--model": "the positional MODEL", "--texts": "--text", "--seq": "--seq-len",
                       "--layers": "--plot-layers"},
    "longctx toy": {"--context": "--seq-len", "--window": "--sliding-window", "--selfextend-window": "--selfextend"},
}

_GIVEN = "_toybb_given"  # namespace attribute: the actions seen in this parse (removed after parsing)


def _given(namespace) -> set:
    return namespace.__dict__.setdefault(_GIVEN, set())


class _Once:
    """Mixin of the scalar actions: a second occurrence of the flag is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = _given(namespace)
        if self in seen:
            parser.error(f"{option_string} given twice ({option_string} takes one value; give it once)")
        seen.add(self)
        super().__call__(parser, namespace, values, option_string)


class StoreOnce(_Once, argparse._StoreAction):
    pass


class StoreTrueOnce(_Once, argparse._StoreTrueAction):
    pass


class StoreFalseOnce(_Once, argparse._StoreFalseAction):
    pass


class ListAction(argparse.Action):
    """A comma-separated list flag (its `type` returns a tuple); repeating the flag appends to the list."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = _given(namespace)
        old = tuple(getattr(namespace, self.dest) or ()) if self in seen else ()
        seen.add(self)
        setattr(namespace, self.dest, old + tuple(values))


class Renamed(argparse.Action):
    """A flag's former name: using it is an error that names the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        kw.update(nargs="?", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed {self.new}")


class DefaultsFormatter(argparse.HelpFormatter):
    """Every help text ends with its default, unless the default is None/False or the text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d is argparse.SUPPRESS or d == () or d == [] or "default" in text.lower()
                or not action.option_strings and action.nargs in ("+", "*")):
            return text
        shown = ",".join(map(str, d)) if isinstance(d, (tuple, list)) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """toybb's parser: one-line errors (exit 2), the rules above for every flag, defaults in the help."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*a, **kw)
        self.register("action", None, StoreOnce)
        self.register("action", "store", StoreOnce)
        self.register("action", "store_true", StoreTrueOnce)
        self.register("action", "store_false", StoreFalseOnce)
        self.register("action", "list", ListAction)
        self.register("action", "renamed", Renamed)

    def _check_value(self, action, value):  # an unknown subcommand or choice: the closest ones too
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            raise argparse.ArgumentError(action, e.message + did_you_mean(str(value), map(str, action.choices))) \
                from None

    def error(self, message):  # one line, exit 2 (argparse prints the whole usage otherwise)
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        if args is not None and self._subparsers is None:  # a command: an unknown flag before a missing one
            unknown = [a for a in (args[:args.index("--")] if "--" in args else args) if self._unknown_flag(a)]
            if unknown:
                self.error(unrecognized(self, unknown))
        ns, rest = super().parse_known_args(args, namespace)
        ns.__dict__.pop(_GIVEN, None)
        return ns, rest

    def _unknown_flag(self, arg: str) -> bool:
        if not arg.startswith("--") or arg == "--":
            return False
        name = arg.split("=", 1)[0]
        return not any(o.startswith(name) for o in self._option_string_actions)  # argparse takes prefixes

    def parse_args(self, args=None, namespace=None):
        ns, rest = self.parse_known_args(args, namespace)
        if rest:
            chosen = chosen_parser(self, ns)
            chosen.error(unrecognized(chosen, rest))
        return ns


def chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)parser of the command `args` were parsed for (`toybb longctx toy` -> its own parser)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def did_you_mean(name: str, choices) -> str:
    """'; did you mean X or Y?' naming the closest of `choices` to a mistyped `name`, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def unrecognized(parser: argparse.ArgumentParser, rest: list[str]) -> str:
    """The message for arguments `parser` does not take: the closest flags of an unknown flag, and for a
    stray positional of a command with --text, the --text form."""
    flags = [o for a in parser._actions for o in a.option_strings if a.help is not argparse.SUPPRESS]
    for arg in rest:
        if arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0]
            return f"unknown flag {name}" + did_you_mean(name, flags)
    if "--text" in flags:
        return f"unexpected argument {rest[0]!r}; a text is given as --text {rest[0]}"
    return f"unexpected argument{'s' if len(rest) > 1 else ''} {' '.join(rest)}"


def add_renamed(parser: argparse.ArgumentParser, command: str) -> None:
    """Hidden options for the former flag names of `command` (a key of RENAMED_FLAGS)."""
    for old, new in RENAMED_FLAGS.get(command, {}).items():
        parser.add_argument(old, action=Renamed, new=new)


def comma_list(item: Callable = str, what: str = "values") -> Callable[[str], tuple]:
    """argparse type of a list flag: 'a,b' -> (item(a), item(b)); empty items are skipped."""

    def parse(text: str) -> tuple:
        try:
            out = tuple(item(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            out = ()
        if not out:  # nothing parsable, or nothing at all ('', ','): not a silent default
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return out

    parse.__name__ = f"list of {what}"
    return parse


INTS = comma_list(int, "integers")
FLOATS = comma_list(float, "numbers")
STRS = comma_list(str, "names")


def add_list(p, flag: str, item: Callable, default: tuple | None, help: str, **kw) -> None:
    """A list flag: comma-separated, repeatable (the values accumulate)."""
    i = help.find(" (default") if " (default" in help else len(help)
    p.add_argument(flag, action=ListAction, type=item, default=default,
                   help=help[:i] + ", comma-separated or repeated" + help[i:], **kw)


def add_model(p, help: str = MODEL_HELP, metavar: str = "MODEL", tokenizer: bool = True) -> None:
    """The positional MODEL, --dtype, --step and (for commands that tokenize) --tokenizer."""
    p.add_argument("model", metavar=metavar, help=help)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter and activation dtype")
    p.add_argument("--step", type=int, default=None, metavar="N",
                   help="the checkpoint of a `toybb pretrain` folder's series (default: its latest)")
    if tokenizer:
        p.add_argument("--tokenizer", metavar="TOKENIZER_JSON", default=None,
                       help="tokenizer.json to use instead of the checkpoint's own")


def add_seq_len(p, default: int | None, help: str = "tokens per sequence the model sees in one forward pass",
                **kw) -> None:
    p.add_argument("--seq-len", type=int, default=default, metavar="N", help=help, **kw)


def add_text(p, default: str | tuple | None, many: bool = False, help: str = TEXT_HELP, **kw) -> None:
    """--text SOURCE (resolved by toybb.texts.resolve_source); `many`: a list flag of sources."""
    if many:
        add_list(p, "--text", STRS, default, help, metavar="SOURCE", **kw)
    else:
        p.add_argument("--text", default=default, metavar="SOURCE", help=help, **kw)


def add_distributed(p, what: str) -> None:
    """--distributed (also TOYBB_DISTRIBUTED=1) and, outside SLURM/TPU, --coordinator, --num-processes and
    --process-id; `what` says what the processes share."""
    p.add_argument("--distributed", action="store_true",
                   help=f"multi-host: call jax.distributed.initialize() (SLURM/TPU environment) and {what} "
                   "(also TOYBB_DISTRIBUTED=1)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed, outside SLURM/TPU: process 0's address")
    p.add_argument("--num-processes", type=int, help="with --distributed, outside SLURM/TPU: number of processes")
    p.add_argument("--process-id", type=int, help="with --distributed, outside SLURM/TPU: this process's index")


def check_distributed(args) -> None:
    """The multi-host flags' values, before anything starts (`toybb.cli.main`, for every command that has them)."""
    for flag, v in (("--num-processes", args.num_processes), ("--process-id", args.process_id)):
        if v is not None and v < (1 if flag == "--num-processes" else 0):
            raise ConfigError(f"{flag} must be {'>= 1' if flag == '--num-processes' else '>= 0'}, got {v}")


def distributed_process(args) -> tuple[int, int]:
    """(index, count) of this process: (0, 1) unless --distributed or TOYBB_DISTRIBUTED=1 starts a multi-host run."""
    if getattr(args, "process", None) is None:  # joined once (`toybb.cli.main` does it before any JAX backend starts)
        args.process = (0, 1)
        if args.distributed or os.environ.get("TOYBB_DISTRIBUTED") == "1":
            args.process = start_distributed(args.coordinator, args.num_processes, args.process_id)
    return args.process
