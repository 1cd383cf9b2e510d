"""Filling a model from named arrays, strictly: every parameter must be supplied with its exact shape,
nothing may be left over, and every value must be finite (a corrupted file must fail here, not show
up as garbage logits)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb.errors import CheckpointError
from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer, abstract_model
from toybb.models.quant import QArray


class Lazy:
    """A tensor not read yet: `read()` gives the array as stored (of `stored_shape`, from the file's header),
    `fn` turns it into toybb's layout. `shape` is the result's shape, found without reading anything (None:
    the stored shape cannot take that layout), so every shape is checked before any tensor loads."""

    def __init__(self, read: Callable[[], np.ndarray], stored_shape, fn: Callable | None = None, name: str = ""):
        self.read, self.stored_shape, self.fn, self.name = read, tuple(int(x) for x in stored_shape), fn, name

    def __call__(self) -> np.ndarray:
        w = self.read()
        return w if self.fn is None else self.fn(w)

    def then(self, fn: Callable) -> "Lazy":
        first = self.fn
        return Lazy(self.read, self.stored_shape, fn if first is None else (lambda w: fn(first(w))), self.name)

    @functools.cached_property
    def shape(self) -> tuple[int, ...] | None:
        if self.fn is None:
            return self.stored_shape
        try:
            return tuple(jax.eval_shape(self.fn, jax.ShapeDtypeStruct(self.stored_shape, jnp.float32)).shape)
        except (TypeError, ValueError, IndexError):  # a reshape the stored shape cannot take
            return None


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{"blocks.0.attn.wq": shape, ...} for every parameter of the model `cfg` describes."""
    _, state = nnx.split(abstract_model(cfg))
    return {".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(state)}


def _list(names, n=12) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def build_model(
    cfg: ModelConfig,
    arrays: dict[str, Callable[[], np.ndarray]],
    source: str,
    *,
    put: Callable[[str, np.ndarray], jax.Array] | None = None,
) -> Transformer:
    """arrays: {toybb parameter name: thunk returning the array}, loaded one at a time so a large
    checkpoint never sits in host memory twice. put(name, array) places one array (sharding); default
    jnp.asarray on the default device."""
    graphdef, state = nnx.split(abstract_model(cfg))
    flat = nnx.to_flat_state(state)
    expected = {".".join(map(str, p)) for p, _ in flat}
    missing, unexpected = expected - set(arrays), set(arrays) - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected weights: {_list(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match the {cfg.arch} architecture; " + "; ".join(parts))
    for path, var in flat:  # shapes from the files' headers, before any tensor is read
        name, a = ".".join(map(str, path)), arrays[".".join(map(str, path))]
        if isinstance(a, Lazy) and a.shape != tuple(var.shape):
            stored = f"{a.name} ({name})" if a.name else name
            raise CheckpointError(f"{source}: weight {stored} is stored with shape {list(a.stored_shape)}, which does "
                                  f"not give the {cfg.arch} model's {list(var.shape)}; the checkpoint does not match "
                                  "its config")
    dt = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    leaves = []
    for path, var in flat:
        name = ".".join(map(str, path))
        arr = arrays[name]()
        if isinstance(arr, QArray):  # packed GGUF weights stay packed (dequantised in the forward)
            if tuple(arr.shape) != tuple(var.shape):
                raise CheckpointError(f"{source}: weight {name} has shape {arr.shape}, expected {tuple(var.shape)}")
            scales = [a for a in (arr.d, arr.m) if a is not None]
            if not all(np.isfinite(np.asarray(a, np.float32)).all() for a in scales):
                raise CheckpointError(f"{source}: weight {name} has NaN or inf scales (corrupted checkpoint?)")
            q = replace(arr, dtype=cfg.dtype)
            leaves.append((path, var.replace(value=put(name, q) if put is not None else jax.tree.map(jnp.asarray, q))))
            continue
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(var.shape):
            raise CheckpointError(f"{source}: weight {name} has shape {arr.shape}, expected {tuple(var.shape)}")
        arr32 = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr32).all():
            raise CheckpointError(f"{source}: weight {name} contains NaN or inf values (corrupted checkpoint?)")
        val = put(name, arr32.astype(dt)) if put is not None else jnp.asarray(arr32, dt)
        leaves.append((path, var.replace(value=val)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
