"""Figures of predicted vs simulated curves for `toybb theory --plot DIR` (through `toybb.style`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb import style

MODEL = "reduced attention model (toybb.theory)"


def _finish(fig, axes, result: dict, path: Path) -> Path:
    for a in axes:
        if a.get_legend() is None:  # a panel may have laid out its own legend
            style.legend(a)
        a.grid(alpha=0.3, which="both", lw=0.4)
    style.subtitle(fig, result["statement"], model=MODEL, config={"derivation": result["doc"]})
    return style.save(fig, path)


def _rates(r: dict, path: Path) -> Path:
    c = r["curves"]
    t, pr = c["t"], c["pred"]
    fig, ax = style.subplots(3, 2, aspect=0.85)
    for j in range(c["y"].shape[1]):  # one colour per type, the legend by line style (8 entries hid the panel)
        ax[0].plot(t, c["y"][:, j], color=f"C{j}", label="simulated (one colour per type)" if j == 0 else None)
        ax[0].plot(t, pr["y"][j], color=f"C{j}", ls="--", label="1/2 log t - log k_v" if j == 0 else None)
    ax[0].set(xlabel="flow time t", ylabel="sink logit y_v", title="y_v vs 1/2 log t - log k_v")
    style.log_axes(ax[0], "x")
    style.legend(ax[0], where="upper left")
    ax[1].plot(t, c["drain"], label="simulated")
    ax[1].plot(t, pr["drain"], "--", label="D t^-1/2")
    ax[1].set(xlabel="flow time t", ylabel="||s - mean s|| (value norm)", title="drain vs D t^-1/2")
    ax[2].plot(t, c["loss"], label="simulated")
    ax[2].plot(t, pr["loss"], "--", label="N / (4t)")
    ax[2].set(xlabel="flow time t", ylabel="loss (nats)", title="loss vs N/(4t)")
    for a in ax[1:]:
        style.log_axes(a, "xy")
    return _finish(fig, ax, r, path)


def _residual(r: dict, path: Path) -> Path:
    c = r["curves"]
    fig, ax = style.subplots(2, 2)
    st = c["steps"]
    ax[0].plot(st, c["adam"][0], label="Adam (simulated)")
    ax[0].plot(st, c["pred_adam"], "--", label="m0 + rho lr k")
    ax[0].plot(st, c["sgd"][0], label="SGD (simulated)")
    ax[0].set(xlabel="step", ylabel="||Res<s>|| = m", title=f"beta={c['betas'][0]}")
    for j, be in enumerate(c["betas"]):
        ax[1].plot(st[1:], c["sgd"][j][1:], color=f"C{j}", label=f"SGD beta={be}")
        ax[1].plot(st[1:], c["pred_sgd"][j][1:], color=f"C{j}", ls="--", label=f"flow prediction, beta={be}")
    ax[1].set(xlabel="step", ylabel="||Res<s>|| = m", title="SGD: simulated vs flow prediction")
    style.log_axes(ax[1], "x")
    return _finish(fig, ax, r, path)


def _finite(r: dict, name: str, key: str, path: Path) -> Path:
    c = r["curves"]
    fig, ax = style.subplots(2, 2)
    t = c["t"]
    sel = t > 0
    y = c[key][sel].reshape(int(sel.sum()), -1)  # [t, types]: one line (and one legend entry) per type
    for j in range(y.shape[1]):
        ax[0].plot(t[sel], y[:, j], color=f"C{j}", label=f"type {j}")
    if name == "relu":
        ys = c["y_softmax"][sel].reshape(int(sel.sum()), -1)
        for j in range(ys.shape[1]):
            ax[0].plot(t[sel], ys[:, j], ls=":", color="gray", label="softmax, every type" if j == 0 else None)
        ax[0].plot(t[sel], 0.5 * np.log(t[sel]), "--", color="k", label="1/2 log t")
        ax[1].plot(t[sel], np.maximum(c["loss_relu"][sel], 1e-18), label="ReLU (floored at 1e-18)")
        ax[1].plot(t[sel], np.maximum(c["loss_softmax"][sel], 1e-18), label="softmax (floored at 1e-18)")
    else:
        ax[1].plot(t[sel], np.maximum(c["loss"][sel], 1e-18), label="simulated (floored at 1e-18)")
    ax[0].set(xlabel="flow time t", ylabel="BOS logit y_v", title=f"{name}: y_v stays finite (solid: simulated)")
    ax[1].set(xlabel="flow time t", ylabel="loss (nats)", title="loss")
    style.log_axes(ax[0], "x")
    style.log_axes(ax[1], "xy")
    style.legend(ax[0], where="upper left" if name == "relu" else "best", ncol=2 if name == "relu" else 1)
    return _finish(fig, ax, r, path)


@style.styled
def write_figures(results: list[dict], out_dir: Path) -> list[Path]:
    by = {r["name"]: r for r in results}
    paths = []
    if "rates" in by:
        paths.append(_rates(by["rates"], out_dir / "theory_rates.png"))
    if "residual" in by:
        paths.append(_residual(by["residual"], out_dir / "theory_residual.png"))
    for name, key in (("shared_value", "y"), ("relu", "y_relu")):
        if name in by and by[name]["curves"] is not None:
            paths.append(_finite(by[name], name, key, out_dir / f"theory_{name}.png"))
    return paths
