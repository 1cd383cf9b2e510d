"""Figures of `toybb probe` (matplotlib, Agg): one function per figure, all called by `write_all`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb.records import save_figure

DPI = 90


def _plt():
    from toybb.plot import pyplot

    return pyplot()


def sink_heatmap(path: Path, stats, names, sel) -> None:
    """Per-head sink score (attention on key 0) for each domain, and the difference of the first two."""
    plt = _plt()
    panels = [(f"sink score: {n}", stats[n].mean("sink_score"), "viridis", (0, 1)) for n in names]
    if sel is not None:
        m = float(np.abs(sel).max()) or 1.0
        panels.append((f"{names[0]} minus {names[1]}", sel, "RdBu_r", (-m, m)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 5.2), squeeze=False)
    for ax, (title, arr, cmap, (lo, hi)) in zip(axes[0], panels):
        im = ax.imshow(arr, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)


def norms_by_position(path: Path, stats, names) -> None:
    """Residual-stream norm and value-state norm (||W_O^h v||, mean over heads) by position, per layer."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for j, n in enumerate(names):
        st = stats[n]
        rp = st.mean("resid_pos")  # [L, K]
        vp = st.mean("value_pos").mean(axis=1)  # [L, K]
        L = rp.shape[0]
        cmap = plt.get_cmap("viridis")
        for l in range(L):
            axes[0, j].plot(rp[l], color=cmap(l / max(L - 1, 1)), lw=1)
            axes[1, j].plot(vp[l], color=cmap(l / max(L - 1, 1)), lw=1)
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(f"{n}: ||residual|| by position (colour = layer 0..{L - 1})", fontsize=9)
        axes[1, j].set_yscale("log")
        axes[1, j].set_title(f"{n}: ||W_O^h v|| by position, mean over heads", fontsize=9)
        axes[1, j].set_xlabel("position")
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)


def massive_profile(path: Path, stats, names, summary) -> None:
    """Top-1/2/3 and median |activation| of the residual stream across layers (log y), per domain."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, n in zip(axes[0], names):
        top, med = stats[n].mean("top"), stats[n].mean("median")
        x = np.arange(len(med))
        for k, style in zip(range(3), ("-o", "-s", "-^")):
            ax.plot(x, top[:, k], style, ms=3, label=f"top {k + 1}")
        ax.plot(x, med, "-", color="gray", label="median")
        first = summary["domains"][n]["massive"]["first_layer"]
        if first is not None:
            ax.axvline(first, color="red", ls=":", lw=1, label=f"first massive layer {first}")
        ax.set_yscale("log")
        ax.set_xlabel("layer (residual stream after it)")
        ax.set_ylabel("|activation|")
        ax.set_title(n, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)


def intervention_bars(path: Path, rows, names) -> None:
    """Loss change per head (zero the head / move its attention to key 0) per domain, and perplexity
    under the massive-activation interventions."""
    plt = _plt()
    heads = sorted({(r["layer"], r["head"]) for r in rows if r["intervention"].startswith("head_")})
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 0.45 * len(heads) + 3) + 4, 4),
                             gridspec_kw={"width_ratios": [max(2, len(heads) / 6), 1]})
    x = np.arange(len(heads))
    width = 0.8 / (2 * len(names))
    k = 0
    for n in names:
        for kind in ("zero", "to_bos"):
            d = {(r["layer"], r["head"]): r["delta_nll"] for r in rows
                 if r["domain"] == n and r["intervention"] == f"head_{kind}"}
            axes[0].bar(x + (k - len(names) + 0.5) * width, [d.get(lh, np.nan) for lh in heads], width,
                        label=f"{n}: {kind}")
            k += 1
    axes[0].set_xticks(x, [f"L{l}H{h}" for l, h in heads], rotation=90, fontsize=7)
    axes[0].set_ylabel("loss change (nats/token)")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=7)
    axes[0].set_title("head interventions", fontsize=9)
    kinds = ("none", "massive_mean", "massive_zero")
    for j, n in enumerate(names):
        p = {r["intervention"]: r["ppl"] for r in rows if r["domain"] == n}
        vals = [p.get(kd, np.nan) for kd in kinds]
        axes[1].bar(np.arange(3) + j * 0.8 / len(names), [min(v, 1e6) for v in vals], 0.8 / len(names), label=n)
    axes[1].set_xticks(np.arange(3) + 0.4 - 0.4 / len(names), ["original", "massive -> mean", "massive -> 0"],
                       fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("perplexity")
    axes[1].legend(fontsize=7)
    axes[1].set_title("massive-activation interventions", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)


def attention_maps(path: Path, maps, names) -> None:
    """Attention patterns [query, key] of the most domain-selective heads on one sample per domain."""
    plt = _plt()
    heads = list(maps)
    cols = [n for n in names[:2]]
    fig, axes = plt.subplots(len(cols), len(heads), figsize=(2.6 * len(heads), 2.8 * len(cols)), squeeze=False)
    for j, (l, h) in enumerate(heads):
        for i, n in enumerate(cols):
            a = maps[(l, h)][n]
            axes[i, j].imshow(np.sqrt(a), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            axes[i, j].set_title(f"L{l}H{h} on {n}", fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle("attention (sqrt scale; rows = queries, columns = keys)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)


def write_all(out: Path, stats, names, sel, rows, maps, summary) -> None:
    sink_heatmap(out / "sink_heatmap.png", stats, names, sel)
    norms_by_position(out / "norms_by_position.png", stats, names)
    massive_profile(out / "massive_profile.png", stats, names, summary)
    if rows:
        intervention_bars(out / "interventions.png", rows, names)
    if maps:
        attention_maps(out / "attention_maps.png", maps, names)
