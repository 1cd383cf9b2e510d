"""The Bigram-Backcopy task (SPEC §1): sampler, oracle and bigram tables.

Exports are loaded on first access (PEP 562) so that ``python -m toybb.task.build_bigram`` runs
without importing jax and without runpy's double-import warning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toybb.task.bb import PACKAGED_TABLES, BBTask, load_bigram_table
    from toybb.task.build_bigram import BigramTable, build_table

_EXPORTS = {
    "BBTask": "toybb.task.bb",
    "load_bigram_table": "toybb.task.bb",
    "PACKAGED_TABLES": "toybb.task.bb",
    "BigramTable": "toybb.task.build_bigram",
    "build_table": "toybb.task.build_bigram",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
