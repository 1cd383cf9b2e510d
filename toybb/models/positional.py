"""Rotary position embeddings (RoPE), with the positions as input.

Two pairings of the rotated features exist in the wild and are not interchangeable:
  "half"        feature i is paired with i + rot_dim/2 (Hugging Face / GPT-NeoX layout),
  "interleaved" feature 2i is paired with 2i + 1 (original RoPE paper, GPT-J, llama.cpp's GGUF q/k rows).
A checkpoint stored for one pairing and run with the other still produces fluent-looking text, so the
loaders pick the pairing explicitly and the tests check that the wrong one is caught.
Partial rotary (GPT-NeoX) rotates only the first `rot_dim` features of each head.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from toybb.models.config import PAIRINGS, POSITION_KINDS, PositionConfig, RopeScaling  # noqa: F401 (re-exported)
from toybb.errors import ConfigError


def inv_frequencies(rot_dim: int, theta: float, scaling: RopeScaling = RopeScaling()) -> np.ndarray:
    """Inverse frequencies [rot_dim // 2], float64 numpy (host constants, computed once)."""
    inv = 1.0 / theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    if scaling.kind == "linear":
        inv = inv / scaling.factor
    elif scaling.kind == "ntk":
        base = theta * scaling.factor ** (rot_dim / (rot_dim - 2))
        inv = 1.0 / base ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    elif scaling.kind == "llama3":
        low_wl = scaling.original_max_positions / scaling.low_freq_factor
        high_wl = scaling.original_max_positions / scaling.high_freq_factor
        wl = 2 * math.pi / inv
        smooth = (scaling.original_max_positions / wl - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        mid = (1 - smooth) * inv / scaling.factor + smooth * inv
        inv = np.where(wl > low_wl, inv / scaling.factor, np.where(wl < high_wl, inv, mid))
    elif scaling.kind != "none":
        raise ValueError(f"unknown RoPE scaling {scaling.kind!r}")
    return inv


def rope_angles(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """positions [..., seq] (int) -> (cos, sin), each [..., seq, rot_dim // 2] float32."""
    ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, pairing: str = "half") -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim] by angles cos/sin [seq or batch, seq, rot_dim // 2].

    Only the first rot_dim = 2 * cos.shape[-1] features are rotated; the rest pass through.
    Computed in float32, returned in x's dtype.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"RoPE pairing must be one of {PAIRINGS}, got {pairing!r}")
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half].astype(jnp.float32), x[..., 2 * half :]
    # angles [.., seq, half] -> broadcast over heads: [.., seq, 1, half]
    c, s = cos[..., :, None, :], sin[..., :, None, :]
    if pairing == "half":
        x1, x2 = rot[..., :half], rot[..., half:]
        out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = jnp.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(rot.shape)
    out = out.astype(x.dtype)
    return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k projection rows [n_heads * head_dim, d] from interleaved to half-split pairing
    (undoes llama.cpp's permutation of GGUF q/k weights)."""
    out_dim, d = w.shape[0], w.shape[1:]
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, *d).swapaxes(1, 2).reshape(out_dim, *d)


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `interleaved_to_half`."""
    out_dim, d = w.shape[0], w.shape[1:]
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, *d).swapaxes(1, 2).reshape(out_dim, *d)


# ---------------------------------------------------------------------------------------------
# Long-context position schemes (SPEC §6). The attention core receives them as a second, "far"
# (q, k) pair whose logits replace the normal ones where q_pos - k_pos >= near (see
# `toybb.models.attention.attention`), or as ALiBi slopes.


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes [n_heads] float64: 2^(-8 i / n) for a power-of-2 n; otherwise the slopes of
    the next lower power of 2, p, followed by every other slope of 2p (Press et al.)."""
    if n_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {n_heads}")

    def pow2(n):
        return 2.0 ** (-8.0 * np.arange(1, n + 1) / n)

    p = 2 ** int(math.floor(math.log2(n_heads)))
    if p == n_heads:
        return pow2(n_heads)
    return np.concatenate([pow2(p), pow2(2 * p)[0::2][: n_heads - p]])


def check_selfextend(window: int, group: int) -> None:
    """SelfExtend needs a neighbour window w >= 1 and a group size G >= 1."""
    if not isinstance(group, int) or group < 1:
        raise ConfigError(f"SelfExtend group size G must be an integer >= 1, got {group!r}")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"SelfExtend neighbour window w must be an integer >= 1, got {window!r}")


def selfextend_max_length(train_len: int, window: int, group: int) -> int:
    """Longest sequence SelfExtend keeps within the trained relative positions: (L - w) * G + w."""
    check_selfextend(window, group)
    if window >= train_len:
        raise ConfigError(f"SelfExtend neighbour window w={window} must be smaller than the trained length {train_len}")
    return (train_len - window) * group + window


def selfextend_far_positions(q_pos: jax.Array, k_pos: jax.Array, window: int, group: int):
    """Grouped positions (q_far [.., tq], k_far [.., tk]) for SelfExtend: floor(i/G) + (w - w//G) and
    floor(j/G), so that their difference is the grouped relative position of SPEC §6."""
    check_selfextend(window, group)
    return q_pos // group + (window - window // group), k_pos // group


def selfextend_relative(q_pos, k_pos, window: int, group: int) -> np.ndarray:
    """Merged relative positions [tq, tk] (int numpy): i - j if i - j < w else
    floor(i/G) - floor(j/G) + (w - w//G). For tests and plots; the model uses the rotated pairs."""
    check_selfextend(window, group)
    qp, kp = np.asarray(q_pos)[:, None], np.asarray(k_pos)[None, :]
    far = qp // group - kp // group + (window - window // group)
    return np.where(qp - kp < window, qp - kp, far)


def sink_far_positions(q_pos: jax.Array, k_pos: jax.Array, n_sink: int, window: int):
    """StreamingLLM cache positions for the sink keys: with k sink tokens and a recent window of W
    tokens, query i sits at cache index min(i, k + W - 1) and sink j < k at index j (window keys keep
    their relative distance i - j, so they use the normal positions)."""
    return jnp.minimum(q_pos, n_sink + window - 1), k_pos


# ---------------------------------------------------------------------------------------------
# The position scheme of one attention layer (`toybb.config.PositionConfig`), for every model family.


def layer_inv_freq(pc: PositionConfig, head_dim: int) -> np.ndarray:
    """The layer's RoPE inverse frequencies (scaling and llama.cpp frequency factors applied)."""
    inv = inv_frequencies(pc.rope_dim or head_dim, pc.rope_theta, pc.rope_scaling)
    if pc.rope_freq_factors is not None:
        inv = inv / np.asarray(pc.rope_freq_factors, np.float64)
    return inv


def rotate(pc: PositionConfig, x: jax.Array, positions: jax.Array) -> jax.Array:
    """x [batch, seq, heads, head_dim] rotated at `positions` (RoPE; unchanged otherwise)."""
    if pc.kind != "rope":
        return x
    cos, sin = rope_angles(positions, jnp.asarray(layer_inv_freq(pc, x.shape[-1]), jnp.float32))
    return apply_rope(x, cos, sin, pc.rope_pairing)


def attention_options(pc: PositionConfig, q_raw: jax.Array, k_raw: jax.Array, q_pos: jax.Array,
                      k_pos: jax.Array) -> dict:
    """The attention core's position options (window, sink keys, far logits, ALiBi slopes or bias) for
    the un-rotated q/k of one layer."""
    opts: dict = {"window": pc.window}
    near, far = None, None
    if pc.selfextend is not None:
        near = pc.selfextend[0]
        far = selfextend_far_positions(q_pos, k_pos, *pc.selfextend)
    elif pc.sink_cache is not None:
        n_sink, near = pc.sink_cache
        opts.update(window=near if pc.window is None else min(near, pc.window), keep_first=n_sink)
        far = sink_far_positions(q_pos, k_pos, *pc.sink_cache)
    if pc.kind == "rope" and far is not None:
        opts.update(far=(rotate(pc, q_raw, far[0]), rotate(pc, k_raw, far[1])), near=near)
    elif pc.kind == "alibi":
        slopes = jnp.asarray(alibi_slopes(q_raw.shape[2]), jnp.float32)
        if far is None:
            opts["alibi"] = slopes
        else:  # ALiBi at the scheme's merged relative positions
            rel = q_pos[..., :, None] - k_pos[..., None, :]
            rel = jnp.where(rel < near, rel, far[0][..., :, None] - far[1][..., None, :]).astype(jnp.float32)
            opts["bias"] = (-slopes[:, None, None] * rel if rel.ndim == 2
                            else -slopes[None, :, None, None] * rel[:, None])
    return opts
