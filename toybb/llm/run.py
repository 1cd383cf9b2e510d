"""Compiled forward passes with capture: the reductions of a `Capture` (`@norm`, `@key0`, `@absmax`)
run inside the compiled function, so only the requested (reduced) arrays leave the device."""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb.llm.model import LLM
from toybb.models.capture import NO_CAPTURE, Capture, run_with_capture
from toybb.probes.metrics import next_token_nll


@lru_cache(maxsize=32)
def _compiled(graphdef, capture: Capture):
    def f(state, tokens, positions):
        model = nnx.merge(graphdef, state)
        return run_with_capture(model, tokens, positions=positions, capture=capture)

    return jax.jit(f)


def forward(
    model: LLM,
    tokens,
    *,
    capture: Capture = NO_CAPTURE,
    positions=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """tokens [batch, seq] (or [seq]) -> (float32 logits [batch, seq, vocab], {site: array}).

    One compilation per (model structure, capture request, input shape)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim == 1:
        tokens = tokens[None]
    # positions None = arange(seq), which the model knows: blocked attention then skips the key blocks
    # that the causal (or sliding-window) mask hides, about half of the attention work.
    if positions is not None:
        positions = jnp.asarray(positions, jnp.int32)
    graphdef, state = nnx.split(model)
    f = _compiled(graphdef, capture)
    size = getattr(f, "_cache_size", lambda: None)()
    out = f(state, tokens, positions)
    if size is not None and f._cache_size() != size:  # this call compiled: XLA leaves free heap behind
        from toybb.llm.load import release_host_memory

        release_host_memory()
    return out


def token_logprobs(model: LLM, tokens) -> np.ndarray:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) as float64 numpy [batch, seq - 1]."""
    logits, _ = forward(model, tokens)
    return np.asarray(_next_logprobs(logits, jnp.asarray(tokens, jnp.int32).reshape(logits.shape[:2])))


@jax.jit
def _next_logprobs(logits, tokens):
    return -next_token_nll(logits, tokens)
