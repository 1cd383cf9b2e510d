"""`toybb compare RUN [--reference NAME]`: a run's seeds side by side with the authors' trajectory.

At every step both have, for every metric both define: the run's median and min-max over seeds, the
reference value, whether it lies inside the seed band and, if not, how far outside relative to the
nearest edge. Writes `compare.csv` and `compare.png` (run median and band, reference dashed) into the
run folder (or `--out`). A run is compared with the reference of its own configuration; another
reference only on request (`--reference`), and then labelled as another configuration.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toybb.config import RunConfig, config_diffs
from toybb import style
from toybb.errors import ConfigError
from toybb.names import METRICS
from toybb.records import atomic_open, load_metrics, seed_table
from toybb.reference import REFERENCES, ReferenceTable, config_differences, load_reference, matching_reference

# the label of each column in the printed table and the figure (columns without one print as they are)
LABELS = {m.column(0): m.label for m in METRICS if m.label != m.name}
PRINT_EVERY = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)


@dataclass
class Comparison:
    lr: float
    reference: ReferenceTable
    differences: list[str]  # how the run's configuration differs from the reference's ([] = the same)
    steps: np.ndarray  # [n] common steps
    metrics: list[str]
    seeds: int
    run: dict[str, np.ndarray]  # metric -> [n, seeds]
    ref: dict[str, np.ndarray]  # metric -> [n]

    @property
    def label(self) -> str:
        if self.reference.reference is None:
            return f"{self.reference.label} (configuration unknown)"
        return self.reference.label + (" (another configuration)" if self.differences else "")


def load_runs(run_dirs: list[str | Path]) -> tuple[RunConfig, list[dict[str, str]]]:
    """The config and pooled metrics rows of one or more run folders of the same configuration (seeds
    trained as separate jobs); a seed present in two folders is an error."""
    cfg, rows, seen = None, [], {}
    for d in run_dirs:
        meta, part = load_metrics(d)
        try:
            c = RunConfig.from_dict(meta["config"])
        except (KeyError, TypeError):
            raise ConfigError(f"{d}/config.json holds no run config; give the --out of `toybb train`") from None
        if not part:
            raise ConfigError(f"{d}/metrics.csv has no rows yet; train the run first")
        if cfg is None:
            cfg = c
        else:
            diffs = [x for x in config_diffs(c.to_dict(), cfg) if not x.startswith(("train.seeds", "train.lrs"))]
            if diffs:
                raise ConfigError(f"runs {run_dirs[0]} and {d} have different configurations ({diffs[0]}); "
                                  "compare them one at a time")
        for key in {(r["seed"], r["lr"]) for r in part}:
            if key in seen:
                raise ConfigError(f"seed {key[0]} (lr {key[1]}) is in both {seen[key]} and {d}; give each seed once")
            seen[key] = d
        rows += part
    return cfg, rows


def compare_run(run_dir: str | Path | list, reference: str | None = None, warnings: list | None = None
                ) -> list[Comparison]:
    """One comparison per learning rate of the run (its seeds pooled; several run folders of one
    configuration pool their seeds). Warnings (a run sharing a single step with the reference) are appended to
    `warnings`, or printed on stderr once every learning rate compares when it is None."""
    dirs = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
    cfg, rows = load_runs(dirs)
    run_dir = dirs[0] if len(dirs) == 1 else f"{dirs[0]} (+{len(dirs) - 1})"
    forced = load_reference(reference) if reference is not None else None
    out, printed = [], warnings is None
    warnings = [] if warnings is None else warnings
    for lr in sorted({r["lr"] for r in rows}, key=float):
        if forced is not None:
            table = forced
            diffs = config_differences(forced.reference, cfg, float(lr)) if forced.reference else []
        else:
            ref = matching_reference(cfg, float(lr))
            if ref is None:
                near = min(REFERENCES.values(), key=lambda r: len(config_differences(r, cfg, float(lr))))
                d = config_differences(near, cfg, float(lr))
                raise ConfigError(
                    f"run {run_dir} (lr {lr}) matches no reference configuration (nearest {near.name}: "
                    f"{'; '.join(d[:3])}{' ...' if len(d) > 3 else ''}); give --reference NAME to compare anyway")
            table, diffs = load_reference(ref.name), []
        metrics = [m for m in table.values if m in rows[0]]
        if not metrics:
            raise ConfigError(f"run {run_dir} has none of the metrics of reference {table.name!r} "
                              f"({', '.join(list(table.values)[:4])}, ...); it was written by an older toybb: "
                              "retrain it")
        steps, seed_ids, run = seed_table(rows, metrics, lr)
        common = np.intersect1d(steps, table.steps)
        if common.size == 0:
            raise ConfigError(f"run {run_dir} and reference {table.name!r} share no logged step")
        if common.size == 1:
            warnings.append(f"warning: run {run_dir} (lr {lr}) and reference {table.name!r} share only step "
                            f"{int(common[0])}; each panel is one point. The reference logs steps "
                            f"{', '.join(map(str, table.steps[:4]))}, ...: train longer or with an --eval-every "
                            "that lands on them")
        ri, fi = np.searchsorted(steps, common), np.searchsorted(table.steps, common)
        out.append(Comparison(float(lr), table, diffs, common, metrics, len(seed_ids),
                              {m: run[m][ri] for m in metrics}, {m: table.values[m][fi] for m in metrics}))
    for w in warnings if printed else ():
        print(w, file=sys.stderr)
    return out


def comparison_rows(c: Comparison) -> list[dict]:
    """compare.csv rows: step, metric, the run's median/min/max over seeds, the reference, and
    `outside_rel`: 0 inside the band, else (reference - nearest edge) / |nearest edge|."""
    out = []
    for m in c.metrics:
        for i, step in enumerate(c.steps):
            v, ref = c.run[m][i], float(c.ref[m][i])
            if np.isnan(ref) or np.isnan(v).all():
                continue
            lo, hi, med = float(np.nanmin(v)), float(np.nanmax(v)), float(np.nanmedian(v))
            edge = lo if ref < lo else hi if ref > hi else None
            rel = 0.0 if edge is None else (ref - edge) / max(abs(edge), 1e-12)
            out.append({"lr": c.lr, "step": int(step), "metric": m, "seeds": c.seeds, "median": med, "min": lo,
                        "max": hi, "reference": ref, "inside": edge is None, "outside_rel": rel,
                        "reference_name": c.reference.name, "same_config": not c.differences})
    return out


def print_steps(steps: np.ndarray) -> np.ndarray:
    """At most ~8 round steps (multiples of one grid) and the last, for the printed table."""
    for every in PRINT_EVERY:
        pick = steps[steps % every == 0]
        if len(pick) <= 8:
            return np.union1d(pick, steps[-1:])
    return steps[:: max(1, len(steps) // 8)]


def format_table(c: Comparison, rows: list[dict], steps: np.ndarray | None = None) -> str:
    steps = print_steps(c.steps) if steps is None else steps
    buf = io.StringIO()
    buf.write(f"lr {c.lr:g}: {c.seeds} seed(s) vs {c.label}\n")
    if c.differences:
        buf.write(f"  configuration differs: {'; '.join(c.differences)}\n")
    buf.write(f"  {'metric':28s} {'step':>6s}  {'median':>10s} {'[min, max] of seeds':>23s}  {'reference':>10s}  "
              "reference against the seeds' [min, max]\n")
    for m in c.metrics:
        for r in rows:
            if r["metric"] != m or r["step"] not in steps:
                continue
            edge = r["min"] if r["reference"] < r["min"] else r["max"]
            side = "below min" if r["reference"] < r["min"] else "above max"
            where = "inside" if r["inside"] else f"{r['outside_rel']:+.0%} {side}"
            if not r["inside"] and abs(edge) < 0.1:  # near zero (logits) a relative distance says little
                where = f"{r['reference'] - edge:+.3g} {side} (absolute)"
            buf.write(f"  {LABELS.get(m, m)[:28]:28s} {r['step']:6d}  {r['median']:10.4g} [{r['min']:10.4g}, {r['max']:10.4g}]"
                      f"  {r['reference']:10.4g}  {where}\n")
    return buf.getvalue()


@style.styled
def plot_comparison(comparisons: list[Comparison], path: Path, title: str = "", model: str | None = None) -> Path:
    """One panel per metric: toybb's median over seeds (band min-max) beside the reference (dashed black)."""
    metrics = list(dict.fromkeys(m for c in comparisons for m in c.metrics))
    fig, axes = style.subplots(len(metrics), 2)
    for ax, m in zip(axes, metrics):
        for ci, c in enumerate(comparisons):
            if m not in c.run:
                continue
            x = np.maximum(c.steps, 1)
            v = c.run[m]
            ax.plot(x, np.nanmedian(v, 1), "-", color=f"C{ci}", label=f"toybb lr {c.lr:g} (median of {c.seeds})")
            if v.shape[1] > 1:
                ax.fill_between(x, np.nanmin(v, 1), np.nanmax(v, 1), color=f"C{ci}", alpha=0.2, lw=0)
            ok = ~np.isnan(c.ref[m])
            ax.plot(x[ok], c.ref[m][ok], "--", color="k", lw=1.0, label=c.label if ci == 0 else None)
        ax.set(title=f"{LABELS.get(m, m)}  [{m}]", xlabel="training step")
        style.log_axes(ax, "x")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    c0 = comparisons[0]
    style.subtitle(fig, title or "toybb against the reference trajectory", model=model, config={
        "lr": "/".join(f"{c.lr:g}" for c in comparisons), "seeds": c0.seeds,
        "differences from the reference": "; ".join(c0.differences) or "none"})
    return style.save(fig, path)


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.7g}" if isinstance(v, float) else v) for k, v in r.items()})
