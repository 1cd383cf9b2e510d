"""The mitigations of extreme tokens in pretraining, at equal steps, over several seeds: one `toybb pretrain`
run per row and seed, then one table of the last evaluation (median [min-max] over the seeds). The table of
figures/README.md ("Mitigations in pretraining") is this script's output:

    python scripts/pretrain_mitigations.py --out runs/lm_mitigations --seeds 0 1 --steps 1000

Each run is a folder OUT/ROW/seedN. A finished run is not trained again and an interrupted one resumes (as
`toybb pretrain` does), so rerunning the same command after a kill continues where it stopped. Flags after
`--` go to every run (a smaller model for a quick look: `-- --layers 2 --d-model 64`), except those the script
sets: --out, --steps, --seed, --no-progress, --no-plot.
Writes OUT/mitigations.csv (one line per run) and OUT/mitigations.md (the table).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from toybb.cli import main as toybb
from toybb.records import atomic_open, read_csv

# row: (flags of `toybb pretrain`, what it is); each row is one flag away from the baseline
ROWS = {
    "softmax": ((), "softmax, Adam (baseline)"),
    "relu": (("--model-set", "attention=relu"), "ReLU attention"),
    "sigmoid": (("--model-set", "attention=sigmoid", "--model-set", "sigmoid_bias=-4.159"),
                "sigmoid attention, b = -log 64"),
    "zero_sink": (("--model-set", "attn_sink=zero"), "softmax + a zero logit"),
    "head_gate": (("--model-set", "attn_gate=head"), "head-wise output gate"),
    "muon": (("--optimizer", "muon", "--lr", "0.02"), "Muon, lr 0.02"),
    "sgd": (("--optimizer", "sgd", "--lr", "0.1"), "SGD, lr 0.1"),
}
# column: (metric of metrics.csv, reduction over the layers, format)
COLUMNS = {
    "held-out loss": ("heldout_loss", None, "{:.3f}"),
    "Attn on the first token (max)": ("sink_attention_excl0", max, "{:.3f}"),
    "Sink^ε (max)": ("sink_rate", max, "{:.2f}"),
    "value ratio (min)": ("value_ratio", min, "{:.2f}"),
    "residual ratio (max)": ("residual_ratio", max, "{:.2f}"),
    "massive ratio (max)": ("massive_ratio", max, "{:.1f}"),
    "kurtosis (max)": ("kurtosis", max, "{:.2f}"),
}


def last_row(run: Path) -> dict[str, float]:
    """Each column's value at the last evaluation of a finished run folder (the layers reduced)."""
    row = read_csv(run / "metrics.csv", "metrics table", required=("step", "heldout_loss"))[-1]
    layers = sorted({int(k.rsplit("_l", 1)[1]) for k in row if k.startswith("sink_rate_l")})
    out = {"step": int(row["step"])}
    for col, (name, reduce, _) in COLUMNS.items():
        out[col] = float(row[name]) if reduce is None else reduce(float(row[f"{name}_l{i}"]) for i in layers)
    return out


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """The markdown table: a line per row, median [min-max] over its seeds in each column."""
    cols = list(COLUMNS)
    lines = ["| row | flags | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for row, runs in results.items():
        cells = []
        for c in cols:
            v = np.array([r[c] for r in runs])
            fmt = COLUMNS[c][2]
            med = fmt.format(float(np.median(v)))
            cells.append(med if len(v) == 1 else f"{med} [{fmt.format(v.min())}-{fmt.format(v.max())}]")
        flags = " ".join(ROWS[row][0])
        lines.append(f"| {ROWS[row][1]} | {'`' + flags + '`' if flags else ''} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the runs and the table")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW",
                   help=f"rows to train (default: all: {', '.join(ROWS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of every row (default: 0 1)")
    p.add_argument("--steps", type=int, default=1000, help="steps of every run (default: 1000)")
    a = p.parse_args(argv)

    out = Path(a.out)
    results: dict[str, list[dict[str, float]]] = {}
    lines = io.StringIO()
    w = csv.writer(lines)
    w.writerow(["row", "seed", "step", *COLUMNS])
    for row in a.rows:
        for seed in a.seeds:
            run = out / row / f"seed{seed}"
            print(f"{row}, seed {seed}: {run}", flush=True)
            code = toybb(["pretrain", "--out", str(run), "--steps", str(a.steps), "--seed", str(seed),
                          "--no-progress", "--no-plot", *ROWS[row][0], *extra])
            if code != 0:
                return code
            r = last_row(run)
            results.setdefault(row, []).append(r)
            w.writerow([row, seed, r["step"], *(f"{r[c]:.6g}" for c in COLUMNS)])
    md = table(results)
    for name, text in (("mitigations.csv", lines.getvalue()), ("mitigations.md", md)):
        with atomic_open(out / name) as f:
            f.write(text)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
