"""The one attention layer of toybb (`Attention`, configured by an `AttentionSpec`), shared by the toy
models and every pretrained family, and its core (`attention`).

The layer projects q/k/v, applies biases, clipping, q/k norm and the position scheme of its frozen
`PositionConfig` (RoPE, ALiBi, sliding window, SelfExtend, sink cache, blocked attention), optional
learned sink key/value (`learned_kv`), passes every site through a `Tap` (capture and interventions,
`toybb.models.sites`) and projects the heads back.

The core:

Inputs are per-head projections; the core handles grouped-query layouts, causal and sliding-window
masks from explicit positions, softmax and ReLU attention (SPEC §2), logit soft-capping, an additive
bias and an optional learned sink. Position schemes that rotate q/k (RoPE) are applied before the
core; schemes that act on logits (ALiBi) enter as `bias` or, blockable, as `alibi` slopes.
Long-context schemes (SPEC §6) are options too: a second "far" (q, k) pair whose logits replace the
normal ones where q_pos - k_pos >= near (SelfExtend's grouped positions, StreamingLLM's cache
positions for sink tokens), `keep_first` sink keys that stay visible outside a sliding window, and
`block`: the same computation in query blocks (one softmax per query row, so exact) for long inputs.

When the caller needs only the output (`weights=False`: no logits, pattern or key columns captured) and
the options are those of plain causal softmax attention (at most a sliding window, default positions, no
bias, soft-cap, far logits or sinks), the core can call `jax.nn.dot_product_attention` instead: cuDNN
flash attention on NVIDIA GPUs for 16-bit inputs, XLA's fused attention elsewhere. Whether it does by
default is one backend decision (`toybb.device.fast_attention`: on accelerators, not on the CPU);
`fast=True` forces it (tests compare both paths on the CPU). Where it does not, the same plain case with
`contiguous` set and `block` set (pretrained models with `attn_block`), or on the CPU with at least
`AUTO_BLOCK_FROM` query rows and no `block` (then `auto_block`), takes `_plain_blocked`: key chunks with a
running softmax, as flash attention computes it (and the `key_cols` weights from each row's final max and
sum); `fast=False` keeps the exact path (benchmarks/README.md, issue 29).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb import device
from toybb.models.config import ATTENTION_KINDS as KINDS, ATTENTION_GATES as GATES, ATTENTION_SINKS as SINKS
from toybb.models.capture import NO_TAP, Tap
from toybb.models.layers import Norm, fetch, matmul, param, pv
from toybb.models.positional import PositionConfig, attention_options, rotate
from toybb.models.sites import RESID



class AttentionResult(NamedTuple):
    out: jax.Array  # [batch, q_seq, heads, head_dim]  attention-weighted values (z)
    logits: jax.Array  # [batch, heads, q_seq, k_seq]  pre-softmax scores (after scale, soft-cap, bias)
    pattern: jax.Array  # [batch, heads, q_seq, k_seq]  attention weights (0 on masked keys)
    key_cols: jax.Array | None = None  # [batch, heads, q_seq, len(key_cols)]  pattern[..., key_cols]


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
    sink_logits: jax.Array | None = None,
    clip: tuple[float, float] | None = None,
    sigmoid_bias: float = 0.0,
    far: tuple[jax.Array, jax.Array] | None = None,
    near: int | None = None,
    keep_first: int | None = None,
    alibi: jax.Array | None = None,
    block: int | None = None,
    contiguous: bool = False,
    key_cols: tuple[int, ...] = (),
    weights: bool = True,
    fast: bool | None = None,
    edit_logits=None,
    edit_pattern=None,
) -> AttentionResult:
    """Multi-head / grouped-query attention.

    q: [batch, q_seq, heads, head_dim]; k, v: [batch, k_seq, kv_heads, head_dim], heads % kv_heads == 0.
    q_pos: [q_seq] or [batch, q_seq] absolute positions (default arange); k_pos likewise.
    mask: optional extra boolean mask broadcastable to [batch, heads, q_seq, k_seq] (True = visible),
      combined with the causal(/window) mask from positions.
    bias: optional additive logits, broadcastable to [batch, heads, q_seq, k_seq] (e.g. ALiBi).
    kind: one of ATTENTION_KINDS, over the visible keys j of query i with logits s_ij:
      "softmax"; "relu": A_ij = ReLU(s_ij) / (q_pos_i + 1) (the paper's, SPEC §2); "sigmoid":
      A_ij = sigmoid(s_ij + sigmoid_bias), no normalisation; "sigmoid_norm": the same divided by its row sum;
      "softpick": A_ij = ReLU(e^s_ij - 1) / (sum_j |e^s_ij - 1| + 1e-6) (Zuhri et al. 2025).
    sink_logits: [heads] logits of one extra key of value 0 seen by every query, softmax only: zeros give
      softmax plus a zero logit ("off by one"), learned ones gpt-oss' `sinks`. Rows then sum to below one.
    clip: (gamma, zeta), softmax only: clipped softmax clip((zeta - gamma) A + gamma, 0, 1) (Bondarenko et
      al. 2023); (0, 1) is softmax.
    far: (q_far [batch, q_seq, heads, head_dim], k_far [batch, k_seq, kv_heads, head_dim]), e.g. q/k
      rotated at other positions; their logits replace the normal ones where q_pos - k_pos >= near
      (one softmax over the merged logit matrix). Needs `near`.
    keep_first: keys with k_pos < keep_first stay visible outside the sliding window (attention sinks).
    alibi: slopes [heads]; adds -slope_h * (q_pos_i - k_pos_j) to the logits (ALiBi).
    block: compute in blocks of `block` query rows (lax.map), so only [batch, heads, block, k_seq]
      logits exist at a time. Exact (same rows, same softmax); the result then carries
      logits = pattern = None. `mask` and `bias` must then broadcast over query rows (size 1 there).
    contiguous: the caller guarantees key index j has position j and query index i position
      i + k_seq - q_seq (the default positions). Blocked attention then gives each query block only
      the keys it can see (causal, window, first `keep_first`): about half the work for causal
      attention, much less with a window. Blocks are then unrolled (one shape per block).
    key_cols: key indices whose attention weights are also returned as `key_cols`
      [batch, heads, q_seq, len(key_cols)], blocked or not (`@key0`-style capture without ever holding a
      full [q_seq, k_seq] pattern when `block` is set).
    weights: the caller uses `logits`/`pattern`; with False they may come back None and the core may use
      `jax.nn.dot_product_attention` (module docstring). fast: None lets `toybb.device.fast_attention()`
      decide (options the fast kernel cannot compute take the exact path); True forces it (such options are
      an error); False never.
    edit_logits / edit_pattern: functions applied to the full logits (after scale, soft-cap and bias,
      before masking) / pattern (after masking), before the pattern weighs the values (interventions);
      they need the dense path (no `block`).
    """
    if edit_logits is not None or edit_pattern is not None:
        block, weights, fast = None, True, False
    if far is not None and near is None:
        raise ValueError("attention: `far` logits need `near` (the relative distance where they start)")
    tq = q.shape[1]
    if block is not None and block < 1:
        raise ValueError(f"attention block must be a positive number of query rows, got {block}")
    plain_blocks = False
    if fast is not False and not weights:
        plain = _fast_blocker(q, k, kind=kind, q_pos=q_pos, k_pos=k_pos, mask=mask, softcap=softcap, bias=bias,
                              far=far, keep_first=keep_first, alibi=alibi, contiguous=contiguous,
                              sink_logits=sink_logits, clip=clip)
        why = plain or ("key_cols are requested" if key_cols else None)
        if fast and why:
            raise ValueError(f"attention: fast=True but {why}; use fast=None to fall back to the exact path")
        if why is None and (fast or device.fast_attention()):
            res = _fast_result(q, k, v, window=window, scale=scale, block=block, forced=bool(fast))
            if res is not None:
                return res
        if plain is None and contiguous and block is None and tq >= AUTO_BLOCK_FROM and device.cpu_heuristics():
            block = auto_block(tq)  # long plain inputs on the CPU: flash-style blocks beat the dense path
        plain_blocks = plain is None and contiguous and block is not None and tq > block
    elif fast and weights:
        raise ValueError("attention: fast=True needs weights=False (the fast path returns no logits or pattern)")
    if plain_blocks:
        return _plain_blocked(q, k, v, scale=scale, window=window, block=block, key_cols=key_cols)
    if block is not None and tq > block:
        kw = dict(kind=kind, q_pos=q_pos, k_pos=k_pos, mask=mask, window=window, scale=scale, softcap=softcap,
                  bias=bias, far=far, near=near, keep_first=keep_first, alibi=alibi, block=block, key_cols=key_cols,
                  sink_logits=sink_logits, clip=clip, sigmoid_bias=sigmoid_bias)
        return _blocked_contiguous(q, k, v, **kw) if contiguous else _blocked(q, k, v, **kw)
    res = _dense(q, k, v, kind=kind, q_pos=q_pos, k_pos=k_pos, mask=mask, window=window, scale=scale,
                 softcap=softcap, bias=bias, far=far, near=near, keep_first=keep_first, alibi=alibi,
                 sink_logits=sink_logits, clip=clip, sigmoid_bias=sigmoid_bias,
                 edit_logits=edit_logits, edit_pattern=edit_pattern)
    return res._replace(key_cols=_cols(res.pattern, key_cols, np.arange(k.shape[1])))


AUTO_BLOCK_FROM = 512  # plain attention over this many query rows or more is blocked on the CPU ...


def auto_block(rows: int) -> int:
    """... in blocks of this many query rows (the fastest forward and gradient on a 2-core CPU for
    SmolLM2's heads, benchmarks/README.md, issue 29)."""
    return 128 if rows < 4096 else 256


def _fast_result(q, k, v, *, window, scale, block, forced: bool) -> AttentionResult | None:
    """The fast path's result, or None where blocking should bound memory and the fast kernel would not
    (XLA's attention holds [q_seq, k_seq]; cuDNN's does not)."""
    impl, dt = device.fast_attention_impl(q.dtype), q.dtype
    if impl == "xla" and device.backend() == "gpu" and device.matmul_precision() == "bfloat16":
        impl = device.fast_attention_impl(jnp.bfloat16)  # bf16 runs: cuDNN on 16-bit copies
    if forced or block is None or q.shape[1] <= block or impl == "cudnn":
        return AttentionResult(_fast(q, k, v, window=window, scale=scale, impl=impl).astype(dt), None, None)
    return None


def _fast_blocker(q, k, *, kind, q_pos, k_pos, mask, softcap, bias, far, keep_first, alibi, contiguous,
                  sink_logits=None, clip=None) -> str | None:
    """Why this attention is not plain causal (sliding-window) softmax attention at default positions, which
    `jax.nn.dot_product_attention` and `_plain_blocked` compute (None: it is)."""
    if kind != "softmax":
        return f"kind={kind!r} (only softmax)"
    for name, val in (("mask", mask), ("bias", bias), ("alibi", alibi), ("softcap", softcap), ("far", far),
                      ("keep_first", keep_first), ("sink_logits", sink_logits), ("clip", clip)):
        if val is not None:
            return f"{name} is set"
    if q.shape[1] != k.shape[1]:
        return "q_seq != k_seq"
    if not contiguous and (q_pos is not None or k_pos is not None):
        return "explicit positions are given without contiguous=True"
    return None


def _fast(q, k, v, *, window, scale, impl) -> jax.Array:
    """Causal (sliding-window) softmax attention by `jax.nn.dot_product_attention`: [batch, seq, heads,
    head_dim]. Same GQA head order as `_dense` (head = kv_head * group_size + group)."""
    lw = None if window is None else (window - 1, 0)  # keys i - window + 1 .. i, as causal_mask
    if impl == "cudnn":
        dt = jnp.bfloat16 if q.dtype == jnp.float32 else q.dtype
        try:
            return jax.nn.dot_product_attention(q.astype(dt), k.astype(dt), v.astype(dt), scale=scale,
                                                is_causal=True, local_window_size=lw, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError):  # a shape or version cuDNN does not take
            pass
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, local_window_size=lw,
                                        implementation="xla")


def _plain_blocked(q, k, v, *, scale, window, block, key_cols=()) -> AttentionResult:
    """Causal (sliding-window) softmax attention at default positions, computed as flash attention does:
    query blocks of `block` rows, each visiting only its visible key chunks of 2 * `block` keys (the chunk
    holding its own rows, masked, then a loop over the earlier visible ones) with a running max, sum and
    output, so every intermediate stays [block * group, 2 * block] per kv head (cache-sized) and the division
    happens once per output row. Logits are [rows, keys] with keys on the minor axis (no [q, k]-sized
    transpose). The weights of `key_cols` come from their logits and each row's final max and sum.
    Each block loops over exactly its visible chunks (a loop of traced length); the gradient is flash
    attention's backward pass over the same tiles (`_flash`: reverse mode only, no `jax.jvp` through it).
    q [batch, seq, heads, head_dim], k/v [batch, seq, kv_heads, head_dim] -> out [batch, seq, heads, head_dim]
    (and key_cols [batch, heads, seq, len(key_cols)])."""
    b, t, h, dh = q.shape
    hk = k.shape[2]
    g = h // hk
    scale = dh**-0.5 if scale is None else float(scale)
    qt = q.reshape(b, t, hk, g, dh).transpose(0, 2, 1, 3, 4)  # [b, hk, t, g, dh]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, hk, t, dh]
    if math.frexp(scale)[0] == 0.5:  # a power of two (head_dim 64, 256): scaling q is exact and saves a pass
        qt, scale = qt * jnp.asarray(scale, qt.dtype), 1.0
    span = _span(block)
    tp = -(-t // span) * span  # the sequence padded to whole chunks
    if tp != t:  # padded keys sit after every real query, so no real row sees them
        pad = [(0, 0), (0, 0), (0, tp - t)]
        qt = jnp.pad(qt, pad + [(0, 0), (0, 0)])
        kt, vt = jnp.pad(kt, pad + [(0, 0)]), jnp.pad(vt, pad + [(0, 0)])
    o, mx, sm = _flash(qt, kt, vt, scale, window, block)

    def rows(a):  # [nb, b, hk, block, ...] -> [b, hk, t, ...]
        a = jnp.moveaxis(a, 0, 2)
        return a.reshape(a.shape[:2] + (tp,) + a.shape[4:])[:, :, :t]

    out = rows(o).transpose(0, 2, 1, 3, 4).reshape(b, t, h, dh)
    if not key_cols:
        return AttentionResult(out, None, None)
    idx = np.asarray([c for c in key_cols if c < t], np.int64)
    if not len(idx):
        return AttentionResult(out, None, None, jnp.zeros((b, h, t, len(key_cols)), v.dtype))
    x = _block_logits(qt[:, :, :t], kt[:, :, idx], scale)  # [b, hk, t, g, n]
    shape = x.shape[2:]
    vis = _visible(jax.lax.broadcasted_iota(jnp.int32, shape, 0), jnp.asarray(idx, jnp.int32), window)
    w = jnp.where(vis, jnp.exp(x - rows(mx)) / rows(sm), 0.0)
    w = w.transpose(0, 1, 3, 2, 4).reshape(b, h, t, len(idx)).astype(v.dtype)
    return AttentionResult(out, None, None, _cols(w, key_cols, idx))


def _visible(qp, kp, window):
    return kp <= qp if window is None else (kp <= qp) & (qp - kp < window)


def _block_logits(qb, kc, scale):  # [b, hk, n, g, dh] x [b, hk, m, dh] -> [b, hk, n, g, m] float32
    x = jnp.einsum("bkqgd,bksd->bkqgs", qb, kc).astype(jnp.float32)
    return x if scale == 1.0 else x * scale


def _chunk_mask(s, lo, shape, window):
    """Visibility of keys lo.. to queries s.. over a [rows, group, keys] tile."""
    return _visible(s + jax.lax.broadcasted_iota(jnp.int32, shape, 0),
                    lo + jax.lax.broadcasted_iota(jnp.int32, shape, 2), window)


def _span(block: int) -> int:
    """Keys per key chunk of `_plain_blocked` for query blocks of `block` rows."""
    return 2 * block


def _visible_chunks(s, block, window):
    """The key chunks (of `_span(block)` keys) that query block s.. sees: the earlier ones first..own - 1 (in
    a loop of traced length), then its own (masked)."""
    span = _span(block)
    return (0 if window is None else jnp.maximum(0, s - window + 1) // span), s // span


def _flash_forward(qt, kt, vt, scale, window, block):
    """`_plain_blocked`'s loop on padded [b, hk, seq, (g,) dh] inputs: per query block of `block` rows, its
    output (divided by its row sums), row maxima and row sums ([blocks, b, hk, block, g, dh | 1]). Each block
    visits only its visible key chunks."""
    span, tp = _span(block), qt.shape[2]

    def part(qb, s, kc, vc, lo, masked):
        """Queries s.. against keys lo..: (row max, row sum, unnormalised output) [b, hk, n, g, 1 | dh]."""
        x = _block_logits(qb, kc, scale)
        if masked:
            vis = _chunk_mask(s, lo, x.shape[2:], window)
            x = jnp.where(vis, x, jnp.finfo(jnp.float32).min)
        m = jnp.max(x, axis=-1, keepdims=True)
        e = jnp.exp(x - m)
        if masked:
            e = jnp.where(vis, e, 0.0)  # a row with no visible key in this chunk adds nothing
        return m, jnp.sum(e, axis=-1, keepdims=True), jnp.einsum("bkqgs,bksd->bkqgd", e.astype(vt.dtype), vc)

    def query_block(_, i):
        s = i * block
        qb = jax.lax.dynamic_slice_in_dim(qt, s, block, axis=2)
        first, own = _visible_chunks(s, block, window)
        kc, vc = (jax.lax.dynamic_slice_in_dim(a, own * span, span, axis=2) for a in (kt, vt))
        acc = part(qb, s, kc, vc, own * span, True)

        def step(c, acc):
            lo = c * span
            kc, vc = (jax.lax.dynamic_slice_in_dim(a, lo, span, axis=2) for a in (kt, vt))
            m2, l2, o2 = part(qb, s, kc, vc, lo, window is not None)
            m1, l1, o1 = acc
            m = jnp.maximum(m1, m2)
            a1, a2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
            return m, l1 * a1 + l2 * a2, o1 * a1.astype(o1.dtype) + o2 * a2.astype(o2.dtype)

        m, l, o = jax.lax.fori_loop(first, own, step, acc)
        return None, (o / l.astype(o.dtype), m, l)

    # one program for every query block (a scan, not an unrolled loop: compile time does not grow with seq)
    return jax.lax.scan(query_block, None, jnp.arange(tp // block))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash(qt, kt, vt, scale, window, block):
    """(output, row max, row sum) of `_flash_forward`, with flash attention's backward pass: the weights of
    each (query block, key chunk) tile are recomputed from the saved row max and sum, so the gradient also
    holds no more than a tile at a time. The row max carries no gradient (the result does not depend on it)."""
    return _flash_forward(qt, kt, vt, scale, window, block)


def _flash_fwd(qt, kt, vt, scale, window, block):
    out = _flash_forward(qt, kt, vt, scale, window, block)
    return out, (qt, kt, vt) + out


def _flash_bwd(scale, window, block, res, ct):
    qt, kt, vt, o, mx, sm = res
    do, _, dsm = ct  # the row maxima have no gradient
    span = _span(block)
    f32 = jnp.float32
    do = do.astype(f32)
    # d logit_j = p_j (do . v_j - do . o) + dsm * e_j, with e_j = p_j * sum: one row term, as in FlashAttention-2
    row = jnp.sum(do * o.astype(f32), axis=-1, keepdims=True) - dsm.astype(f32) * sm

    def query_block(carry, xs):
        dk, dv = carry
        i, dob, rb, mb, smb = xs
        s = i * block
        qb = jax.lax.dynamic_slice_in_dim(qt, s, block, axis=2)
        first, own = _visible_chunks(s, block, window)

        def chunk(c, acc, masked):
            dq, dk, dv = acc
            lo = c * span
            kc, vc = (jax.lax.dynamic_slice_in_dim(a, lo, span, axis=2) for a in (kt, vt))
            p = jnp.exp(_block_logits(qb, kc, scale) - mb) / smb
            if masked:
                p = jnp.where(_chunk_mask(s, lo, p.shape[2:], window), p, 0.0)
            ds = p * (jnp.einsum("bkqgd,bksd->bkqgs", dob, vc.astype(f32)) - rb) * scale
            dq = dq + jnp.einsum("bkqgs,bksd->bkqgd", ds, kc.astype(f32))
            grads = (jnp.einsum("bkqgs,bkqgd->bksd", ds, qb.astype(f32)), jnp.einsum("bkqgs,bkqgd->bksd", p, dob))
            dk, dv = (jax.lax.dynamic_update_slice_in_dim(a, jax.lax.dynamic_slice_in_dim(a, lo, span, 2) + d, lo, 2)
                      for a, d in zip((dk, dv), grads))
            return dq, dk, dv

        acc = chunk(own, (jnp.zeros(qb.shape, f32), dk, dv), True)
        dq, dk, dv = jax.lax.fori_loop(first, own, lambda c, acc: chunk(c, acc, window is not None), acc)
        return (dk, dv), dq

    zeros = (jnp.zeros(kt.shape, f32), jnp.zeros(vt.shape, f32))
    (dk, dv), dq = jax.lax.scan(query_block, zeros, (jnp.arange(qt.shape[2] // block), do, row, mx, sm))
    dq = jnp.moveaxis(dq, 0, 2).reshape(qt.shape)
    return dq.astype(qt.dtype), dk.astype(kt.dtype), dv.astype(vt.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _cols(pattern: jax.Array, key_cols: tuple[int, ...], idx: np.ndarray) -> jax.Array | None:
    """pattern[..., key_cols] of a pattern whose key axis holds the keys `idx` (0 for a key not there)."""
    if not key_cols:
        return None
    where = {int(j): i for i, j in enumerate(idx)}
    z = jnp.zeros(pattern.shape[:-1], pattern.dtype)
    return jnp.stack([pattern[..., where[c]] if c in where else z for c in key_cols], axis=-1)


def _blocked(q, k, v, *, q_pos, k_pos, block, mask, bias, far, key_cols, **kw) -> AttentionResult:
    b, tq = q.shape[:2]
    tk = k.shape[1]
    for name, a in (("mask", mask), ("bias", bias)):
        if a is not None and a.ndim >= 2 and a.shape[-2] != 1:
            raise ValueError(f"blocked attention: {name} must broadcast over query rows (shape[-2] == 1)")
    if q_pos is None:
        q_pos = jnp.arange(tq) + (tk - tq)
    if k_pos is None:
        k_pos = jnp.arange(tk)
    nb = -(-tq // block)
    pad = nb * block - tq

    def rows(x, axis):  # [.., tq, ..] -> [nb, .., block, ..] (padded rows repeat the last one)
        if pad:
            x = jnp.concatenate([x, jnp.repeat(jax.lax.slice_in_dim(x, tq - 1, tq, axis=axis), pad, axis)], axis)
        x = x.reshape(x.shape[:axis] + (nb, block) + x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    xs = (rows(q, 1), rows(q_pos, q_pos.ndim - 1), rows(far[0], 1) if far is not None else None)

    def one(args):
        qb, pb, qfb = args
        fb = None if far is None else (qfb, far[1])
        r = _dense(qb, k, v, q_pos=pb, k_pos=k_pos, mask=mask, bias=bias, far=fb, **kw)
        return r.out, _cols(r.pattern, key_cols, np.arange(tk))

    out, cols = jax.lax.map(one, xs)  # [nb, b, block, h, dh], [nb, b, h, block, c]
    out = jnp.moveaxis(out, 0, 1).reshape(b, nb * block, *out.shape[3:])[:, :tq]
    if cols is not None:
        cols = jnp.moveaxis(cols, 0, 2).reshape(b, cols.shape[2], nb * block, -1)[:, :, :tq]
    return AttentionResult(out, None, None, cols)


def _blocked_contiguous(q, k, v, *, q_pos, k_pos, block, mask, bias, far, window, keep_first, key_cols, **kw):
    tq, tk = q.shape[1], k.shape[1]
    for name, a in (("mask", mask), ("bias", bias)):
        if a is not None and a.ndim >= 2 and (a.shape[-2] != 1 or a.shape[-1] != 1):
            raise ValueError(f"contiguous blocked attention: {name} must broadcast over query and key axes")
    off = tk - tq
    q_pos = jnp.arange(tq) + off if q_pos is None else q_pos
    k_pos = jnp.arange(tk) if k_pos is None else k_pos
    outs, cols = [], []
    for s in range(0, tq, block):
        e = min(s + block, tq)
        hi = e + off  # keys [lo, hi) (+ the first keep_first ones) are all this block can see
        lo = 0 if window is None else max(0, s + off - window + 1)
        idx = np.arange(lo, hi)
        if keep_first and lo > 0:
            idx = np.concatenate([np.arange(min(keep_first, lo)), idx])
        take = (lambda a: a[:, lo:hi]) if idx[0] == lo else (lambda a: jnp.take(a, jnp.asarray(idx), axis=1))
        kp = k_pos[..., lo:hi] if idx[0] == lo else jnp.take(k_pos, jnp.asarray(idx), axis=-1)
        fb = None if far is None else (far[0][:, s:e], take(far[1]))
        r = _dense(q[:, s:e], take(k), take(v), q_pos=q_pos[..., s:e], k_pos=kp, mask=mask, bias=bias,
                   far=fb, window=window, keep_first=keep_first, **kw)
        outs.append(r.out)
        cols.append(_cols(r.pattern, key_cols, idx))
    cols = jnp.concatenate(cols, axis=2) if key_cols else None
    return AttentionResult(jnp.concatenate(outs, axis=1), None, None, cols)


def _dense(
    q, k, v, *, kind, q_pos, k_pos, mask, window, scale, softcap, bias, far, near, keep_first, alibi,
    sink_logits=None, clip=None, sigmoid_bias=0.0, edit_logits=None, edit_pattern=None,
) -> AttentionResult:
    """The attention of `attention` on all query rows at once."""
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
    rel = q_pos[..., :, None] - k_pos[..., None, :]  # [tq, tk] or [b, tq, tk]
    rel4 = rel[:, None] if rel.ndim == 3 else rel[None, None]
    if far is not None:
        qf = far[0].reshape(b, tq, hk, g, dh)
        lf = jnp.einsum("bqkgd,bskd->bkgqs", qf, far[1]).reshape(b, h, tq, tk) * scale
        logits = jnp.where(rel4 >= near, lf, logits)
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    if bias is not None:
        logits = logits + bias
    if alibi is not None:
        logits = logits - jnp.asarray(alibi, jnp.float32)[:, None, None] * rel4.astype(jnp.float32)
    if edit_logits is not None:
        logits = edit_logits(logits)

    vis = causal_mask(q_pos, k_pos, window)
    if keep_first is not None:
        vis = vis | ((k_pos[..., None, :] < keep_first) & (rel >= 0))
    vis = vis[:, None] if vis.ndim == 3 else vis[None, None]
    if mask is not None:
        vis = vis & mask
    pattern = _weights(kind, logits.astype(jnp.float32), vis, q_pos, sink_logits, clip, sigmoid_bias).astype(v.dtype)
    if edit_pattern is not None:
        pattern = edit_pattern(pattern)
    pg = pattern.reshape(b, hk, g, tq, tk)
    out = jnp.einsum("bkgqs,bskd->bqkgd", pg, v).reshape(b, tq, h, dh)
    return AttentionResult(out, logits, pattern)


def _weights(kind, x, vis, q_pos, sink_logits, clip, sigmoid_bias) -> jax.Array:
    """Attention weights [b, h, q, k] from float32 logits x on the visible keys `vis` (0 elsewhere; a row
    with no visible key is 0)."""
    if kind == "softmax":
        masked = jnp.where(vis, x, jnp.finfo(jnp.float32).min)
        if sink_logits is None:
            w = jax.nn.softmax(masked, axis=-1)
        else:  # one more key of logit s_h and value 0
            s = jnp.asarray(sink_logits, jnp.float32)[None, :, None, None]
            m = jax.lax.stop_gradient(jnp.maximum(jnp.max(masked, axis=-1, keepdims=True), s))
            e = jnp.where(vis, jnp.exp(masked - m), 0.0)
            w = e / (jnp.sum(e, axis=-1, keepdims=True) + jnp.exp(s - m))
        if clip is not None:
            gamma, zeta = clip
            w = jnp.clip((zeta - gamma) * w + gamma, 0.0, 1.0)
    elif kind == "relu":
        qp = q_pos if q_pos.ndim == 2 else q_pos[None]
        w = jax.nn.relu(x) / (qp + 1).astype(jnp.float32)[:, None, :, None]
    elif kind in ("sigmoid", "sigmoid_norm"):
        w = jnp.where(vis, jax.nn.sigmoid(x + sigmoid_bias), 0.0)
        if kind == "sigmoid_norm":
            w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    else:  # softpick, computed as ReLU(e^(x-m) - e^-m) / (sum |e^(x-m) - e^-m| + 1e-6 e^-m), m = max(0, max x)
        masked = jnp.where(vis, x, jnp.finfo(jnp.float32).min)
        m = jax.lax.stop_gradient(jnp.maximum(jnp.max(masked, axis=-1, keepdims=True), 0.0))
        d = jnp.where(vis, jnp.exp(masked - m) - jnp.exp(-m), 0.0)
        w = jax.nn.relu(d) / (jnp.sum(jnp.abs(d), axis=-1, keepdims=True) + SOFTPICK_EPS * jnp.exp(-m))
    return jnp.where(vis, w, 0.0)


SOFTPICK_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------
# The attention layer


@dataclass(frozen=True)
class AttentionSpec:
    """Everything one attention layer needs (shapes, attention kind, positions, family options).

    scale: logit scale (None: head_dim ** -0.5). softcap: tanh soft-cap of the logits. qkv_bias/o_bias:
    projection biases. clip_qkv: clip q, k, v to [-c, c]. qk_norm: "none" | "head" (per head) | "full"
    (across heads), a `Norm` of kind `norm` (eps `norm_eps`, (1 + w) weights if `norm_plus_one`).
    learned_kv: one learned key k' and value v' per kv head, visible to every query (key position -1).
    sink: "none", "zero" (softmax plus a zero logit) or "learned" (a learned sink logit per head, `sinks`
    of gpt-oss); clip: clipped softmax (gamma, zeta); sigmoid_bias: b of sigmoid attention (see
    `attention`). gate: "none", "head" or "element": the attention output of each head (z) multiplied by
    sigmoid(x W_gate) of the layer's input x, one gate per head or per head and feature (Qiu et al. 2025).
    init: "uniform" (the toy reference: U(+-1/sqrt(fan_in))) or "normal"; dtype of the parameters."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    kind: str = "softmax"
    position: PositionConfig = PositionConfig()
    scale: float | None = None
    softcap: float | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    clip_qkv: float | None = None
    qk_norm: str = "none"
    norm: str = "rms"
    norm_eps: float = 1e-6
    norm_plus_one: bool = False
    learned_kv: bool = False
    sink: str = "none"
    clip: tuple[float, float] | None = None
    sigmoid_bias: float = 0.0
    gate: str = "none"
    init: str = "uniform"
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"query heads ({self.n_heads}) must be a multiple of key/value heads ({self.n_kv_heads})")
        if self.sink not in SINKS or self.gate not in GATES:
            raise ValueError(f"attention sink must be one of {SINKS} and gate one of {GATES}")


_KEY_COLS = ("key0", "key1")  # pattern reductions that are single key columns


class Attention(nnx.Module):
    """x [batch, seq, d_model] -> what the attention adds to the residual stream [batch, seq, d_model]."""

    # the sites this layer emits (`toybb.models.sites`): kind -> axes
    SITES = {
        "attn.q_pre": ("batch", "pos", "head", "d_head"),  # queries before any rotary embedding (after q/k norm)
        "attn.k_pre": ("batch", "pos", "kv_head", "d_head"),
        "attn.q": ("batch", "pos", "head", "d_head"),  # as the attention sees them (after RoPE)
        "attn.k": ("batch", "pos", "kv_head", "d_head"),
        "attn.v": ("batch", "pos", "kv_head", "d_head"),
        "attn.logits": ("batch", "head", "pos", "key"),
        "attn.pattern": ("batch", "head", "pos", "key"),
        "attn.z": ("batch", "pos", "head", "d_head"),
        "attn.v_out": ("batch", "pos", "head", "d_model"),
        "attn.out": RESID,  # tapped by the block, after a post-norm
        "attn.pattern_bias": ("batch", "head", "pos"),  # with learned k', v' only
        "attn.pattern_slot": ("batch", "head", "pos"),  # behind a sink slot only
    }
    READ_ONLY = frozenset({"attn.v_out", "attn.pattern_bias", "attn.pattern_slot"})

    def site_kinds(self, slot: bool) -> tuple[str, ...]:
        """The kinds of SITES this layer emits (behind a sink slot: `slot`)."""
        optional = {"attn.pattern_bias": self.spec.learned_kv, "attn.pattern_slot": slot}
        return tuple(k for k in self.SITES if optional.get(k, True))

    def __init__(self, spec: AttentionSpec, layer: int, *, rngs: nnx.Rngs | None = None):
        d, h, hk, dh = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim
        dt = jnp.bfloat16 if spec.dtype == "bfloat16" else jnp.float32
        self.spec, self.layer = spec, layer
        init = spec.init
        self.wq = param((d, h, dh), dt, init, rngs, d)
        self.wk = param((d, hk, dh), dt, init, rngs, d)
        self.wv = param((d, hk, dh), dt, init, rngs, d)
        self.wo = param((h, dh, d), dt, init, rngs, h * dh)
        self.k_bias = param((hk, dh), dt, init, rngs, d) if spec.learned_kv else None
        self.v_bias = param((hk, dh), dt, init, rngs, d) if spec.learned_kv else None
        self.bq = param((h, dh), dt) if spec.qkv_bias else None
        self.bk = param((hk, dh), dt) if spec.qkv_bias else None
        self.bv = param((hk, dh), dt) if spec.qkv_bias else None
        self.bo = param((d,), dt) if spec.o_bias else None
        self.sink_logit = param((h,), jnp.float32) if spec.sink == "learned" else None  # starts at a zero logit
        gate_shape = {"none": None, "head": (d, h), "element": (d, h, dh)}[spec.gate]
        self.w_gate = None if gate_shape is None else param(gate_shape, dt, init, rngs, d)
        if spec.qk_norm == "none":
            self.q_norm = self.k_norm = None
        else:
            full = spec.qk_norm == "full"
            kw = dict(kind=spec.norm, eps=spec.norm_eps, plus_one=spec.norm_plus_one, dtype=dt)
            self.q_norm = Norm(h * dh if full else dh, **kw)
            self.k_norm = Norm(hk * dh if full else dh, **kw)

    def _qk_norm(self, x: jax.Array, norm: Norm) -> jax.Array:
        if self.spec.qk_norm == "full":  # OLMo-2 normalises across all heads at once
            b, t, n, dh = x.shape
            return norm(x.reshape(b, t, n * dh)).reshape(b, t, n, dh)
        return norm(x)

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        spec = self.spec
        x, (wq, wk, wv) = fetch(x, self.wq, self.wk, self.wv)
        q = matmul(x, wq)
        k = matmul(x, wk)
        v = matmul(x, wv)
        if self.bq is not None:
            q, k, v = q + pv(self.bq), k + pv(self.bk), v + pv(self.bv)
        if spec.clip_qkv is not None:
            q, k, v = (jnp.clip(a, -spec.clip_qkv, spec.clip_qkv) for a in (q, k, v))
        if self.q_norm is not None:
            q, k = self._qk_norm(q, self.q_norm), self._qk_norm(k, self.k_norm)
        return q, k, v

    def __call__(self, x: jax.Array, positions: jax.Array, tap: Tap = NO_TAP, *, contiguous: bool = False,
                 slot: bool = False) -> jax.Array:
        """positions: [seq] or [batch, seq]. contiguous: positions are arange(seq) (lets blocked attention
        skip invisible key blocks). slot: position 0 is a learned sink slot, not an input token: sites
        cover the real positions, the attention on the slot is `attn.pattern_slot`."""
        spec, l, pos = self.spec, self.layer, self.spec.position
        real = (slice(None), slice(1, None)) if slot else None  # the real positions of [b, t, ...] sites

        def site(kind, a):
            return tap.part(self, l, kind, a, real) if slot else tap(self, l, kind, a)

        q, k, v = self._project(x)
        q_raw, k_raw, v = site("attn.q_pre", q), site("attn.k_pre", k), site("attn.v", v)
        q, k = site("attn.q", rotate(pos, q_raw, positions)), site("attn.k", rotate(pos, k_raw, positions))
        opts = attention_options(pos, q_raw, k_raw, positions, positions)
        k_pos = positions
        if self.k_bias is not None:  # k' at key position -1: the causal mask makes it visible to every query
            b = x.shape[0]
            k = jnp.concatenate([jnp.broadcast_to(pv(self.k_bias)[None, None], (b, 1) + k.shape[2:]).astype(k.dtype), k], 1)
            v = jnp.concatenate([jnp.broadcast_to(pv(self.v_bias)[None, None], (b, 1) + v.shape[2:]).astype(v.dtype), v], 1)
            k_pos = jnp.concatenate([jnp.full(positions.shape[:-1] + (1,), -1, positions.dtype), positions], -1)
            contiguous = False
        n_kv = 1 if self.k_bias is not None else 0
        extra = n_kv + (1 if slot else 0)  # keys before the first real one: k', then the slot
        idx = (slice(None), slice(None), slice(1 if slot else 0, None), slice(extra, None)) if extra else ()
        res = self._core(q, k, v, positions, k_pos, tap, idx, extra, slot, contiguous, opts)
        z = site("attn.z", res.out)
        if self.w_gate is not None:
            x, (wg,) = fetch(x, self.w_gate)
            g = jax.nn.sigmoid(matmul(x, wg))
            z = z * (g[..., None] if g.ndim == 3 else g).astype(z.dtype)
        z, (wo,) = fetch(z, self.wo)
        out = matmul(z, wo, contract=2)
        if self.bo is not None:
            out = out + pv(self.bo)
        if tap.capture.wants(f"blocks.{l}.attn.v_out"):
            vh = v[:, n_kv:]  # without k'/v'; the slot position is dropped by the site
            g = spec.n_heads // spec.n_kv_heads
            vh = jnp.repeat(vh, g, axis=2) if g > 1 else vh
            site("attn.v_out", jnp.einsum("bthe,hed->bthd", vh, wo))
        return out

    def _core(self, q, k, v, q_pos, k_pos, tap: Tap, idx, extra, slot, contiguous, opts) -> AttentionResult:
        """The core call, with logits / pattern captured (or only their key columns) and edited."""
        spec, l, cap = self.spec, self.layer, tap.capture
        p = f"blocks.{l}.attn"
        pat_reds = cap.requests_for(f"{p}.pattern")
        key_cols = tuple(int(r[3:]) + extra for r in pat_reds if r in _KEY_COLS)
        edit_lg, edit_pat = tap.editor(l, "attn.logits", idx), tap.editor(l, "attn.pattern", idx)
        full = (cap.wants(f"{p}.logits") or any(r not in _KEY_COLS for r in pat_reds)
                or cap.wants(f"{p}.pattern_slot") or cap.wants(f"{p}.pattern_bias"))
        sinks = None if spec.sink == "none" else (
            jnp.zeros((spec.n_heads,), jnp.float32) if self.sink_logit is None else pv(self.sink_logit))
        res = attention(q, k, v, kind=spec.kind, q_pos=q_pos, k_pos=k_pos, scale=spec.scale, softcap=spec.softcap,
                        sink_logits=sinks, clip=spec.clip, sigmoid_bias=spec.sigmoid_bias,
                        block=None if full else spec.position.block, contiguous=contiguous,
                        key_cols=() if full else key_cols, weights=full, edit_logits=edit_lg,
                        edit_pattern=edit_pat, **opts)
        if not cap:
            return res
        qs = slice(1, None) if slot else slice(None)  # the real queries
        if full:
            cap.sow(self, f"{p}.logits", res.logits[idx] if idx else res.logits)
            cap.sow(self, f"{p}.pattern", res.pattern[idx] if idx else res.pattern)
            if self.k_bias is not None:
                cap.sow(self, f"{p}.pattern_bias", res.pattern[:, :, qs, 0])
            if slot:
                cap.sow(self, f"{p}.pattern_slot", res.pattern[:, :, qs, extra - 1])
        else:
            for i, c in enumerate(key_cols):
                cap.sow_reduced(self, f"{p}.pattern", f"key{c - extra}", res.key_cols[:, :, qs, i])
        return res
