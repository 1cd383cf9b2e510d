"""`toybb longctx posvec|ppl-length|passkey|stream|toy`: long-context experiments (SPEC §6).

Each writes a table (CSV and JSON), config.json (command line, arguments, package versions) and a
figure to --out DIR. JAX and the loaders are imported inside the commands so `toybb --help` stays fast.
"""

from __future__ import annotations

import os

from toybb.cliargs import FLOATS, INTS, STRS, add_list, add_model, add_renamed, add_seq_len, add_text
from toybb.config import check_count
from toybb.errors import ConfigError, ToybbError
from toybb.llm.load import open_checkpoint
from toybb.llm.registry import resolve
from toybb.longctx import plots as P
from toybb.longctx import toy_cli
from toybb.longctx.common import DEFAULT_TEXTS, _nonempty, write_config, write_table
from toybb.longctx.llm import (hidden_states, passkey_correct, passkey_ids, ppl_by_length, sequence_nll,
                               sink_attention_by_layer, value_ablation)
from toybb.longctx.options import rope_scaling, with_options
from toybb.longctx.posvec import cosine_matrix, decompose, n_distinct, pca, positional_vectors
from toybb.models.positional import selfextend_max_length
from toybb.models.forward import perplexity
from toybb.texts import read_source

METHODS = ("plain", "selfextend", "pi", "ntk", "window")


def _methods(args) -> list[str]:
    """--methods checked before any model is loaded, with the settings each method uses."""
    methods = list(args.methods)
    if not methods or any(m not in METHODS for m in methods):
        raise ConfigError(f"--methods takes a comma-separated subset of {', '.join(METHODS)}; "
                          f"got {','.join(args.methods)!r}")
    if "selfextend" in methods:
        w, g = _pair(args.selfextend, "--selfextend")
        if w < 1 or g < 1:
            raise ConfigError(f"--selfextend W,G needs W >= 1 and G >= 1, got {args.selfextend!r}")
    for m in ("pi", "ntk"):
        if m in methods:
            v = getattr(args, m)
            if not (v > 0 and v < float("inf")):
                raise ConfigError(f"--{m} must be a positive factor, got {v!r}")
    if "window" in methods and args.sliding_window < 1:
        raise ConfigError(f"--sliding-window must be >= 1, got {args.sliding_window}")
    return methods


def _pair(v: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(v) != 2:
        raise ConfigError(f"{name} takes two integers 'A,B', got {','.join(map(str, v))!r}")
    return v


def _common(p, model: bool = True) -> None:
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (table, config.json, figure)")
    if model:
        add_model(p)
        p.add_argument("--block", type=int, default=1024, help="query rows per attention block")


def _methods_flags(p) -> None:
    """--methods and --selfextend, shared by ppl-length and passkey."""
    add_list(p, "--methods", STRS, ("plain", "selfextend"), f"methods ({', '.join(METHODS)})")
    p.add_argument("--selfextend", type=INTS, default=(1024, 3), metavar="W,G", help="SelfExtend neighbour window W and group "
                   "size G of method selfextend")


def register(subparsers) -> None:
    top = subparsers.add_parser("longctx", help="long context: positional vectors, SelfExtend, sinks, passkey")
    sub = top.add_subparsers(dest="longctx_cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("ppl-length", help="perplexity against length (one long forward per text and method)")
    _common(p)
    add_text(p, DEFAULT_TEXTS, many=True)
    p.add_argument("--tokens", type=int, default=16384, metavar="N", help="tokens read from each text (one forward "
                   "pass of N tokens per text and method)")
    add_list(p, "--seq-len", INTS, (1024, 2048, 4096, 6144, 8192, 10240, 12288, 14336, 16384),
             "evaluation lengths: the perplexity of the first L tokens, for each L", metavar="L")
    p.add_argument("--offset", type=int, default=2000, help="skip this many characters of each text")
    _methods_flags(p)
    p.add_argument("--pi", type=float, default=2.0, help="position interpolation factor of method pi")
    p.add_argument("--ntk", type=float, default=2.0, help="NTK base scaling factor of method ntk")
    p.add_argument("--sliding-window", type=int, default=4096, metavar="W", help="sliding window of method window")
    add_renamed(p, "longctx ppl-length")
    p.set_defaults(func=cmd_ppl_length)

    p = sub.add_parser("passkey", help="passkey retrieval accuracy per length and depth (heatmap)")
    _common(p)
    add_list(p, "--seq-len", INTS, (2048, 8192, 16384), "prompt lengths in tokens", metavar="L")
    add_list(p, "--depths", FLOATS, (0.0, 0.25, 0.5, 0.75, 1.0), "key depths, fractions of the prompt in [0, 1]")
    p.add_argument("--trials", type=int, default=2, help="random keys per (length, depth)")
    _methods_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random keys")
    add_renamed(p, "longctx passkey")
    p.set_defaults(func=cmd_passkey)

    p = sub.add_parser("stream", help="attention-sink (StreamingLLM) cache perplexity for several sink counts")
    _common(p)
    add_text(p, "pride")
    p.add_argument("--tokens", type=int, default=4096, metavar="N", help="tokens of the text scored")
    p.add_argument("--recent", type=int, default=256, metavar="W", help="recent window W of the sink cache")
    add_list(p, "--sinks", INTS, (0, 1, 4), "sink-token counts k")
    add_renamed(p, "longctx stream")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("posvec", help="positional vectors of a pretrained model, their PCA and ablation")
    _common(p)
    add_text(p, ("emma", "mobydick"), many=True)
    p.add_argument("--samples", type=int, default=32, help="N windows averaged (streamed)")
    add_seq_len(p, 512, help="tokens per sample window")
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass (also the held-out windows)")
    add_list(p, "--plot-layers", INTS, (0, 1, 2, 5, 15, 29), "layers drawn in posvec.png")
    p.add_argument("--tau", type=float, default=0.9, help="cosine threshold of the distinct-vector rule")
    p.add_argument("--ablate-layer", type=int, default=1, help="layer after which positional vectors are removed")
    p.add_argument("--ablate-first", type=int, default=4,
                   help="remove the positional vectors (and, separately, the values) of the first K tokens")
    p.add_argument("--value-from-layer", type=int, default=0,
                   help="value ablation: zero the first K tokens' value vectors in this layer and all later ones")
    add_renamed(p, "longctx posvec")
    p.set_defaults(func=cmd_posvec)

    toy_cli.register(sub, _common)


# ---------------------------------------------------------------------------------------------


def _load(args, check=None):
    """The model of `args.model`; `check(cfg)` runs on its config before the weights load."""
    if args.block < 1:
        raise ConfigError(f"--block must be a positive number of query rows, got {args.block}")
    ck = open_checkpoint(resolve(args.model), dtype=args.dtype, tokenizer=args.tokenizer, step=args.step)
    if check is not None:
        check(ck.cfg)
    return ck.load_weights()


def _bos(pre) -> list[int]:
    t = pre.tokenizer
    return [t.bos_id] if t is not None and t.add_bos and t.bos_id is not None else []


def _check_methods(cfg, methods, args, length: int) -> None:
    """Each method (of `_methods`) supports `length` tokens on a model of config `cfg`."""
    for method in methods:
        if method == "selfextend":
            w, g = _pair(args.selfextend, "--selfextend")
            mx = selfextend_max_length(cfg.max_positions, w, g)
            if length > mx:
                raise ConfigError(f"SelfExtend w={w}, G={g} supports (L - w) * G + w = {mx} tokens < {length}; raise G")


def _method_model(pre, method: str, args, length: int):
    """(model, label) for a method name; checks the method supports `length`."""
    _check_methods(pre.cfg, [method], args, length)
    base = dict(attn_block=args.block)
    if method == "plain":
        return with_options(pre.model, **base), "plain"
    if method == "selfextend":
        w, g = _pair(args.selfextend, "--selfextend")
        return with_options(pre.model, selfextend=(w, g), **base), f"selfextend w={w} G={g}"
    if method == "pi":
        return with_options(pre.model, rope_scaling=rope_scaling(pi=args.pi), **base), f"PI x{args.pi:g}"
    if method == "ntk":
        return with_options(pre.model, rope_scaling=rope_scaling(ntk=args.ntk), **base), f"NTK x{args.ntk:g}"
    return with_options(pre.model, sliding_window=args.sliding_window, **base), f"window {args.sliding_window}"


def cmd_ppl_length(args) -> int:
    import time

    import numpy as np

    if args.tokens < 2:
        raise ConfigError(f"--tokens must be >= 2 tokens, got {args.tokens}")
    if args.offset < 0:
        raise ConfigError(f"--offset must be >= 0 characters, got {args.offset}")
    lengths = _nonempty(args.seq_len, "--seq-len", 2)
    if max(lengths) > args.tokens:
        raise ConfigError(f"--seq-len goes up to {max(lengths)} but --tokens is {args.tokens}")
    methods = _methods(args)
    pre = _load(args, lambda cfg: _check_methods(cfg, methods, args, args.tokens))
    models = {m: _method_model(pre, m, args, args.tokens) for m in methods}
    write_config(args.out, args, {"context": pre.cfg.max_positions})
    bos = _bos(pre)
    rows, curves = [], {}
    for t in args.text:
        ids = pre.tokenizer.encode(read_source(t, max_chars=args.offset + 16 * args.tokens)[args.offset:],
                                   add_bos=False)[: args.tokens - len(bos)]
        if len(ids) + len(bos) < args.tokens:
            raise ToybbError(f"{t}: only {len(ids)} tokens after --offset, need {args.tokens}")
        for m, (model, label) in models.items():
            t0 = time.time()
            nll = sequence_nll(model, np.asarray([bos + ids]))
            sec = time.time() - t0
            curves.setdefault(label, []).append(nll[0])
            for L, ppl in ppl_by_length(nll, lengths).items():
                rows.append({"text": os.path.basename(t), "method": label, "length": L, "ppl": ppl,
                             "forward_s": round(sec, 1)})
            print(f"{os.path.basename(t)} {label}: " + ", ".join(f"{r['length']}: {r['ppl']:.2f}" for r in rows
                                                               if r["method"] == label and r["text"] == os.path.basename(t))
                  + f"  ({sec:.0f} s)", flush=True)
    for label, cs in curves.items():
        nll = np.stack(cs)
        for L, ppl in ppl_by_length(nll, lengths).items():
            rows.append({"text": "all", "method": label, "length": L, "ppl": ppl})
        # perplexity of each 1024-token segment: where does the loss go up?
        seg = 1024
        for s in range(0, nll.shape[1] - seg + 2, seg):
            rows.append({"text": "all-segment", "method": label, "length": s + seg,
                         "ppl": perplexity(nll[:, s : s + seg])})
    write_table(args.out, "ppl_length", rows)
    P.ppl_length(rows, os.path.join(args.out, "ppl_length.png"), args.model, pre.cfg.max_positions,
                 {"texts": len(curves[next(iter(curves))]), "methods": ", ".join(curves)})
    return 0


def cmd_passkey(args) -> int:
    import numpy as np

    lengths = _nonempty(args.seq_len, "--seq-len", 1)
    depths = _nonempty(args.depths, "--depths", 0, 1)
    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    check_count(args.seed, "--seed", "seed", low=0)
    methods = _methods(args)
    pre = _load(args, lambda cfg: _check_methods(cfg, methods, args, max(lengths)))
    models = {m: _method_model(pre, m, args, max(lengths)) for m in methods}
    write_config(args.out, args)
    rng = np.random.default_rng(args.seed)
    keys = [[[str(rng.integers(10000, 100000)) for _ in range(args.trials)] for _ in depths] for _ in lengths]
    bos = _bos(pre)
    rows = []
    for m, (model, label) in models.items():
        for i, L in enumerate(lengths):
            for j, d in enumerate(depths):
                ok = [passkey_correct(model, *passkey_ids(pre.tokenizer, L, d, key, bos)) for key in keys[i][j]]
                rows.append({"method": label, "length": L, "depth": d, "accuracy": float(np.mean(ok)),
                             "trials": len(ok)})
                print(f"{label} length {L} depth {d:.2f}: {np.mean(ok):.2f}", flush=True)
    write_table(args.out, "passkey", rows)
    P.passkey(rows, os.path.join(args.out, "passkey.png"), args.model, {"keys per cell": args.trials})
    return 0


def cmd_stream(args) -> int:
    import numpy as np

    sinks = args.sinks
    if args.recent < 1 or any(k < 0 for k in sinks):
        raise ConfigError(f"--recent must be >= 1 and --sinks >= 0, got {args.recent}, {sinks}")
    if args.tokens < args.recent + 6:  # the perplexity after the window needs tokens beyond it
        raise ConfigError(f"--tokens must exceed --recent + 5 = {args.recent + 5} (perplexity after the window), "
                          f"got {args.tokens}")
    def check(cfg):
        if args.tokens > cfg.max_positions:
            raise ConfigError(f"--tokens {args.tokens} exceeds the context {cfg.max_positions} (full-attention baseline)")

    pre = _load(args, check)
    write_config(args.out, args)
    bos = _bos(pre)
    ids = bos + pre.tokenizer.encode(read_source(args.text, max_chars=16 * args.tokens), add_bos=False)[: args.tokens - len(bos)]
    toks = np.asarray([ids])
    runs = {"full attention": with_options(pre.model, attn_block=args.block)}
    for k in sinks:
        runs[f"sinks k={k}, window {args.recent}"] = with_options(pre.model, attn_block=args.block,
                                                                  sink_cache=(k, args.recent))
    rows, curves = [], {}
    for label, model in runs.items():
        nll = sequence_nll(model, toks)[0]
        curves[label] = nll
        k = None if label == "full attention" else int(label.split("k=")[1].split(",")[0])
        rows.append({"method": label, "sinks": k, "window": None if k is None else args.recent,
                     "tokens": len(ids), "ppl": perplexity(nll),
                     "ppl_after_window": perplexity(nll[args.recent + 4 :])})
        print(f"{label}: ppl {rows[-1]['ppl']:.3f} (after the window {rows[-1]['ppl_after_window']:.3f})", flush=True)
    write_table(args.out, "stream", rows)
    P.stream(curves, os.path.join(args.out, "stream.png"), args.model,
             config={"text": os.path.basename(args.text), "tokens": len(ids), "recent window": args.recent})
    return 0


def cmd_posvec(args) -> int:
    import numpy as np

    layers = _posvec_check(args)
    def check(cfg):
        if any(not 0 <= l < cfg.n_layers for l in layers + (args.ablate_layer, args.value_from_layer)):
            raise ConfigError(f"layers must be in [0, {cfg.n_layers})")

    pre = _load(args, check)
    write_config(args.out, args)
    sel, held = _posvec_windows(pre, args)
    batches = (np.asarray(sel[i : i + args.batch]) for i in range(0, len(sel), args.batch))
    p, n = positional_vectors(lambda tk: hidden_states(pre.model, tk), batches)
    u, m = decompose(p)
    rows = _posvec_rows(u, m, args.tau)
    write_table(args.out, "posvec", rows)
    np.savez_compressed(os.path.join(args.out, "posvec.npz"), u=u.astype(np.float32), m=m.astype(np.float32))
    abl = _posvec_ablations(pre, held, m, args)
    write_table(args.out, "ablation", abl)
    _posvec_figures(args, pre, layers, rows, m, n, abl, len(held))
    print(f"distinct positional vectors per layer (tau {args.tau}): {[r['n_distinct'] for r in rows]}")
    return 0


def _posvec_check(args) -> tuple[int, ...]:
    """The settings of `longctx posvec` that need no model checked; returns the layers to draw."""
    if args.samples < 1:
        raise ConfigError(f"positional vectors need at least one sample, got --samples {args.samples}")
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    if not 0 <= args.tau <= 1:
        raise ConfigError(f"--tau is a cosine threshold in [0, 1], got {args.tau!r}")
    if not 1 <= args.ablate_first <= args.seq_len // 2:
        raise ConfigError(f"--ablate-first must be in [1, --seq-len / 2], got {args.ablate_first}")
    return _nonempty(args.plot_layers, "--plot-layers", 0)


def _posvec_windows(pre, args):
    """(the --samples windows of --seq-len tokens for the positional vectors, a held-out [batch, seq] array
    for the ablations), drawn in a fixed random order from the texts (each starting with the BOS)."""
    import numpy as np

    bos = _bos(pre)
    n_tok = args.seq_len - len(bos)
    windows = []
    for t in args.text:
        ids = pre.tokenizer.encode(read_source(t)[2000:], add_bos=False)
        windows += [bos + ids[i : i + n_tok] for i in range(0, len(ids) - n_tok, n_tok)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(windows))
    if len(windows) < args.samples + args.batch:
        raise ToybbError(f"texts give {len(windows)} windows of {args.seq_len} tokens, need {args.samples + args.batch}")
    sel = [windows[i] for i in order[: args.samples]]
    held = np.asarray([windows[i] for i in order[args.samples : args.samples + args.batch]])
    return sel, held


def _posvec_rows(u, m, tau: float) -> list[dict]:
    """Per layer: distinct positional vectors, norms of u and m, cosines of the first tokens, PCA variance."""
    import numpy as np

    rows = []
    for l in range(m.shape[0]):
        c = cosine_matrix(m[l])
        _, ev = pca(m[l], 2)
        rows.append({"layer": l, "n_distinct": n_distinct(m[l], tau), "norm_u": float(np.linalg.norm(u[l])),
                     "norm_m_t0": float(np.linalg.norm(m[l, 0])), "norm_m_median": float(np.median(np.linalg.norm(m[l], axis=-1))),
                     "cos_t0_rest": float(np.mean(c[0, 4:])), "cos_t4plus_mean": float(np.mean(c[4:, 4:])),
                     "pca_var_1": float(ev[0]), "pca_var_2": float(ev[1])})
    return rows


def _posvec_ablations(pre, held, m, args) -> list[dict]:
    """Ablations on the held-out windows (control: the same removal on tokens K..2K-1): the positional
    vectors m of the first K tokens after one layer, or their value vectors from a layer on. Per case the
    perplexity and the attention on token 0 per layer (queries t >= 4)."""
    import numpy as np

    K, la, lv = args.ablate_first, args.ablate_layer, args.value_from_layer
    abl = []
    cases = [("none", "none", None)]
    for what in ("posvec", "value"):
        cases += [(what, f"first {K} tokens", slice(0, K)), (what, f"tokens {K}-{2 * K - 1} (control)", slice(K, 2 * K))]
    for what, name, sl in cases:
        delta = vscale = None
        if what == "posvec":
            d = np.zeros((args.seq_len, pre.cfg.d_model), np.float32)
            d[sl] = -m[la, sl]
            delta = {la: d}
        elif what == "value":
            vscale = value_ablation(pre.cfg.n_layers, args.seq_len, sl, lv)
        nll = sequence_nll(pre.model, held, delta, vscale)
        sink = sink_attention_by_layer(pre.model, held, delta, value_scale=vscale)
        where = {"none": "", "posvec": f"after layer {la}", "value": f"layers >= {lv}"}[what]
        abl.append({"ablation": what, "removed": name, "where": where, "ppl": perplexity(nll),
                    "sink_attention_mean": float(sink[2:].mean()),
                    "sink_attention_by_layer": [round(float(s), 4) for s in sink]})
        print(f"ablation {what} {name} {where}: ppl {abl[-1]['ppl']:.3f}, mean attention on token 0 (layers >= 2) "
              f"{abl[-1]['sink_attention_mean']:.3f}", flush=True)
    return abl


def _posvec_figures(args, pre, layers, rows, m, n: int, abl: list[dict], n_held: int) -> None:
    """posvec.png (cosines and PCA of m per drawn layer) and ablation.png (attention on token 0 per layer)."""
    cos = {l: cosine_matrix(m[l][:128]) for l in layers}
    pcs = {l: pca(m[l], 2) for l in layers}
    P.posvec(rows, cos, pcs, os.path.join(args.out, "posvec.png"), args.model,
             {"samples": n, "tokens": args.seq_len})
    P.ablation(abl, os.path.join(args.out, "ablation.png"), args.model,
               {"first tokens ablated": args.ablate_first, "held-out windows": n_held, "window": args.seq_len})
