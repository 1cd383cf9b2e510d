"""`toybb longctx toy`: char-level LMs with NoPE, RoPE, ALiBi and window attention trained at context C,
evaluated at multiples of C directly and with SelfExtend, PI, positional-vector replacement and window
extension with a logit temperature; one figure of perplexity against length, and a table of how similar
each model's positional vectors beyond C are to those inside (toy_beyond_similarity.csv)."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from toybb.cliargs import FLOATS, INTS, STRS, add_list, add_renamed, add_seq_len, add_text
from toybb.config import ModelConfig, check_count
from toybb.errors import ConfigError
from toybb.longctx import plots as P
from toybb.longctx.common import _nonempty, write_config, write_table
from toybb.longctx.options import rope_scaling, with_options
from toybb.longctx.posvec import beyond_similarity
from toybb.longctx.toy import (char_data, eval_windows, mean_nll, replacement_delta, toy_positional_vectors,
                               train_char_lm)
from toybb.models.forward import perplexity
from toybb.texts import read_source


def register(sub, common) -> None:
    p = sub.add_parser("toy", help="toy char-LMs: position schemes and context extension (Tiny Shakespeare)")
    common(p, model=False)
    add_text(p, "shakespeare")
    add_seq_len(p, 64, help="training context C (characters per training sequence)")
    add_list(p, "--factors", INTS, (1, 2, 4), "evaluation lengths as multiples of C")
    add_list(p, "--schemes", STRS, ("none", "rope", "alibi", "window"), "position schemes: none, rope, alibi, window")
    p.add_argument("--d-model", type=int, default=64, help="residual width")
    p.add_argument("--layers", type=int, default=2, help="number of layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads per layer")
    p.add_argument("--steps", type=int, default=2000, help="training steps per model")
    p.add_argument("--batch", type=int, default=32, help="sequences per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    p.add_argument("--sliding-window", type=int, default=0, metavar="W",
                   help="sliding window of the window model (0 = C/2)")
    p.add_argument("--selfextend", type=INTS, metavar="W[,G]", default=(0,),
                   help="SelfExtend neighbour window W (0 = C/4) and group size G (default: the smallest G that "
                   "reaches the longest evaluation length) of the RoPE and ALiBi models")
    add_list(p, "--alphas", FLOATS, (1.0, 1.2), "positional-vector replacement scales")
    add_list(p, "--temperatures", FLOATS, (1.0, 1.2), "logit temperatures of the window extension")
    p.add_argument("--replace-layer", type=int, default=0, help="layer of the positional-vector replacement")
    p.add_argument("--eval-windows", type=int, default=64, help="evaluation windows per length")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the training batches")
    add_renamed(p, "longctx toy")
    p.set_defaults(func=cmd_toy)


def run_toy(out, **settings) -> None:
    """`longctx toy` from Python: its defaults, `settings` (keyword names of its flags) replacing some."""
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, lambda q, model=False: None)
    defaults = {a.dest: a.default for a in sub.choices["toy"]._actions
                if a.dest != "help" and a.default is not argparse.SUPPRESS}
    cmd_toy(argparse.Namespace(**{**defaults, **settings, "out": str(out)}))


@dataclass
class _ToyEval:
    """Settings and results of one `longctx toy` command: every (method, length) row, the perplexity
    curves per method, and the beyond-C similarity rows."""

    args: Any
    factors: list[int]
    W: int  # window of the window model
    w_se: int  # SelfExtend neighbour window
    G: int  # SelfExtend group size
    wins: dict  # factor -> evaluation windows [n, C * factor + 1]
    rows: list = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    beyond_rows: list = field(default_factory=list)

    def record(self, label: str, scheme: str, f: int, nll: float, **extra) -> None:
        C = self.args.seq_len
        self.rows.append({"method": label, "scheme": scheme, "length": C * f, "factor": f, "nll": nll,
                          "ppl": perplexity(nll), **extra})
        self.curves.setdefault(label, {})[C * f] = perplexity(nll)


def cmd_toy(args) -> int:
    factors, schemes = _toy_check(args)
    C = args.seq_len
    W = args.sliding_window or C // 2
    w_se, G = _selfextend(args.selfextend, C, C * max(factors))
    train, val, vocab = char_data(read_source(args.text))
    cfgs = {s: ModelConfig(vocab_size=len(vocab), d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                           max_positions=C, position="none" if s == "window" else s,
                           sliding_window=W if s == "window" else None)
            for s in schemes}  # validated before any training
    write_config(args.out, args, {"vocab": len(vocab), "selfextend": [w_se, G], "window": W})
    ev = _ToyEval(args, factors, W, w_se, G, {f: eval_windows(val, C * f, args.eval_windows) for f in factors})
    for scheme in schemes:
        _toy_scheme(ev, scheme, cfgs[scheme], train)
    write_table(args.out, "toy_ppl_length", ev.rows)
    write_table(args.out, "toy_beyond_similarity", ev.beyond_rows)
    for r in ev.beyond_rows:
        print(f"{r['model']} layer {r['layer']}: positions {C}..{r['length'] - 1} vs 0..{C - 1}: max cosine mean "
              f"{r['mean_max_cosine']:.3f}, min {r['min_max_cosine']:.3f}, {100 * r['share_below_0.9']:.0f}% below 0.9")
    _toy_figure(ev)
    return 0


def _toy_check(args) -> tuple[list[int], list[str]]:
    """The settings of `longctx toy` checked before any training; returns (factors, schemes)."""
    C = args.seq_len
    if C < 4:
        raise ConfigError(f"--seq-len must be >= 4 characters, got {C}")
    factors = _nonempty(args.factors, "--factors", 1)
    schemes = list(args.schemes)
    if not schemes or any(s not in ("none", "rope", "alibi", "window") for s in schemes):
        raise ConfigError(f"--schemes takes a comma-separated subset of none, rope, alibi, window; "
                          f"got {','.join(schemes)!r}")
    for flag, v in (("--d-model", args.d_model), ("--layers", args.layers), ("--heads", args.heads),
                    ("--steps", args.steps), ("--batch", args.batch), ("--eval-windows", args.eval_windows)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    if not 0 < args.lr < math.inf:
        raise ConfigError(f"--lr must be a positive learning rate, got {args.lr!r}")
    check_count(args.seed, "--seed", "seed", low=0)
    if not 0 <= args.replace_layer < args.layers:
        raise ConfigError(f"--replace-layer must be in [0, {args.layers})")
    if args.sliding_window < 0:
        raise ConfigError(f"--sliding-window must be >= 0 (0 = --seq-len / 2), got {args.sliding_window}")
    _selfextend(args.selfextend, C, C * max(factors))
    _nonempty(args.alphas, "--alphas", -1e6, 1e6)
    _nonempty(args.temperatures, "--temperatures", 1e-6, 1e6)
    return factors, schemes


def _selfextend(v: tuple[int, ...], C: int, Lmax: int) -> tuple[int, int]:
    """--selfextend W[,G] -> (w, G): w = C/4 for 0, G = the smallest with (C - w) * G + w >= Lmax if not given."""
    if len(v) not in (1, 2) or not 0 <= v[0] < C or len(v) == 2 and v[1] < 1:
        raise ConfigError(f"--selfextend takes W[,G] with W in [0, --seq-len = {C}) (0 = --seq-len / 4) and "
                          f"G >= 1, got {','.join(map(str, v))!r}")
    w = v[0] or C // 4
    return w, v[1] if len(v) == 2 else max(1, math.ceil((Lmax - w) / (C - w)))


def _toy_scheme(ev: _ToyEval, scheme: str, cfg, train) -> None:
    """Train the model of one position scheme, score it at every length, compare its positional vectors
    beyond C with those inside, and score the scheme's extension methods."""
    import numpy as np

    args, C, factors, wins = ev.args, ev.args.seq_len, ev.factors, ev.wins
    t0 = time.time()
    model, losses = train_char_lm(cfg, train, seq=C, steps=args.steps, batch=args.batch, lr=args.lr,
                                  seed=args.seed, what=f"longctx toy, {scheme} model")
    print(f"{scheme}: trained {args.steps} steps in {time.time() - t0:.0f} s, last loss {losses[-1]:.3f}", flush=True)
    name = {"none": "NoPE", "rope": "RoPE", "alibi": "ALiBi", "window": f"NoPE window {ev.W}"}[scheme]
    for f in factors:
        ev.record(name, scheme, f, mean_nll(model, wins[f]), train_loss=losses[-1])
    pv: dict[int, np.ndarray] = {}  # positional vectors [layers, C * f, d] of this model, per factor

    def pvec(f):
        if f not in pv:
            pv[f] = toy_positional_vectors(model, wins[f][:, :-1])
        return pv[f]

    if max(factors) > 1:
        _beyond(ev, name, scheme, pvec(max(factors)))
    _extensions(ev, scheme, name, model, pvec)
    print("  " + "; ".join(f"{k}: " + ", ".join(f"{v:.2f}" for v in c.values())
                           for k, c in ev.curves.items() if k.startswith(name)), flush=True)


def _beyond(ev: _ToyEval, name: str, scheme: str, p_long) -> None:
    """Positional vectors beyond C against those inside (Dong et al.: out of distribution beyond), per layer."""
    C = ev.args.seq_len
    m = p_long - p_long[:, :C].mean(axis=1, keepdims=True)  # minus u of the trained positions
    for layer in range(ev.args.layers):
        sim = beyond_similarity(m[layer, :C], m[layer, C:])
        ev.beyond_rows.append({"model": name, "scheme": scheme, "layer": layer, "length": C * max(ev.factors),
                               "positions_beyond": int(sim.size), "mean_max_cosine": float(sim.mean()),
                               "min_max_cosine": float(sim.min()),
                               "share_below_0.9": float((sim < 0.9).mean())})


def _extensions(ev: _ToyEval, scheme: str, name: str, model, pvec) -> None:
    """Score the context-extension methods of the scheme: SelfExtend (RoPE, ALiBi), position
    interpolation (RoPE), positional-vector replacement (NoPE), window x r with a temperature (window)."""
    args, factors, wins = ev.args, ev.factors, ev.wins
    if scheme in ("rope", "alibi"):
        se = with_options(model, selfextend=(ev.w_se, ev.G))
        for f in factors:
            ev.record(f"{name} + SelfExtend w={ev.w_se} G={ev.G}", scheme, f, mean_nll(se, wins[f]))
    if scheme == "rope":
        for f in factors:
            ev.record(f"{name} + PI", scheme, f, mean_nll(with_options(model, rope_scaling=rope_scaling(pi=float(f))), wins[f]))
    if scheme == "none":
        p_train = pvec(1)
        for a in args.alphas:
            for f in factors:
                d = replacement_delta(p_train[args.replace_layer], pvec(f)[args.replace_layer], float(f), a)
                ev.record(f"{name} + PV replacement a={a:g}", scheme, f,
                          mean_nll(model, wins[f], {args.replace_layer: d}))
    if scheme == "window":
        for tau in args.temperatures:
            for f in factors:
                scale = None if f == 1 or tau == 1.0 else tau * model.cfg.head_dim**-0.5  # temperature tau
                m = with_options(model, sliding_window=ev.W * f, query_scale=scale)
                ev.record(f"{name} + window x r, temp {tau:g}", scheme, f, mean_nll(m, wins[f]))


def _toy_figure(ev: _ToyEval) -> None:
    """toy_ppl_length.png: perplexity against evaluation length, one line per method."""
    a = vars(ev.args)
    P.toy_ppl_length(ev.rows, os.path.join(ev.args.out, "toy_ppl_length.png"), ev.args.seq_len, ev.factors,
                     P.toy_config(a))
