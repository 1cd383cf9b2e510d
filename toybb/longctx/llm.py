"""Long-context measurements on a pretrained model: per-token NLL of one long forward (perplexity
against length from a single pass: the model is causal, so the first L tokens' NLL is the perplexity
at length L), passkey retrieval, hidden states for positional vectors, and their ablation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from toybb.errors import ToybbError
from toybb.models.transformer import Transformer
from toybb.models.capture import Capture
from toybb.models.forward import call, captures, loss
from toybb.models.sites import Edits, residual_add, value_scaling
from toybb.probes import metrics as M

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                 "I will quiz you about the important information there.\n")


def sequence_nll(model: Transformer, tokens, resid_add: dict[int, np.ndarray] | None = None,
                 value_scale: np.ndarray | None = None) -> np.ndarray:
    """tokens [batch, T] -> -log p(x_{t+1} | x_{<=t}) as float64 [batch, T - 1] (one forward of the whole
    sequence; formerly `longctx.llm.token_nll`). resid_add / value_scale: the long-context interventions
    (residual deltas per layer, value scaling [layers, T])."""
    tokens = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    edits = _edits(model, tokens.shape, resid_add, value_scale)
    return np.asarray(loss(model, tokens, edits=edits, reduction="token").nll, np.float64)


def _edits(model: Transformer, shape, resid_add, value_scale) -> Edits:
    """The long-context interventions (residual deltas, value ablation) as `Edits`."""
    edits = residual_add(model.sites(), resid_add or {}, shape)
    if value_scale is not None:
        edits = edits + value_scaling(model.sites(), value_scale, shape)
    return edits


def value_ablation(n_layers: int, seq: int, tokens: slice, from_layer: int = 0) -> np.ndarray:
    """value_scale [n_layers, seq] (float32) that zeroes the values of `tokens` in layers >= from_layer."""
    if not 0 <= from_layer < n_layers:
        raise ToybbError(f"value ablation: from_layer must be in [0, {n_layers}), got {from_layer}")
    s = np.ones((n_layers, seq), np.float32)
    s[from_layer:, tokens] = 0.0
    return s


def ppl_by_length(nll: np.ndarray, lengths) -> dict[int, float]:
    """nll [batch, T - 1] -> {L: exp(mean NLL of the first L - 1 predictions)} over the batch."""
    out = {}
    for L in lengths:
        if L - 1 > nll.shape[1]:
            raise ToybbError(f"length {L} is longer than the scored sequence ({nll.shape[1] + 1} tokens)")
        out[int(L)] = M.perplexity(nll[:, : L - 1])
    return out


def passkey_ids(tokenizer, length: int, depth: float, key: str, bos: list[int]) -> tuple[list[int], list[int]]:
    """Prompt of about `length` tokens with "The pass key is KEY." at relative `depth` in [0, 1] of the
    filler, followed by the question and the key. Returns (ids, answer token ids) where the answer ids
    are the last tokens of ids (scored by teacher forcing = greedy decoding of the key)."""
    if not 0.0 <= depth <= 1.0:
        raise ToybbError(f"passkey depth must be in [0, 1], got {depth}")
    enc = lambda s: tokenizer.encode(s, add_bos=False)  # noqa: E731
    intro, fill = enc(PASSKEY_INTRO), enc(FILLER)
    needle = enc(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    question = enc("What is the pass key? The pass key is")
    # Score only the key's own tokens: digit-splitting tokenizers encode " 48213" as a lone " " token
    # plus digits, and scoring that space made the model's " the" (a fine continuation) count as a miss.
    spaced, bare = enc(" " + key), enc(key)
    if len(spaced) > len(bare) and spaced[-len(bare):] == bare:
        question, answer = question + spaced[: -len(bare)], bare
    else:
        answer = spaced
    n_fill = length - len(bos) - len(intro) - len(needle) - len(question) - len(answer)
    if n_fill < len(fill):
        raise ToybbError(f"passkey length {length} is too short for the prompt")
    reps = n_fill // len(fill)
    at = int(round(depth * reps))
    body = fill * at + needle + fill * (reps - at)
    return bos + intro + body + question + answer, answer


def passkey_correct(model: Transformer, ids: list[int], answer: list[int]) -> bool:
    """True iff greedy decoding after the question reproduces every answer token."""
    toks = jnp.asarray([ids], jnp.int32)
    pred = np.asarray(call(_greedy_answer, model, toks, static=(len(answer),)))[0]
    return bool(np.array_equal(pred, np.asarray(answer)))


def _greedy_answer(model: Transformer, n_answer: int, tokens):
    logits = model(tokens)
    return jnp.argmax(logits[:, -n_answer - 1 : -1], axis=-1)


def hidden_states(model: Transformer, tokens) -> np.ndarray:
    """tokens [n, T] -> residual stream after every block [layers, n, T, d_model] (float32)."""
    cap = captures(model, tokens, Capture(("blocks.*.resid_post",)))
    return np.stack([np.asarray(cap[f"blocks.{l}.resid_post"], np.float32) for l in range(model.cfg.n_layers)])


def sink_attention_by_layer(model: Transformer, tokens, resid_add: dict[int, np.ndarray] | None = None, skip: int = 4,
                            value_scale: np.ndarray | None = None) -> np.ndarray:
    """Attn<s> (`metrics.sink_attention`) over the queries t >= skip (the StreamingLLM sinks left out),
    averaged over heads, per layer -> [layers] (one forward; formerly `longctx.llm.sink_attention`)."""
    tokens = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    cap = captures(model, tokens, Capture(("blocks.*.attn.pattern@key0",)),
                   edits=_edits(model, tokens.shape, resid_add, value_scale))
    queries = jnp.broadcast_to(jnp.arange(tokens.shape[1]) >= skip, tokens.shape)
    return np.array([float(M.sink_attention(cap[f"blocks.{l}.attn.pattern@key0"].astype(jnp.float32), queries).mean())
                     for l in range(model.cfg.n_layers)])
