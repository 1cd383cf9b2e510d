"""Figures of the trained toy models: dynamics, interventions, residual peaks, active/dormant tokens,
attention maps and the sink variants."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from toybb import style
from toybb.gallery import draw as D
from toybb.gallery.registry import FigureContext, register_figure
from toybb.models.capture import Capture, run_with_capture
from toybb.plot import plot_dynamics
from toybb.train import mitigations
from toybb.train.runs import load_models, model_of


@register_figure("dynamics_1layer", "1-layer softmax model under Adam: the attention sink forms, the BOS value "
                 "drains and the BOS residual grows while back-copy risk collapses (median of 4 seeds, band min-max).")
def fig_dynamics(ctx: FigureContext) -> list[Path]:
    return [plot_dynamics(ctx.one_layer(), ctx.out / "dynamics_1layer.png")]


@register_figure("interventions", "Excess risks of the trained models with attention or MLP removed: attention "
                 "does the back-copy, the MLP the bigram (median over seeds, bars min-max).")
@style.styled
def fig_interventions(ctx: FigureContext) -> list[Path]:
    panels = [("1-layer, Adam", ctx.one_layer() / "interventions.csv"),
              ("3-layer, Adam", ctx.peaks()[1]["Adam, softmax"] / "interventions.csv")]
    fig, axes = style.subplots(2, 2, aspect=0.75, gridspec_kw={"width_ratios": [1, 2.2]})
    for ax, (title, path) in zip(axes, panels):
        rows = D.rows(path)
        names = list(dict.fromkeys(r["intervention"] for r in rows))
        x = np.arange(len(names))
        for j, (col, label) in enumerate((("backcopy_risk", "back-copy"), ("bigram_risk", "bigram"))):
            vals = [np.array([float(r[col]) for r in rows if r["intervention"] == n]) for n in names]
            med = np.array([np.median(v) for v in vals])
            lo, hi = med - [v.min() for v in vals], [v.max() for v in vals] - med
            ax.bar(x + (j - 0.5) * 0.38, np.maximum(med, 1e-6), 0.38, yerr=[lo, hi], capsize=2,
                   label=f"{label} excess risk", color=f"C{j}")
        ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=30, ha="right")
        ax.set(xlabel="sub-layers removed", ylabel="excess risk over the oracle (nats)",
               title=f"{title}: at the last step")
        style.log_axes(ax, "y")
        ax.grid(alpha=0.3, axis="y")
    style.figure_legend(fig, axes)
    D.about(fig, "Interventions (median over seeds, bars min-max)",
           {"1-layer": ctx.one_layer(), "3-layer": ctx.peaks()[1]["Adam, softmax"]})
    return [style.save(fig, ctx.out / "interventions.png")]


@register_figure("residual_peaks", "3-layer models under Adam, SGD and Adam with ReLU attention: BOS residual norm "
                 "after layer 0 (SPEC: grows under Adam only, by 10k paper-size steps), sink and drain in layer 1 "
                 "(median of 2 seeds, band min-max).")
@style.styled
def fig_residual_peaks(ctx: FigureContext) -> list[Path]:
    _, groups = ctx.peaks()
    panels = [("residual_peak_l0", "residual_others_l0", "||Res<s>|| after layer 0", "L2 norm"),
              ("sink_attention_l1", None, "Attn<s> (layer 1)", "attention weight on BOS"),
              ("value_drain_l1", "value_others_l1", "||Val<s>|| (layer 1)", "L2 norm"),
              ("backcopy_risk", None, "back-copy excess risk", "nats")]
    fig, axes = style.subplots(4, 2, ncols=2, aspect=0.6)
    for ci, (label, gdir) in enumerate(groups.items()):
        rows = D.rows(gdir / "metrics.csv")
        for ax, (col, ref, title, unit) in zip(axes, panels):
            D.band(ax, *D.series(rows, col), f"C{ci}", label)
            if ref is not None:
                D.band(ax, *D.series(rows, ref), f"C{ci}", f"{label}: other tokens", ls="--")
            D.authors_line(ax, gdir, rows, col, f"C{ci}")
            ax.set(xlabel="training step", ylabel=unit, title=title)
    for ax in axes:  # log y for the residual too: one ReLU seed's BOS norm (~140) flattened the others' (10-25)
        style.log_axes(ax, "xy" if ax is axes[0] or ax is axes[3] else "x")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    D.about(fig, "3-layer models: residual peak, sink and drain (median over seeds, band min-max)", groups)
    return [style.save(fig, ctx.out / "residual_peaks.png")]


@register_figure("active_dormant", "Per-token attention of the last query on BOS in the probe [BOS] + all "
                 "non-triggers + [v], per seed: the triggers (boxed) are active (attention off BOS, on the token "
                 "before them); the other tokens are dormant (>= 0.89) where the sink has formed.")
@style.styled
def fig_active_dormant(ctx: FigureContext) -> list[Path]:
    from matplotlib.patches import Rectangle  # matplotlib loads only when drawing

    panels = [("1-layer, Adam, layer 0", ctx.one_layer() / "active_dormant.csv", 0),
              ("3-layer, Adam, layer 1", ctx.peaks()[1]["Adam, softmax"] / "active_dormant.csv", 1)]
    fig, axes = style.subplots(2, 2, ncols=1, aspect=0.22)
    for ax, (title, path, layer) in zip(axes, panels):
        rows = [r for r in D.rows(path) if int(r["layer"]) == layer and int(r["head"]) == 0]
        seeds = sorted({int(r["seed"]) for r in rows})
        toks = sorted({int(r["token"]) for r in rows})
        m = np.full((len(seeds), len(toks)), np.nan)
        chars, trig = {}, {}
        for r in rows:
            m[seeds.index(int(r["seed"])), toks.index(int(r["token"]))] = float(r["bos_attention"])
            chars[int(r["token"])], trig[int(r["token"])] = r["char"], r["is_trigger"] == "True"
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(toks)), [D.char(chars[t]) for t in toks], fontsize=6)
        for lab, t in zip(ax.get_xticklabels(), toks):
            if trig[t]:
                lab.set_color("red")
                lab.set_fontweight("bold")
        for j, t in enumerate(toks):
            if trig[t]:
                ax.add_patch(Rectangle((j - 0.5, -0.5), 1, len(seeds), fill=False, ec="red", lw=1.5))
        ax.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds], fontsize=7)
        ax.set_xlabel("last token v of the probe (triggers in red)")
        ax.set_ylabel("run")
        kind = {r["probe"] for r in rows} if "probe" in rows[0] else {"?"}
        note = "" if kind == {"paper"} else f" (probe cut to {rows[0].get('probe_len', '?')} tokens: not the paper's)"
        ax.set_title(f"{title}: attention on BOS (dormant >= 0.89){note}")
        style.colorbar(im, ax, "attention on BOS", pad=0.01)
    D.about(fig, "Active and dormant tokens", {"1-layer": ctx.one_layer(), "3-layer": ctx.peaks()[1]["Adam, softmax"]})
    return [style.save(fig, ctx.out / "active_dormant.png")]


@register_figure("attention_maps", "Attention patterns of the trained models (seed 0) on one BB sequence: in the "
                 "sink layer, non-trigger queries attend to BOS and trigger queries (red) to the token before them.")
@style.styled
def fig_attention_maps(ctx: FigureContext) -> list[Path]:
    models = []
    for title, d in (("1-layer", ctx.one_layer()), ("3-layer Adam", ctx.peaks()[1]["Adam, softmax"])):
        cfg, trainer, state, _ = load_models(d)
        models.append((title, cfg, trainer.task, model_of(trainer, state, 0)))
    n = min(24, models[0][1].task.seq_len)
    task = models[0][2]
    tokens = task.sample(jax.random.key(7), 1, n)[:, :n]
    labels = ["BOS" if t == task.bos_id else D.char(task.chars[t]) for t in np.asarray(tokens[0])]
    is_trig = [bool(task.is_trigger[t]) for t in np.asarray(tokens[0])]
    panels = []
    for title, cfg, _, model in models:
        _, cap = run_with_capture(model, jnp.asarray(tokens), capture=Capture(("blocks.*.attn.pattern",)))
        for l in range(cfg.model.n_layers):
            panels.append((f"{title}, layer {l}", np.asarray(cap[f"blocks.{l}.attn.pattern"])[0, 0]))
    fig, axes = style.subplots(len(panels), 2, ncols=2, aspect=1.0)
    for ax, (title, p) in zip(axes, panels):
        im = ax.imshow(p, cmap="magma", vmin=0, vmax=1)
        ax.set_xticks(range(n), labels, fontsize=6, rotation=90)  # "BOS" beside a character ran together
        ax.set_yticks(range(n), labels, fontsize=6)
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            for i, lab in enumerate(ticks):
                if is_trig[i]:
                    lab.set_color("red")
        ax.set(xlabel="key position (token)", ylabel="query position (token)", title=title)
    style.colorbar(im, list(axes), "attention weight", shrink=0.6)
    D.about(fig, "Attention patterns (seed 0) on one BB sequence; triggers in red",
           {"1-layer": ctx.one_layer(), "3-layer": ctx.peaks()[1]["Adam, softmax"]})
    return [style.save(fig, ctx.out / "attention_maps.png")]


@register_figure("sink_variants", "Where the sink goes (median of seeds, band min-max): with ReLU attention there is "
                 "no sink and the BOS value grows; without a BOS, whether the first token becomes the sink; a learned "
                 "sink token beside the BOS; an explicit attention bias k', v' in the 3-layer model, its attention "
                 "and the BOS residual peak against the plain model.")
@style.styled
def fig_sink_variants(ctx: FigureContext) -> list[Path]:
    # (panel title, [(run folder, column, label, line style)], y label)
    one, relu, nobos, tok = (ctx.variant(n) for n in ("1layer", "1layer_relu", "1layer_no_bos", "1layer_sink_token"))
    plain3, bias, nobos3 = (ctx.variant(n) for n in ("3layer_bias_plain", "3layer_attn_bias", "3layer_no_bos"))
    panels = [
        ("ReLU attention: Attn<s> (queries > 0)", [(one, "sink_attention_excl0_l0", "softmax", "-"),
                                     (relu, "sink_attention_excl0_l0", "ReLU", "-")], "attention on BOS"),
        ("ReLU attention: ||Val<s>||", [(one, "value_drain_l0", "softmax", "-"), (relu, "value_drain_l0", "ReLU", "-"),
                                        (relu, "value_others_l0", "ReLU, other tokens", "--")], "L2 norm"),
        ("no BOS: attention on position 0 (queries > 0)", [(one, "sink_attention_excl0_l0", "with BOS: on BOS", "-"),
                                 (nobos, "sink_attention_excl0_l0", "no BOS: on the first token", "-"),
                                 (plain3, "sink_attention_excl0_l1", "3 layers, layer 1, with BOS: on BOS", "--"),
                                 (nobos3, "sink_attention_excl0_l1", "3 layers, layer 1, no BOS: on the first token", "--")],
         "attention on position 0"),
        ("learned sink token", [(tok, "slot_attention_l0", "on the sink token", "-"),
                                (tok, "sink_attention_l0", "on the BOS", "-"),
                                (one, "sink_attention_l0", "plain model: on the BOS", "--")], "attention weight"),
        ("3-layer: attention bias, layer 1", [(bias, "bias_attention_l1", "on k' (with bias)", "-"),
                                              (bias, "sink_attention_l1", "on BOS (with bias)", "-"),
                                              (plain3, "sink_attention_l1", "on BOS (plain)", "--")], "attention weight"),
        ("3-layer: ||Res<s>|| after layer 0", [(plain3, "residual_peak_l0", "plain: BOS", "-"),
                                               (plain3, "residual_others_l0", "plain: other tokens", "--"),
                                               (bias, "residual_peak_l0", "with bias: BOS", "-"),
                                               (bias, "residual_others_l0", "with bias: other tokens", "--")], "L2 norm"),
    ]
    # two panels a row: at three a row the legends (up to four lines each) cover the curves
    fig, axes = style.subplots(len(panels), 2, ncols=2, aspect=0.5)
    for ax, (title, lines, unit) in zip(axes, panels):
        for ci, (d, col, label, ls) in enumerate(lines):
            rows = D.rows(d / "metrics.csv")
            if col not in rows[0]:
                continue
            D.band(ax, *D.series(rows, col), f"C{ci}", label, ls=ls)
        ax.set(xlabel="training step", ylabel=unit, title=title)
        style.log_axes(ax, "x")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        style.legend(ax)
    D.about(fig, "Where the sink goes (median over seeds, band min-max)",
           {"1-layer": one, "3-layer": plain3})
    return [style.save(fig, ctx.out / "sink_variants.png")]



@register_figure("mitigations", "Every mitigation on the BB task side by side (`toybb mitigations`, 1- and 3-layer "
                 "models, 3 seeds, median and min-max): Attn<s>, Sink^0.3, the BOS value and residual ratios, "
                 "back-copy risk and loss.")
def fig_mitigations(ctx: FigureContext) -> list[Path]:
    return ctx.cached("mitigations", {"mitigations.png": "mitigations.png", "mitigations.md": "mitigations.md"},
                      lambda d: mitigations.run(d, list(mitigations.ROWS), sorted(mitigations.SCALES), 3,
                                                progress=ctx.progress))
