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
from flax import nnx

from toybb import style
from toybb.config import check_count
from toybb.errors import ConfigError
from toybb.llm.load import open_checkpoint
from toybb.llm.registry import resolve_existing
from toybb.models.capture import Capture
from toybb.models.forward import loss, perplexity
from toybb.models import build_model
from toybb.models.sites import Edit, ModelSites, SiteError, resolve, selector_mask
from toybb.probes.corpus import domain_batches, parse_domain
from toybb.records import atomic_open, atomic_write, package_versions
from toybb.train.runs import is_run_folder, load_models, model_of, run_config
from toybb.train.trainer import Trainer

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
                 dtype: str = "float32", tokenizer: str | None = None, bos: bool = True, check=None,
                 step: int | None = None) -> Subject:
    """A toy run folder (its task's samples; `domains` NAME=task or NAME=task:SEED, `run` its run index) or
    a pretrained model (`domains` NAME=SOURCE texts as in `toybb probe`; `seq_len` tokens per sample, BOS
    first unless `bos` is False; `step` the checkpoint of a `toybb pretrain` folder's series). `samples` per
    domain in batches of `batch`. `check(sites, batches)` runs once the model's sites (from its config) and
    the samples are known, before any weights load."""
    if is_run_folder(model):
        if step is not None:
            raise ConfigError(f"{model}: --step chooses a checkpoint of a `toybb pretrain` folder; this is not one")
        return _toy_subject(model, domains, samples, batch, run, check)
    return _llm_subject(model, domains, samples, seq_len, batch, dtype, tokenizer, bos, check, step)


def _toy_subject(path, domains, samples, batch, run, check) -> Subject:
    trainer = Trainer(run_config(path))
    cfg, n_runs = trainer.cfg, len(trainer.runs)
    if not 0 <= run < n_runs:
        raise ConfigError(f"--run {run}: {path} holds runs 0..{n_runs - 1}")
    batches = {}
    for spec in domains or ["task=task:0"]:
        name, _, src = spec.partition("=")
        kind, _, seed = src.partition(":")
        if not name or kind != "task" or (seed and not seed.isdigit()):
            raise ConfigError(f"--domain {spec!r}: a toy run takes NAME=task or NAME=task:SEED")
        check_count(int(seed or 0), f"--domain {spec!r}: the seed", "seed", low=0)
        toks = np.asarray(trainer.task.sample(jax.random.key(int(seed or 0)), samples, cfg.task.seq_len))
        batches[name] = [(toks[i:i + batch], np.ones(len(toks[i:i + batch]), bool))
                         for i in range(0, len(toks), batch)]
    if check is not None:
        check(nnx.eval_shape(lambda: build_model(cfg.model, nnx.Rngs(0), trainer.task)).sites(), batches)
    _, _, state, step = load_models(path, trainer)
    model = model_of(trainer, state, run)
    seed, lr = trainer.runs[run]
    return Subject(model, f"{path} (run {run}: seed {seed}, lr {lr:g}, step {step})", batches,
                   {"kind": "toy", "step": step, "seed": seed, "lr": lr})


def _llm_subject(source, domains, samples, seq_len, batch, dtype, tokenizer, bos, check, step) -> Subject:
    path = resolve_existing(source)
    domains = [parse_domain(s) for s in domains]
    if not domains:
        raise ConfigError("a pretrained model needs text: give --text SOURCE or --domain NAME=SOURCE "
                          "(e.g. --text pydoc)")
    ck = open_checkpoint(path, dtype=dtype, tokenizer=tokenizer, step=step)
    if seq_len > ck.cfg.max_positions:
        raise ConfigError(f"--seq-len {seq_len} is longer than the model context ({ck.cfg.max_positions})")
    if ck.tokenizer is None:
        raise ConfigError(f"{ck.source}: no tokenizer found; pass --tokenizer tokenizer.json")
    sites = ck.sites()
    if check is not None:
        check(sites, {})  # the sites and selectors that need no tokens, before any text is read
    bos_id = ck.tokenizer.bos_id if bos else None  # the first token the model was trained with, as in `toybb probe`
    batches = {d.name: list(domain_batches(d, ck.tokenizer.encode, n=samples, seq_len=seq_len,
                                           batch=batch, bos_id=bos_id)) for d in domains}
    if check is not None:
        check(sites, batches)
    pre = ck.load_weights()
    return Subject(pre.model, pre.source, batches, {"kind": "llm", "arch": pre.cfg.arch, "bos": bos_id is not None,
                                                    **({} if pre.step is None else {"step": pre.step})})


def check_interventions(sites: ModelSites, batches: dict, interventions: list[Intervention],
                        capture_patterns: tuple[str, ...] = ()) -> None:
    """Everything `measure` needs of its input, checked against the model's sites before anything runs:
    each capture matches a site and reduces to one number per position (per head), each source names a
    domain, and each edit resolves on every domain's first batch (sites, selectors, values). With no
    batches, the checks that need no tokens (site patterns, layers, heads)."""
    capture = Capture(tuple(capture_patterns))
    capture.check(sites)
    axes = sites.names()
    for pattern in capture.sites:
        base, _, red = pattern.partition("@")
        for name in sites.match(base):
            if len(axes[name]) - bool(red) not in (2, 3):
                raise SiteError(f"--capture {pattern}: {name} has axes {', '.join(axes[name])}; reduce it to one "
                                "number per position (e.g. @norm or @key0)")
    for iv in interventions:
        if batches and iv.source and iv.source not in batches:
            raise ConfigError(f"source {iv.source!r} is not one of the domains ({', '.join(batches)})")
    # mean / patch take their values from a run of the model: checked here as zero edits of the same entries
    edits = [[dataclasses.replace(e, op="zero", value=None) if e.op in ("mean", "patch") else e for e in iv.edits]
             for iv in interventions]
    if not batches:
        for es in edits:
            resolve(sites, [e for e in es if not _needs_tokens(e)], (1, 2))
    for bt in batches.values():
        tokens = np.asarray(bt[0][0])[:, :-1]
        for es in edits:
            resolve(sites, es, tokens.shape, tokens=tokens)


def _needs_tokens(e: Edit) -> bool:
    """An edit whose check needs the samples' shape: a position or key selector, a value shaped like the site."""
    return e.position is not None or e.key is not None or (e.value is not None and np.ndim(e.value) > 0)


# ---------------------------------------------------------------------------------------------------
# measuring


def measure(model, batches: dict, interventions: list[Intervention], capture_patterns: tuple[str, ...] = ()) -> list[dict]:
    """Rows (domain, intervention, nll, ppl, delta_nll, captures) for the unmodified model and each
    intervention; a capture `SITE@RED` of shape [batch, pos] (or [batch, heads, pos], averaged over heads)
    gives `SITE@RED:pos0`, `:others_max` and `:others_mean` (positions 1..)."""
    check_interventions(model.sites(), batches, interventions, capture_patterns)
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
