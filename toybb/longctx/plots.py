"""Figures of `toybb longctx` (through `toybb.style`), drawn from the rows each command writes to its
table, so a figure can be redrawn from the table alone (`redraw`). `config` goes under each title."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

from toybb import style
from toybb.probes.metrics import perplexity
from toybb.records import read_csv


@style.styled
def ppl_length(rows: list[dict], path, model: str, context: int, config=None) -> Path:
    """Perplexity of the first L tokens and of each 1024-token segment, one line per method."""
    fig, axes = style.subplots(2, 2)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, text in enumerate(("all", "all-segment")):
        for label in methods:
            a = [r for r in rows if r["method"] == label and r["text"] == text]
            axes[i].plot([int(r["length"]) for r in a], [float(r["ppl"]) for r in a], "o-", label=label)
    for ax, title in zip(axes, ("perplexity of the first L tokens", "perplexity of each 1024-token segment")):
        ax.axvline(context, color="gray", ls="--", lw=1, label=f"training context {context}")
        if any(len(l.get_xdata()) for l in ax.lines[:-1]):
            style.log_axes(ax, "y")
        else:  # a text shorter than one segment
            ax.text(0.5, 0.5, "no data (text too short)", transform=ax.transAxes, ha="center", va="center")
        ax.set(title=title, ylabel="perplexity", xlabel="tokens" if ax is axes[0] else "segment end (tokens)")
    style.figure_legend(fig, axes)
    style.subtitle(fig, "Perplexity against length", model=model, config=config)
    return style.save(fig, path)


@style.styled
def passkey(rows: list[dict], path, model: str, config=None) -> Path:
    """Passkey accuracy per (key depth, prompt length), one heatmap per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({int(r["length"]) for r in rows})
    depths = sorted({float(r["depth"]) for r in rows})
    fig, axes = style.subplots(len(methods), 2, aspect=0.8)
    for ax, label in zip(axes, methods):
        acc = np.full((len(depths), len(lengths)), np.nan)
        for r in rows:
            if r["method"] == label:
                acc[depths.index(float(r["depth"])), lengths.index(int(r["length"]))] = float(r["accuracy"])
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set(xlabel="prompt length (tokens)", ylabel="key depth", title=label)
        for a in range(len(depths)):
            for b in range(len(lengths)):
                ax.text(b, a, f"{acc[a, b]:.1f}", ha="center", va="center", fontsize=7)
    style.colorbar(im, list(axes), "retrieval accuracy (share of keys)", shrink=0.8)
    style.subtitle(fig, "Passkey retrieval", model=model, config=config)
    return style.save(fig, path)


@style.styled
def stream(curves: dict, path, model: str, seg: int = 256, config=None) -> Path:
    """Perplexity of each `seg`-token segment along the text, one line per cache."""
    fig, axes = style.subplots(1, 1)
    ax = axes[0]
    for label, nll in curves.items():
        n = len(nll) // seg
        ax.plot((np.arange(n) + 1) * seg, [perplexity(s) for s in nll[: n * seg].reshape(n, seg)], "o-", ms=2.5,
                label=label)
    style.log_axes(ax, "y")
    ax.set(xlabel=f"position (end of {seg}-token segment)", ylabel="segment perplexity")
    style.legend(ax)
    style.subtitle(fig, "StreamingLLM cache", model=model, config=config)
    return style.save(fig, path)


@style.styled
def posvec(rows: list[dict], cos: dict, pcs: dict, path, model: str, config=None) -> Path:
    """Per drawn layer: cosines of the positional vectors m_t (t < 128) and their first two principal
    components (colour = position, red = the first 4)."""
    layers = list(cos)
    fig, axes = style.subplots(2 * len(layers), 2, ncols=len(layers), aspect=1.0)
    for i, l in enumerate(layers):
        im = axes[i].imshow(cos[l], vmin=-1, vmax=1, cmap="RdBu_r")
        axes[i].set_title(f"layer {l}: {rows[l]['n_distinct']} distinct")
        style.integer_ticks(axes[i], "both", max_ticks=3)
        xy, ev = pcs[l]
        sc = axes[len(layers) + i].scatter(xy[:, 0], xy[:, 1], c=np.arange(len(xy)), s=3, cmap="viridis")
        axes[len(layers) + i].scatter(xy[:4, 0], xy[:4, 1], s=20, facecolors="none", edgecolors="r", label="first 4")
        axes[len(layers) + i].set(title=f"PCA ({ev[0]:.0%}, {ev[1]:.0%})", xlabel="PC1")
    axes[0].set_ylabel("position t (< 128)")
    axes[len(layers)].set_ylabel("PC2")
    style.colorbar(im, list(axes[:len(layers)]), "cos(m_t, m_t')")
    style.colorbar(sc, list(axes[len(layers):]), "position t")
    style.legend(axes[len(layers)])
    style.subtitle(fig, "Positional vectors", model=model, config=config)
    return style.save(fig, path)


@style.styled
def ablation(abl: list[dict], path, model: str, config=None) -> Path:
    """Attention on token 0 per layer under each ablation (mean over queries t >= 4)."""
    fig, axes = style.subplots(1, 1)
    ax = axes[0]
    styles = {"none": "k-", "posvec": "-", "value": "--"}
    for r in abl:
        by_layer = r["sink_attention_by_layer"]
        ax.plot(range(len(by_layer)), by_layer, styles[r["ablation"]],
                label=f"{r['ablation']}: {r['removed']} {r['where']} (ppl {float(r['ppl']):.1f})".replace("none: none ", "none "))
    ax.set(xlabel="layer", ylabel="attention on token 0 (mean, queries t >= 4)", ylim=(0, 1))
    style.integer_ticks(ax, "x")
    style.legend(ax)
    style.subtitle(fig, "Ablations of the first tokens", model=model, config=config)
    return style.save(fig, path)


@style.styled
def toy_ppl_length(rows: list[dict], path, context: int, factors: list[int], config=None) -> Path:
    """Perplexity against evaluation length of the toy char-LMs, one line per method."""
    fig, axes = style.subplots(1, 2, aspect=0.45)
    ax = axes[0]
    dashes = {"none": "-", "rope": "--", "alibi": "-.", "window": ":"}
    for label in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == label]
        ax.plot([int(r["length"]) for r in mine], [float(r["ppl"]) for r in mine], dashes[mine[0]["scheme"]],
                marker="o", ms=3, label=label)
    ax.axvline(context, color="gray", lw=1, label=f"training context {context}")
    ax.set_xscale("log", base=2)
    style.log_axes(ax, "y")
    ax.set_xticks([context * f for f in factors], [str(context * f) for f in factors])
    ax.set(xlabel="evaluation length (characters)", ylabel="perplexity (per character)")
    style.legend(ax, ncol=2, where="center left", bbox_to_anchor=(1.01, 0.5))
    style.subtitle(fig, "Char-LMs evaluated beyond their training context", model="toy char-LMs (toybb longctx toy)",
                   config=config)
    return style.save(fig, path)


def _config(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def redraw(data: str | Path, out: str | Path, prefix: str = "longctx_smollm2_") -> list[Path]:
    """Redraw every figure whose table and config.json are in `data` (figures/longctx_data) into `out`."""
    data, out, done = Path(data), Path(out), []
    for table, cfg_name, name in (("ppl_length", "lc_ppl", "ppl_length"), ("ppl_length_pi_ntk", "lc_ppl_pi_ntk",
                                                                           "ppl_length_pi_ntk")):
        if (data / f"{table}.csv").is_file():
            c = _config(data / f"{cfg_name}_config.json")
            a = c["args"]
            done.append(ppl_length(read_csv(data / f"{table}.csv"), out / f"{prefix}{name}.png", a["model"], c["context"],
                                   {"texts": _arg(a, "text", "texts"), "methods": a["methods"]}))
    if (data / "passkey.csv").is_file():
        a = _config(data / "lc_passkey_config.json")["args"]
        done.append(passkey(read_csv(data / "passkey.csv"), out / f"{prefix}passkey.png", a["model"],
                            {"keys per cell": a["trials"]}))
    if (data / "ablation.csv").is_file():
        a = _config(data / "lc_posvec_config.json")["args"]
        abl = [{**r, "sink_attention_by_layer": ast.literal_eval(r["sink_attention_by_layer"])}
               for r in read_csv(data / "ablation.csv")]
        done.append(ablation(abl, out / f"{prefix}ablation.png", a["model"],
                             {"first tokens ablated": a["ablate_first"], "window": _arg(a, "seq_len", "seq"),
                              "texts": _arg(a, "text", "texts")}))
    if (data / "toy_ppl_length.csv").is_file():
        a = _config(data / "lc_toy_config.json")["args"]
        f = a["factors"]
        factors = [int(x) for x in (f if isinstance(f, list) else str(f).split(","))]
        done.append(toy_ppl_length(read_csv(data / "toy_ppl_length.csv"), out / "longctx_toy_ppl_length.png",
                                   _arg(a, "seq_len", "context"), factors, toy_config(a)))
    return done


def _arg(a: dict, name: str, old: str):
    """An argument of a stored config.json, written under its current flag name or (older runs) its former one."""
    return a[name] if name in a else a[old]


def toy_config(a: dict) -> dict:
    """The run configuration of `toybb longctx toy` (its arguments) shown under the toy figure."""
    return {"trained at context": _arg(a, "seq_len", "context"), "d_model": a["d_model"], "layers": a["layers"], "heads": a["heads"],
            "steps": a["steps"], "batch": a["batch"], "lr": a["lr"], "eval windows": a["eval_windows"]}
