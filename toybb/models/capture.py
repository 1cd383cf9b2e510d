"""The capture API shared by toy and pretrained models.

Sites have stable names (TransformerLens-like):
  embed, blocks.{l}.resid_pre, blocks.{l}.resid_mid, blocks.{l}.resid_post, final_norm,
  blocks.{l}.attn.q | k | v   ([batch, seq, heads, head_dim]; q/k after rotary where a model has one,
                                q_pre/k_pre before it),
  blocks.{l}.attn.logits | pattern   ([batch, heads, q_seq, k_seq]),
  blocks.{l}.attn.z          (attention-weighted values per head [batch, seq, heads, head_dim]),
  blocks.{l}.attn.head_out   (W_O^h v_t per head, not weighted by attention [batch, seq, heads, d_model]),
  blocks.{l}.attn.out, blocks.{l}.mlp.out   ([batch, seq, d_model]).
A request is an fnmatch pattern over these names, optionally with a reduction computed inside the
compiled function so the full tensor is never materialised on the host:
  "@norm"  L2 norm over the last axis         ("blocks.*.resid_post@norm" -> [batch, seq])
  "@key0"  the slice on key position 0         ("blocks.*.attn.pattern@key0" -> [batch, heads, q_seq])
  "@key1"  the slice on key position 1 (the BOS behind a learned sink token)
  "@absmax" max |x| over the last axis and its argmax (two arrays: name@absmax, name@absmax_idx)
  "@qmean" mean over queries of a pattern      ("blocks.*.attn.pattern@qmean" -> [batch, heads, k_seq])
Modules call `cap.sow(self, full_name, value)`; values are collected with `nnx.capture`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

REDUCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "norm": lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)),
    "key0": lambda x: x[..., 0],
    "key1": lambda x: x[..., 1],  # the BOS of a model with a learned sink token in front
    "absmax": lambda x: jnp.max(jnp.abs(x), axis=-1),
    "absmax_idx": lambda x: jnp.argmax(jnp.abs(x), axis=-1),
    "qmean": lambda x: jnp.mean(x.astype(jnp.float32), axis=-2),
}
_SEP = "__"  # stands for "@" in sown attribute names


@dataclass(frozen=True)
class Capture:
    """A static (hashable) set of requested capture sites."""

    sites: tuple[str, ...] = ()

    def __post_init__(self):
        for s in self.sites:
            base, _, red = s.partition("@")
            if red and red not in REDUCTIONS:
                raise ValueError(f"unknown capture reduction '@{red}' in {s!r}; known: {sorted(REDUCTIONS)}")

    def __bool__(self) -> bool:
        return bool(self.sites)

    @lru_cache(maxsize=4096)
    def requests_for(self, name: str) -> tuple[str, ...]:
        """Reductions requested for site `name` ('' for the full tensor)."""
        out = []
        for s in self.sites:
            base, _, red = s.partition("@")
            if fnmatch.fnmatchcase(name, base):
                out.append(red)
                if red == "absmax":
                    out.append("absmax_idx")
        return tuple(dict.fromkeys(out))

    def wants(self, name: str) -> bool:
        return bool(self.requests_for(name))

    def sow(self, module: nnx.Module, name: str, value: jax.Array) -> None:
        """Record `value` for site `name` on `module` under every requested reduction."""
        leaf = name.rsplit(".", 1)[-1]
        for red in self.requests_for(name):
            v = REDUCTIONS[red](value) if red else value
            module.sow(nnx.Intermediate, leaf + (_SEP + red if red else ""), v)


    def sow_reduced(self, module: nnx.Module, name: str, red: str, value: jax.Array) -> None:
        """Record `value`, already reduced by `red` elsewhere (e.g. key columns of blocked attention), as
        site `name@red`."""
        module.sow(nnx.Intermediate, name.rsplit(".", 1)[-1] + _SEP + red, value)


NO_CAPTURE = Capture()


def flatten_captured(state: Any) -> dict[str, jax.Array]:
    """nnx.capture's State -> {"blocks.0.attn.pattern": array, ...}."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        val = var.get_value() if hasattr(var, "get_value") else var.value
        if isinstance(val, tuple):  # sow appends; one call per forward
            val = val[-1]
        out[".".join(str(p) for p in path).replace(_SEP, "@")] = val
    return out


def run_with_capture(model: nnx.Module, *args, capture: Capture, **kwargs) -> tuple[Any, dict[str, jax.Array]]:
    """Call `model(*args, capture=capture, **kwargs)`, returning (output, {site name: array})."""
    out, state = nnx.capture(model, nnx.Intermediate)(*args, capture=capture, **kwargs)
    return out, flatten_captured(state)
