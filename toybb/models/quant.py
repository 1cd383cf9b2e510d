"""GGUF block-quantised weights kept packed in memory and dequantised inside the compiled forward.

A Q4_1 matrix takes ~0.19 bytes per weight instead of 4, so a quantised checkpoint runs in a fraction
of the float32 memory; the arithmetic of dequantisation is llama.cpp's (float16 scale d, and min m for
Q4_1; 32 weights per block; low nibbles hold elements 0-15, high nibbles 16-31), so logits equal those
of the dequantise-at-load path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 32
KINDS = ("Q4_0", "Q4_1", "Q8_0")
_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@jax.tree_util.register_dataclass
@dataclass
class QArray:
    """Packed rows [rows, cols] of a GGUF tensor (cols = blocks * 32) plus the static recipe that turns
    the dequantised [rows, cols] float matrix into the toybb parameter's layout."""

    d: jax.Array  # float16 [rows, blocks]
    m: jax.Array | None  # float16 [rows, blocks] (Q4_1 only)
    qs: jax.Array  # uint8 [rows, blocks, 16] (4-bit) or int8 [rows, blocks, 32] (Q8_0)
    kind: str = field(metadata=dict(static=True))
    layout: tuple = field(metadata=dict(static=True))  # ("id",) | ("T",) | ("heads", n, hd) | ("out_heads", n, hd)
    shape: tuple = field(metadata=dict(static=True))  # shape of the toybb parameter
    dtype: str = field(default="float32", metadata=dict(static=True))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dequantize(self) -> jax.Array:
        d = self.d.astype(jnp.float32)[..., None]
        if self.kind == "Q8_0":
            w = self.qs.astype(jnp.float32) * d
        else:
            q = jnp.concatenate([self.qs & 0x0F, self.qs >> 4], axis=-1)
            if self.kind == "Q4_0":
                w = (q.astype(jnp.int8) - 8).astype(jnp.float32) * d
            else:
                w = d * q.astype(jnp.float32) + self.m.astype(jnp.float32)[..., None]
        w = w.reshape(w.shape[0], -1)
        kind = self.layout[0]
        if kind == "T":
            w = w.T
        elif kind == "heads":  # [n*hd, d] -> [d, n, hd]
            w = w.T.reshape(w.shape[1], self.layout[1], self.layout[2])
        elif kind == "out_heads":  # [d, n*hd] -> [n, hd, d]
            w = w.T.reshape(self.layout[1], self.layout[2], w.shape[0])
        return w.astype(jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32)

    def take_rows(self, idx: jax.Array) -> jax.Array:
        """Rows `idx` of an ("id",)-layout matrix (embedding lookup) without dequantising the rest."""
        assert self.layout == ("id",), self.layout
        sub = dataclasses.replace(self, d=jnp.take(self.d, idx, axis=0),
                                  m=None if self.m is None else jnp.take(self.m, idx, axis=0),
                                  qs=jnp.take(self.qs, idx, axis=0), shape=tuple(idx.shape) + self.shape[1:])
        flat = dataclasses.replace(sub, d=sub.d.reshape(-1, sub.d.shape[-1]),
                                   m=None if sub.m is None else sub.m.reshape(-1, sub.m.shape[-1]),
                                   qs=sub.qs.reshape(-1, *sub.qs.shape[-2:]))
        return flat.dequantize().reshape(sub.shape)

    def nbytes(self) -> int:
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in (self.d, self.m, self.qs) if a is not None)


def pack(raw: np.ndarray, kind: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """GGUF raw bytes of a [rows, cols] tensor -> (d, m, qs) numpy arrays."""
    nb = cols // BLOCK
    b = np.ascontiguousarray(raw).reshape(rows, nb, _BYTES[kind])
    d = b[..., 0:2].copy().view(np.float16)[..., 0]
    if kind == "Q4_1":
        return d, b[..., 2:4].copy().view(np.float16)[..., 0], b[..., 4:].copy()
    if kind == "Q4_0":
        return d, None, b[..., 2:].copy()
    return d, None, b[..., 2:].copy().view(np.int8)


def value(x):
    """A parameter's value as an array: dequantised inside the compiled function when packed."""
    return x.dequantize() if isinstance(x, QArray) else x
