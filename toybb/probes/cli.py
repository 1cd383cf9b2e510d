"""`toybb probe MODEL (--text SOURCE | --domain NAME=SOURCE ...) --out DIR`: extreme-token probes of a pretrained LLM.

Imports of JAX and the loaders happen inside the command so `toybb --help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path

from toybb.cliargs import add_model, add_seq_len, add_text
from toybb.errors import ConfigError
from toybb.llm.load import open_checkpoint
from toybb.llm.registry import resolve_existing
from toybb.probes.corpus import parse_domain
from toybb.probes.report import ProbeSettings, check_probe, run_probe, summary_lines


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="attention sinks, value drains, residual peaks and massive activations of an LLM per domain",
        description="Stream N samples of T tokens from each domain through the model and write heads.csv, "
        "layers.csv, interventions.csv, metrics.json, config.json and figures to --out. SOURCE is a text file, "
        "a folder, a .jsonl file (field 'text') or a built-in corpus: stdlib (Python sources), pydoc "
        "(Python documentation prose), pride, emma, mobydick, shakespeare (public-domain excerpts).")
    add_model(p)
    add_text(p, None, help="one text (the domain 'text'); SOURCE as below")
    p.add_argument("--domain", action="append", default=[], metavar="NAME=SOURCE",
                   help="a named text domain, e.g. prose=pride or code=stdlib (repeat; give two to compare)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--samples", type=int, default=64, help="samples per domain")
    add_seq_len(p, 256, help="tokens per sample, BOS included")
    p.add_argument("--batch", type=int, default=8, help="samples per forward pass")
    p.add_argument("--no-bos", action="store_true", help="samples without a BOS token (the first token is key 0)")
    p.add_argument("--first-positions", type=int, default=32, dest="k_first",
                   help="key positions whose attention and norms are recorded")
    p.add_argument("--intervene-samples", type=int, default=8,
                   help="samples per domain for the interventions")
    p.add_argument("--intervene-heads", type=int, default=12,
                   help="intervene on the N most domain-selective heads (0 = every head)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    domains = [parse_domain(s) for s in ([f"text={args.text}"] if args.text is not None else []) + args.domain]
    if not domains:
        raise ConfigError("give a text: --text SOURCE, or several named ones: --domain NAME=SOURCE "
                          "(e.g. --domain code=stdlib --domain prose=pride)")
    settings = ProbeSettings(samples=args.samples, seq_len=args.seq_len, batch=args.batch, bos=not args.no_bos,
                             k_first=args.k_first, intervene_samples=args.intervene_samples,
                             intervene_heads=args.intervene_heads)
    settings.check(max_positions=10**9)  # context checked once the model's config is read

    ck = open_checkpoint(resolve_existing(args.model), dtype=args.dtype, tokenizer=args.tokenizer, step=args.step)
    check_probe(ck, domains, settings)  # context, tokenizer and every text's length, before the weights load
    pre = ck.load_weights()

    out = Path(args.out)
    s = run_probe(pre, domains, settings, out, progress=not args.no_progress, command=["toybb", *sys.argv[1:]])
    print("\n".join(summary_lines(s)))
    print(f"wrote {out}")
    return 0
