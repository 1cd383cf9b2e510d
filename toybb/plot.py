"""The dynamics figure of a training run: Attn<s>, ||Val<s>||, ||Res<s>||, back-copy and bigram excess
risk against step (log axis), seeds as a median line with a min-max band, one colour per learning rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb.errors import ConfigError


def _layers(meta: dict) -> tuple[int, int]:
    """(layer of sink/drain, layer of residual peak): layer 0 for 1-layer models; SPEC §3 reads the
    peak after layer 0 and the sink and drain in layer 1 for deeper models."""
    n = meta["config"]["model"]["n_layers"]
    return (0, 0) if n == 1 else (1, 0)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reference_for(meta: dict, lr: str, forced: str | None = None):
    """(reference table, label) to draw beside a run's learning rate `lr`: the built-in reference of
    the run's configuration, if one matches; `forced` (a name or CSV) is drawn whatever the
    configuration, labelled as another configuration where it differs. None: nothing to draw."""
    from toybb.config import RunConfig
    from toybb.reference import config_differences, load_reference, matching_reference

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


def plot_dynamics(run_dir: str | Path, out_path: str | Path | None = None, *, attn_layer: int | None = None,
                  resid_layer: int | None = None, reference: str | None = None) -> Path:
    """The dynamics figure; the authors' trajectory is drawn dashed (black) where the run's configuration
    matches a built-in reference, or the `reference` given (a name or CSV, labelled as such)."""
    from toybb.records import load_metrics, save_figure, seed_table

    plt = pyplot()

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
    cols = rows[0].keys()
    panels = [
        (f"sink_attention_l{la}", None, f"Attn<s> (layer {la})", "attention weight", False),
        (f"value_drain_l{la}", f"value_others_l{la}", f"||Val<s>|| (layer {la})", "norm", False),
        (f"residual_peak_l{lr_}", f"residual_others_l{lr_}", f"||Res<s>|| (after layer {lr_})", "norm", False),
        ("backcopy_risk", None, "back-copy excess risk", "nats", True),
        ("bigram_risk", None, "bigram excess risk", "nats", True),
    ]
    panels = [p for p in panels if p[0] in cols]
    lrs = sorted({r["lr"] for r in rows}, key=float)
    refs = {lr: reference_for(meta, lr, reference) for lr in lrs}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), constrained_layout=True)
    axes = np.atleast_1d(axes)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (col, ref, title, unit, logy) in zip(axes, panels):
        for ci, lr in enumerate(lrs):
            steps, _, table = seed_table(rows, [k for k in (col, ref) if k is not None], lr)
            for key, style in ((col, "-"), (ref, "--")):
                if key is None:
                    continue
                vals = table[key]
                x = np.maximum(steps, 1)
                med = np.nanmedian(vals, axis=1)
                label = ("other tokens" if style == "--" else f"lr {lr}") if (len(lrs) > 1 or style == "--") else None
                if style == "--" and ci > 0:
                    label = None
                ax.plot(x, med, style, color=colors[ci % len(colors)], lw=1.5, label=label)
                if vals.shape[1] > 1:
                    ax.fill_between(x, np.nanmin(vals, 1), np.nanmax(vals, 1), color=colors[ci % len(colors)],
                                    alpha=0.2, lw=0)
        drawn = set()
        for lr, found in refs.items():
            if found is not None and id(found[0]) not in drawn:
                last = max(int(r["step"]) for r in rows if r["lr"] == lr)
                if reference_line(ax, found, col, last, "--", "k", 1.1):
                    drawn.add(id(found[0]))
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, which="both", lw=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    n_seeds = len({r["seed"] for r in rows})
    m = meta["config"]["model"]
    fig.suptitle(
        f"{m['n_layers']}-layer {m['attention']} attention, {meta['config']['optim']['name']}, d={m['d_model']}; "
        f"median over {n_seeds} seed(s), band = min-max", fontsize=10)
    out_path = Path(out_path) if out_path is not None else run_dir / "dynamics.png"
    save_figure(fig, out_path, dpi=130)
    plt.close(fig)
    return out_path
