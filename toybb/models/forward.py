"""The forward pass of any toybb model (the toy transformer, a pretrained `LLM`, the SimpleModel) with
capture and edits, and the losses built on it.

- `forward(model, tokens, capture=..., edits=...)` -> (float32 logits [batch, seq, vocab], {site: array}).
- `captures(model, tokens, capture, edits=...)` -> {site: array} (the logits stay on the device).
- `loss(model, tokens, targets, valid=..., edits=..., capture=..., reduction=...)` -> `Loss(nll, count,
  cache)`: the one "loss under edits" of the probes, the circuit experiment, `toybb intervene`, long
  context and `toybb.load`.
- `gradients(model, tokens, sites, metric=...)` -> `Gradients(value, grads, cache)`: the gradient of the
  loss (or of any scalar of the logits, e.g. a logit difference) with respect to the activation at every
  matching site, and those activations (gradient x activation, attribution patching).
- `token_nll`, `next_token_nll`, `perplexity`: the language-model losses every caller shares.

Every compiled function comes from one cache, `compiled(fn, graphdef, *static)`: one compilation per
(function, model structure, static arguments such as the capture request), then per input shape and
edit structure (jax.jit's own cache). Edits are resolved once, on the host (`resolve_edits`), and enter
the compiled function as arrays, so every head, layer or value of one edit structure shares it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb import device
from toybb.models.capture import NO_CAPTURE, Capture, capture_call, resolve_edits
from toybb.models.sites import NO_EDITS, Edit, Edits, SiteError, resolve, split_name

REDUCTIONS = ("sum", "token")


# ---- the language-model losses ------------------------------------------------------------------------
def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy per position. logits [batch, seq, vocab], targets [batch, seq] -> [batch, seq]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def next_token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """-log p(tokens[:, t+1] | tokens[:, :t+1]) from the logits of one forward over `tokens`:
    logits [batch, T, vocab], tokens [batch, T] -> [batch, T - 1] (`token_nll` of the shifted pair)."""
    return token_nll(logits[:, :-1], tokens[:, 1:])


def perplexity(nll) -> float:
    """exp(mean NLL), the mean taken in float64 on the host: `nll` holds the NLL (nats) of every predicted
    token, or is already their mean (a scalar, e.g. a streamed sum over its count).

    The one overflow rule: inf where exp overflows a float64 (mean NLL above ~709.78 nats), never an error
    and never a cap; every finite perplexity is `math.exp` of the mean."""
    m = float(np.mean(np.asarray(nll, np.float64)))
    try:
        return math.exp(m)
    except OverflowError:
        return math.inf


# ---- the one cache of compiled functions --------------------------------------------------------------
@lru_cache(maxsize=128)
def compiled(fn: Callable, graphdef, *static) -> Callable:
    """The compiled `(state, *args) -> fn(nnx.merge(graphdef, state), *static, *args)`: one per (fn, model
    structure, static arguments); `fn` is a module-level function (its identity is part of the key)."""
    def f(state, *args):
        return fn(nnx.merge(graphdef, state), *static, *args)

    return jax.jit(f)


def call(fn: Callable, model: nnx.Module, *args, static: tuple = ()) -> Any:
    """`fn(model, *static, *args)` through its compiled function from `compiled`. After a call that
    compiled, the host heap XLA left behind is given back (`device.release_host_memory`)."""
    graphdef, state = nnx.split(model)
    f = compiled(fn, graphdef, *static)
    size = getattr(f, "_cache_size", lambda: None)()
    out = f(state, *args)
    if size is not None and f._cache_size() != size:  # this call compiled
        device.release_host_memory()
    return out


# ---- forward, captures, loss --------------------------------------------------------------------------
def _as_batch(tokens) -> jax.Array:
    tokens = jnp.asarray(tokens, jnp.int32)
    return tokens[None] if tokens.ndim == 1 else tokens


def _forward(model, capture, tokens, positions, edits):
    kw = {} if positions is None else {"positions": positions}  # the toy model has no positions argument
    return capture_call(model, tokens, capture=capture, edits=edits, **kw)


def forward(model: nnx.Module, tokens, *, capture=NO_CAPTURE, positions=None, edits=None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """tokens [batch, seq] (or [seq]) -> (float32 logits [batch, seq, vocab], {site: array}), for a toy or a
    pretrained model. capture: site patterns (`toybb.models.capture`); edits: `Edit`s applied inside the
    forward (`toybb.models.sites`). positions None = arange(seq), which the model knows: blocked attention
    then skips the key blocks that the causal (or sliding-window) mask hides."""
    tokens = _as_batch(tokens)
    edits = resolve_edits(model, edits, tokens) if edits else NO_EDITS
    if positions is not None:
        positions = jnp.asarray(positions, jnp.int32)
    return call(_forward, model, tokens, positions, edits, static=(Capture.of(capture),))


def _captures(model, capture, tokens, edits):
    return capture_call(model, tokens, capture=capture, edits=edits)[1]


def captures(model: nnx.Module, tokens, capture, *, edits=None) -> dict[str, jax.Array]:
    """{site: array} of one forward over tokens [batch, seq] (the logits never leave the device)."""
    tokens = _as_batch(tokens)
    edits = resolve_edits(model, edits, tokens) if edits else NO_EDITS
    return call(_captures, model, tokens, edits, static=(Capture.of(capture),))


class Loss(NamedTuple):
    """nll: reduction "sum": the NLL summed over the counted positions (a scalar); "token": the NLL per
    position [batch, positions] (of every sample, counted or not). count: the counted positions (valid
    samples x positions). cache: the captured {site: array}."""

    nll: jax.Array
    count: jax.Array
    cache: dict


def _loss(model, capture, with_targets, reduction, tokens, targets, valid, edits):
    logits, cache = capture_call(model, tokens, capture=capture, edits=edits)
    nll = token_nll(logits, targets) if with_targets else next_token_nll(logits, tokens)
    w = valid.astype(jnp.float32)[:, None]
    count = jnp.sum(w) * nll.shape[1]
    return Loss(jnp.sum(nll * w) if reduction == "sum" else nll, count, cache)


def loss(model: nnx.Module, tokens, targets=None, *, valid=None, edits=None, capture=NO_CAPTURE,
         reduction: str = "sum") -> Loss:
    """Next-token loss of one forward over tokens [batch, T] under `edits`, with optional captures.

    targets None: the model reads all of `tokens` and predicts tokens[:, 1:] (T - 1 positions); targets
    [batch, T]: the model reads `tokens` and predicts `targets` at every position (a toy task batch, or a
    text split into inputs x[:, :-1] and targets x[:, 1:]). valid [batch] bool: the samples counted
    (default all; padding samples of a last batch are not). edits: `Edit`s or resolved `Edits`.
    reduction: "sum" (nll summed over the counted positions) or "token" (nll per position)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    tokens = _as_batch(tokens)
    tgt = jnp.zeros((), jnp.int32) if targets is None else _as_batch(targets)
    valid = jnp.ones(tokens.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
    edits = resolve_edits(model, edits, tokens) if edits else NO_EDITS
    return call(_loss, model, tokens, tgt, valid, edits,
                static=(Capture.of(capture), targets is not None, reduction))


class Gradients(NamedTuple):
    """value: the metric (a float32 scalar); grads: {site: d value / d activation}, each of the site's
    shape; cache: {site: activation} at the same sites (after `edits`)."""

    value: jax.Array
    grads: dict
    cache: dict


def _metric(metric, logits, tokens):
    """"loss": mean next-token NLL (nats) over every predicted position; else `metric(logits, tokens)`."""
    return jnp.mean(next_token_nll(logits, tokens)) if metric == "loss" else metric(logits, tokens)


def _gradients(model, capture, metric, tokens, edits, probe, deltas):
    graphdef, state = nnx.split(model)

    def value(deltas):  # the model is rebuilt inside the transform, where capture may write to it
        arrays = tuple(a[:3] + (d,) for a, d in zip(probe.arrays, deltas))
        logits, cache = capture_call(nnx.merge(graphdef, state), tokens, capture=capture, edits=edits + Edits(probe.static, arrays))
        out = jnp.asarray(_metric(metric, logits, tokens), jnp.float32)
        if out.ndim:  # checked while tracing: the function's output, not JAX's message about it
            raise SiteError(f"metric must return one number (a scalar), got shape {tuple(out.shape)}; reduce it, "
                            "e.g. with .sum() or .mean()")
        return out, cache

    (v, cache), grads = jax.value_and_grad(value, has_aux=True)(deltas)
    return v, grads, cache


def gradients(model: nnx.Module, tokens, sites, *, metric="loss", edits=None) -> Gradients:
    """The gradient of `metric` with respect to the activation at every site matching `sites` (a pattern
    such as "blocks.*.resid_post" or a list of them; the names and selectors of capture and edits), in one
    forward and backward pass over tokens [batch, seq].

    metric: "loss" (mean next-token NLL) or a function (logits [batch, seq, vocab], tokens) -> scalar, e.g.
    a logit difference `lambda lg, t: lg[0, -1, a] - lg[0, -1, b]` (a module-level function compiles once).
    edits: `Edit`s applied first; the gradient is taken at the edited activation. Each site is probed by
    an `add` of zeros, so read-only sites (computed for inspection only) have no gradient."""
    tokens = _as_batch(tokens)
    if not (metric == "loss" or callable(metric)):
        raise SiteError(f"metric must be 'loss' or a function (logits, tokens) -> scalar, got {metric!r:.60}")
    table = model.sites()
    patterns = (sites,) if isinstance(sites, str) else tuple(sites)
    names = list(dict.fromkeys(n for p in patterns for n in table.match(p)))
    if not names:
        raise SiteError("name at least one site to take the gradient at, e.g. 'blocks.*.resid_post'")
    by_kind: dict[str, list] = {}
    for n in names:
        layer, kind = split_name(n)
        by_kind.setdefault(kind, []).append(layer)
    probes = []
    for kind, layers in by_kind.items():
        shape = table.shape(kind if layers[0] is None else f"blocks.{layers[0]}.{kind}", *tokens.shape)
        if layers[0] is None:
            probes.append(Edit(kind, "add", value=np.zeros(shape, np.float32)))
        else:
            probes.append(Edit(f"blocks.*.{kind}", "add", value=np.zeros((table.n_layers,) + shape, np.float32),
                               layer=layers))
    probe = resolve(table, probes, tuple(tokens.shape))
    edits = resolve_edits(model, edits, tokens) if edits else NO_EDITS
    deltas = tuple(a[3] for a in probe.arrays)
    v, g, cache = call(_gradients, model, tokens, edits, probe, deltas, static=(Capture(tuple(names)), metric))
    grads = {}
    for (kind, layers), gk in zip(by_kind.items(), g):
        for layer in layers:
            grads[kind if layer is None else f"blocks.{layer}.{kind}"] = gk if layer is None else gk[layer]
    return Gradients(v, grads, cache)


def token_logprobs(model: nnx.Module, tokens) -> np.ndarray:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) as a numpy array [batch, seq - 1] (the logits' float32)."""
    return -np.asarray(loss(model, tokens, reduction="token").nll)
