"""Extreme-token probes of a pretrained LLM averaged over a text domain, streamed batch by batch.

Every batch goes through one compiled function that runs the model with capture and reduces the
captured arrays in-graph with the SPEC §3 metric functions (`toybb.probes.metrics`), so only small
per-batch sums ([layers, heads], [layers, heads, K], [layers, heads, vocab]) reach the host. The host
adds them up (`DomainStats`): memory does not grow with the number of samples, and the streaming mean
equals the mean over one batch holding every sample.

Definitions (T = sequence length, key 0 = the BOS, or the first token without BOS):
- sink score of a head: attention on key 0, averaged over queries 1..T-1 (query 0 sees only key 0).
- key attention [layers, heads, K]: attention received by key position j, averaged over the queries
  that can see it (i >= j), for the first K positions.
- token attention [layers, heads, vocab]: the same, per token id of the key (positions >= 1); the
  sink tokens are the token ids (seen at least `min_count` times) that receive most of it.
- value drain: ||W_O^h v|| at key 0 vs the mean over the other positions (`v_out@norm`).
- residual peak: ||resid_post|| at position 0 vs the mean over the others.
- sink logit gap: logit on key 0 minus the mean logit on keys 1..i-1.
- massive activations (Sun et al. 2024), per layer on resid_post: the top-3 |activation| of each
  sample and its median |activation|, averaged over samples. An entry is massive when |h| > 100 and
  > 1000x its sample's median at that layer (`metrics.is_massive`, `MASSIVE_ABS`, `MASSIVE_RATIO`);
  the first massive layer is the first whose mean top-1 passes both thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from toybb.models.transformer import Transformer
from toybb.models.capture import Capture, capture_call, resolve_edits
from toybb.models.forward import call, loss
from toybb.models.sites import Edit
from toybb.probes import metrics as M

TOPK = 3

PROBE_CAPTURE = Capture(("blocks.*.attn.pattern@key0", "blocks.*.attn.pattern@qmean", "blocks.*.attn.logits",
                         "blocks.*.attn.v_out@norm", "blocks.*.resid_post"))


def _batch_stats(model: Transformer, k_first: int, tokens: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Sums over the valid samples of one batch. tokens [b, T] int32, valid [b] bool."""
    cfg = model.cfg
    b, t = tokens.shape
    v = cfg.vocab_size
    logits, cap = capture_call(model, tokens, capture=PROBE_CAPTURE)
    w = valid.astype(jnp.float32)
    n = w.sum()
    qmask = jnp.broadcast_to(valid[:, None], (b, t))
    nll = M.next_token_nll(logits, tokens)
    out = {"n": n, "nll_sum": jnp.sum(nll * w[:, None]), "nll_count": n * (t - 1)}
    keep = ("sink_attention_excl0", "sink_logit_gap", "value_drain", "value_others", "key_attn", "value_pos",
            "tok_attn", "tok_value", "residual_peak", "residual_others", "resid_pos", "tok_resid",
            "massive_top", "massive_median", "massive_sum", "massive_count", "top_dim_count", "massive_tok_count")
    acc: dict[str, list] = {k: [] for k in keep}
    tok_rest = tokens[:, 1:].reshape(-1)  # token ids of positions >= 1
    wt = jnp.broadcast_to(w[:, None], (b, t - 1)).reshape(-1)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}"
        key0 = cap[f"{p}.attn.pattern@key0"]  # [b, h, T]
        acc["sink_attention_excl0"].append(M.sink_attention(key0, qmask, exclude_sink_query=True) * n)
        acc["sink_logit_gap"].append(M.sink_logit_gap(cap[f"{p}.attn.logits"], qmask) * n)
        hn = cap[f"{p}.attn.v_out@norm"].astype(jnp.float32)  # [b, T, h]
        vs, vo = M.value_drain(hn, valid=qmask)
        acc["value_drain"].append(vs * n)
        acc["value_others"].append(vo * n)
        recv = M.attention_received(cap[f"{p}.attn.pattern@qmean"])  # [b, h, T]
        acc["key_attn"].append(jnp.einsum("bhk,b->hk", recv[..., :k_first], w))
        acc["value_pos"].append(jnp.einsum("bkh,b->hk", hn[:, :k_first], w))
        r = jnp.moveaxis(recv[..., 1:], 1, -1).reshape(-1, recv.shape[1]) * wt[:, None]  # [b*(T-1), h]
        acc["tok_attn"].append(jax.ops.segment_sum(r, tok_rest, v).T)  # [h, V]
        hv = hn[:, 1:].reshape(-1, hn.shape[-1]) * wt[:, None]
        acc["tok_value"].append(jax.ops.segment_sum(hv, tok_rest, v).T)
        x = cap[f"{p}.resid_post"].astype(jnp.float32)  # [b, T, d]
        rn = jnp.sqrt(jnp.sum(x * x, -1))
        rs, ro, _ = M.residual_peak(rn, valid=qmask)
        acc["residual_peak"].append(rs * n)
        acc["residual_others"].append(ro * n)
        acc["resid_pos"].append(jnp.einsum("bk,b->k", rn[:, :k_first], w))
        acc["tok_resid"].append(jax.ops.segment_sum(rn[:, 1:].reshape(-1) * wt, tok_rest, v))
        top, idx, med = M.activation_profile(x, TOPK)  # [b, 3], [b, 3], [b] per sample
        acc["massive_top"].append(jnp.einsum("bk,b->k", top, w))
        acc["massive_median"].append(jnp.sum(med * w))
        d = x.shape[-1]
        acc["top_dim_count"].append(jnp.zeros(d).at[idx % d].add(jnp.broadcast_to(w[:, None], idx.shape)))
        big = M.is_massive(jnp.abs(x), med[:, None, None]) & valid[:, None, None]
        acc["massive_sum"].append(jnp.sum(jnp.where(big, x, 0.0), axis=(0, 1)))
        acc["massive_count"].append(jnp.sum(big, axis=(0, 1)).astype(jnp.float32))
        acc["massive_tok_count"].append(
            jax.ops.segment_sum(jnp.any(big, -1).reshape(-1).astype(jnp.float32), tokens.reshape(-1), v))
    out.update({k: jnp.stack(vals) for k, vals in acc.items()})
    out["tok_count"] = jax.ops.segment_sum(wt, tok_rest, v)
    return out


def batch_stats(model: Transformer, tokens, valid, k_first: int = 32) -> dict[str, np.ndarray]:
    """Per-batch sums (see `_batch_stats`) as numpy arrays, computed by one compiled function."""
    out = call(_batch_stats, model, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid, bool), static=(k_first,))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


@dataclass
class DomainStats:
    """Running sums of `batch_stats` over a domain; `mean(name)` divides by the right count."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for k, v in batch.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.copy()

    @property
    def n(self) -> int:
        return int(self.sums["n"])

    def mean(self, name: str) -> np.ndarray:
        """Mean over samples ([layers, ...]); per-token-id sums are divided by token counts instead."""
        s = self.sums[name]
        if name.startswith("tok_"):
            return s / np.maximum(self.sums["tok_count"], 1)
        return s / max(self.n, 1)

    @property
    def ppl(self) -> float:
        return M.perplexity(self.sums["nll_sum"] / self.sums["nll_count"])

    def sink_tokens(self, k: int = 3, min_count: int = 5) -> list[int]:
        """Token ids (at positions >= 1) that receive the most attention, averaged over layers and heads,
        among those seen at least `min_count` times."""
        att = self.mean("tok_attn").mean(axis=(0, 1))
        att = np.where(self.sums["tok_count"] >= min_count, att, -np.inf)
        order = np.argsort(-att)[:k]
        return [int(i) for i in order if np.isfinite(att[i])]

    def massive(self) -> dict:
        """Massive-activation profile and the first layer where they appear (rule in the module doc)."""
        top = self.mean("massive_top")  # [L, 3]
        med = self.mean("massive_median")  # [L]
        is_massive = M.is_massive(top[:, 0], med)
        first = int(np.argmax(is_massive)) if is_massive.any() else None
        out = {"massive_top": top.tolist(), "massive_median": med.tolist(), "massive_layers": np.flatnonzero(is_massive).tolist(),
               "first_layer": first, "dims": [], "dim_mean": [], "dim_count": [], "tokens": []}
        if first is not None:
            cnt, sm = self.sums["massive_count"][first], self.sums["massive_sum"][first]
            dims = [int(d) for d in np.argsort(-cnt)[:8] if cnt[d] > 0]
            out["dims"] = dims
            out["dim_mean"] = [float(sm[d] / cnt[d]) for d in dims]
            out["dim_count"] = [int(cnt[d]) for d in dims]
            tc = self.sums["massive_tok_count"][first]
            out["tokens"] = [(int(i), int(tc[i])) for i in np.argsort(-tc)[:5] if tc[i] > 0]
            out["threshold"] = M.massive_threshold(med[first])
        return out


def probe_domain(model: Transformer, batches, *, k_first: int = 32, progress: str | None = None) -> DomainStats:
    """Accumulate `batch_stats` over batches of (tokens [b, T], valid [b])."""
    stats = DomainStats()
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, desc=progress, unit="batch")
    for tokens, valid in it:
        stats.add(batch_stats(model, tokens, valid, k_first))
    return stats


# ---------------------------------------------------------------------------------------------------
# interventions


def edited_nll(model: Transformer, batches: list, edits=None) -> float:
    """Mean next-token NLL (nats) over batches of (tokens, valid) under `edits` (`Edit`s, e.g. from
    `head_edit_for` / `massive_edit`). Selectors and values are arrays: one compilation serves every
    head, layer or value of the same edit structure."""
    tot, cnt, resolved = 0.0, 0.0, {}
    for tokens, valid in batches:
        tokens = jnp.asarray(tokens, jnp.int32)
        if tokens.shape not in resolved:
            resolved[tokens.shape] = None if edits is None else resolve_edits(model, edits, tokens)
        s, c, _ = loss(model, tokens, valid=valid, edits=resolved[tokens.shape])
        tot, cnt = tot + float(s), cnt + float(c)
    return tot / cnt


HEAD_EDITS = ("zero", "to_bos")


def head_edit_for(cfg, layer: int, head: int, kind: str) -> list[Edit]:
    """'zero' (the head's attention output z) or 'to_bos' (all of the head's attention moved onto key
    0, the BOS or first token) on one head."""
    if kind == "zero":
        return [Edit("blocks.*.attn.z", "zero", layer=layer, head=head)]
    if kind == "to_bos":
        return [Edit("blocks.*.attn.pattern", "set", value=1.0, layer=layer, head=head, key=0),
                Edit("blocks.*.attn.pattern", "zero", layer=layer, head=head, key="1:")]
    raise ValueError(f"unknown head intervention {kind!r}; use one of {HEAD_EDITS}")


def massive_edit(info: dict, mode: str) -> list[Edit]:
    """Set the massive activations found by `DomainStats.massive()` to zero or to their mean, after the
    first massive layer, wherever |h[dim]| exceeds the detection threshold."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"unknown massive-activation intervention {mode!r}; use 'zero' or 'mean'")
    order = np.argsort(info["dims"])  # the feature selector's values follow sorted dims
    dims = [int(info["dims"][i]) for i in order]
    vals = np.zeros(len(dims), np.float32) if mode == "zero" else np.asarray(info["dim_mean"], np.float32)[order]
    return [Edit("blocks.*.resid_post", "set", value=vals, layer=int(info["first_layer"]), feature=dims,
                 min_abs=float(info["threshold"]))]
