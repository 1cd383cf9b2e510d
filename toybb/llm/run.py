"""Compiled forward passes with capture: the reductions of a `Capture` (`@norm`, `@key0`, `@absmax`)
run inside the compiled function, so only the requested (reduced) arrays leave the device."""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb.models.capture import NO_CAPTURE, Capture, resolve_edits, run_with_capture
from toybb.models.sites import NO_EDITS
from toybb.probes.metrics import next_token_nll


@lru_cache(maxsize=32)
def _compiled(graphdef, capture: Capture):
    def f(state, tokens, positions, edits):
        model = nnx.merge(graphdef, state)
        kw = {} if positions is None else {"positions": positions}  # the toy model has no positions argument
        return run_with_capture(model, tokens, capture=capture, edits=edits, **kw)

    return jax.jit(f)


def forward(
    model: nnx.Module,
    tokens,
    *,
    capture: Capture = NO_CAPTURE,
    positions=None,
    edits=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """tokens [batch, seq] (or [seq]) -> (float32 logits [batch, seq, vocab], {site: array}), for a
    pretrained or a toy model. edits: `Edit`s applied inside the forward (`toybb.models.sites`).

    One compilation per (model structure, capture request, input shape, kind of edits)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if not isinstance(capture, Capture):
        capture = Capture(capture)
    edits = resolve_edits(model, edits, tokens) if edits else NO_EDITS
    # positions None = arange(seq), which the model knows: blocked attention then skips the key blocks
    # that the causal (or sliding-window) mask hides, about half of the attention work.
    if positions is not None:
        positions = jnp.asarray(positions, jnp.int32)
    graphdef, state = nnx.split(model)
    f = _compiled(graphdef, capture)
    size = getattr(f, "_cache_size", lambda: None)()
    out = f(state, tokens, positions, edits)
    if size is not None and f._cache_size() != size:  # this call compiled: XLA leaves free heap behind
        from toybb.llm.load import release_host_memory

        release_host_memory()
    return out


def token_logprobs(model: nnx.Module, tokens) -> np.ndarray:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) as float64 numpy [batch, seq - 1]."""
    logits, _ = forward(model, tokens)
    return np.asarray(_next_logprobs(logits, jnp.asarray(tokens, jnp.int32).reshape(logits.shape[:2])))


@jax.jit
def _next_logprobs(logits, tokens):
    return -next_token_nll(logits, tokens)
