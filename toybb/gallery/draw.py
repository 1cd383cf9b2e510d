"""What the gallery's drawings share: metrics rows, seed bands, reference lines, subtitles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb import style
from toybb.plot import reference_for, reference_line
from toybb.records import read_csv, read_run_config, seed_table


def rows(path: Path) -> list[dict[str, str]]:
    return read_csv(path)


def series(rows, col) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values [steps, seeds]) of one metric from metrics.csv rows of one learning rate."""
    steps, _, vals = seed_table(rows, [col])
    return steps, vals[col]


def band(ax, steps, v, color, label, ls="-"):
    x = np.maximum(steps, 1)
    ax.plot(x, np.nanmedian(v, 1), ls, color=color, lw=1.5, label=label)
    if v.shape[1] > 1 and ls == "-":
        ax.fill_between(x, np.nanmin(v, 1), np.nanmax(v, 1), color=color, alpha=0.2, lw=0)


def authors_line(ax, run_dir: Path, rows, col: str, color: str) -> None:
    """The authors' trajectory of `col` (dotted, same colour) where the run's configuration matches a
    built-in reference (the paper scale), up to the run's last step."""
    found = reference_for(read_run_config(run_dir), rows[0]["lr"])
    reference_line(ax, found, col, max(int(r["step"]) for r in rows), ":", color, 1.4)


def char(c: str) -> str:
    return {"\n": "\\n", " ": "sp", "$": r"\$"}.get(c, c)


def about(fig, title: str, runs: dict[str, Path]) -> None:
    """`title` with each run's configuration (from its config.json) under it."""
    parts = []
    for name, d in runs.items():
        c = read_run_config(d)["config"]
        m, t = c["model"], c["train"]
        parts.append(f"{name}: {m['n_layers']}-layer {m['attention']}, d {m['d_model']}, {c['optim']['name']} "
                     f"lr {c['optim']['lr']}, sequence {c['task']['seq_len']}, batch {t['batch']}, "
                     f"{t['steps']} steps, {len(t['seeds'])} seeds")
    style.subtitle(fig, title, model="toy BB transformer", config="; ".join(parts))

