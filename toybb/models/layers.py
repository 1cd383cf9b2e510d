"""Parameters and norms shared by the toy models and the pretrained families.

Parameters may be GGUF-packed (`toybb.models.quant.QArray`); `fetch` dequantises them inside the
compiled forward, only once the activation that uses them exists.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.models.config import NORMS
from toybb.models.quant import QArray, value as qvalue


def param(shape, dtype=jnp.float32, init: str = "zeros", rngs: nnx.Rngs | None = None, fan_in: int = 1) -> nnx.Param:
    """A parameter: "zeros", "ones", "normal" (N(0, 1/fan_in)) or "uniform" (U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), PyTorch's nn.Linear, the toy reference). Without rngs every init is zeros
    (loaders overwrite every parameter; nnx.eval_shape needs no randomness)."""
    if init == "ones":
        return nnx.Param(jnp.ones(shape, dtype))
    if init == "zeros" or rngs is None:
        return nnx.Param(jnp.zeros(shape, dtype))
    if init == "uniform":
        bound = fan_in**-0.5
        return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound).astype(dtype))
    return nnx.Param((jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5).astype(dtype))


def pv(var: nnx.Variable) -> jax.Array:
    """A parameter's array; GGUF-quantised parameters are dequantised here, inside the compiled forward."""
    return qvalue(var.get_value())


def fetch(x: jax.Array, *vars: nnx.Variable) -> tuple[jax.Array, list[jax.Array]]:
    """(x, parameter arrays), with packed parameters dequantised only once x exists. Without a data
    dependency XLA hoists every layer's dequantisation to the start and holds all float32 weights at
    once (the CPU backend drops optimization barriers), so the scales get an exact zero computed from x."""
    vals = [v.get_value() for v in vars]
    if any(isinstance(v, QArray) for v in vals):
        zero = jnp.isnan(x.reshape(-1)[0]).astype(jnp.float16) * jnp.float16(0)
        vals = [dataclasses.replace(v, d=v.d + zero) if isinstance(v, QArray) else v for v in vals]
    return x, [qvalue(v) for v in vals]


def matmul(x: jax.Array, w: jax.Array, contract: int = 1, preferred_element_type=None) -> jax.Array:
    """x [..., K] @ w [K, ...], where K is the last `contract` axes of x and the first of w, computed as one
    2-D matmul [rows, K] x [K, N] and reshaped back. With several leading axes (batch, seq) XLA's CPU backend
    lays the gradient of the weights out transposed, a strided copy of every MLP hidden and logit gradient
    (a third of a small training step); the 2-D form needs none and gives the same products."""
    lead, k = x.shape[: x.ndim - contract], x.shape[x.ndim - contract :]
    tail = w.shape[contract:]
    kk = math.prod(k)
    out = jnp.matmul(x.reshape(-1, kk), w.reshape(kk, -1), preferred_element_type=preferred_element_type)
    return out.reshape(*lead, *tail)


class Norm(nnx.Module):
    """RMSNorm / LayerNorm over the last axis, computed in float32, returned in the input dtype.
    plus_one: the weight is stored as w and applied as (1 + w) (Gemma)."""

    def __init__(self, dim: int, kind: str = "rms", eps: float = 1e-5, plus_one: bool = False, dtype=jnp.float32):
        if kind not in NORMS or kind == "layer_flax":  # layer_flax is flax's nnx.LayerNorm (`trunk.make_norm`)
            raise ValueError(f"norm kind must be one of {NORMS[:-1]}, got {kind!r}")
        self.kind, self.eps, self.plus_one = kind, eps, plus_one
        self.scale = None if kind == "layer_noparam" else param((dim,), dtype, "zeros" if plus_one else "ones")
        self.bias = param((dim,), dtype) if kind == "layer" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        if self.kind == "rms":
            y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        else:
            mu = jnp.mean(xf, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
            y = (xf - mu) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            w = pv(self.scale).astype(jnp.float32)
            y = y * (1.0 + w if self.plus_one else w)
        if self.bias is not None:
            y = y + pv(self.bias).astype(jnp.float32)
        return y.astype(x.dtype)
