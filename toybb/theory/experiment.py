"""Theory vs experiment: fit the reduced-model rates (theory/03, 05) to trained toy-model trajectories.

A trajectory is a run folder written by `toybb train` (config.json + metrics.csv) or a `RunResult`.
Per seed, over the last decade of evaluation steps [T/10, T] (`rates.fit_rates`):

  sink       Δlogit(., <s>) (sink_logit_gap_l{L})  vs log step  -> log-slope c      (predicted 1/2)
  drain      ||Val<s>|| (value_drain_l{L})          vs step      -> power -a        (predicted -1/2)
  loss       non-trigger excess risk (bigram_risk)  vs step      -> power -b        (predicted -1)
  residual   ||Res<s>|| (residual_peak_l{R})        vs step      -> power, and d||Res<s>||/d step / lr
             predicted: Adam linear in steps (power -> 1, slope rho(lr) of theory/05),
                        SGD ~ sqrt(log t) (power -> 0)

The predicted rates are those of gradient flow (t = lr * step for SGD); power laws and log-slopes do
not depend on that rescaling. Adam is not gradient flow: the table reports its fits against the same
predictions and the reader (theory/07_trained_fits.md) says where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toybb import style
from toybb.checkpoints import CKPT_NAME
from toybb.config import RunConfig
from toybb.errors import ConfigError
from toybb.records import atomic_open, load_metrics
from toybb.task import BBTask
from toybb.theory import rates as R
from toybb.train.trainer import Trainer

# quantity -> (metric base, fitted key, predicted value, description)
QUANTITIES = {
    "sink": ("sink_logit_gap", "log_slope", R.SINK_LOG_SLOPE, "Δlogit(.,<s>) vs log step: slope c"),
    "drain": ("value_drain", "power", -R.DRAIN_EXPONENT, "||Val<s>|| vs step: exponent -a"),
    "loss": ("bigram_risk", "power", -R.LOSS_EXPONENT, "non-trigger excess risk vs step: exponent -b"),
    "residual": ("residual_peak", "power", None, "||Res<s>|| vs step: exponent (Adam -> 1, SGD -> 0)"),
}


@dataclass
class Trajectory:
    """Metrics of one trained run folder: steps [S], metrics name -> [S, n_runs], and its config."""

    name: str
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    seeds: list[int]
    lrs: list[float]
    config: dict

    @property
    def optimizer(self) -> str:
        return self.config.get("optim", {}).get("name", "adam")

    @property
    def arch(self) -> str:
        return self.config.get("model", {}).get("arch", "transformer")

    @property
    def n_layers(self) -> int:
        return int(self.config.get("model", {}).get("n_layers", 1))


def load_trajectory(run) -> Trajectory:
    """A run folder (path) or a `toybb.train.trainer.RunResult` -> Trajectory."""
    if hasattr(run, "metrics") and hasattr(run, "steps"):
        cfg = run.config.to_dict() if hasattr(run.config, "to_dict") else dict(run.config)
        name = str(run.out_dir) if getattr(run, "out_dir", None) else "run"
        return Trajectory(name, np.asarray(run.steps, np.float64),
                          {k: np.asarray(v, np.float64) for k, v in run.metrics.items()},
                          [s for s, _ in run.runs], [lr for _, lr in run.runs], cfg)
    d = Path(run)
    if not d.is_dir():
        raise ConfigError(f"{d} is not a folder; give a run folder written by `toybb train --out DIR`")
    if not (d / "metrics.csv").is_file() or not (d / "config.json").is_file():
        raise ConfigError(f"{d} is not a toybb run folder (no metrics.csv/config.json); give the --out of `toybb train`")

    meta, rows = load_metrics(d)
    cfg = meta.get("config", meta)
    if not rows:
        raise ConfigError(f"{d}/metrics.csv has no rows yet; wait for the run to evaluate a few steps")
    try:
        runs = list(dict.fromkeys((int(r["seed"]), float(r["lr"])) for r in rows))
        by_step: dict[int, dict] = {}
        for r in rows:
            if any(v in (None, "") for v in r.values()):
                continue  # a row torn by an interruption
            by_step.setdefault(int(r["step"]), {})[(int(r["seed"]), float(r["lr"]))] = r
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{d}/metrics.csv is malformed ({e}); it must have columns step, seed, lr, ...") from None
    steps = sorted(s for s, g in by_step.items() if len(g) == len(runs))
    names = [k for k in rows[0] if k not in ("step", "seed", "lr")]
    metrics = {n: np.array([[float(by_step[s][r][n]) for r in runs] for s in steps], np.float64) for n in names}
    return Trajectory(str(d), np.array(steps, np.float64), metrics, [s for s, _ in runs], [lr for _, lr in runs], cfg)


def _metric(traj: Trajectory, base: str) -> np.ndarray:
    if base in ("bigram_risk", "backcopy_risk", "loss"):
        name = base
    else:
        layer = 1 if (base != "residual_peak" and traj.n_layers > 1) else 0  # SPEC §3: sink/drain in layer 1
        name = f"{base}_l{layer}"
    if name not in traj.metrics:
        raise ConfigError(f"{traj.name}: metric {name!r} not recorded (a model without attention?)")
    return traj.metrics[name]


def fit_window(traj: Trajectory, decades: float = 1.0) -> tuple[float, float]:
    hi = float(traj.steps.max()) if traj.steps.size else 0.0
    lo = hi / 10**decades
    n = int(((traj.steps >= lo) & (traj.steps > 0)).sum())
    if hi <= 0 or n < 3 or not (traj.steps > 0).any() or traj.steps[traj.steps > 0].min() > lo:
        have = f"steps {traj.steps.min():g}..{hi:g}" if traj.steps.size else "no steps"
        raise ConfigError(f"{traj.name}: too few evaluation steps for a fit over the last {decades:g} decade(s) "
                          f"({have}, {n} in the window); train longer (the run must span at least one decade with "
                          f">= 3 evaluations in [T/10, T])")
    return lo, hi


def residual_forms(steps, values, lo: float, hi: float) -> dict:
    """Fit the two growth laws of theory/05 to ||Res<s>|| on the window [lo, hi] (steps > 0), each with two
    free constants: Adam's linear m = a + b k, and SGD's m = sqrt(A log k + B) (m^2 linear in log k).

    Returns {"linear_rms", "sqrtlog_rms": relative RMS error of each fit, "linear_slope": b,
    "sqrtlog_A": A, "better": "linear" or "sqrt(log)" (the smaller error)}."""
    k = np.asarray(steps, np.float64)
    m = np.asarray(values, np.float64)
    if k.shape != m.shape or k.ndim != 1:
        raise ConfigError(f"steps and values must be 1-d arrays of equal length, got {k.shape} and {m.shape}")
    sel = (k >= lo) & (k <= hi) & (k > 0) & np.isfinite(m)
    if sel.sum() < 3:
        raise ConfigError(f"need at least 3 points in [{lo:g}, {hi:g}] to fit the residual growth laws")
    k, m = k[sel], m[sel]
    b, a = np.polyfit(k, m, 1)
    A, B = np.polyfit(np.log(k), m**2, 1)
    lin = a + b * k
    sql = np.sqrt(np.maximum(A * np.log(k) + B, 0.0))
    rms = lambda f: float(np.sqrt(np.mean(((f - m) / m) ** 2)))  # noqa: E731
    out = {"linear_rms": rms(lin), "sqrtlog_rms": rms(sql), "linear_slope": float(b), "sqrtlog_A": float(A)}
    out["better"] = "linear" if out["linear_rms"] <= out["sqrtlog_rms"] else "sqrt(log)"
    return out


def fit_trajectory(traj: Trajectory, decades: float = 1.0) -> dict:
    """Per-seed fits of every quantity over the last `decades` decade(s).

    Returns {quantity: {"fit": [n_runs] fitted values, "predicted": value or None,
    "slope_per_lr": [n_runs] (residual only: d||Res<s>||/d step / lr), "predicted_slope_per_lr": rho}},
    plus "window": (lo, hi).
    """
    lo, hi = fit_window(traj, decades)
    out: dict = {"window": (lo, hi)}
    for q, (base, key, pred, _) in QUANTITIES.items():
        vals = _metric(traj, base)
        fits = []
        for r in range(vals.shape[1]):
            f = R.fit_rates(traj.steps, vals[:, r], decades=decades)
            fits.append(f[key])
        entry = {"fit": np.array(fits), "predicted": pred}
        sel = (traj.steps >= lo) & (traj.steps > 0)
        if q == "sink":  # Adam (theory/05, 5b): y grows by rho * lr per step in the normalised regime
            slopes = np.array([np.polyfit(traj.steps[sel], vals[sel, r], 1)[0] for r in range(vals.shape[1])])
            entry["slope_per_lr"] = slopes / np.asarray(traj.lrs)
        if q == "residual":
            adam = traj.optimizer == "adam"
            entry["predicted"] = 1.0 if adam else 0.0
            sel = (traj.steps >= lo) & (traj.steps > 0)
            slopes = np.array([np.polyfit(traj.steps[sel], vals[sel, r], 1)[0] for r in range(vals.shape[1])])
            entry["slope_per_lr"] = slopes / np.asarray(traj.lrs)
            ob = traj.config.get("optim", {})
            entry["predicted_slope_per_lr"] = (R.adam_linear_rate(float(np.median(traj.lrs)), ob.get("b1", 0.9),
                                                                  ob.get("b2", 0.99)) if adam else 0.0)
            forms = [residual_forms(traj.steps, vals[:, r], lo, hi) for r in range(vals.shape[1])]
            entry["linear_rms"] = np.array([f["linear_rms"] for f in forms])
            entry["sqrtlog_rms"] = np.array([f["sqrtlog_rms"] for f in forms])
            entry["growth"] = vals[-1] - vals[int(np.argmax(traj.steps >= lo))]
        out[q] = entry
    return out


def _stat(x) -> tuple[float, float, float]:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(np.median(x)), float(x.min()), float(x.max())


def fit_table(runs, decades: float = 1.0) -> list[dict]:
    """Rows {run, optimizer, arch, quantity, description, predicted, median, min, max, window, n_seeds}
    for every run (folder or RunResult) and quantity; the residual adds a "residual slope/lr" row."""
    rows = []
    for run in runs:
        traj = run if isinstance(run, Trajectory) else load_trajectory(run)
        fits = fit_trajectory(traj, decades)
        for q, (_, _, _, desc) in QUANTITIES.items():
            e = fits[q]
            med, lo, hi = _stat(e["fit"])
            rows.append({"run": traj.name, "optimizer": traj.optimizer, "arch": traj.arch, "quantity": q,
                         "description": desc, "predicted": e["predicted"], "median": med, "min": lo, "max": hi,
                         "window": fits["window"], "n_seeds": len(e["fit"])})
            if q == "sink" and traj.optimizer == "adam":
                med, lo, hi = _stat(e["slope_per_lr"])
                ob = traj.config.get("optim", {})
                rho = R.adam_linear_rate(float(np.median(traj.lrs)), ob.get("b1", 0.9), ob.get("b2", 0.99))
                rows.append({"run": traj.name, "optimizer": traj.optimizer, "arch": traj.arch,
                             "quantity": "sink_slope", "description": "Adam: dΔlogit/d step / lr (theory/05: rho)",
                             "predicted": rho, "median": med, "min": lo, "max": hi,
                             "window": fits["window"], "n_seeds": len(e["slope_per_lr"])})
            if q == "residual":
                med, lo, hi = _stat(e["slope_per_lr"])
                rows.append({"run": traj.name, "optimizer": traj.optimizer, "arch": traj.arch,
                             "quantity": "residual_slope", "description": "d||Res<s>||/d step / lr (Adam: rho)",
                             "predicted": e["predicted_slope_per_lr"], "median": med, "min": lo, "max": hi,
                             "window": fits["window"], "n_seeds": len(e["slope_per_lr"])})
                for key, desc in (("linear_rms", "||Res<s>|| = a + b k: relative RMS error"),
                                  ("sqrtlog_rms", "||Res<s>|| = sqrt(A log k + B): relative RMS error"),
                                  ("growth", "||Res<s>|| growth over the fit window")):
                    med, lo, hi = _stat(e[key])
                    rows.append({"run": traj.name, "optimizer": traj.optimizer, "arch": traj.arch,
                                 "quantity": f"residual_{key}", "description": desc, "predicted": None,
                                 "median": med, "min": lo, "max": hi, "window": fits["window"],
                                 "n_seeds": len(e[key])})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = []
    last = None
    for r in rows:
        if r["run"] != last:
            lo, hi = r["window"]
            lines.append(f"{r['run']}  ({r['arch']}, {r['optimizer']}, {r['n_seeds']} seed(s), "
                         f"fit on steps [{lo:g}, {hi:g}])")
            last = r["run"]
        pred = "—" if r["predicted"] is None else f"{r['predicted']:.3g}"
        lines.append(f"  {r['quantity']:<15} {r['description']:<52} predicted {pred:>7}   trained "
                     f"{r['median']:.3g} [{r['min']:.3g}, {r['max']:.3g}]")
    return "\n".join(lines)


def predicted_curve(quantity: str, steps: np.ndarray, anchor_step: float, anchor_value: float,
                    optimizer: str = "sgd", lr: float = 1e-3, rho: float | None = None) -> np.ndarray:
    """The predicted law through (anchor_step, anchor_value): sink v0 + c log(s/s0); drain, loss
    v0 (s/s0)^-rate; residual Adam v0 + rho lr (s - s0), SGD v0 sqrt(log s / log s0)."""
    s = np.asarray(steps, np.float64)
    s0, v0 = float(anchor_step), float(anchor_value)
    if quantity == "sink":
        return v0 + R.SINK_LOG_SLOPE * np.log(s / s0)
    if quantity == "drain":
        return v0 * (s / s0) ** -R.DRAIN_EXPONENT
    if quantity == "loss":
        return v0 * (s / s0) ** -R.LOSS_EXPONENT
    if quantity == "residual":
        if optimizer == "adam":
            return v0 + (R.adam_linear_rate(lr) if rho is None else rho) * lr * (s - s0)
        return v0 * np.sqrt(np.log(s) / np.log(s0))
    raise ConfigError(f"unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}")


def _overlay_panel(ax, traj: Trajectory, q: str, lo: float, label: str) -> None:
    """Measured median over seeds with a min-max band and the predicted law anchored at `lo` (dashed)."""
    pos = traj.steps > 0
    st = traj.steps[pos]
    lr = float(np.median(traj.lrs))
    base = QUANTITIES[q][0]
    v = _metric(traj, base)[pos]
    med = np.median(v, axis=1)
    ax.fill_between(st, v.min(1), v.max(1), alpha=0.3, color="C0", lw=0, label="seeds (min-max)")
    ax.plot(st, med, color="C0", label="trained (median)")
    k0 = int(np.argmax(st >= lo))  # anchor at the first evaluation in the window
    grid = st[k0:]
    law = {"sink": "1/2 log t", "drain": "t^-1/2", "loss": "t^-1",
           "residual": "rho lr k (Adam)" if traj.optimizer == "adam" else "sqrt(log t) (SGD)"}[q]
    ax.plot(grid, predicted_curve(q, grid, st[k0], med[k0], traj.optimizer, lr), "--", color="C3",
            label=f"predicted {law}")
    if q == "sink" and traj.optimizer == "adam":
        ax.plot(grid, med[k0] + R.adam_linear_rate(lr) * lr * (grid - st[k0]), ":", color="C2", lw=1.4,
                label="Adam: rho lr k")
    ax.axvline(lo, color="0.6", lw=0.8, ls=":", label="start of the fitted window")
    layer = "" if base == "bigram_risk" else (" L0" if (base == "residual_peak" or traj.n_layers == 1) else " L1")
    ax.set(xlabel="training step", ylabel=OVERLAY_YLABELS[q], title=f"{label}{layer}")
    style.log_axes(ax, "xy" if q in ("drain", "loss") and np.all(v > 0) else "x")
    ax.grid(alpha=0.3, lw=0.4)


OVERLAY_YLABELS = {"sink": "Δlogit(., <s>) (logits)", "drain": "||Val<s>|| (L2 norm)",
                   "loss": "bigram excess risk (nats)", "residual": "||Res<s>|| (L2 norm)"}


@style.styled
def plot_overlay(runs, out_path, decades: float = 1.0, labels: list[str] | None = None, dpi: int = style.DPI) -> Path:
    """One row per run, one column per quantity: measured median over seeds with a min-max band, and
    the predicted law anchored at the start of the fit window (dashed; Adam runs also show the linear
    law rho lr per step, dotted, on the sink logit). Writes a PNG quantised to 256 colours (the plot
    uses a handful, so nothing visible is lost and the file is ~3x smaller)."""
    trajs = [r if isinstance(r, Trajectory) else load_trajectory(r) for r in runs]
    if labels is not None and len(labels) != len(trajs):
        raise ConfigError(f"plot_overlay: {len(labels)} labels for {len(trajs)} runs")
    qs = list(QUANTITIES)
    one = len(trajs) == 1  # one run: a 2 x 2 grid (four panels in a row were too narrow for their labels)
    fig, axes = style.subplots(len(trajs) * len(qs), 2, ncols=2 if one else len(qs), aspect=0.5 if one else 0.85)
    for i, traj in enumerate(trajs):
        lo, _ = fit_window(traj, decades)
        label = labels[i] if labels else Path(traj.name).name
        for j, q in enumerate(qs):
            _overlay_panel(axes[i * len(qs) + j], traj, q, lo, label)
    style.figure_legend(fig, axes, ncol=3)
    style.subtitle(fig, f"Reduced-model laws fitted over the last {decades:g} decade(s) of steps",
                   model="; ".join(f"{labels[i] if labels else Path(t.name).name}: {t.arch}, {t.optimizer}, "
                                   f"lr {float(np.median(t.lrs)):g}, {len(t.seeds)} seeds" for i, t in enumerate(trajs)))
    out = style.save(fig, out_path, dpi=dpi)
    _quantise_png(out)
    return out


def _quantise_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        q = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    q.save(path, optimize=True)


def write_fit_csv(rows: list[dict], path) -> Path:
    """The rows of `fit_table` as CSV (run, quantity, predicted, median, min, max, window, n_seeds)."""
    import csv

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cols = ["run", "arch", "optimizer", "quantity", "description", "predicted", "median", "min", "max",
            "window_lo", "window_hi", "n_seeds"]

    with atomic_open(p, newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            d = {k: r[k] for k in cols if k in r}
            d["window_lo"], d["window_hi"] = r["window"]
            d["predicted"] = "" if r["predicted"] is None else f"{r['predicted']:.6g}"
            for k in ("median", "min", "max"):
                d[k] = f"{r[k]:.6g}"
            w.writerow(d)
    return p


# ---------------------------------------------------------------------------------------------
# SimpleModel: the BOS value split by output support (theory/07)


def simple_sink_values(run_dir, checkpoints=None) -> tuple[np.ndarray, np.ndarray]:
    """BOS values s of a SimpleModel run from checkpoint files: (steps [K], s [K, n_runs, vocab]).

    checkpoints: paths of checkpoint.npz copies of the run (default: the run's own checkpoint)."""
    from flax import nnx

    meta, _ = load_metrics(run_dir)
    cfg = RunConfig.from_dict(meta.get("config", meta))
    if cfg.model.arch != "simple":
        raise ConfigError(f"{run_dir} is a {cfg.model.arch} run; the BOS value split needs model.arch = simple")
    trainer = Trainer(cfg)
    paths = [Path(run_dir) / CKPT_NAME] if checkpoints is None else [Path(p) for p in checkpoints]
    steps, values = [], []
    for p in paths:
        state, step = trainer.load_checkpoint(p)
        n = len(trainer.runs)
        s = [np.asarray(nnx.merge(trainer.graphdef, _tree_index(state["params"], r)).blocks[0].attn.sink_value())
             for r in range(n)]
        steps.append(step)
        values.append(np.stack(s))
    order = np.argsort(steps)
    return np.asarray(steps)[order], np.stack(values)[order]


def _tree_index(tree, i):
    import jax

    return jax.tree.map(lambda x: x[i], tree)


def supported_split(s: np.ndarray, task=None, min_mass: float = 1e-3) -> dict:
    """Norm of s over the well-supported outputs (marginal output probability >= min_mass, re-centred
    there) and over the rare ones. theory/03 assumes every row shares one output support; on the BB
    bigram table rare characters ('&', '$', ...) are impossible after most tokens, so their logits are
    pushed to -inf forever and s grows along them while the rest of s drains."""
    if task is None:
        task = BBTask()
    n = task.n_chars
    mass = np.zeros(s.shape[-1])
    mass[:n] = (task.unigram[:n, None] * task.bigram[:n, :n]).sum(0)
    good = mass >= min_mass
    sg = np.where(good, s - (s * good).sum(-1, keepdims=True) / good.sum(), 0.0)
    rare = (~good) & (np.arange(s.shape[-1]) < n)
    return {"supported": np.linalg.norm(sg, axis=-1), "rare": np.linalg.norm(np.where(rare, s, 0.0), axis=-1),
            "n_supported": int(good.sum()), "n_rare": int(rare.sum())}
