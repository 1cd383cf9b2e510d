"""`toybb intervene MODEL_OR_RUN --site S --op O [selectors] ... --out DIR`: interventions at any site of a
toy run or a pretrained model, against the unmodified model.

Writes interventions.csv (per domain and intervention: next-token loss, perplexity, the change in loss
and every requested capture, at position 0 and over the other positions), config.json and
interventions.png. The edits are `toybb.models.sites.Edit`s; one compilation serves every edit of the
same structure (layer, head, position and value are arrays).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from toybb import style
from toybb.cliargs import STRS, ListAction, add_model, add_seq_len
from toybb.errors import ConfigError

_SELECTOR_FLAGS = ("layer", "head", "position", "key", "feature")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "intervene", help="zero, scale, set, add, mean-ablate or patch any site of a toy run or an LLM",
        description="Apply interventions inside the forward pass and write interventions.csv (loss, perplexity "
        "and requested captures per intervention and domain, against the unmodified model), config.json and "
        "interventions.png to --out. Sites are listed in the README (toybb.models.sites), e.g. "
        "blocks.0.mlp.out, blocks.*.attn.z, blocks.3.resid_post.")
    add_model(p, "a `toybb train` folder, an HF model directory, a .gguf file or a name from `toybb models`",
              metavar="MODEL_OR_RUN")
    p.add_argument("--site", help="site pattern of one intervention, e.g. blocks.*.attn.z")
    p.add_argument("--op", choices=("zero", "scale", "set", "add", "mean", "patch"), help="its operation")
    p.add_argument("--layer", help="layers: 3, 0,2 or 0:4 (default: every layer the site pattern names)")
    p.add_argument("--head", help="heads: 1, 0,3 or 0:4 (default: all)")
    p.add_argument("--position", help="positions: 5, 0,1, 2:8, bos, last or first:TOKEN_ID (default: all)")
    p.add_argument("--key", help="key positions of attn.pattern / attn.logits (default: all)")
    p.add_argument("--feature", help="last-axis features, e.g. 1415,2533 (default: all)")
    p.add_argument("--value", type=float, help="the number for scale, set and add")
    p.add_argument("--min-abs", type=float, help="only entries with |x| >= this (massive activations)")
    p.add_argument("--source", metavar="DOMAIN", help="mean / patch: the domain whose activations are used "
                   "(default: the edited domain itself)")
    p.add_argument("--edit", action="append", default=[], metavar="SITE:OP[:NAME=VALUE;...]",
                   help="another intervention, e.g. blocks.0.mlp.out:zero or blocks.*.attn.z:zero:layer=3;head=1 "
                   "(repeat; selectors as above, plus value, min_abs and source)")
    p.add_argument("--each", choices=("layer", "head"),
                   help="split every intervention into one per layer (or per layer and head) it covers")
    p.add_argument("--capture", action=ListAction, type=STRS, default=(), metavar="SITE@REDUCTION",
                   help="record a reduced site per intervention: its mean at position 0 and max and mean over the "
                   "other positions, e.g. blocks.*.resid_post@norm or blocks.*.attn.pattern@key0 (comma-separated or repeated)")
    p.add_argument("--domain", action="append", default=[], metavar="NAME=SOURCE",
                   help="text for an LLM (as in `toybb probe`); for a toy run NAME=task or NAME=task:SEED "
                   "(Bigram-Backcopy samples; default task=task:0; repeat)")
    p.add_argument("--samples", type=int, default=16, help="samples per domain")
    add_seq_len(p, 128, help="tokens per sample (default 128; a toy run: its own)")
    p.add_argument("--batch", type=int, default=8, help="samples per forward pass")
    p.add_argument("--run", type=int, default=0, help="which run (seed) of a toy run folder")
    p.add_argument("--no-bos", action="store_true", help="LLM samples without a BOS token")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.set_defaults(func=cmd_intervene)


@dataclass(frozen=True)
class Intervention:
    name: str
    edits: tuple  # Edit specs without source tokens; `source` names a domain (or None)
    source: str | None = None


def parse_interventions(args, n_layers: int, n_heads: int) -> list[Intervention]:
    """The command line's interventions (--site/--op and every --edit), split by --each."""
    from toybb.models.sites import Edit

    specs = []
    if args.site or args.op:
        if not (args.site and args.op):
            raise ConfigError("--site and --op go together (e.g. --site blocks.0.mlp.out --op zero)")
        sel = {k: getattr(args, k) for k in _SELECTOR_FLAGS if getattr(args, k) is not None}
        specs.append((args.site, args.op, sel, args.value, args.min_abs, args.source))
    elif any(getattr(args, k) is not None for k in _SELECTOR_FLAGS + ("value", "min_abs")):
        raise ConfigError("selectors (--layer, --head, ...) and --value belong to --site/--op; use --edit for more")
    specs += [_parse_edit(e) for e in args.edit]
    if not specs:
        raise ConfigError("give an intervention: --site SITE --op OP, or --edit SITE:OP (e.g. blocks.0.mlp.out:zero)")
    out = []
    for site, op, sel, value, min_abs, source in specs:
        if op in ("scale", "set", "add") and value is None:
            raise ConfigError(f"--op {op} needs --value (or value=... in --edit)")
        base = dict(sel)
        for piece in _split(site, base, args.each, n_layers, n_heads):
            e = Edit(site, op, value=value, min_abs=min_abs, source=None if op not in ("mean", "patch") else "", **piece)
            label = ",".join(f"{k}={v}" for k, v in piece.items() if v is not None)
            out.append(Intervention(f"{site} {op}" + (f" [{label}]" if label else ""), (e,), source))
    return out


def _split(site, sel: dict, each: str | None, n_layers: int, n_heads: int) -> list[dict]:
    if each is None:
        return [sel]
    import re

    from toybb.models.sites import selector_mask

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


def _parse_edit(text: str):
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"--edit {text!r}: write SITE:OP[:NAME=VALUE;...], e.g. blocks.0.mlp.out:zero")
    sel, value, min_abs, source = {}, None, None, None
    for item in (parts[2].split(";") if len(parts) == 3 and parts[2] else []):
        k, eq, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if not eq or k not in _SELECTOR_FLAGS + ("value", "min_abs", "source"):
            raise ConfigError(f"--edit {text!r}: {item!r} is not NAME=VALUE with NAME one of "
                              f"{', '.join(_SELECTOR_FLAGS + ('value', 'min_abs', 'source'))}")
        if k in ("value", "min_abs"):
            try:
                num = float(v)
            except ValueError:
                raise ConfigError(f"--edit {text!r}: {k} must be a number, got {v!r}") from None
            if not math.isfinite(num):
                raise ConfigError(f"--edit {text!r}: {k} must be a finite number, got {v!r}")
            value, min_abs = (num, min_abs) if k == "value" else (value, num)
        elif k == "source":
            source = v
        else:
            sel[k] = v
    return parts[0], parts[1], sel, value, min_abs, source


# ---------------------------------------------------------------------------------------------------
# models and data


@dataclass
class Subject:
    """The model under study and its data: `batches[domain]` is a list of (tokens [b, T], valid [b])."""

    model: object
    name: str
    batches: dict
    info: dict


def load_subject(args) -> Subject:
    """A toy run folder (its task's samples) or a pretrained model (text domains)."""
    from toybb.train.runs import is_run_folder

    return _toy_subject(args) if is_run_folder(args.model) else _llm_subject(args)


def _toy_subject(args) -> Subject:
    import jax

    from toybb.train.runs import load_models, model_of

    cfg, trainer, state, step = load_models(args.model)
    n_runs = len(trainer.runs)
    if not 0 <= args.run < n_runs:
        raise ConfigError(f"--run {args.run}: {args.model} holds runs 0..{n_runs - 1}")
    model = model_of(trainer, state, args.run)
    batches = {}
    for spec in args.domain or ["task=task:0"]:
        name, _, src = spec.partition("=")
        kind, _, seed = src.partition(":")
        if not name or kind != "task" or (seed and not seed.isdigit()):
            raise ConfigError(f"--domain {spec!r}: a toy run takes NAME=task or NAME=task:SEED")
        toks = np.asarray(trainer.task.sample(jax.random.key(int(seed or 0)), args.samples, cfg.task.seq_len))
        batches[name] = [(toks[i:i + args.batch], np.ones(len(toks[i:i + args.batch]), bool))
                         for i in range(0, len(toks), args.batch)]
    seed, lr = trainer.runs[args.run]
    return Subject(model, f"{args.model} (run {args.run}: seed {seed}, lr {lr:g}, step {step})", batches,
                   {"kind": "toy", "step": step, "seed": seed, "lr": lr})


def _llm_subject(args) -> Subject:
    from toybb.llm.load import load, read_config
    from toybb.llm.registry import resolve_existing
    from toybb.probes.corpus import domain_batches, parse_domain

    path = resolve_existing(args.model)
    domains = [parse_domain(s) for s in args.domain]
    if not domains:
        raise ConfigError("a pretrained model needs text: give --domain NAME=SOURCE (e.g. prose=pydoc)")
    cfg, _ = read_config(path, dtype=args.dtype)
    if args.seq_len > cfg.max_positions:
        raise ConfigError(f"--seq-len {args.seq_len} is longer than the model context ({cfg.max_positions})")
    pre = load(path, dtype=args.dtype, tokenizer=args.tokenizer)
    if pre.tokenizer is None:
        raise ConfigError(f"{pre.source}: no tokenizer found; pass --tokenizer tokenizer.json")
    bos = None if args.no_bos else pre.cfg.bos_token_id
    batches = {d.name: list(domain_batches(d, pre.tokenizer.encode, n=args.samples, seq_len=args.seq_len,
                                           batch=args.batch, bos_id=bos)) for d in domains}
    return Subject(pre.model, pre.source, batches, {"kind": "llm", "arch": pre.cfg.arch, "bos": bos is not None})


# ---------------------------------------------------------------------------------------------------
# measuring


@lru_cache(maxsize=16)
def _step_fn(graphdef, capture):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from toybb.models.capture import run_with_capture
    from toybb.probes import metrics as M

    def f(state, tokens, valid, edits):
        logits, cap = run_with_capture(nnx.merge(graphdef, state), tokens[:, :-1], capture=capture, edits=edits)
        nll = M.token_nll(logits, tokens[:, 1:])
        w = valid.astype(jnp.float32)[:, None]
        return jnp.sum(nll * w), jnp.sum(w) * nll.shape[1], cap

    return jax.jit(f)


def measure(model, batches: dict, interventions: list[Intervention], capture_patterns: tuple[str, ...] = ()) -> list[dict]:
    """Rows (domain, intervention, nll, ppl, delta_nll, captures) for the unmodified model and each
    intervention; a capture `SITE@RED` of shape [batch, pos] (or [batch, heads, pos], averaged over heads)
    gives `SITE@RED:pos0`, `:others_max` and `:others_mean` (positions 1..)."""
    from flax import nnx

    from toybb.models.capture import Capture

    for iv in interventions:
        if iv.source and iv.source not in batches:
            raise ConfigError(f"source {iv.source!r} is not one of the domains ({', '.join(batches)})")
    graphdef, state = nnx.split(model)
    f = _step_fn(graphdef, Capture(tuple(capture_patterns)))
    rows = []
    for dom, bt in batches.items():
        base = None
        for iv in [Intervention("none", ())] + interventions:
            row = _measure_one(model, f, state, bt, iv, batches)
            base = row["nll"] if base is None else base
            rows.append({"domain": dom, "intervention": iv.name, "nll": row.pop("nll"), "ppl": row.pop("ppl"),
                         "delta_nll": 0.0, **row})
            rows[-1]["delta_nll"] = rows[-1]["nll"] - base
    return rows


def _measure_one(model, f, state, bt, iv: Intervention, batches) -> dict:
    import dataclasses

    import jax.numpy as jnp

    from toybb.models.capture import resolve_edits
    from toybb.models.sites import NO_EDITS

    tot = cnt = 0.0
    sums: dict[str, np.ndarray] = {}
    src = batches[iv.source] if iv.source else bt
    for i, (tokens, valid) in enumerate(bt):
        x = jnp.asarray(tokens, jnp.int32)
        edits = [dataclasses.replace(e, source=jnp.asarray(src[i][0], jnp.int32)[:, :-1]) if e.op in ("mean", "patch")
                 else e for e in iv.edits]
        res = resolve_edits(model, edits, x[:, :-1]) if edits else NO_EDITS
        s, c, cap = f(state, x, jnp.asarray(valid, bool), res)
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
    return {"nll": nll, "ppl": math.exp(nll) if nll < 700 else float("inf"), **{k: v / n for k, v in sums.items()}}


# ---------------------------------------------------------------------------------------------------
# the command


def cmd_intervene(args) -> int:
    from toybb.records import out_folder

    out = out_folder(args.out)
    from toybb.records import finite

    for flag in ("samples", "batch", "seq_len"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    finite(args.value, "--value")
    finite(args.min_abs, "--min-abs", minimum=0.0)
    if args.capture:
        from toybb.models.capture import Capture

        Capture(tuple(args.capture))  # reductions checked before loading
    subject = load_subject(args)
    sites = subject.model.sites()
    ivs = parse_interventions(args, sites.n_layers, sites.sizes["head"])
    from toybb.models.capture import Capture

    Capture(tuple(args.capture)).check(sites)  # before anything is compiled
    rows = measure(subject.model, subject.batches, ivs, tuple(args.capture))
    write_outputs(out, rows, subject, args)
    for r in rows:
        print(f"{r['domain']}: {r['intervention']}: loss {r['nll']:.4f} (ppl {r['ppl']:.4g}, {r['delta_nll']:+.4f})")
    print(f"wrote {out}")
    return 0


def write_outputs(out: Path, rows: list[dict], subject: Subject, args) -> None:
    import csv

    from toybb.records import atomic_open, atomic_write
    from toybb.records import package_versions

    cols = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(out / "interventions.csv", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    conf = {"command": ["toybb", *sys.argv[1:]], "model": subject.name, **subject.info,
            "args": {k: v for k, v in vars(args).items() if k != "func"}, "versions": package_versions()}
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
