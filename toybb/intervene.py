"""Interventions at any site of a toy run or a pretrained model, against the unmodified model: the library
behind `toybb intervene` (its command line is `toybb.intervene_cli`).

`load_subject` loads a toy run folder (its task's samples) or a pretrained model (text domains);
`interventions` turns edit specs into the list to measure (split per layer or head); `measure` gives one
row per domain and intervention (next-token loss, perplexity, the change in loss and every requested
capture, at position 0 and over the other positions); `write_outputs` writes interventions.csv,
config.json and interventions.png. The edits are `toybb.models.sites.Edit`s; one compilation serves every
edit of the same structure (layer, head, position and value are arrays).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toybb import style
from toybb.errors import ConfigError
from toybb.llm.load import load, read_config
from toybb.llm.registry import resolve_existing
from toybb.models.capture import Capture
from toybb.models.forward import loss, perplexity
from toybb.models.sites import Edit, selector_mask
from toybb.probes.corpus import domain_batches, parse_domain
from toybb.records import atomic_open, atomic_write, package_versions
from toybb.train.runs import is_run_folder, load_models, model_of

SELECTORS = ("layer", "head", "position", "key", "feature")  # the selectors of an `Edit`


class EditSpec(NamedTuple):
    """One intervention as the user wrote it: site pattern, op (`toybb.models.sites.OPS`), selectors
    ({name: text} over `SELECTORS`), value, min_abs, and for mean / patch the source domain (None: the
    edited domain itself)."""

    site: str
    op: str
    sel: dict
    value: float | None = None
    min_abs: float | None = None
    source: str | None = None


@dataclass(frozen=True)
class Intervention:
    name: str
    edits: tuple  # Edit specs without source tokens; `source` names a domain (or None)
    source: str | None = None


def interventions(specs: list[EditSpec], n_layers: int, n_heads: int, each: str | None = None) -> list[Intervention]:
    """The interventions of `specs`, each split into one per layer (each="layer") or per layer and head
    (each="head") it covers."""
    if not specs:
        raise ConfigError("give an intervention: --site SITE --op OP, or --edit SITE:OP (e.g. blocks.0.mlp.out:zero)")
    out = []
    for site, op, sel, value, min_abs, source in specs:
        if op in ("scale", "set", "add") and value is None:
            raise ConfigError(f"--op {op} needs --value (or value=... in --edit)")
        for piece in _split(site, dict(sel), each, n_layers, n_heads):
            e = Edit(site, op, value=value, min_abs=min_abs, source=None if op not in ("mean", "patch") else "", **piece)
            label = ",".join(f"{k}={v}" for k, v in piece.items() if v is not None)
            out.append(Intervention(f"{site} {op}" + (f" [{label}]" if label else ""), (e,), source))
    return out


def _split(site, sel: dict, each: str | None, n_layers: int, n_heads: int) -> list[dict]:
    if each is None:
        return [sel]
    m = re.match(r"blocks\.(\d+)\.", site)
    layers = [int(m.group(1))] if m else np.flatnonzero(selector_mask(sel.get("layer", "0:"), n_layers, "layer")).tolist()
    out = []
    for l in layers:
        if each == "layer":
            out.append({**sel, "layer": l})
        else:
            heads = np.flatnonzero(selector_mask(sel.get("head", "0:"), n_heads, "head")).tolist()
            out += [{**sel, "layer": l, "head": h} for h in heads]
    return out


# ---------------------------------------------------------------------------------------------------
# models and data


@dataclass
class Subject:
    """The model under study and its data: `batches[domain]` is a list of (tokens [b, T], valid [b])."""

    model: object
    name: str
    batches: dict
    info: dict


def load_subject(model: str, *, domains=(), samples: int = 16, seq_len: int = 128, batch: int = 8, run: int = 0,
                 dtype: str = "float32", tokenizer: str | None = None, bos: bool = True) -> Subject:
    """A toy run folder (its task's samples; `domains` NAME=task or NAME=task:SEED, `run` its run index) or
    a pretrained model (`domains` NAME=SOURCE texts as in `toybb probe`; `seq_len` tokens per sample, BOS
    first unless `bos` is False). `samples` per domain in batches of `batch`."""
    if is_run_folder(model):
        return _toy_subject(model, domains, samples, batch, run)
    return _llm_subject(model, domains, samples, seq_len, batch, dtype, tokenizer, bos)


def _toy_subject(path, domains, samples, batch, run) -> Subject:
    cfg, trainer, state, step = load_models(path)
    n_runs = len(trainer.runs)
    if not 0 <= run < n_runs:
        raise ConfigError(f"--run {run}: {path} holds runs 0..{n_runs - 1}")
    model = model_of(trainer, state, run)
    batches = {}
    for spec in domains or ["task=task:0"]:
        name, _, src = spec.partition("=")
        kind, _, seed = src.partition(":")
        if not name or kind != "task" or (seed and not seed.isdigit()):
            raise ConfigError(f"--domain {spec!r}: a toy run takes NAME=task or NAME=task:SEED")
        toks = np.asarray(trainer.task.sample(jax.random.key(int(seed or 0)), samples, cfg.task.seq_len))
        batches[name] = [(toks[i:i + batch], np.ones(len(toks[i:i + batch]), bool))
                         for i in range(0, len(toks), batch)]
    seed, lr = trainer.runs[run]
    return Subject(model, f"{path} (run {run}: seed {seed}, lr {lr:g}, step {step})", batches,
                   {"kind": "toy", "step": step, "seed": seed, "lr": lr})


def _llm_subject(source, domains, samples, seq_len, batch, dtype, tokenizer, bos) -> Subject:
    path = resolve_existing(source)
    domains = [parse_domain(s) for s in domains]
    if not domains:
        raise ConfigError("a pretrained model needs text: give --domain NAME=SOURCE (e.g. prose=pydoc)")
    cfg, _ = read_config(path, dtype=dtype)
    if seq_len > cfg.max_positions:
        raise ConfigError(f"--seq-len {seq_len} is longer than the model context ({cfg.max_positions})")
    pre = load(path, dtype=dtype, tokenizer=tokenizer)
    if pre.tokenizer is None:
        raise ConfigError(f"{pre.source}: no tokenizer found; pass --tokenizer tokenizer.json")
    bos_id = pre.cfg.bos_token_id if bos else None
    batches = {d.name: list(domain_batches(d, pre.tokenizer.encode, n=samples, seq_len=seq_len,
                                           batch=batch, bos_id=bos_id)) for d in domains}
    return Subject(pre.model, pre.source, batches, {"kind": "llm", "arch": pre.cfg.arch, "bos": bos_id is not None})


# ---------------------------------------------------------------------------------------------------
# measuring


def measure(model, batches: dict, interventions: list[Intervention], capture_patterns: tuple[str, ...] = ()) -> list[dict]:
    """Rows (domain, intervention, nll, ppl, delta_nll, captures) for the unmodified model and each
    intervention; a capture `SITE@RED` of shape [batch, pos] (or [batch, heads, pos], averaged over heads)
    gives `SITE@RED:pos0`, `:others_max` and `:others_mean` (positions 1..)."""
    for iv in interventions:
        if iv.source and iv.source not in batches:
            raise ConfigError(f"source {iv.source!r} is not one of the domains ({', '.join(batches)})")
    capture = Capture(tuple(capture_patterns))
    rows = []
    for dom, bt in batches.items():
        base = None
        for iv in [Intervention("none", ())] + interventions:
            row = _measure_one(model, capture, bt, iv, batches)
            base = row["nll"] if base is None else base
            rows.append({"domain": dom, "intervention": iv.name, "nll": row.pop("nll"), "ppl": row.pop("ppl"),
                         "delta_nll": 0.0, **row})
            rows[-1]["delta_nll"] = rows[-1]["nll"] - base
    return rows


def _measure_one(model, capture, bt, iv: Intervention, batches) -> dict:
    tot = cnt = 0.0
    sums: dict[str, np.ndarray] = {}
    src = batches[iv.source] if iv.source else bt
    for i, (tokens, valid) in enumerate(bt):
        x = jnp.asarray(tokens, jnp.int32)
        edits = [dataclasses.replace(e, source=jnp.asarray(src[i][0], jnp.int32)[:, :-1]) if e.op in ("mean", "patch")
                 else e for e in iv.edits]
        s, c, cap = loss(model, x[:, :-1], x[:, 1:], valid=valid, edits=edits, capture=capture)
        tot, cnt = tot + float(s), cnt + float(c)
        v = np.asarray(valid, bool)
        for k, a in cap.items():
            a = np.asarray(a, np.float64)[v]
            a = a.mean(1) if a.ndim == 3 else a  # [b, heads, pos] -> mean over heads
            if a.ndim != 2:
                raise ConfigError(f"--capture {k}: reduce it to one number per position (e.g. @norm or @key0)")
            for stat, val in (("pos0", a[:, 0].sum()), ("others_max", a[:, 1:].max(1).sum()),
                              ("others_mean", a[:, 1:].mean(1).sum())):
                sums[f"{k}:{stat}"] = sums.get(f"{k}:{stat}", 0.0) + val
    n = sum(int(np.asarray(v).sum()) for _, v in bt)
    nll = tot / cnt
    return {"nll": nll, "ppl": perplexity(nll), **{k: v / n for k, v in sums.items()}}


# ---------------------------------------------------------------------------------------------------
# writing


def write_outputs(out: Path, rows: list[dict], subject: Subject, args: dict) -> None:
    """interventions.csv (`rows`), config.json (the command, the subject, `args`, package versions) and
    interventions.png in folder `out`."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(out / "interventions.csv", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    conf = {"command": ["toybb", *sys.argv[1:]], "model": subject.name, **subject.info,
            "args": args, "versions": package_versions()}
    atomic_write(out / "config.json", lambda fh: fh.write(json.dumps(conf, indent=2, default=str)), mode="w")
    plot(out / "interventions.png", rows, subject.name, subject.info)


@style.styled
def plot(path: Path, rows: list[dict], title: str, config: dict | None = None) -> None:
    """Change in loss per intervention and domain (and the first capture at position 0, if any);
    `title` names the model, `config` (the subject's settings) goes under it."""
    doms = list(dict.fromkeys(r["domain"] for r in rows))
    names = list(dict.fromkeys(r["intervention"] for r in rows))
    caps = [k for k in rows[0] if k.endswith(":pos0")]
    fig, axes = style.subplots(1 + bool(caps), 2, aspect=max(0.4, 0.1 * len(names)) * (1 + bool(caps)) / 2)
    y = np.arange(len(names))
    h = 0.8 / len(doms)
    for j, d in enumerate(doms):
        by = {r["intervention"]: r for r in rows if r["domain"] == d}
        axes[0].barh(y + j * h, [by[n]["delta_nll"] for n in names], h, label=d)
        if caps:
            axes[1].barh(y + j * h, [by[n][caps[0]] for n in names], h, label=d)
    axes[0].set(yticks=y + h * (len(doms) - 1) / 2, yticklabels=names, xlabel="change in loss (nats)")
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].invert_yaxis()
    if caps:
        axes[1].set(yticks=y + h * (len(doms) - 1) / 2, yticklabels=[], xlabel=f"{caps[0]} (position 0)")
        axes[1].invert_yaxis()
    style.figure_legend(fig, axes)
    style.subtitle(fig, "Interventions", model=title, config=config)
    style.save(fig, path)
