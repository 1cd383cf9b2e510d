"""Rebuild the packaged reference tables from the authors' extracted trajectories.

Usage::

    python -m toybb.reference.build SRC [-o OUT]

SRC is the folder of the authors' CSVs (required; they do not ship with toybb); OUT
the package's `toybb/reference/data`. Each table keeps the step and the columns toybb also measures,
renamed to toybb's metric names (`COLUMNS`: the authors' column -> toybb's, from the `authors` field of
`toybb.names.METRICS`), at 7 significant digits. The authors' columns toybb does not define (one
evaluation sequence's positions 1..9, the mean logit on keys 1..i-1) are left out. This module imports
only the standard library and numpy-free toybb modules, so it runs without a device.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from toybb.errors import ConfigError
from toybb.names import METRICS
from toybb.reference import DATA, REFERENCES

# the authors' column -> toybb's column (their layer 0), from the vocabulary's `authors` field
COLUMNS = {a: m.column(0) for m in METRICS for a in m.authors_columns}


def convert(src: Path, dst: Path) -> int:
    """Write the toybb-named table of one authors' CSV; returns the number of rows."""
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "step" not in rows[0]:
        raise ConfigError(f"{src} is not one of the authors' trajectory tables (no 'step' column)")
    keep = [c for c in rows[0] if c in COLUMNS]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["step", *(COLUMNS[c] for c in keep)])
        for r in rows:
            vals = []
            for c in keep:
                v = r[c].strip()
                vals.append("" if not v or math.isnan(float(v)) else f"{float(v):.7g}")
            w.writerow([str(int(float(r["step"]))), *vals])
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m toybb.reference.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="folder of the authors' CSVs")
    ap.add_argument("-o", "--out", default=str(DATA), help="output folder (default: the package's data)")
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    try:
        for ref in REFERENCES.values():
            if not (src / ref.source).is_file():
                raise ConfigError(f"{src / ref.source} does not exist; give the folder of the authors' CSVs")
            n = convert(src / ref.source, out / f"{ref.name}.csv")
            print(f"{ref.name}: {n} steps -> {out / (ref.name + '.csv')}")
    except ConfigError as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
