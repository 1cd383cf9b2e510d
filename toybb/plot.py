"""The dynamics figure of a training run: Attn<s>, ||Val<s>||, ||Res<s>||, back-copy and bigram excess
risk against step (log axis), seeds as a median line with a min-max band, one colour per learning rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb import style
from toybb.config import RunConfig
from toybb.errors import ConfigError
from toybb.names import METRIC, METRICS
from toybb.records import load_metrics, read_csv, read_json, seed_table
from toybb.reference import config_differences, load_reference, matching_reference


def _layers(meta: dict) -> tuple[int, int]:
    """(layer of sink/drain, layer of residual peak): layer 0 for 1-layer models; SPEC §3 reads the
    peak after layer 0 and the sink and drain in layer 1 for deeper models."""
    n = meta["config"]["model"]["n_layers"]
    return (0, 0) if n == 1 else (1, 0)


def reference_for(meta: dict, lr: str, forced: str | None = None):
    """(reference table, label) to draw beside a run's learning rate `lr`: the built-in reference of
    the run's configuration, if one matches; `forced` (a name or CSV) is drawn whatever the
    configuration, labelled as another configuration where it differs. None: nothing to draw."""
    cfg = RunConfig.from_dict(meta["config"])
    if forced is None:
        ref = matching_reference(cfg, float(lr))
        return None if ref is None else (load_reference(ref.name), ref.label)
    table = load_reference(forced)
    if table.reference is None:
        return table, f"{table.label} (configuration unknown)"
    other = bool(config_differences(table.reference, cfg, float(lr)))
    return table, table.label + (" (another configuration)" if other else "")


def reference_line(ax, found, col: str, last_step: int, style: str, color: str, lw: float) -> bool:
    """Draw `col` of a reference found by `reference_for` up to `last_step`; False if it has no `col`."""
    if found is None or col not in found[0].values:
        return False
    table, label = found
    keep = (table.steps <= last_step) & ~np.isnan(table.values[col])
    ax.plot(np.maximum(table.steps[keep], 1), table.values[col][keep], style, color=color, lw=lw, label=label)
    return True


def _panels(cols, la: int, lr_: int) -> list[tuple]:
    """(column, other-tokens column or None, title, unit, log y) of each panel the metrics have: the
    vocabulary's `panel` metrics, in layer `la` (attention) or after layer `lr_` (residual)."""
    panels = []
    for m in METRICS:
        l = lr_ if m.per_layer == "after" else la
        if m.panel and m.column(l) in cols:
            others = METRIC[m.others].column(l) if m.others else None
            panels.append((m.column(l), others, m.title(l), m.unit, m.panel == "log"))
    return panels


def _seed_lines(ax, rows, lr: str, cols: tuple, color: str, bos: bool, many: bool, first: bool) -> None:
    """Median over seeds (solid; the BOS where `bos`) with a min-max band, and other tokens dashed."""
    steps, _, table = seed_table(rows, [k for k in cols if k is not None], lr)
    x = np.maximum(steps, 1)
    for key, ls in zip(cols, ("-", "--")):
        if key is None:
            continue
        vals = table[key]
        who = ("BOS (median of seeds)" if bos else "median of seeds") if ls == "-" else "other tokens"
        label = f"{who}, lr {lr}" if many else who
        ax.plot(x, np.nanmedian(vals, axis=1), ls, color=color, label=label if (ls == "-" or first) else None)
        if vals.shape[1] > 1:
            ax.fill_between(x, np.nanmin(vals, 1), np.nanmax(vals, 1), color=color, alpha=0.2, lw=0,
                            label="min-max over seeds" if first and ls == "-" else None)


def _run_config(meta: dict, lrs: list[str], n_seeds: int) -> dict:
    c = meta["config"]
    m, t = c["model"], c["train"]
    return {"optimiser": c["optim"]["name"], "lr": "/".join(lrs), "d_model": m["d_model"],
            "heads": m.get("n_heads"), "sequence": c["task"]["seq_len"], "batch": t["batch"], "steps": t["steps"],
            "seeds": n_seeds}


@style.styled
def plot_dynamics(run_dir: str | Path, out_path: str | Path | None = None, *, attn_layer: int | None = None,
                  resid_layer: int | None = None, reference: str | None = None) -> Path:
    """The dynamics figure (a grid of panels readable at two-column width); the authors' trajectory is
    drawn dashed (black) where the run's configuration matches a built-in reference, or the `reference`
    given (a name or CSV, labelled as such)."""
    run_dir = Path(run_dir)
    meta, rows = load_metrics(run_dir)
    if not rows:
        raise ConfigError(f"{run_dir}/metrics.csv has no rows yet")
    la, lr_ = _layers(meta)
    la = la if attn_layer is None else attn_layer
    lr_ = lr_ if resid_layer is None else resid_layer
    n_layers = meta["config"]["model"]["n_layers"]
    for l in (la, lr_):
        if not 0 <= l < n_layers:
            raise ConfigError(f"layer {l} is out of range for a {n_layers}-layer model")
    panels = _panels(rows[0].keys(), la, lr_)
    lrs = sorted({r["lr"] for r in rows}, key=float)
    refs = {lr: reference_for(meta, lr, reference) for lr in lrs}
    fig, axes = style.subplots(len(panels), 2, sharex=True)
    for ax, (col, ref, title, unit, logy) in zip(axes, panels):
        for ci, lr in enumerate(lrs):
            _seed_lines(ax, rows, lr, (col, ref), f"C{ci}", not logy, len(lrs) > 1, ci == 0)
        drawn = set()
        for lr, found in refs.items():
            if found is not None and id(found[0]) not in drawn:
                last = max(int(r["step"]) for r in rows if r["lr"] == lr)
                if reference_line(ax, found, col, last, "--", "k", 1.0):
                    drawn.add(id(found[0]))
        ax.set(title=title, xlabel="training step", ylabel=unit)
        style.log_axes(ax, "xy" if logy else "x")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    n_seeds = len({r["seed"] for r in rows})
    m = meta["config"]["model"]
    style.subtitle(fig, f"Training dynamics: median over {n_seeds} seed(s), band = min-max",
                   model=f"toy {m['n_layers']}-layer {m['attention']} attention ({run_dir.name})",
                   config=_run_config(meta, lrs, n_seeds))
    out_path = Path(out_path) if out_path is not None else run_dir / "dynamics.png"
    return style.save(fig, out_path)


def _settings(meta: dict, rows: list[dict]) -> dict[str, str]:
    """A run's settings as {"section.key": value} (model, task, optim, train; seeds and speed-only keys
    left out; the learning rates those of its metrics), to label runs by what differs between them."""
    skip = {"seeds", "eval_every", "eval_batch", "log_every", "checkpoint_every", "progress", "plot", "lr"}
    out = {f"{sec}.{k}": str(v) for sec in ("model", "task", "optim", "train")
           for k, v in meta["config"].get(sec, {}).items() if k not in skip}
    out["optim.lr"] = "/".join(sorted({r["lr"] for r in rows}, key=float))
    return out


def run_labels(loaded: list[tuple[dict, list]], names: list[str]) -> list[str]:
    """One label per run (config.json, metrics rows): the settings in which the runs differ ("optimizer sgd,
    lr 0.03"), else the folder names."""
    settings = [_settings(m, rows) for m, rows in loaded]
    keys = [k for k in settings[0] if len({s.get(k) for s in settings}) > 1]
    keys += [k for s in settings[1:] for k in s if k not in settings[0] and k not in keys]
    if not keys:
        return names
    short = {"optim.name": "optimizer"}
    labels = [", ".join(f"{short.get(k, k.split('.', 1)[1])} {s.get(k, '-')}" for k in keys) for s in settings]
    return labels if len(set(labels)) == len(labels) else [f"{n}: {l}" for n, l in zip(names, labels)]


@style.styled
def plot_runs(run_dirs, out_path: str | Path, *, labels: list[str] | None = None, metrics: list[str] | None = None,
              reference: bool = True) -> Path:
    """Several `toybb train` runs in one figure: per run (and learning rate) the median over seeds with a
    min-max band, one colour each, labelled by `labels` or by the settings in which the runs differ; the
    panels are the dynamics figure's (each run read in its own layers, as `plot_dynamics` reads it) or the
    vocabulary names in `metrics`; the authors' trajectory dashed where a run's configuration matches one."""
    run_dirs = [Path(d) for d in run_dirs]
    seen = [d.resolve() for d in run_dirs]
    twice = sorted({str(d) for d, r in zip(run_dirs, seen) if seen.count(r) > 1})
    if twice:
        raise ConfigError(f"run {twice[0]} given twice; give each run once")
    loaded = [load_metrics(d) for d in run_dirs]
    for d, (_, rows) in zip(run_dirs, loaded):
        if not rows:
            raise ConfigError(f"{d}/metrics.csv has no rows yet")
    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"{len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    labels = labels or run_labels(loaded, [d.name for d in run_dirs])
    names = metrics or [m.name for m in METRICS if m.panel]
    for n in names:
        if n not in METRIC:
            raise ConfigError(f"unknown metric {n!r}; metrics: {', '.join(m.name for m in METRICS)}")
    layers = [_layers(m) for m, _ in loaded]
    panels = []  # (metric, column per run) of every metric some run has
    for n in names:
        m = METRIC[n]
        cols = [m.column(lr_ if m.per_layer == "after" else la) for la, lr_ in layers]
        if any(c in rows[0] for c, (_, rows) in zip(cols, loaded)):
            panels.append((m, cols))
    if not panels:
        raise ConfigError(f"none of the runs has the metrics {', '.join(names)}")
    fig, axes = style.subplots(len(panels), 2, sharex=True)
    series = [(i, lr) for i, (_, rows) in enumerate(loaded) for lr in sorted({r["lr"] for r in rows}, key=float)]
    for ax, (m, cols) in zip(axes, panels):
        drawn = set()
        for ci, (i, lr) in enumerate(series):
            meta, rows = loaded[i]
            if cols[i] not in rows[0]:
                continue
            many_lr = sum(j == i for j, _ in series) > 1
            steps, _, table = seed_table(rows, [cols[i]], lr)
            vals, x = table[cols[i]], np.maximum(steps, 1)
            label = labels[i] + (f", lr {lr}" if many_lr else "")
            ax.plot(x, np.nanmedian(vals, axis=1), color=f"C{ci}", label=label)
            if vals.shape[1] > 1:
                ax.fill_between(x, np.nanmin(vals, 1), np.nanmax(vals, 1), color=f"C{ci}", alpha=0.2, lw=0)
            found = reference_for(meta, lr) if reference else None
            if found is not None and id(found[0]) not in drawn and reference_line(
                    ax, found, cols[i], int(steps[-1]), "--", "k", 1.0):
                drawn.add(id(found[0]))
        titles = {m.title(lr_ if m.per_layer == "after" else la) for la, lr_ in layers}
        ax.set(title=titles.pop() if len(titles) == 1 else m.title(), xlabel="training step", ylabel=m.unit)
        style.log_axes(ax, "xy" if m.panel == "log" else "x")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    n_seeds = "/".join(str(len({r["seed"] for r in rows})) for _, rows in loaded)
    style.subtitle(fig, f"{', '.join(d.name for d in run_dirs)}: median over seeds ({n_seeds}), band = min-max")
    return style.save(fig, Path(out_path))


# the panels of a pretraining run's emergence figure: (metric, log y)
EMERGENCE_PANELS = (("heldout_loss", False), ("sink_attention_excl0", False), ("sink_rate", False),
                    ("value_ratio", False), ("residual_ratio", False), ("massive_ratio", True), ("kurtosis", False))


def _bb_panels(bb_run: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, steps, median over seeds) of a `toybb train` run's Attn<s>, ||Val<s>|| / others and
    ||Res<s>|| / others (the layers of its dynamics figure), for the emergence figure's comparison row."""
    meta, rows = load_metrics(bb_run)
    la, lr_ = _layers(meta)
    lr = sorted({r["lr"] for r in rows}, key=float)[0]
    cols = [METRIC["sink_attention"].column(la), METRIC["value_drain"].column(la), METRIC["value_others"].column(la),
            METRIC["residual_peak"].column(lr_), METRIC["residual_others"].column(lr_)]
    steps, _, t = seed_table(rows, cols, lr)
    x = np.maximum(steps, 1)
    med = {c: np.nanmedian(t[c], axis=1) for c in cols}
    return [(f"BB {METRIC['sink_attention'].title(la)}", x, med[cols[0]]),
            (f"BB ‖Val<s>‖ / others (layer {la})", x, med[cols[1]] / med[cols[2]]),
            (f"BB ‖Res<s>‖ / others (after layer {lr_})", x, med[cols[3]] / med[cols[4]])]


@style.styled
def plot_emergence(run_dir: str | Path, out_path: str | Path | None = None, *, bb_run: str | Path | None = None
                   ) -> Path:
    """The emergence figure of a `toybb pretrain` run from its metrics.csv: the held-out loss and, one line
    per layer, attention on the first position, Sink^ε, the first token's value and residual norms over the
    others' median, the massive-activation ratio and the kurtosis, against step (log axis). bb_run: a
    `toybb train` folder whose Attn<s>, ||Val<s>|| and ||Res<s>|| (each over the other tokens' mean; median
    of its seeds) are drawn in panels of their own beside them, to compare the shapes of the curves."""
    run_dir = Path(run_dir)
    bb = _bb_panels(Path(bb_run)) if bb_run is not None else []
    meta = read_json(run_dir / "config.json", "run config", f"delete {run_dir} to start over")
    rows = read_csv(run_dir / "metrics.csv", "metrics table", required=("step", "heldout_loss"))
    if len(rows) < 2:
        raise ConfigError(f"{run_dir}/metrics.csv has fewer than two evaluation steps")
    steps = np.maximum(np.array([int(r["step"]) for r in rows]), 1)
    m = meta["config"]["model"]
    fig, axes = style.subplots(len(EMERGENCE_PANELS) + len(bb), 2)
    for ax, (title, x, y) in zip(axes[len(EMERGENCE_PANELS):], bb):
        ax.plot(x, y, "--", color="k", label=f"BB run {Path(bb_run).name} (median of seeds)")
        ax.set(title=title, xlabel="training step", ylabel="attention weight on BOS" if "Attn" in title else "ratio")
        style.log_axes(ax, "x")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax, (name, logy) in zip(axes, EMERGENCE_PANELS):
        metric = METRIC[name]
        cols = [(None, name)] if not metric.per_layer else [
            (l, metric.column(l)) for l in range(m["n_layers"]) if metric.column(l) in rows[0]]
        for l, col in cols:
            ax.plot(steps, [float(r[col]) for r in rows], color="0.3" if l is None else f"C{l}",
                    label="whole model" if l is None else f"layer {l}")
        ax.set(title=metric.label if metric.label != name else name.replace("_", " "), xlabel="training step",
               ylabel=metric.unit)
        style.log_axes(ax, "xy" if logy else "x")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    p = meta["config"]["pretrain"]
    style.subtitle(fig, "Emergence during pretraining (fixed held-out batch)",
                   model=f"{m['arch']} {m['n_layers']}-layer d {m['d_model']} {m['attention']} attention ({run_dir.name})",
                   config={"optimiser": p["optimizer"], "lr": p["lr"], "vocab": p["vocab_size"], "sequence": p["seq_len"],
                           "batch": p["batch"], "steps": p["steps"], "bos": p["bos"]})
    out_path = Path(out_path) if out_path is not None else run_dir / "emergence.png"
    return style.save(fig, out_path)
