"""Checkpoint-series dynamics: `toybb series CKPT [CKPT ...] --out DIR [--steps S1,S2,...]`.

The checkpoints of one model at several training steps are probed with the same metrics and the
metrics drawn against step, like the dynamics figure of a toy run:
- toy run folders of `toybb train` (or their `checkpoint.npz`): the SPEC §3 dynamics metrics of
  `toybb.probes.bb` on the run's fixed evaluation batch, for every vmapped run (seed, lr);
- Hugging Face directories (e.g. OLMo or Pythia revisions saved locally) or .gguf files, loaded with
  `toybb.llm.load.load`, and `toybb pretrain` folders (every checkpoint of their series, or those of
  `--steps`): per layer, attention on BOS (capture `blocks.*.attn.pattern@key0`, queries
  1.. averaged), residual norm at BOS vs the other positions (`blocks.*.resid_post@norm`) and the
  BOS value norm vs the others (`blocks.*.attn.v_out@norm`), on a fixed text.
The step of a checkpoint comes from `--steps`, else from its path (`step1000`, `step-1000`,
`global_step1000`, `checkpoint-1000`), else from a toy checkpoint's own step counter.
Writes DIR/series.csv (one row per checkpoint x run) and DIR/series.png.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

import numpy as np

from toybb import style
from toybb.checkpoints import CKPT_NAME
from toybb.errors import ConfigError
from toybb.llm.load import load, open_checkpoint
from toybb.llm.pretrain_folder import is_pretrain_folder, series_steps
from toybb.models.forward import forward
from toybb.models.capture import Capture
from toybb.probes import metrics as M
from toybb.records import atomic_open
from toybb.train.runs import is_run_folder, run_config
from toybb.train.trainer import Trainer, trainer_key

FIXED_TEXT = ("The history of science is full of surprises. When the first telescopes were pointed at the sky, "
              "astronomers saw moons around Jupiter and phases of Venus, and the old picture of the heavens "
              "changed within a generation.")
_STEP_RE = re.compile(r"(?:global_step|step|checkpoint|ckpt|iter)[-_]?(\d+)", re.IGNORECASE)
LLM_SITES = ("blocks.*.attn.pattern@key0", "blocks.*.resid_post@norm", "blocks.*.attn.v_out@norm")


def step_from_path(path: str | Path) -> int | None:
    """The training step named by the last path component that carries one (`.../step1000/...`)."""
    for part in reversed(Path(path).parts):
        m = _STEP_RE.search(part)
        if m:
            return int(m.group(1))
    return None


def kind_of(path: str | Path) -> str:
    """"toy" (a toybb run folder or checkpoint) or "llm" (a Hugging Face model directory or a .gguf file):
    the labels of `toybb.load(...).kind` and of `toybb intervene`'s config.json."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npz" and (p.parent / "config.json").exists():
        return "toy"
    if p.is_dir() and (p / "config.json").exists():
        return "toy" if is_run_folder(p) else "llm"
    if p.is_file() and p.suffix == ".gguf":
        return "llm"
    raise ConfigError(f"{p}: not a toybb run folder/checkpoint, a Hugging Face model directory or a .gguf file")


# ---- probes -------------------------------------------------------------------------------------------
def probe_toy(path: str | Path, trainers: dict) -> tuple[int, list[dict]]:
    """(checkpoint step, one row per vmapped run with every dynamics metric)."""
    p = Path(path)
    run_dir, ckpt = (p.parent, p) if p.is_file() else (p, p / CKPT_NAME)
    if not ckpt.exists():
        raise ConfigError(f"{run_dir} has no {CKPT_NAME}")
    cfg = run_config(run_dir)
    key = trainer_key(cfg)
    if key not in trainers:
        trainers[key] = Trainer(cfg)
    tr = trainers[key]
    state, step = tr.load_checkpoint(ckpt)
    m = tr.evaluate(state)
    return step, [{"seed": s, "lr": lr, **{n: float(m[n][r]) for n in tr.metric_names}}
                  for r, (s, lr) in enumerate(tr.runs)]


def llm_tokens(pre, text: str = FIXED_TEXT, n_random: int = 48) -> np.ndarray:
    """[1, seq] token ids of the fixed text starting with BOS; a checkpoint without a tokenizer gets
    `n_random` ids drawn from a fixed seed after its BOS id (0 if it has none)."""
    bos = pre.cfg.bos_token_id
    if bos is not None and not 0 <= bos < pre.cfg.vocab_size:
        bos = None  # e.g. tiny test configs keep GPT-2's BOS id beyond their vocabulary
    if pre.tokenizer is not None:
        ids = list(pre.tokenizer.encode(text))
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
    else:
        rng = np.random.RandomState(0)
        ids = [bos if bos is not None else 0] + list(rng.randint(0, pre.cfg.vocab_size, n_random - 1))
    return np.array([ids], np.int32)


def probe_llm(path: str | Path, text: str = FIXED_TEXT, step: int | None = None) -> list[dict]:
    """One row: per layer sink_attention_excl0_l{l}, value_drain_l{l}, value_others_l{l}, residual_peak_l{l},
    residual_others_l{l}, residual_excess_l{l} of the model on the fixed text (BOS at position 0). step: the
    checkpoint of a `toybb pretrain` folder's series."""
    import jax.numpy as jnp

    pre = load(str(path), step=step)
    tokens = llm_tokens(pre, text)
    _, cap = forward(pre.model, tokens, capture=Capture(LLM_SITES))
    row: dict = {"seed": "", "lr": "", "n_tokens": tokens.shape[1]}
    for l in range(pre.cfg.n_layers):
        pat = cap.get(f"blocks.{l}.attn.pattern@key0")
        if pat is not None:
            row[f"sink_attention_excl0_l{l}"] = float(jnp.mean(M.sink_attention(pat, exclude_sink_query=True)))
        ho = cap.get(f"blocks.{l}.attn.v_out@norm")
        if ho is not None:
            d, o = M.value_drain(ho)
            row[f"value_drain_l{l}"], row[f"value_others_l{l}"] = float(jnp.mean(d)), float(jnp.mean(o))
        peak, others, excess = M.residual_peak(cap[f"blocks.{l}.resid_post@norm"])
        row[f"residual_peak_l{l}"], row[f"residual_others_l{l}"] = float(peak), float(others)
        row[f"residual_excess_l{l}"] = float(excess)
    return [row]


# ---- series --------------------------------------------------------------------------------------------
def run_series(ckpts: list[str], out_dir: str | Path, steps: list[int] | None = None, text: str = FIXED_TEXT,
               log=lambda s: print(s, file=sys.stderr), trainers: dict | None = None) -> tuple[Path, Path]:
    """Probe every checkpoint and write DIR/series.csv and DIR/series.png; returns both paths.
    trainers: a cache of compiled toy Trainers to reuse (see toybb.train.sweep.run_sweep)."""
    if not ckpts:
        raise ConfigError("give at least one checkpoint")
    pretrain = [c for c in ckpts if is_pretrain_folder(c)]
    if pretrain:  # a pretrain folder is a whole series: its checkpoints (those of --steps if given)
        if len(ckpts) > 1:
            raise ConfigError("a toybb pretrain folder holds a whole series; give it alone (with --steps to choose "
                              "checkpoints of it)")
        steps = list(steps or series_steps(ckpts[0]))
        for s in steps or [None]:  # an empty series or a step it lacks: the loader's one line, before any probe
            open_checkpoint(ckpts[0], step=s, with_tokenizer=False)
        ckpts = ckpts * len(steps)
    if steps is not None and len(steps) != len(ckpts):
        raise ConfigError(f"--steps has {len(steps)} value(s) for {len(ckpts)} checkpoint(s)")
    kinds = {kind_of(c) for c in ckpts}
    if len(kinds) > 1:
        raise ConfigError("mix of toy and LLM checkpoints; a series is the checkpoints of one model")
    kind = kinds.pop()
    resolved = []
    for i, c in enumerate(ckpts):
        s = steps[i] if steps is not None else step_from_path(c)
        if s is None and kind != "toy":
            raise ConfigError(f"cannot tell the training step of {c}: name its folder like step1000 or give --steps")
        resolved.append(s)
    rows: list[dict] = []
    trainers = {} if trainers is None else trainers
    for c, s in zip(ckpts, resolved):
        if kind == "toy":
            own, got = probe_toy(c, trainers)
            s = own if s is None else s
        else:
            got = probe_llm(c, text, s if pretrain else None)
        log(f"{c}: step {s}")
        rows += [{"checkpoint": str(c), "step": s, **r} for r in got]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = out / "series.csv"

    with atomic_open(csv_path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    return csv_path, plot_series(rows, out / "series.png", kind)


def _layers(rows: list[dict], base: str) -> list[int]:
    return sorted({int(k.rsplit("_l", 1)[1]) for k in rows[0] if k.startswith(base + "_l") and "h" not in k.rsplit("_l", 1)[1]})


def _series_panel(ax, rows, steps, base: str, ref: str | None, max_layers: int) -> None:
    """One colour per layer (at most `max_layers`, evenly spread): median over runs, min-max band, dashed
    = other tokens; solid = the BOS where the panel has other tokens."""
    layers = _layers(rows, base) if base not in rows[0] else [None]
    if len(layers) > max_layers:
        layers = [layers[i] for i in np.linspace(0, len(layers) - 1, max_layers).round().astype(int)]
    for ci, l in enumerate(layers):
        for key, ls in ((base, "-"), (ref, "--")):
            if key is None:
                continue
            col = key if l is None else f"{key}_l{l}"
            v = np.array([[float(r[col]) for r in rows if int(r["step"]) == s] for s in steps])
            who = "all layers" if l is None else f"layer {l}"
            label = (f"BOS, {who}" if ref is not None else who) if ls == "-" else ("other tokens" if ci == 0 else None)
            ax.plot(steps, np.median(v, 1), ls, marker="o", ms=2.5, color=f"C{ci % 10}", label=label)
            if v.shape[1] > 1 and ls == "-":
                ax.fill_between(steps, v.min(1), v.max(1), color=f"C{ci % 10}", alpha=0.2, lw=0)


@style.styled
def plot_series(rows: list[dict], path: Path, kind: str, max_layers: int = 8) -> Path:
    """Metrics against step: one colour per layer (at most `max_layers`, evenly spread), median over
    runs with a min-max band (toy runs with several seeds), dashed = other tokens."""
    panels = [("sink_attention_excl0", None, "Attn<s> (attention on BOS, query 0 left out)", "attention weight"),
              ("value_drain", "value_others", "||Val<s>|| (BOS value norm)", "L2 norm"),
              ("residual_peak", "residual_others", "||Res<s>|| (BOS residual norm)", "L2 norm")]
    if kind == "toy":
        panels += [("backcopy_risk", None, "back-copy excess risk", "nats"), ("bigram_risk", None, "bigram excess risk", "nats")]
    steps = sorted({int(r["step"]) for r in rows})
    fig, axes = style.subplots(len(panels), 2)
    for ax, (base, ref, title, unit) in zip(axes, panels):
        _series_panel(ax, rows, steps, base, ref, max_layers)
        ax.set(xlabel="training step", ylabel=unit, title=title)
        if min(steps) > 0 and max(steps) / max(min(steps), 1) > 20:
            style.log_axes(ax, "x")
        if base.endswith("risk"):
            style.log_axes(ax, "y")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    style.figure_legend(fig, axes)
    n_runs = max(sum(1 for r in rows if int(r["step"]) == s) for s in steps)
    ckpts = sorted({str(r["checkpoint"]) for r in rows}) if "checkpoint" in rows[0] else []
    model = os.path.commonpath(ckpts) if len(ckpts) > 1 else (ckpts[0] if ckpts else None)
    style.subtitle(fig, f"{len(steps)} checkpoint(s) of one model" + (f"; median over {n_runs} runs, band = min-max"
                                                                    if n_runs > 1 else ""),
                   model=model, config={"kind": kind, "steps": f"{steps[0]}..{steps[-1]}"})
    return style.save(fig, path)
