"""Command line: the `toybb` parser, built from one module per group of subcommands, and the error handling
around them.

Each command module (`toybb.commands.*` and the `cli` module of a part of toybb) has `register(subparsers)`
(or an `add_*` per subcommand): it parses, checks its input, calls library functions and prints; no command
runs another through an argument list. Bad input gives one line on stderr and exit code 2; a diverged run
exits with 3.
"""

from __future__ import annotations

import argparse
import os
import sys

from toybb import intervene_cli
from toybb._version import __version__
from toybb.cliargs import Parser
from toybb.commands import compare, figures, pretrain, series
from toybb.commands import train as train_commands
from toybb.errors import ConfigError, ToybbError
from toybb.llm import cli as llm_cli
from toybb.longctx import cli as longctx_cli
from toybb.probes import cli as probes_cli
from toybb.records import out_folder
from toybb.texts import resolve_source
from toybb.theory import cli as theory_cli

# optional packages and the extra that installs them
OPTIONAL_PACKAGES = {"gguf": "llm", "safetensors": "llm", "tokenizers": "llm", "torch": "parity",
                     "transformers": "parity", "accelerate": "parity"}

# the subcommands, in the order of `toybb --help`
COMMANDS = (train_commands.add_train, train_commands.add_plot, theory_cli.register, llm_cli.register,
            probes_cli.register, intervene_cli.register, longctx_cli.register, train_commands.add_sweep, pretrain.add_pretrain, series.register,
            figures.register, compare.register)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="toybb", description="Extreme-token phenomena sandbox (attention sinks, value drains, "
                     "residual peaks) on toy models and pretrained LLMs.")
    parser.add_argument("--version", action="version", version=f"toybb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def _host_devices_from_env() -> None:
    """TOYBB_HOST_DEVICES=N exposes N XLA host (CPU) devices, over which the run axis of a vmapped
    batch is sharded (measured: +20-24% run-steps/s for 4-8 runs of the CPU default on 2 cores). Opt-in,
    because float round-off then differs slightly from a one-device run. Must run before JAX starts."""
    if "jax" in sys.modules and getattr(sys.modules["jax"], "_src", None) is not None:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    n = os.environ.get("TOYBB_HOST_DEVICES")
    if n is None:
        return
    if not n.isdigit() or int(n) < 1:
        raise ConfigError(f"TOYBB_HOST_DEVICES must be a positive integer, got {n!r}")
    if int(n) > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()


def chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)parser of the command `args` were parsed for (`toybb longctx toy` -> its own parser)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def check_output_folders(parser: argparse.ArgumentParser, args) -> None:
    """Every DIR option (output folders) must be a folder or creatable: checked before any work."""
    for a in chosen_parser(parser, args)._actions:
        value = getattr(args, a.dest, None)
        if a.metavar == "DIR" and isinstance(value, str):
            out_folder(value, a.option_strings[0] if a.option_strings else a.dest)


def check_text_sources(parser: argparse.ArgumentParser, args) -> None:
    """Every --text SOURCE must name a file, a folder or a built-in corpus: checked before any model loads."""
    for a in chosen_parser(parser, args)._actions:
        value = getattr(args, a.dest, None)
        if a.metavar == "SOURCE" and value:
            for v in (value,) if isinstance(value, str) else value:
                resolve_source(v, a.option_strings[0] if a.option_strings else a.dest)


def main(argv: list[str] | None = None) -> int:
    try:
        _host_devices_from_env()
    except ConfigError as e:
        print(f"toybb: error: {e}", file=sys.stderr)
        return 2
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad flags (one line already printed), --help, --version: the exit code
        return e.code if isinstance(e.code, int) else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_output_folders(parser, args)
        check_text_sources(parser, args)
        return int(args.func(args) or 0)
    except ToybbError as e:
        print(f"toybb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        top = (e.name or "").split(".")[0]
        if top not in OPTIONAL_PACKAGES:
            raise
        print(f"toybb {args.command}: error: this command needs the optional package {top!r}; "
              f"install it with: python3 -m pip install -e \".[{OPTIONAL_PACKAGES[top]}]\"", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toybb: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
