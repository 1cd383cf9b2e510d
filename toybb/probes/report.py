"""`toybb probe`: extreme-token probes of a pretrained LLM on several text domains, written as tables
(CSV and JSON) and figures. The statistics are `toybb.probes.llm`; this module orchestrates and reports.

Outputs in the run folder:
  config.json          command, settings, package versions
  metrics.json         everything below plus per-domain summaries (perplexity, sink tokens, massive activations)
  heads.csv            per layer and head and domain: sink_attention_excl0, state (active or dormant by
                       `DORMANT_RULE`), sink_logit_gap, value_drain, value_others, sink_token_attention;
                       selectivity (sink_attention_excl0 on the first domain minus the second). Column
                       names: toybb.names.
  layers.csv           per layer and domain: residual_peak, residual_others, massive_top1..3, massive_median
  interventions.csv    loss per domain for each head intervention and for the massive-activation ones
  sink_heatmap.png, norms_by_position.png, massive_profile.png, interventions.png, attention_maps.png
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toybb.errors import ConfigError
from toybb.models.config import check_count
from toybb.models.forward import forward
from toybb.models.capture import Capture
from toybb.probes import llm as P
from toybb.probes import plots
from toybb.probes.corpus import Domain, domain_batches
from toybb.probes import metrics as M
from toybb.records import atomic_open, atomic_write, package_versions

DORMANT_RULE = f"dormant where sink_attention_excl0 >= {M.DORMANT_THRESHOLD} (the paper's threshold), else active"


@dataclass(frozen=True)
class ProbeSettings:
    samples: int = 64
    seq_len: int = 256
    batch: int = 8
    bos: bool = True
    k_first: int = 32
    intervene_samples: int = 8
    intervene_heads: int = 12  # most domain-selective heads to intervene on; 0 = every head
    max_per_doc: int = 16

    def check(self, max_positions: int) -> None:
        for name, limit in (("samples", "samples"), ("intervene_samples", "samples"), ("batch", "batch")):
            check_count(getattr(self, name), f"--{name.replace('_', '-')}", limit)  # a batch is padded: bounded
        for name in ("k_first", "max_per_doc"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.intervene_heads < 0:
            raise ConfigError(f"--intervene-heads must be >= 0 (0 = every head), got {self.intervene_heads}")
        if self.seq_len < 2 + self.bos:
            raise ConfigError(f"--seq-len must be at least {2 + self.bos}, got {self.seq_len}")
        if self.seq_len > max_positions:
            raise ConfigError(f"--seq-len {self.seq_len} is longer than the model context ({max_positions} tokens)")


def _first_batches(batches, n: int, keep: list):
    """Pass batches through, keeping copies of those that hold the first n samples (valid mask cut to n)."""
    seen = 0
    for tokens, valid in batches:
        if seen < n:
            v = valid.copy()
            idx = np.flatnonzero(v)
            v[idx[max(0, n - seen):]] = False
            keep.append((tokens.copy(), v))
            seen += int(v.sum())
        yield tokens, valid


def run_probe(pre, domains: list[Domain], settings: ProbeSettings, out: Path, *, progress: bool = True,
              command: list[str] | None = None) -> dict:
    """Probe `pre` (a loaded `Pretrained`) on each domain and write tables and figures to `out`."""
    cfg, tok = pre.cfg, pre.tokenizer
    check_probe(pre, domains, settings)
    names = [d.name for d in domains]
    out.mkdir(parents=True, exist_ok=True)

    atomic_write(out / "config.json", lambda f: f.write(json.dumps({
        "command": command if command is not None else sys.argv, "model": pre.source,
        **({} if pre.step is None else {"step": pre.step}), "dtype": cfg.dtype,
        "domains": {d.name: d.source for d in domains}, "settings": settings.__dict__,
        "massive_rule": {"abs": M.MASSIVE_ABS, "ratio_to_median": M.MASSIVE_RATIO},
        "versions": package_versions()}, indent=2)), mode="w")

    stats, held = _probe_domains(pre, domains, settings, progress)
    summary: dict = {"domains": {name: _domain_summary(st, tok) for name, st in stats.items()}}
    # domain selectivity: sink_attention_excl0 on the first domain minus the second
    sel = None
    if len(domains) >= 2:
        sel, summary["selective"] = _selectivity(stats, names)
    if sel is not None and settings.intervene_heads:
        order = np.argsort(-np.abs(sel), axis=None)[: settings.intervene_heads]
        heads = sorted((int(i // cfg.n_heads), int(i % cfg.n_heads)) for i in order)
    else:
        heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    rows = []
    for name in names:
        rows += _interventions(pre, name, held[name], heads, summary["domains"][name], progress)

    _write_tables(out, stats, names, sel, rows, cfg)
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(summary, indent=2, default=float)), mode="w")
    maps = _attention_maps(pre, held, summary, names) if sel is not None else None

    st = settings
    about = {"model": Path(pre.source.rstrip("/")).name, "config": {"domains": ", ".join(names), "samples": st.samples,
                                             "tokens": st.seq_len, "BOS": st.bos, "dtype": cfg.dtype,
                                             **({} if pre.step is None else {"step": pre.step})}}
    plots.write_all(out, stats, names, sel, rows, maps, summary, about)
    return summary


def check_probe(pre, domains: list[Domain], settings: ProbeSettings) -> None:
    """Everything `run_probe` needs, checked before any model runs; `pre` is a `Pretrained` or a
    `Checkpoint` (config and tokenizer, weights not loaded yet): each domain must hold one full sample."""
    if pre.tokenizer is None:
        raise ConfigError(f"{pre.source}: no tokenizer found; pass --tokenizer tokenizer.json")
    if not domains:
        raise ConfigError("give at least one --domain NAME=SOURCE")
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ConfigError(f"--domain names must differ, got {names}")
    settings.check(pre.cfg.max_positions)
    if settings.bos and pre.tokenizer.bos_id is None:
        raise ConfigError(f"{pre.source}: the tokenizer has no BOS token; run with --no-bos")
    bos_id = pre.tokenizer.bos_id if settings.bos else None
    for d in domains:  # tokenizes the head of the first documents only
        domain_batches(d, lambda text: pre.tokenizer.encode(text, add_bos=False), n=1, seq_len=settings.seq_len,
                       batch=1, bos_id=bos_id, max_per_doc=settings.max_per_doc)


def _probe_domains(pre, domains: list[Domain], settings: ProbeSettings, progress: bool):
    """({domain: DomainStats}, {domain: the batches holding its first `intervene_samples` samples})."""
    tok = pre.tokenizer
    bos_id = tok.bos_id if settings.bos else None
    encode = lambda text: tok.encode(text, add_bos=False)  # noqa: E731
    stats: dict[str, P.DomainStats] = {}
    held: dict[str, list] = {}
    for d in domains:
        held[d.name] = []
        batches = domain_batches(d, encode, n=settings.samples, seq_len=settings.seq_len, batch=settings.batch,
                                 bos_id=bos_id, max_per_doc=settings.max_per_doc)
        stats[d.name] = P.probe_domain(pre.model, _first_batches(batches, settings.intervene_samples,
                                                                          held[d.name]),
                                       k_first=settings.k_first, progress=f"probe {d.name}" if progress else None)
        if stats[d.name].n < settings.samples:
            print(f"toybb probe: warning: domain {d.name} gave {stats[d.name].n} of {settings.samples} samples",
                  file=sys.stderr)
    return stats, held


def _domain_summary(st: P.DomainStats, tok) -> dict:
    """metrics.json's summary of one domain: perplexity, sink heads and tokens, residual norms, massive activations."""
    score = st.mean("sink_attention_excl0")
    m = st.massive()
    m["tokens"] = [(i, c, tok.decode([i])) for i, c in m["tokens"]]
    rs, ro = st.mean("residual_peak"), st.mean("residual_others")
    return {
        "samples": st.n, "tokens_scored": int(st.sums["nll_count"]), "ppl": st.ppl,
        "heads_dormant": int(np.asarray(M.classify_dormant(score)).sum()), "heads": int(score.size),
        "sink_tokens": [(i, tok.decode([i]), float(st.mean("tok_attn").mean(axis=(0, 1))[i]),
                         int(st.sums["tok_count"][i])) for i in st.sink_tokens()],
        "residual_peak": rs.tolist(), "residual_others": ro.tolist(),
        "residual_ratio": (rs / ro).tolist(),
        "massive": m,
    }


def _selectivity(stats: dict, names: list[str]) -> tuple[np.ndarray, dict]:
    """(sink_attention_excl0 on the first domain minus the second [layers, heads], metrics.json's "selective":
    the five heads of largest difference each way (a ranking), and the heads dormant on one domain and
    active on the other by the rule `DORMANT_RULE`)."""
    a, b = names[0], names[1]
    score = {n: stats[n].mean("sink_attention_excl0") for n in names}
    dormant = {n: np.asarray(M.classify_dormant(score[n])) for n in names}
    sel = score[a] - score[b]
    order = np.argsort(sel, axis=None)
    fmt = lambda lh: {"layer": int(lh[0]), "head": int(lh[1]), "selectivity": float(sel[lh]),  # noqa: E731
                      **{f"sink_attention_excl0_{n}": float(score[n][lh]) for n in names}}
    ranked = lambda idx: [fmt(np.unravel_index(i, sel.shape)) for i in idx]  # noqa: E731
    ruled = lambda x, y: [fmt(lh) for lh in zip(*np.nonzero(dormant[x] & ~dormant[y]))]  # noqa: E731
    return sel, {"rule": DORMANT_RULE,
                 f"dormant_on_{a}_active_on_{b}": ruled(a, b), f"dormant_on_{b}_active_on_{a}": ruled(b, a),
                 f"largest_{a}_minus_{b}": ranked(order[::-1][:5]), f"largest_{b}_minus_{a}": ranked(order[:5])}


def _interventions(pre, name: str, bt: list, heads: list, dom: dict, progress: bool) -> list[dict]:
    """interventions.csv rows of one domain (its held batches `bt`): the loss unedited, with each head
    zeroed or moved to BOS, and with the massive activations set to zero or their mean; adds the
    perplexities and the sample count to the domain's summary `dom`."""
    base = P.edited_nll(pre.model, bt)
    rows = [{"domain": name, "intervention": "none", "layer": "", "head": "", "nll": base,
             "ppl": M.perplexity(base), "delta_nll": 0.0}]
    it = heads
    if progress:
        from tqdm import tqdm

        it = tqdm(heads, desc=f"heads {name}", unit="head")
    for l, h in it:
        for kind in ("zero", "to_bos"):
            v = P.edited_nll(pre.model, bt, P.head_edit_for(pre.cfg, l, h, kind))
            rows.append({"domain": name, "intervention": f"head_{kind}", "layer": l, "head": h, "nll": v,
                         "ppl": M.perplexity(v), "delta_nll": v - base})
    m = dom["massive"]
    if m["first_layer"] is not None:
        for mode in ("zero", "mean"):
            v = P.edited_nll(pre.model, bt, P.massive_edit(m, mode))
            rows.append({"domain": name, "intervention": f"massive_{mode}", "layer": m["first_layer"],
                         "head": "", "nll": v, "ppl": M.perplexity(v), "delta_nll": v - base})
    dom["intervention_samples"] = int(sum(v.sum() for _, v in bt))
    if m["first_layer"] is not None:
        dom["massive_intervention"] = {
            "edited": f"blocks.{m['first_layer']}.resid_post dims {sorted(m['dims'])} where |h| >= {m['threshold']:.4g}",
            "samples": dom["intervention_samples"], "nll_unedited": base,
            **{f"delta_nll_{r['intervention'][8:]}": r["delta_nll"] for r in rows
               if r["intervention"].startswith("massive_")}}
    return rows


def summary_lines(summary: dict) -> list[str]:
    """The printed summary of a probe: per domain one perplexity (all its samples), the dormant heads by
    `DORMANT_RULE`, the sink tokens, and what setting the massive activations to zero / their mean does."""
    lines = []
    for name, d in summary["domains"].items():
        m = d["massive"]
        line = (f"{name}: perplexity {d['ppl']:.3f} ({d['samples']} samples); dormant heads (sink_attention_excl0 >= "
                f"{M.DORMANT_THRESHOLD}) {d['heads_dormant']} of {d['heads']}; sink tokens "
                f"{[t[1] for t in d['sink_tokens']]}")
        mi = d.get("massive_intervention")
        if mi is None:
            line += "; no massive activations"
        else:
            line += (f"; massive activations from layer {m['first_layer']} on: setting "
                     f"{mi['edited']} to zero changes the loss by {mi['delta_nll_zero']:+.3f} nats, to their mean "
                     f"by {mi['delta_nll_mean']:+.3f} (on {mi['samples']} samples)")
        lines.append(line)
    sel = summary.get("selective")
    if sel:
        for key, heads in sel.items():
            if key.startswith("dormant_on_"):
                lines.append(f"{key.replace('_', ' ')}: {len(heads)} head(s) "
                             f"{[(h['layer'], h['head']) for h in heads[:8]]}{' ...' if len(heads) > 8 else ''}")
    return lines


def _write_tables(out: Path, stats, names, sel, rows, cfg) -> None:
    L, H = cfg.n_layers, cfg.n_heads
    with atomic_open(out / "heads.csv", newline="") as f:
        w = csv.writer(f)
        cols = ["layer", "head"]
        for n in names:
            cols += [f"sink_attention_excl0_{n}", f"state_{n}", f"sink_logit_gap_{n}", f"value_drain_{n}",
                     f"value_others_{n}", f"sink_token_attention_{n}"]
        if sel is not None:
            cols.append(f"selectivity_{names[0]}_minus_{names[1]}")
        w.writerow(cols)
        per = {n: (stats[n].mean("sink_attention_excl0"), stats[n].mean("sink_logit_gap"), stats[n].mean("value_drain"),
                   stats[n].mean("value_others"), stats[n].mean("tok_attn"), stats[n].sink_tokens(1)) for n in names}
        for l in range(L):
            for h in range(H):
                row = [l, h]
                for n in names:
                    s, g, vs, vo, ta, st = per[n]
                    row += [f"{s[l, h]:.5g}", "dormant" if M.classify_dormant(s[l, h]) else "active", f"{g[l, h]:.5g}", f"{vs[l, h]:.5g}", f"{vo[l, h]:.5g}",
                            f"{ta[l, h, st[0]]:.5g}" if st else ""]
                if sel is not None:
                    row.append(f"{sel[l, h]:.5g}")
                w.writerow(row)
    with atomic_open(out / "layers.csv", newline="") as f:
        w = csv.writer(f)
        cols = ["layer"]
        for n in names:
            cols += [f"residual_peak_{n}", f"residual_others_{n}", f"massive_top1_{n}", f"massive_top2_{n}",
                     f"massive_top3_{n}", f"massive_median_{n}"]
        w.writerow(cols)
        for l in range(L):
            row = [l]
            for n in names:
                st = stats[n]
                top = st.mean("massive_top")[l]
                row += [f"{st.mean('residual_peak')[l]:.5g}", f"{st.mean('residual_others')[l]:.5g}",
                        *(f"{x:.5g}" for x in top), f"{st.mean('massive_median')[l]:.5g}"]
            w.writerow(row)
    with atomic_open(out / "interventions.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["domain", "intervention", "layer", "head", "nll", "ppl", "delta_nll"])
        w.writeheader()
        w.writerows(rows)


def _attention_maps(pre, held, summary, names) -> dict:
    """Full attention patterns of the two most selective heads each way, on the first sample of the first
    two domains: {(layer, head): {domain: [T, T]}}."""
    sel = summary["selective"]
    heads = []
    for key in sel:
        if key.startswith("largest_"):
            heads += [(x["layer"], x["head"]) for x in sel[key][:2]]
    layers = sorted({l for l, _ in heads})
    cap = Capture(tuple(f"blocks.{l}.attn.pattern" for l in layers))
    maps: dict = {lh: {} for lh in heads}
    for n in names[:2]:
        tokens = held[n][0][0][:1]
        _, c = forward(pre.model, tokens, capture=cap)
        for l, h in heads:
            maps[(l, h)][n] = np.asarray(c[f"blocks.{l}.attn.pattern"][0, h])
    return maps
