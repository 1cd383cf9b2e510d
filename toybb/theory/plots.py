"""Figures of predicted vs simulated curves for `toybb theory --plot DIR`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb.records import save_figure


def write_figures(results: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["name"]: r for r in results}
    paths = []
    if "rates" in by:
        c = by["rates"]["curves"]
        t, pr = c["t"], c["pred"]
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
        for j in range(c["y"].shape[1]):
            ax[0].plot(t, c["y"][:, j], color=f"C{j}", label=f"type {j}")
            ax[0].plot(t, pr["y"][j], color=f"C{j}", ls="--")
        ax[0].set(xscale="log", xlabel="flow time t", ylabel="sink logit y_v", title="y_v vs 1/2 log t - log k_v (dashed)")
        ax[1].loglog(t, c["drain"], label="simulated")
        ax[1].loglog(t, pr["drain"], "--", label="D t^-1/2")
        ax[1].set(xlabel="flow time t", ylabel="drain ||s - mean s|| (value norm)", title="||s - mean s|| vs D t^-1/2")
        ax[2].loglog(t, c["loss"], label="simulated")
        ax[2].loglog(t, pr["loss"], "--", label="N / (4t)")
        ax[2].set(xlabel="flow time t", ylabel="loss (nats)", title="loss vs N/(4t)")
        for a in ax:
            a.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "theory_rates.png")
        save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    if "residual" in by:
        c = by["residual"]["curves"]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        st = c["steps"]
        ax[0].plot(st, c["adam"][0], label="Adam (simulated)")
        ax[0].plot(st, c["pred_adam"], "--", label="m0 + rho lr k")
        ax[0].plot(st, c["sgd"][0], label="SGD (simulated)")
        ax[0].set(xlabel="step", ylabel="||Res<s>|| = m", title=f"beta={c['betas'][0]}")
        for j, be in enumerate(c["betas"]):
            ax[1].semilogx(st[1:], c["sgd"][j][1:], color=f"C{j}", label=f"SGD beta={be}")
            ax[1].semilogx(st[1:], c["pred_sgd"][j][1:], color=f"C{j}", ls="--")
        ax[1].set(xlabel="step", ylabel="||Res<s>|| = m", title="SGD: simulated vs flow prediction (dashed)")
        for a in ax:
            a.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "theory_residual.png")
        save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    for name, key in (("shared_value", "y"), ("relu", "y_relu")):
        if name not in by or by[name]["curves"] is None:
            continue
        c = by[name]["curves"]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        t = c["t"]
        sel = t > 0
        ax[0].semilogx(t[sel], c[key][sel])
        if name == "relu":
            ax[0].semilogx(t[sel], c["y_softmax"][sel], ls=":", color="gray")
            ax[0].semilogx(t[sel], 0.5 * np.log(t[sel]), "--", color="k", label="1/2 log t (softmax rate)")
            ax[1].loglog(t[sel], c["loss_relu"][sel], label="ReLU")
            ax[1].loglog(t[sel], c["loss_softmax"][sel], label="softmax")
            ax[0].legend(fontsize=7)
            ax[1].legend(fontsize=7)
        else:
            ax[1].loglog(t[sel], np.maximum(c["loss"][sel], 1e-18))
        ax[0].set(xlabel="flow time t", ylabel="BOS logit y_v", title=f"{name}: y_v (solid) stays finite")
        ax[1].set(xlabel="flow time t", ylabel="loss (nats)", title="loss")
        fig.tight_layout()
        paths.append(out_dir / f"theory_{name}.png")
        save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    return paths
