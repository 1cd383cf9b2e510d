"""Command line: the `toybb` parser, built from one module per group of subcommands, and the error handling
around them.

Each command module (`toybb.commands.*` and the `cli` module of a part of toybb) has `register(subparsers)`
(or an `add_*` per subcommand): it parses, checks its input, calls library functions and prints; no command
runs another through an argument list. Every error is one line on stderr and its kind's exit code
(`toybb.errors`): 2 bad input, 3 a diverged run, 4 a fault of the machine (platform, devices, full disk).
Each output folder (DIR option) is locked while the command runs: one writer per folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys

from toybb import intervene_cli
from toybb._version import __version__
from toybb.cliargs import Parser, check_distributed, chosen_parser, distributed_process
from toybb.commands import compare, figures, mitigations, pretrain, series
from toybb.commands import train as train_commands
from toybb.errors import EnvironmentFault, Error, os_error
from toybb.llm import cli as llm_cli
from toybb.longctx import cli as longctx_cli
from toybb.probes import cli as probes_cli
from toybb.records import folder_lock, out_folder
from toybb.texts import resolve_source
from toybb.theory import cli as theory_cli

# optional packages and the extra that installs them
OPTIONAL_PACKAGES = {"gguf": "llm", "safetensors": "llm", "tokenizers": "llm", "torch": "parity",
                     "transformers": "parity", "accelerate": "parity"}

# the subcommands, in the order of `toybb --help`
COMMANDS = (train_commands.add_train, train_commands.add_plot, theory_cli.register, llm_cli.register,
            probes_cli.register, intervene_cli.register, longctx_cli.register, train_commands.add_sweep, mitigations.register,
            pretrain.add_pretrain, series.register,
            figures.register, compare.register)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="toybb", description="Extreme-token phenomena sandbox (attention sinks, value drains, "
                     "residual peaks) on toy models and pretrained LLMs.")
    parser.add_argument("--version", action="version", version=f"toybb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


MAX_HOST_DEVICES = 1024  # XLA starts 1024 host devices in 0.3 GB; far more crash it


def _host_devices_from_env() -> None:
    """TOYBB_HOST_DEVICES=N exposes N XLA host (CPU) devices, over which the run axis of a vmapped
    batch is sharded (measured: +20-24% run-steps/s for 4-8 runs of the CPU default on 2 cores). Opt-in,
    because float round-off then differs slightly from a one-device run. Must run before JAX starts.
    A count XLA cannot start (XLA_FLAGS' or TOYBB_HOST_DEVICES') is an EnvironmentFault."""
    if "jax" in sys.modules and getattr(sys.modules["jax"], "_src", None) is not None:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    flags = os.environ.get("XLA_FLAGS", "")
    given = re.findall(r"--xla_force_host_platform_device_count=(\S*)", flags)
    if given:
        _device_count(given[-1], "XLA_FLAGS --xla_force_host_platform_device_count")
        return
    n = os.environ.get("TOYBB_HOST_DEVICES")
    if n is None:
        return
    if _device_count(n, "TOYBB_HOST_DEVICES") > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()


def _device_count(n: str, name: str) -> int:
    if not n.isdigit() or not 1 <= int(n) <= MAX_HOST_DEVICES:
        raise EnvironmentFault(f"{name} must be a number of host devices from 1 to {MAX_HOST_DEVICES}, got {n!r}; "
                               "fix or unset it")
    return int(n)


def output_folders(parser: argparse.ArgumentParser, args) -> list[str]:
    """Every DIR option (output folders) must be a folder or creatable: checked before any work."""
    folders = []
    for a in chosen_parser(parser, args)._actions:
        value = getattr(args, a.dest, None)
        if a.metavar == "DIR" and isinstance(value, str):
            out_folder(value, a.option_strings[0] if a.option_strings else a.dest)
            folders.append(value)
    return folders


def check_text_sources(parser: argparse.ArgumentParser, args) -> None:
    """Every --text SOURCE must name a file, a folder or a built-in corpus: checked before any model loads."""
    for a in chosen_parser(parser, args)._actions:
        value = getattr(args, a.dest, None)
        if a.metavar == "SOURCE" and value:
            for v in (value,) if isinstance(value, str) else value:
                resolve_source(v, a.option_strings[0] if a.option_strings else a.dest)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes (toybb.errors): 0 done, 2 bad input, 3 divergence, 4 environment
    fault (a missing platform, an impossible device count, a full disk), 130 interrupted."""
    try:
        _host_devices_from_env()
    except Error as e:
        print(f"toybb: error: {e}", file=sys.stderr)
        return e.exit_code
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad flags (one line already printed), --help, --version: the exit code
        return e.code if isinstance(e.code, int) else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        folders = output_folders(parser, args)
        check_text_sources(parser, args)
        if hasattr(args, "distributed"):  # a multi-host run joins before anything starts a JAX backend
            check_distributed(args)
            distributed_process(args)
        check_platform()
        with contextlib.ExitStack() as held:  # one writer per output folder (sweep locks its own)
            for d in folders if getattr(args, "lock_out", True) else ():
                held.enter_context(folder_lock(d))
            return int(args.func(args) or 0)
    except (Error, OSError) as e:
        e = os_error(e) if isinstance(e, OSError) else e
        print(f"toybb {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
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


def check_platform() -> None:
    """JAX_PLATFORMS naming a platform this machine lacks: an EnvironmentFault before any work."""
    if not os.environ.get("JAX_PLATFORMS"):
        return
    import jax

    try:
        jax.devices()
    except Exception as e:  # RuntimeError "Unable to initialize backend", or an assertion inside JAX
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EnvironmentFault(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']!r} names a platform this machine cannot "
                               f"start ({detail}); unset it or name an available one (e.g. cpu)") from None


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
