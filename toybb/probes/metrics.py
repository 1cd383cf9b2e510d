"""Extreme-token metrics (SPEC §3) as pure functions of captured arrays.

One implementation each, shared by toy models and pretrained LLMs. Inputs are what the capture API
returns (`toybb.models.capture`): attention patterns/logits `[batch, heads, q_seq, k_seq]`, norms of
per-head value states `blocks.{l}.attn.v_out@norm` `[batch, seq, heads]`, residual norms
`blocks.{l}.resid_post@norm` `[batch, seq]`. `sink` is the key/position of the sink token (0 = BOS).
Masks select query positions (e.g. non-trigger queries) and are `[batch, seq]` booleans.

Also the language-model metrics every caller shares: next-token NLL (`token_nll`, `next_token_nll`) and
perplexity (`perplexity`), defined with the forward in `toybb.models.forward` and re-exported here;
attention received per key (`attention_received`) and massive activations (`activation_profile`,
`is_massive`, `massive_threshold`; Sun et al. 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toybb.models.forward import next_token_nll, perplexity, token_nll  # noqa: F401 (defined with the forward)

# Reference threshold (SPEC §3): a token is dormant if the last query's attention on BOS is >= 0.89.
DORMANT_THRESHOLD = 0.89

# Massive activations (Sun et al. 2024): an entry of the residual stream is massive when |h| > 100 and
# > 1000x its sample's median |activation| at that layer (Sun et al. report ~1000x). With 100x,
# SmolLM2's layers 1-8 would count: their BOS peaks of ~300-800 are 300-800x the median, two orders
# below the ~25,000 that appears at layer 11.
MASSIVE_ABS = 100.0
MASSIVE_RATIO = 1000.0
# Gu et al. 2025: a head sinks on a key when its mean attention there exceeds this (Sink^eps)
SINK_EPS = 0.3


def masked_mean(x: jax.Array, mask: jax.Array, axis) -> jax.Array:
    """Mean of `x` over `axis` where `mask` (broadcast to x) holds; 0 where nothing is selected."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def sink_attention(
    pattern: jax.Array,
    query_mask: jax.Array | None = None,
    *,
    sink: int = 0,
    exclude_sink_query: bool = False,
) -> jax.Array:
    """Attn<s>: attention weight on key `sink`, averaged over the selected queries, per head.

    pattern: [batch, heads, q_seq, k_seq] (or the `@key0` reduction [batch, heads, q_seq] when sink=0).
    query_mask: [batch, q_seq] bool (default: all queries). The sink query itself (where the weight is
    1 by construction for sink=0) is included unless exclude_sink_query. Returns [heads].
    """
    on_sink = pattern[..., sink] if pattern.ndim == 4 else pattern
    b, h, t = on_sink.shape
    mask = jnp.ones((b, t), bool) if query_mask is None else query_mask.astype(bool)
    if exclude_sink_query:
        mask = mask & (jnp.arange(t) != sink)[None]
    return masked_mean(on_sink, mask[:, None, :], axis=(0, 2))


def sink_rate(alpha: jax.Array, eps: float = SINK_EPS) -> jax.Array:
    """Sink^eps (Gu et al. 2025): the fraction of heads whose alpha, the mean attention on the sink key over
    the queries that see it (`sink_attention`), exceeds eps. alpha: [..., heads] -> [...]."""
    return jnp.mean((alpha > eps).astype(jnp.float32), axis=-1)


def excess_kurtosis(x: jax.Array, axis: int = -1) -> jax.Array:
    """Excess kurtosis E[(x - mean)^4] / var^2 - 3 along `axis` (the features of each position): 0 for
    Gaussian features, large when a few features dominate; a constant vector gives 0. x [batch, seq, d] ->
    [batch, seq]."""
    x = x.astype(jnp.float32)
    c = x - jnp.mean(x, axis=axis, keepdims=True)
    m2 = jnp.mean(c * c, axis=axis)
    m4 = jnp.mean(c**4, axis=axis)
    return jnp.where(m2 > 0, m4 / jnp.where(m2 > 0, m2 * m2, 1.0) - 3.0, 0.0)


def logit_gap_per_query(logits: jax.Array, *, sink: int = 0) -> tuple[jax.Array, jax.Array]:
    """Per query i: the logit on the sink minus the mean of its logits on keys sink+1..i-1.

    logits: [batch, heads, q_seq, k_seq] (pre-softmax, causal). Returns (gap [batch, heads, q_seq],
    defined [q_seq]: False for queries with no such key)."""
    t, s = logits.shape[-2:]
    i = jnp.arange(t)[:, None]
    j = jnp.arange(s)[None, :]
    others = (j > sink) & (j < i)  # keys strictly between the sink and the query
    n_other = others.sum(-1)
    mean_other = jnp.sum(jnp.where(others, logits, 0.0), -1) / jnp.maximum(n_other, 1)
    return logits[..., sink] - mean_other, n_other > 0


def sink_logit_gap(logits: jax.Array, query_mask: jax.Array | None = None, *, sink: int = 0) -> jax.Array:
    """Δlogit(., <s>), pooled: `logit_gap_per_query` averaged over the selected queries (each query
    weighs the same, so frequent token types dominate). Queries with no other key are skipped.

    logits: [batch, heads, q_seq, k_seq]. Returns [heads]."""
    b, h, t, s = logits.shape
    gap, defined = logit_gap_per_query(logits, sink=sink)
    mask = jnp.ones((b, t), bool) if query_mask is None else query_mask.astype(bool)
    mask = mask & defined[None]
    return masked_mean(gap, mask[:, None, :], axis=(0, 2))


def attention_received(pattern: jax.Array, *, causal: bool = True) -> jax.Array:
    """Attention received by each key j: its weight averaged over the queries that can see it (i >= j
    for a causal pattern; every query otherwise).

    pattern: [batch, heads, q_seq, k_seq], or the capture reduction `@qmean` [batch, heads, k_seq] (the
    mean over all q_seq = k_seq queries, zeros of the masked ones included). Returns [batch, heads, k_seq]."""
    qmean = jnp.mean(pattern.astype(jnp.float32), axis=-2) if pattern.ndim == 4 else pattern
    if not causal:
        return qmean
    t = qmean.shape[-1]
    seen_by = (t - jnp.arange(t)).astype(jnp.float32)  # queries that can see key j
    return qmean * t / seen_by


def type_mean(values: jax.Array, types: jax.Array, mask: jax.Array, n_types: int) -> jax.Array:
    """The paper's per-token-type average: each type's mean over its selected positions first, then the
    unweighted mean over the types present (SPEC §3; the reference's "mean60").

    values: [batch, heads, seq]; types: [batch, seq] int (ids >= n_types are never counted, e.g. BOS);
    mask: [batch, seq] bool. Returns [heads] (0 where no position is selected)."""
    onehot = jax.nn.one_hot(types, n_types, dtype=jnp.float32) * mask[..., None].astype(jnp.float32)
    count = onehot.sum((0, 1))  # [n_types]
    per_type = jnp.einsum("bht,btn->hn", values.astype(jnp.float32), onehot) / jnp.maximum(count, 1.0)
    present = (count > 0).astype(jnp.float32)
    return jnp.sum(per_type * present, -1) / jnp.maximum(present.sum(), 1.0)


def value_drain(v_out_norm: jax.Array, *, sink: int = 0, valid: jax.Array | None = None):
    """||Val<s>||: norm of W_O^h v at the sink vs the mean over the other positions.

    v_out_norm: [batch, seq, heads] (capture `blocks.{l}.attn.v_out@norm`).
    valid: optional [batch, seq] mask of real (non-padding) positions. Returns (sink [heads], others [heads]).
    """
    b, t, h = v_out_norm.shape
    m = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
    at_sink = masked_mean(v_out_norm[:, sink, :], m[:, sink, None], axis=0)
    other = m & (jnp.arange(t) != sink)[None]
    return at_sink, masked_mean(v_out_norm, other[..., None], axis=(0, 1))


def residual_peak(resid_norm: jax.Array, *, sink: int = 0, valid: jax.Array | None = None):
    """||Res<s>||: residual-stream norm at the sink, the mean over other positions, and the excess
    ("massive norm" = sink minus others). resid_norm: [batch, seq]. Returns three scalars."""
    b, t = resid_norm.shape
    m = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
    at_sink = masked_mean(resid_norm[:, sink], m[:, sink], axis=0)
    others = masked_mean(resid_norm, m & (jnp.arange(t) != sink)[None], axis=(0, 1))
    return at_sink, others, at_sink - others


def activation_profile(x: jax.Array, k: int = 3) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per sample, over all positions and dims of x [batch, seq, d]: the top-k |activation| [batch, k],
    their flat indices (position * d + dim) [batch, k] and the median |activation| [batch]."""
    a = jnp.abs(x).reshape(x.shape[0], -1)
    top, idx = jax.lax.top_k(a, k)
    return top, idx, jnp.median(a, axis=-1)


def is_massive(value, median, *, abs_min: float = MASSIVE_ABS, ratio: float = MASSIVE_RATIO):
    """Massive: |activation| `value` above `abs_min` and above `ratio` times the `median` |activation| of
    its sample and layer (broadcast against value). Plain comparisons, for numpy and jax arrays alike: an
    entry's mask in a compiled function, or a layer's rule on its mean top-1 and mean median."""
    return (value > abs_min) & (value > ratio * median)


def massive_threshold(median: float, *, abs_min: float = MASSIVE_ABS, ratio: float = MASSIVE_RATIO) -> float:
    """The |activation| above which an entry is massive (`is_massive`) given its median: max(abs_min, ratio * median)."""
    return float(max(abs_min, ratio * median))


def excess_risk(nll: jax.Array, oracle_nll: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean model cross-entropy minus mean oracle cross-entropy over the masked positions."""
    return masked_mean(nll - oracle_nll, mask, axis=None)


def expected_cross_entropy(logits: jax.Array, probs: jax.Array) -> jax.Array:
    """Cross-entropy of the model against a target distribution per position, sum_v p(v) (-log q(v)).
    logits [batch, seq, vocab], probs [batch, seq, vocab] -> [batch, seq]."""
    logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.where(probs > 0, probs * logq, 0.0), axis=-1)


def entropy(probs: jax.Array) -> jax.Array:
    """Entropy of each distribution over the last axis, in nats ([..., vocab] -> [...])."""
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


def backcopy_risk(nll: jax.Array, oracle_nll: jax.Array, trigger_mask: jax.Array) -> jax.Array:
    """Excess risk on positions whose input is a trigger (the next token is a back-copy)."""
    return excess_risk(nll, oracle_nll, trigger_mask)


def bigram_risk(nll: jax.Array, oracle_nll: jax.Array, trigger_mask: jax.Array) -> jax.Array:
    """Excess risk on non-trigger positions (the next token follows the bigram table)."""
    return excess_risk(nll, oracle_nll, ~trigger_mask)


def classify_dormant(bos_attention: jax.Array, threshold: float = DORMANT_THRESHOLD) -> jax.Array:
    """Active/dormant: True (dormant) where the attention on the sink is >= threshold."""
    return bos_attention >= threshold


# ---- the emergence metrics of a pretraining run (Gu et al. 2025; He et al. 2024) ------------------------
def ratio_to_others_median(x: jax.Array, *, sink: int = 0) -> jax.Array:
    """The sink's value over the median value of the other positions: x [batch, seq] or [batch, seq, heads]
    (norms: `attn.v_out@norm`, `resid_post@norm`) -> the mean over the batch of x[:, sink] divided by the
    median over the batch and the other positions; a scalar, or [heads]. A median, not a mean: a few
    other extreme tokens do not hide the sink's excess."""
    others = jnp.delete(x, sink, axis=1, assume_unique_indices=True)
    med = jnp.median(others.reshape((-1,) + x.shape[2:]), axis=0)
    return jnp.mean(x[:, sink], axis=0) / jnp.maximum(med, jnp.finfo(jnp.float32).tiny)
