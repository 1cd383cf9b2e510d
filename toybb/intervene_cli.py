"""`toybb intervene MODEL_OR_RUN --site S --op O [selectors] ... --out DIR`: the command line of
`toybb.intervene` (parsing and checks only; loading, measuring and writing live there).

Writes interventions.csv (per domain and intervention: next-token loss, perplexity, the change in loss
and every requested capture, at position 0 and over the other positions), config.json and
interventions.png.
"""

from __future__ import annotations

import math
import re

from toybb.cliargs import STRS, ListAction, TEXT_HELP, add_model, add_seq_len, add_text
from toybb.errors import ConfigError
from toybb.intervene import (SELECTORS, EditSpec, check_interventions, interventions, load_subject, measure,
                             write_outputs)
from toybb.models import check_site_pattern
from toybb.models.capture import Capture
from toybb.models.config import check_count
from toybb.models.sites import OPS
from toybb.records import finite, out_folder
from toybb.train.runs import is_run_folder


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "intervene", help="zero, scale, set, add, mean-ablate or patch any site of a toy run or an LLM",
        description="Apply interventions inside the forward pass and write interventions.csv (loss, perplexity "
        "and requested captures per intervention and domain, against the unmodified model), config.json and "
        "interventions.png to --out. Sites are listed in the README (toybb.models.sites), e.g. "
        "blocks.0.mlp.out, blocks.*.attn.z, blocks.3.resid_post.")
    add_model(p, "a `toybb train` folder, a `toybb pretrain` folder, an HF model directory, a .gguf file or a name "
              "from `toybb models`",
              metavar="MODEL_OR_RUN")
    p.add_argument("--site", help="site pattern of one intervention, e.g. blocks.*.attn.z")
    p.add_argument("--op", choices=OPS, help="its operation")
    p.add_argument("--layer", help="layers: 3, 0,2 or 0:4 (default: every layer the site pattern names)")
    p.add_argument("--head", help="heads: 1, 0,3 or 0:4 (default: all)")
    p.add_argument("--position", help="positions: 5, 0,1, 2:8, bos, last or first:TOKEN_ID (default: all)")
    p.add_argument("--key", help="key positions of attn.pattern / attn.logits (default: all)")
    p.add_argument("--feature", help="last-axis features, e.g. 1415,2533 (default: all)")
    p.add_argument("--value", type=float, help="the number for scale, set and add")
    p.add_argument("--min-abs", type=float, help="only entries with |x| >= this (massive activations)")
    p.add_argument("--source", metavar="DOMAIN", help="mean / patch: the domain whose activations are used "
                   "(default: the edited domain itself)")
    p.add_argument("--edit", action="append", default=[], metavar="SITE:OP[:NAME=VALUE,...]",
                   help="another intervention, e.g. blocks.0.mlp.out:zero or blocks.*.attn.z:zero:layer=3,head=0,2 "
                   "(repeat; fields separated by ',' or ';'; selectors as above, plus value, min_abs and source)")
    p.add_argument("--each", choices=("layer", "head"),
                   help="split every intervention into one per layer (or per layer and head) it covers")
    p.add_argument("--capture", action=ListAction, type=STRS, default=(), metavar="SITE@REDUCTION",
                   help="record a reduced site per intervention: its mean at position 0 and max and mean over the "
                   "other positions, e.g. blocks.*.resid_post@norm or blocks.*.attn.pattern@key0 (comma-separated or repeated)")
    add_text(p, None, help="one text for an LLM (the domain 'text'): " + TEXT_HELP.removeprefix("text SOURCE: "))
    p.add_argument("--domain", action="append", default=[], metavar="NAME=SOURCE",
                   help="several named texts for an LLM (as in `toybb probe`); for a toy run NAME=task or "
                   "NAME=task:SEED (Bigram-Backcopy samples; default task=task:0; repeat)")
    p.add_argument("--samples", type=int, default=16, help="samples per domain")
    add_seq_len(p, 128, help="tokens per sample (default 128; a toy run: its own)")
    p.add_argument("--batch", type=int, default=8, help="samples per forward pass")
    p.add_argument("--run", type=int, default=0, help="which run (seed) of a toy run folder")
    p.add_argument("--no-bos", action="store_true", help="LLM samples without a BOS token")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.set_defaults(func=cmd_intervene)


def edit_specs(args) -> list[EditSpec]:
    """The command line's interventions: --site/--op with its selectors, then every --edit."""
    specs = []
    if args.site or args.op:
        if not (args.site and args.op):
            raise ConfigError("--site and --op go together (e.g. --site blocks.0.mlp.out --op zero)")
        sel = {k: getattr(args, k) for k in SELECTORS if getattr(args, k) is not None}
        specs.append(EditSpec(args.site, args.op, sel, args.value, args.min_abs, args.source))
    elif any(getattr(args, k) is not None for k in SELECTORS + ("value", "min_abs")):
        raise ConfigError("selectors (--layer, --head, ...) and --value belong to --site/--op; use --edit for more")
    return specs + [_parse_edit(e) for e in args.edit]


_FIELD_SEP = re.compile(r"[;,](?=\s*[A-Za-z_-]+\s*=)|;")


def _parse_edit(text: str) -> EditSpec:
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"--edit {text!r}: write SITE:OP[:NAME=VALUE;...], e.g. blocks.0.mlp.out:zero")
    sel, value, min_abs, source, given = {}, None, None, None, set()
    # fields are separated by ',' (no shell quoting) or ';'; a ',' inside a list value (head=0,2) is not
    # followed by NAME=
    for item in (_FIELD_SEP.split(parts[2]) if len(parts) == 3 and parts[2] else []):
        k, eq, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if not eq or k not in SELECTORS + ("value", "min_abs", "source"):
            raise ConfigError(f"--edit {text!r}: {item!r} is not NAME=VALUE with NAME one of "
                              f"{', '.join(SELECTORS + ('value', 'min_abs', 'source'))}")
        if k in given:  # not a silent override
            raise ConfigError(f"--edit {text!r}: {k} given twice; give it once")
        given.add(k)
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
    return EditSpec(parts[0], parts[1], sel, value, min_abs, source)


def cmd_intervene(args) -> int:

    out = out_folder(args.out)
    for flag in ("samples", "batch", "seq_len"):
        check_count(getattr(args, flag), f"--{flag.replace('_', '-')}", flag)
    finite(args.value, "--value")
    finite(args.min_abs, "--min-abs", minimum=0.0)
    capture = Capture(tuple(args.capture))  # reductions checked before anything is read
    specs = edit_specs(args)
    for pattern in [s.site for s in specs] + [c.partition("@")[0] for c in capture.sites]:
        check_site_pattern(pattern)  # a mistyped site fails before any model or config is read
    ivs: list = []

    def check(sites, batches):  # before any weights load
        ivs[:] = interventions(specs, sites.n_layers, sites.sizes["head"], args.each)
        check_interventions(sites, batches, ivs, capture.sites)

    domains = list(args.domain)
    if args.text is not None:
        if is_run_folder(args.model):
            raise ConfigError("--text is for an LLM; a toy run takes --domain NAME=task or NAME=task:SEED")
        domains.insert(0, f"text={args.text}")
    subject = load_subject(args.model, domains=domains, samples=args.samples, seq_len=args.seq_len,
                           batch=args.batch, run=args.run, dtype=args.dtype, tokenizer=args.tokenizer,
                           bos=not args.no_bos, check=check, step=args.step)
    rows = measure(subject.model, subject.batches, ivs, capture.sites)
    write_outputs(out, rows, subject, {k: v for k, v in vars(args).items() if k != "func"})
    for r in rows:
        print(f"{r['domain']}: {r['intervention']}: loss {r['nll']:.4f} (ppl {r['ppl']:.4g}, {r['delta_nll']:+.4f})")
    print(f"wrote {out}")
    return 0
