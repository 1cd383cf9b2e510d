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
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

PAIRINGS = ("half", "interleaved")


@dataclass(frozen=True)
class RopeScaling:
    """Frequency rescaling. kind: "none", "linear" (positions / factor) or "llama3" (Llama 3.1 bands)."""

    kind: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


def inv_frequencies(rot_dim: int, theta: float, scaling: RopeScaling = RopeScaling()) -> np.ndarray:
    """Inverse frequencies [rot_dim // 2], float64 numpy (host constants, computed once)."""
    inv = 1.0 / theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    if scaling.kind == "linear":
        inv = inv / scaling.factor
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
