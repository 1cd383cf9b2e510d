"""The authors' own trajectories of the paper's toy models, as built-in references.

Each reference is a compact table committed under `toybb/reference/data/` (rebuilt from the authors'
extracted result files by `python -m toybb.reference.build`): one row per logged step, columns named
as toybb's metrics (`sink_attention_l0`, `value_drain_l0`, ...), NaN where the authors' files lack a
step. `REFERENCES` says which run configuration each reference belongs to, so a run is compared with
it only when its configuration matches (or on request, labelled as another configuration).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toybb.config import RunConfig, paper_preset
from toybb.errors import ConfigError
from toybb.names import read_columns
from toybb.records import read_text

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Reference:
    name: str
    description: str
    model: dict[str, Any] = field(default_factory=dict)  # changes to the paper preset (SPEC §2)
    optim: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the authors' CSV it is derived from (reference/build.py)

    @property
    def path(self) -> Path:
        return DATA / f"{self.name}.csv"

    @property
    def config(self) -> RunConfig:
        return paper_preset().replace(model=self.model, optim=self.optim)

    @property
    def label(self) -> str:
        return f"authors' {self.name.replace('_', ' ')} (seed 42)"


REFERENCES: dict[str, Reference] = {r.name: r for r in (
    Reference("one_layer_adam", "1 layer, softmax, AdamW lr 3e-4, paper sizes; to 230k steps",
              optim={"name": "adam", "lr": 3e-4}, source="one_layer_adam.csv"),
    Reference("three_layer_adam", "3 layers, softmax, AdamW lr 3e-4, paper sizes; to 10k steps",
              model={"n_layers": 3}, optim={"name": "adam", "lr": 3e-4}, source="three_layer_adam.csv"),
    Reference("three_layer_sgd", "3 layers, softmax, SGD lr 0.03 momentum 0.9, paper sizes; to 10k steps",
              model={"n_layers": 3}, optim={"name": "sgd", "lr": 0.03}, source="three_layer_sgd.csv"),
    Reference("three_layer_relu_attention", "3 layers, ReLU attention, AdamW lr 3e-4, paper sizes; to 10k steps",
              model={"n_layers": 3, "attention": "relu"}, optim={"name": "adam", "lr": 3e-4},
              source="three_layer_relu_attention.csv"),
)}


@dataclass(frozen=True)
class ReferenceTable:
    name: str
    label: str
    steps: np.ndarray  # [n] int
    values: dict[str, np.ndarray]  # toybb metric name -> [n] float (NaN: not logged at that step)
    reference: Reference | None  # None for a table read from a file (configuration unknown)


def read_table(path: Path, name: str, label: str, reference: Reference | None = None) -> ReferenceTable:
    """Read a reference table: a CSV with a `step` column and toybb metric columns (empty = missing)."""
    text = read_text(path, "reference table")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise ConfigError(f"reference table {str(path)!r} is not a CSV table ({e}); give a CSV file") from None
    if not rows or "step" not in rows[0] or len(rows) < 2:
        raise ConfigError(f"reference table {str(path)!r} is malformed: it needs a header with a 'step' column "
                          "and at least one row")

    header = read_columns(rows[0], str(path))  # a table of old toybb names reads with the current ones
    cols: dict[str, list[float]] = {h: [] for h in header}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"reference table {str(path)!r} is malformed: line {i} has {len(row)} fields, "
                              f"the header {len(header)}")
        for h, v in zip(header, row):
            try:
                cols[h].append(float(v) if v.strip() else math.nan)
            except ValueError:
                raise ConfigError(f"reference table {str(path)!r} is malformed: line {i}, column {h!r} holds "
                                  f"{v!r}, not a number") from None
    steps = np.array(cols.pop("step"))
    if np.isnan(steps).any() or (steps != np.round(steps)).any() or (np.diff(steps) <= 0).any():
        raise ConfigError(f"reference table {str(path)!r} is malformed: its steps must be increasing integers")
    return ReferenceTable(name, label, steps.astype(np.int64), {k: np.array(v) for k, v in cols.items()}, reference)


def load_reference(name_or_path: str) -> ReferenceTable:
    """A packaged reference by name, or a CSV file (a hand-made reference; its configuration is unknown)."""
    if name_or_path in REFERENCES:
        ref = REFERENCES[name_or_path]
        return read_table(ref.path, ref.name, ref.label, ref)
    p = Path(name_or_path)
    if p.suffix.lower() == ".csv" or p.exists():
        return read_table(p, p.stem, f"reference {p.name}")
    raise ConfigError(f"unknown reference {name_or_path!r}; choose one of {', '.join(REFERENCES)} or give a CSV file")


def config_differences(ref: Reference, cfg: RunConfig, lr: float) -> list[str]:
    """Settings in which a run (config `cfg`, learning rate `lr`) differs from the reference's run; the
    seeds, step count, evaluation and speed-only settings do not count."""
    want, have = ref.config, cfg
    diffs = []
    for sec in ("model", "task", "optim"):
        a, b = getattr(want, sec).__dict__, getattr(have, sec).__dict__
        for k in a:
            if k == "lr":
                continue
            if a[k] != b[k]:
                diffs.append(f"{sec}.{k} {b[k]!r} (reference {a[k]!r})")
    if not math.isclose(lr, want.optim.learning_rate, rel_tol=1e-9):
        diffs.append(f"lr {lr:g} (reference {want.optim.learning_rate:g})")
    for k in ("batch", "precision"):
        if getattr(want.train, k) != getattr(have.train, k):
            diffs.append(f"train.{k} {getattr(have.train, k)!r} (reference {getattr(want.train, k)!r})")
    return diffs


def matching_reference(cfg: RunConfig, lr: float) -> Reference | None:
    """The reference whose run has this configuration and learning rate, if any."""
    for ref in REFERENCES.values():
        if not config_differences(ref, cfg, lr):
            return ref
    return None
