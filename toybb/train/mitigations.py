"""The mitigation table: the baseline and every mitigation of sinks, drains, peaks and massive activations
(SPEC §8) trained on the BB task side by side, as one sweep (vmapped over seeds, resumable), and their
final metrics as one table and one figure.

Rows are settings of the one model and optimiser (`ROWS`); scales are the 1- and 3-layer BB models at the
sizes of the default suite's phenomena (`SCALES`, measured to train in seconds on 2 CPU cores). Every
column is read from the runs' metrics.csv at the last step; the table gives the median over seeds and the
min-max range.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from toybb import style
from toybb.errors import ConfigError
from toybb.records import atomic_write, load_metrics, write_csv_rows
from toybb.train.sweep import LABEL, SweepPlan, plan_sweep, run_sweep

# name -> (settings over dotted config keys, what it is and its source). "{log_t}" is -log(seq_len), the
# sigmoid bias Ramapuram et al. 2024 recommend.
ROWS: dict[str, tuple[dict, str]] = {
    "softmax": ({}, "the baseline: softmax attention, Adam"),
    "relu": ({"model.attention": "relu"}, "ReLU attention, ReLU(s)/(i+1) (the paper)"),
    "sigmoid": ({"model.attention": "sigmoid", "model.sigmoid_bias": "{log_t}"},
                "sigmoid(s - log T), no normalisation (Gu et al. 2025; Ramapuram et al. 2024)"),
    "sigmoid_norm": ({"model.attention": "sigmoid_norm"}, "sigmoid with row normalisation (Gu et al. 2025)"),
    "softpick": ({"model.attention": "softpick"}, "ReLU(e^s - 1) / sum |e^s - 1| (Zuhri et al. 2025)"),
    "zero_sink": ({"model.attn_sink": "zero"}, "softmax plus a zero logit (off by one; StreamingLLM's zero sink)"),
    "learned_sink": ({"model.attn_sink": "learned"}, "a learned sink logit per head (gpt-oss `sinks`)"),
    "head_gate": ({"model.attn_gate": "head"}, "a sigmoid gate per head on its output (Bondarenko et al. 2023)"),
    "element_gate": ({"model.attn_gate": "element"}, "an element-wise sigmoid gate (Qiu et al. 2025, G1)"),
    "clipped": ({"model.softmax_clip": [-0.03, 1.03]}, "clipped softmax, gamma -0.03, zeta 1.03 (Bondarenko et al.)"),
    "attn_bias": ({"model.attn_bias": True}, "a learned key/value bias k', v' per head (Sun et al. 2024)"),
    "sink_token": ({"model.sink_token": True}, "a learned sink token (StreamingLLM)"),
    "sgd": ({"optim.name": "sgd", "optim.lr": 0.03}, "SGD with momentum (the paper)"),
    "muon": ({"optim.name": "muon", "optim.lr": 0.02}, "Muon (optax; outlier-safe pretraining)"),
}
# n_layers -> the base run (the default suite's phenomena sizes)
SCALES: dict[int, dict] = {
    1: {"model": {"d_model": 32, "max_positions": 64}, "task": {"seq_len": 64}, "optim": {"lr": 1e-2},
        "train": {"steps": 800, "batch": 32, "eval_batch": 64, "eval_schedule": [[100, 0]]}},
    3: {"model": {"d_model": 64, "max_positions": 32, "n_layers": 3}, "task": {"seq_len": 32}, "optim": {"lr": 2e-3},
        "train": {"steps": 800, "batch": 16, "eval_batch": 64, "eval_schedule": [[100, 0]]}},
}
# the table's columns: name -> (what, function of one run's last metrics row and its layer count)
COLUMNS = {
    "attn_sink": ("Attn<s>: attention on BOS of the non-trigger queries but BOS, in the sink layer (1-layer: "
                  "layer 0; 3-layer: layer 1)", lambda m, n: m[f"sink_attention_excl0_l{_sink_layer(n)}"]),
    "sink_rate": ("Sink^0.3: fraction of (layer, head) pairs with alpha_1 > 0.3 (Gu et al.)", lambda m, n: m["sink_rate"]),
    "drain": ("||Val<s>|| / ||Val|| of the other tokens (mean) in the sink layer",
                    lambda m, n: m[f"value_drain_l{_sink_layer(n)}"] / m[f"value_others_l{_sink_layer(n)}"]),
    "peak": ("||Res<s>|| / ||Res|| of the other positions (mean) after layer 0",
                       lambda m, n: m["residual_peak_l0"] / m["residual_others_l0"]),
    "massive_ratio": ("largest / median |activation| of the residual stream, max over layers (Sun et al.)",
                      lambda m, n: max(m[f"massive_top1_l{l}"] / m[f"massive_median_l{l}"] for l in range(n))),
    "kurtosis": ("excess kurtosis of the residual stream, max over layers", lambda m, n: max(
        m[f"kurtosis_l{l}"] for l in range(n))),
    "backcopy_risk": ("back-copy excess risk (nats)", lambda m, n: m["backcopy_risk"]),
    "bigram_risk": ("bigram excess risk (nats)", lambda m, n: m["bigram_risk"]),
    "loss": ("mean next-token cross-entropy (nats)", lambda m, n: m["loss"]),
}


def _sink_layer(n_layers: int) -> int:
    return 0 if n_layers == 1 else 1


def _setting(name: str, n_layers: int) -> dict:
    settings, _ = ROWS[name]
    seq = SCALES[n_layers]["task"]["seq_len"]
    return {k: (-math.log(seq) if v == "{log_t}" else v) for k, v in settings.items()}


def plan(rows: list[str], n_layers: int, seeds: int, steps: int | None = None) -> SweepPlan:
    """The sweep of `rows` at the `n_layers` scale (validated: no training, no compilation)."""
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise ConfigError(f"unknown mitigation row(s) {bad}; choose from {', '.join(ROWS)}")
    if n_layers not in SCALES:
        raise ConfigError(f"the mitigation table has scales {sorted(SCALES)} layers, not {n_layers}")
    base = json.loads(json.dumps(SCALES[n_layers]))
    if steps is not None:
        base["train"]["steps"] = steps
    spec = {"base": {"preset": "cpu", **base}, "seeds": seeds,
            "list": [{LABEL: name, **_setting(name, n_layers)} for name in rows]}
    return plan_sweep(spec, f"mitigation table ({n_layers} layers)")


def run(out: str | Path, rows: list[str], layers: list[int], seeds: int = 3, steps: int | None = None,
        progress: bool = True) -> list[dict]:
    """Train (or resume) every row at every scale into `out/{n}layer/` and write `out/mitigations.csv`,
    `out/mitigations.md` and `out/mitigations.png`. Returns the table rows."""
    out = Path(out)
    plans = {n: plan(rows, n, seeds, steps) for n in layers}  # every scale validated before any training
    table = []
    for n, p in plans.items():
        run_sweep(p, out / f"{n}layer", progress=progress, write_figure=False)
        table += summarize(p, out / f"{n}layer", n)
    write(out, table)
    return table


def summarize(p: SweepPlan, folder: Path, n_layers: int) -> list[dict]:
    """One row per mitigation: median, min and max over seeds of every column at the last step."""
    per_row: dict[str, list[dict[str, float]]] = {}
    for g in p.groups:
        _, mrows = load_metrics(folder / "groups" / g.name)
        last = max(int(r["step"]) for r in mrows)
        for r in mrows:
            if int(r["step"]) != last:
                continue
            run = g.runs[(int(r["seed"]), float(r["lr"]))]
            per_row.setdefault(run.setting[LABEL], []).append(
                {k: float(v) for k, v in r.items() if v not in ("", None)})
    out = []
    for name in [s[LABEL] for s in p.spec["list"]]:
        runs = per_row[name]
        row = {"mitigation": name, "layers": n_layers, "seeds": len(runs), "step": int(runs[0]["step"])}
        for col, (_, fn) in COLUMNS.items():
            vals = np.array([fn(m, n_layers) for m in runs])
            row[col], row[f"{col}_min"], row[f"{col}_max"] = (float(np.median(vals)), float(vals.min()),
                                                             float(vals.max()))
        out.append(row)
    return out


def write(out: Path, table: list[dict]) -> None:
    """mitigations.csv (every number), mitigations.md (median [min-max]) and mitigations.png."""
    out.mkdir(parents=True, exist_ok=True)
    cols = ["mitigation", "layers", "seeds", "step"] + [c + s for c in COLUMNS for s in ("", "_min", "_max")]
    write_csv_rows(out / "mitigations.csv", [{k: _fmt(r[k]) for k in cols} for r in table], cols)
    atomic_write(out / "mitigations.md", lambda f: f.write(markdown(table)), mode="w")
    figure(table, out / "mitigations.png")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(table: list[dict]) -> str:
    """The table as markdown: median [min-max] over seeds, one block per scale, then what each column is."""
    lines = []
    for n in sorted({r["layers"] for r in table}):
        rows = [r for r in table if r["layers"] == n]
        lines += [f"**{n} layer{'s' if n > 1 else ''}** ({rows[0]['seeds']} seeds, step {rows[0]['step']})", "",
                  "| mitigation | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for r in rows:
            cells = [f"{r[c]:.3g} [{r[c + '_min']:.3g}-{r[c + '_max']:.3g}]" for c in COLUMNS]
            lines.append(f"| {r['mitigation']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- `{c}`: {what}" for c, (what, _) in COLUMNS.items()]
    lines += [f"- `{name}`: {what}" for name, (_, what) in ROWS.items() if name in {r["mitigation"] for r in table}]
    return "\n".join(lines) + "\n"


FIGURE_COLUMNS = {"attn_sink": "attention on BOS", "sink_rate": "fraction of heads", "drain": "BOS / others",
                  "peak": "BOS / others", "backcopy_risk": "nats", "loss": "nats"}  # column -> y label


def figure(table: list[dict], path: Path) -> Path:
    """One panel per column of FIGURE_COLUMNS: a bar per mitigation (median, min-max whiskers), one colour
    per scale."""
    scales = sorted({r["layers"] for r in table})
    names = list(dict.fromkeys(r["mitigation"] for r in table))
    fig, axes = style.subplots(len(FIGURE_COLUMNS), width=2, ncols=2, aspect=0.55)
    x = np.arange(len(names))
    w = 0.8 / len(scales)
    for ax, col in zip(axes, FIGURE_COLUMNS):
        for i, n in enumerate(scales):
            rows = {r["mitigation"]: r for r in table if r["layers"] == n}
            med = np.array([rows[m][col] if m in rows else np.nan for m in names])
            lo = np.array([rows[m][col + "_min"] if m in rows else np.nan for m in names])
            hi = np.array([rows[m][col + "_max"] if m in rows else np.nan for m in names])
            ax.bar(x + (i - (len(scales) - 1) / 2) * w, med, w, yerr=[med - lo, hi - med],
                   label=f"{n} layer{'s' if n > 1 else ''}", capsize=1.5)
        ax.set_title(col)
        ax.set_ylabel(FIGURE_COLUMNS[col])
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=6)
    style.legend(axes[0])
    style.subtitle(fig, "Mitigations on the BB task (median, min-max over seeds)")
    return style.save(fig, path)
