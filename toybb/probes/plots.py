"""Figures of `toybb probe` (matplotlib through `toybb.style`): one function per figure, all called by
`write_all`. `about` is {"model": name or path, "config": the probe settings}, drawn under each title."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toybb import style

PPL_CAP = 1e6  # perplexities above it are drawn at the cap and marked


def _sub(fig, title: str, about: dict | None) -> None:
    about = about or {}
    style.subtitle(fig, title, model=about.get("model"), config=about.get("config"))


@style.styled
def sink_heatmap(path: Path, stats, names, sel, about: dict | None = None) -> None:
    """Per-head Attn<s> (attention on key 0, sink_attention_excl0) for each domain, and the difference of the first two."""
    panels = [(f"{n}", stats[n].mean("sink_attention_excl0"), "viridis", (0, 1), "Attn<s> (attention on BOS)")
              for n in names]
    if sel is not None:
        m = float(np.abs(sel).max()) or 1.0
        panels.append((f"{names[0]} minus {names[1]}", sel, "RdBu_r", (-m, m), "difference of Attn<s>"))
    fig, axes = style.subplots(len(panels), 2, aspect=1.1)
    for ax, (title, arr, cmap, (lo, hi), label) in zip(axes, panels):
        im = ax.imshow(arr, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        ax.set(title=title, xlabel="head", ylabel="layer")
        style.integer_ticks(ax, "both")
        style.colorbar(im, ax, label)
    _sub(fig, "Per-head Attn<s>: attention on BOS, query 0 left out (sink_attention_excl0)", about)
    style.save(fig, path)


@style.styled
def norms_by_position(path: Path, stats, names, about: dict | None = None) -> None:
    """Residual-stream norm and value-state norm (||W_O^h v||, mean over heads) by position, one line
    per layer (colour = layer, on a labelled colourbar); the BOS (position 0) marked."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, axes = style.subplots(2 * len(names), 2, ncols=len(names))
    for j, n in enumerate(names):
        st = stats[n]
        curves = (st.mean("resid_pos"), st.mean("value_pos").mean(axis=1))  # [L, K] each
        L = curves[0].shape[0]
        norm = Normalize(0, max(L - 1, 1))
        for i, (arr, what) in enumerate(zip(curves, ("||residual||", "||W_O^h v||, mean over heads"))):
            ax = axes[i * len(names) + j]
            for l in range(L):
                ax.plot(arr[l], color=style.pyplot().get_cmap("viridis")(norm(l)), lw=0.8)
            ax.plot([0] * L, arr[:, 0], "r*", ms=5, label="BOS (position 0)")
            ax.set(title=f"{n}: {what}", xlabel="position", ylabel="L2 norm")
            style.log_axes(ax, "y")
            style.integer_ticks(ax, "x")
            style.legend(ax)
        style.colorbar(ScalarMappable(norm, "viridis"), [axes[j], axes[len(names) + j]], "layer")
    _sub(fig, "Norms by position", about)
    style.save(fig, path)


@style.styled
def massive_profile(path: Path, stats, names, summary, about: dict | None = None) -> None:
    """Top-1/2/3 and median |activation| of the residual stream across layers (log y), per domain."""
    fig, axes = style.subplots(len(names), 2)
    for ax, n in zip(axes, names):
        top, med = stats[n].mean("massive_top"), stats[n].mean("massive_median")
        x = np.arange(len(med))
        for k, mk in zip(range(3), ("-o", "-s", "-^")):
            ax.plot(x, top[:, k], mk, ms=2.5, label=f"top {k + 1}")
        ax.plot(x, med, "-", color="gray", label="median")
        first = summary["domains"][n]["massive"]["first_layer"]
        if first is not None:
            ax.axvline(first, color="red", ls=":", lw=1, label=f"first massive layer {first}")
        ax.set(title=n, xlabel="layer (residual stream after it)", ylabel="|activation|")
        style.log_axes(ax, "y")
        style.integer_ticks(ax, "x")
        style.legend(ax)
    _sub(fig, "Massive activations by layer", about)
    style.save(fig, path)


def _head_bars(ax, rows, names) -> None:
    heads = sorted({(r["layer"], r["head"]) for r in rows if r["intervention"].startswith("head_")})
    x = np.arange(len(heads))
    width = 0.8 / (2 * len(names))
    k = 0
    for n in names:
        for kind in ("zero", "to_bos"):
            d = {(r["layer"], r["head"]): r["delta_nll"] for r in rows
                 if r["domain"] == n and r["intervention"] == f"head_{kind}"}
            ax.bar(x + (k - len(names) + 0.5) * width, [d.get(lh, np.nan) for lh in heads], width,
                   label=f"{n}: {kind.replace('_', ' ')}")
            k += 1
    ax.set_xticks(x, [f"L{l}H{h}" for l, h in heads], rotation=90, fontsize=6)
    ax.set(xlabel="head (layer, head)", ylabel="loss change (nats/token)", title="head interventions")
    ax.axhline(0, color="k", lw=0.5)
    style.legend(ax)


def _massive_bars(ax, rows, names) -> None:
    kinds = ("none", "massive_mean", "massive_zero")
    w = 0.8 / len(names)
    for j, n in enumerate(names):
        p = {r["intervention"]: r["ppl"] for r in rows if r["domain"] == n}
        vals = np.array([p.get(kd, np.nan) for kd in kinds], float)
        xs = np.arange(3) + j * w
        ax.bar(xs, style.clip(np.where(np.isnan(vals), 0, vals), PPL_CAP), w, label=n)
        style.mark_clipped(ax, xs, np.where(np.isnan(vals), 0, vals), PPL_CAP, what="perplexity")
    ax.set_xticks(np.arange(3) + 0.4 - w / 2, ["original", "massive -> mean", "massive -> 0"])
    style.log_axes(ax, "y")
    ax.set(ylabel="perplexity", title="massive-activation interventions")
    style.legend(ax)


@style.styled
def intervention_bars(path: Path, rows, names, about: dict | None = None) -> None:
    """Loss change per head (zero the head / move its attention to key 0) per domain, and perplexity
    under the massive-activation interventions (above PPL_CAP drawn at the cap and marked)."""
    fig, axes = style.subplots(2, 2, ncols=1, aspect=0.4)
    _head_bars(axes[0], rows, names)
    _massive_bars(axes[1], rows, names)
    _sub(fig, "Interventions", about)
    style.save(fig, path)


@style.styled
def attention_maps(path: Path, maps, names, about: dict | None = None) -> None:
    """Attention patterns [query, key] of the most domain-selective heads on one sample per domain."""
    heads = list(maps)
    cols = list(names[:2])
    ncols = min(len(heads), 4)
    fig, axes = style.subplots(len(cols) * len(heads), 2, ncols=ncols, aspect=1.0)
    k = 0
    for i, n in enumerate(cols):
        for l, h in heads:
            ax = axes[k]
            im = ax.imshow(np.sqrt(maps[(l, h)][n]), cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"L{l}H{h} on {n}")
            ax.set(xlabel="key position", ylabel="query position")
            style.integer_ticks(ax, "both", max_ticks=4)
            k += 1
    style.colorbar(im, list(axes), "sqrt(attention weight)", shrink=0.6)
    _sub(fig, "Attention of the most domain-selective heads (rows = queries, columns = keys)", about)
    style.save(fig, path)


def write_all(out: Path, stats, names, sel, rows, maps, summary, about: dict | None = None) -> None:
    sink_heatmap(out / "sink_heatmap.png", stats, names, sel, about)
    norms_by_position(out / "norms_by_position.png", stats, names, about)
    massive_profile(out / "massive_profile.png", stats, names, summary, about)
    if rows:
        intervention_bars(out / "interventions.png", rows, names, about)
    if maps:
        attention_maps(out / "attention_maps.png", maps, names, about)
