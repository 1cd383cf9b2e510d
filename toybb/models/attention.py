"""The one attention core of toybb, shared by the toy models and the pretrained LLMs.

Inputs are per-head projections; the core handles grouped-query layouts, causal and sliding-window
masks from explicit positions, softmax and ReLU attention (SPEC §2), logit soft-capping, an additive
bias and an optional learned sink. Position schemes that rotate q/k (RoPE) are applied before the
core; schemes that act on logits (ALiBi) enter as `bias`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("softmax", "relu")


class AttentionResult(NamedTuple):
    out: jax.Array  # [batch, q_seq, heads, head_dim]  attention-weighted values (z)
    logits: jax.Array  # [batch, heads, q_seq, k_seq]  pre-softmax scores (after scale, soft-cap, bias)
    pattern: jax.Array  # [batch, heads, q_seq, k_seq]  attention weights (0 on masked keys)


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None = None) -> jax.Array:
    """Boolean mask [..., q_seq, k_seq]: key j visible from query i iff k_pos_j <= q_pos_i
    (and q_pos_i - k_pos_j < window for sliding-window attention)."""
    qp, kp = q_pos[..., :, None], k_pos[..., None, :]
    m = kp <= qp
    if window is not None:
        m = m & (qp - kp < window)
    return m


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kind: str = "softmax",
    q_pos: jax.Array | None = None,
    k_pos: jax.Array | None = None,
    mask: jax.Array | None = None,
    window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    bias: jax.Array | None = None,
) -> AttentionResult:
    """Multi-head / grouped-query attention.

    q: [batch, q_seq, heads, head_dim]; k, v: [batch, k_seq, kv_heads, head_dim], heads % kv_heads == 0.
    q_pos: [q_seq] or [batch, q_seq] absolute positions (default arange); k_pos likewise.
    mask: optional extra boolean mask broadcastable to [batch, heads, q_seq, k_seq] (True = visible),
      combined with the causal(/window) mask from positions.
    bias: optional additive logits, broadcastable to [batch, heads, q_seq, k_seq] (e.g. ALiBi).
    kind: "softmax", or "relu": A_ij = ReLU(s_ij) / (q_pos_i + 1) on visible keys (no normalisation).
    """
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
    b, tq, h, dh = q.shape
    tk, hk = k.shape[1], k.shape[2]
    if h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    g = h // hk
    if q_pos is None:
        q_pos = jnp.arange(tq) + (tk - tq)
    if k_pos is None:
        k_pos = jnp.arange(tk)
    scale = dh**-0.5 if scale is None else scale

    qg = q.reshape(b, tq, hk, g, dh)
    # [b, hk, g, tq, tk] -> [b, h, tq, tk]; head index = kv_head * g + group (the usual GQA order)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k).reshape(b, h, tq, tk) * scale
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    if bias is not None:
        logits = logits + bias

    vis = causal_mask(q_pos, k_pos, window)
    vis = vis[:, None] if vis.ndim == 3 else vis[None, None]
    if mask is not None:
        vis = vis & mask
    if kind == "softmax":
        masked = jnp.where(vis, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        pattern = jax.nn.softmax(masked, axis=-1)
        pattern = jnp.where(vis, pattern, 0.0)  # rows with no visible key stay 0, not uniform
    else:
        qp = q_pos if q_pos.ndim == 2 else q_pos[None]
        denom = (qp + 1).astype(jnp.float32)[:, None, :, None]
        pattern = jnp.where(vis, jax.nn.relu(logits.astype(jnp.float32)), 0.0) / denom
    pattern = pattern.astype(v.dtype)
    pg = pattern.reshape(b, hk, g, tq, tk)
    out = jnp.einsum("bkgqs,bskd->bqkgd", pg, v).reshape(b, tq, h, dh)
    return AttentionResult(out, logits, pattern)
