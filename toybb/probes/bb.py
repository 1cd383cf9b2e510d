"""Probes of a toy model on the Bigram-Backcopy task: the dynamics metrics of SPEC §3 on a fixed
evaluation batch, the active/dormant classification per token, and interventions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from toybb.config import ModelConfig
from toybb.models.capture import Capture, run_with_capture
from toybb.names import column
from toybb.probes import metrics as M


def eval_capture(cfg: ModelConfig) -> Capture:
    """The sites the dynamics metrics need, reduced inside the compiled function."""
    sites = ["blocks.*.resid_post@norm", "blocks.*.resid_post"]
    for l in range(cfg.n_layers):
        if cfg.has_attention(l):
            sites += [f"blocks.{l}.attn.pattern@key0", f"blocks.{l}.attn.logits", f"blocks.{l}.attn.v_out@norm"]
            if cfg.arch == "transformer":
                sites.append(f"blocks.{l}.attn.v@norm")
            if cfg.sink_token:  # the learned slot itself (the sites cover the input; key 0 is the BOS)
                sites.append(f"blocks.{l}.attn.pattern_slot")
            if cfg.attn_bias:
                sites.append(f"blocks.{l}.attn.pattern_bias")
    return Capture(tuple(sites))


def metric_names(model, task, seq_len: int = 8) -> list[str]:
    """Column names of `dynamics_metrics`, in order: the keys it returns, found by tracing it abstractly
    (`jax.eval_shape`: nothing is computed) on a [1, seq_len + 1] batch. `model` may be abstract
    (`nnx.eval_shape`). Layer-wise metrics carry `_l{layer}`, per-head ones `_l{layer}h{head}` when the
    model has several heads."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    names: list[str] = []

    def trace(state, tokens):
        out = dynamics_metrics(nnx.merge(graphdef, state), tokens, task)
        names.extend(out)  # insertion order (the returned pytree's keys come back sorted)
        return out

    jax.eval_shape(trace, state, jax.ShapeDtypeStruct((1, seq_len + 1), jnp.int32))
    return names


def dynamics_metrics(model, tokens: jax.Array, task) -> dict[str, jax.Array]:
    """All SPEC §3 dynamics metrics of `model` on a batch `tokens` [batch, seq+1] (jit-able).

    Attention metrics average over non-trigger queries (query 0 included for `sink_attention`,
    excluded for `sink_attention_excl0`). `sink_logit_gap` pools the queries (frequency-weighted);
    `sink_logit_gap_types` and `sink_logit_types` (the logit on the sink) average each non-trigger
    character type first, then the types unweighted: the paper's figures. `backcopy_risk` and
    `bigram_risk` are realised excess cross-entropy over the oracle; `bigram_ce_expected` is the
    authors' bigram risk, the expected cross-entropy sum_v P[x, v] (-log p(v)) over non-trigger
    positions (at BOS the unigram row, triggers included), a total, and `bigram_kl_expected` the same
    minus the rows' entropy (its excess over the oracle). `value_drain` is ||W_O v|| at the sink,
    `value_drain_v` ||v|| before W_O (`value_others*`: the mean over the other positions).
    `slot_attention` (model.sink_token) and `bias_attention` (model.attn_bias) are the attention of the
    non-trigger queries on the learned slot and on k', next to `sink_attention` on the BOS. The outlier
    metrics of the residual stream after each block: `massive_top1` / `massive_median` (Sun et al.: mean
    over the batch of each sample's largest and median |activation|), `kurtosis`; `sink_rate` is Gu et
    al.'s Sink^0.3 over every (layer, head).
    """
    cfg: ModelConfig = model.cfg
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits, cap = run_with_capture(model, inputs, capture=eval_capture(cfg))
    # attention on the learned sink slot and on the explicit bias k', per layer (the other sites cover
    # the input positions only)
    slot = {l: cap.pop(f"blocks.{l}.attn.pattern_slot") for l in range(cfg.n_layers)
            if cfg.sink_token and cfg.has_attention(l)}
    bias = {l: cap.pop(f"blocks.{l}.attn.pattern_bias") for l in range(cfg.n_layers)
            if cfg.attn_bias and cfg.has_attention(l)}
    nll = M.token_nll(logits, targets)
    oracle = task.oracle_nll(inputs, targets)
    trig = task.trigger_mask(inputs)
    non_trig = ~trig
    rows = jnp.asarray(task.bigram, jnp.float32)[inputs]  # the authors' rows: the unigram at BOS
    ce_expected = M.masked_mean(M.expected_cross_entropy(logits, rows), non_trig, None)
    out = {
        column("loss"): nll.mean(),
        column("backcopy_loss"): M.masked_mean(nll, trig, None),
        column("bigram_loss"): M.masked_mean(nll, non_trig, None),
        column("backcopy_risk"): M.backcopy_risk(nll, oracle, trig),
        column("bigram_risk"): M.bigram_risk(nll, oracle, trig),
        column("bigram_ce_expected"): ce_expected,
        column("bigram_kl_expected"): ce_expected - M.masked_mean(M.entropy(rows), non_trig, None),
    }
    # the paper's per-type averages: non-trigger character queries (BOS is no character type)
    char_query = non_trig & (jnp.arange(inputs.shape[1]) > 0)[None]
    for l in range(cfg.n_layers):
        if cfg.has_attention(l):
            p = f"blocks.{l}.attn"
            per_head = {
                "sink_attention": M.sink_attention(cap[f"{p}.pattern@key0"], non_trig),
                "sink_attention_excl0": M.sink_attention(cap[f"{p}.pattern@key0"], non_trig, exclude_sink_query=True),
                "sink_logit_gap": M.sink_logit_gap(cap[f"{p}.logits"], non_trig),
            }
            gap, defined = M.logit_gap_per_query(cap[f"{p}.logits"])
            per_head["sink_logit_gap_types"] = M.type_mean(gap, inputs, char_query & defined[None], task.n_chars)
            per_head["sink_logit_types"] = M.type_mean(cap[f"{p}.logits"][..., 0], inputs, char_query, task.n_chars)
            per_head["value_drain"], per_head["value_others"] = M.value_drain(cap[f"{p}.v_out@norm"])
            for name, v in per_head.items():
                out[column(name, l)] = v.mean()
                if cfg.n_heads > 1:
                    for h in range(cfg.n_heads):
                        out[column(name, l, h)] = v[h]
            if cfg.arch == "transformer":
                v_sink, v_others = M.value_drain(cap[f"{p}.v@norm"])
                out[column("value_drain_v", l)], out[column("value_others_v", l)] = v_sink.mean(), v_others.mean()
            if l in slot:
                out[column("slot_attention", l)] = M.sink_attention(slot[l], non_trig).mean()
            if l in bias:
                out[column("bias_attention", l)] = M.sink_attention(bias[l], non_trig).mean()
        peak, others, excess = M.residual_peak(cap[f"blocks.{l}.resid_post@norm"])
        out[column("residual_peak", l)], out[column("residual_others", l)] = peak, others
        out[column("residual_excess", l)] = excess
        top, _, median = M.activation_profile(cap[f"blocks.{l}.resid_post"], k=1)
        out[column("massive_top1", l)], out[column("massive_median", l)] = top[:, 0].mean(), median.mean()
        out[column("kurtosis", l)] = M.excess_kurtosis(cap[f"blocks.{l}.resid_post"]).mean()
    # Gu et al.'s alpha_1 per (layer, head): the attention on key 0 averaged over every query
    alphas = [M.sink_attention(cap[f"blocks.{l}.attn.pattern@key0"]) for l in range(cfg.n_layers)
              if cfg.has_attention(l)]
    if alphas:
        out[column("sink_rate")] = M.sink_rate(jnp.concatenate(alphas))
    return out


def dormancy_probe_tokens(task, max_len: int | None = None) -> np.ndarray:
    """[n_chars, L] probe sequences: [BOS] + every non-trigger character + [v], one row per character v
    (SPEC §3). Without BOS the row starts at the first non-trigger character. With `max_len` (the
    trained sequence length) the non-trigger body is cut so the probe stays at trained positions."""
    n_chars = len(task.chars)
    prefix = [task.bos_id] if task.bos else []
    body = [c for c in range(n_chars) if not task.is_trigger[c]]
    if max_len is not None:
        body = body[: max(1, max_len - len(prefix) - 1)]
    return np.array([prefix + body + [v] for v in range(n_chars)], np.int32)


def sink_attention_of_last_query(model, probe_tokens: jax.Array) -> jax.Array:
    """Attention of the last position on position 0, per layer and head: [layers, n_tokens, heads]
    (NaN rows for layers without attention)."""
    cfg: ModelConfig = model.cfg
    _, cap = run_with_capture(model, probe_tokens, capture=Capture(("blocks.*.attn.pattern@key0",)))
    rows = []
    for l in range(cfg.n_layers):
        key = f"blocks.{l}.attn.pattern@key0"
        rows.append(cap[key][:, :, -1] if key in cap else jnp.full((probe_tokens.shape[0], cfg.n_heads), jnp.nan))
    return jnp.stack(rows)


def bos_attention_by_token(model, inputs: jax.Array, n_tokens: int) -> tuple[jax.Array, jax.Array]:
    """In-distribution counterpart of the dormancy probe: the attention on BOS of every query of token v
    in natural sequences `inputs` [batch, seq] (query 0, the BOS itself, left out), averaged per token.

    Returns (mean [layers, n_tokens, heads], count [n_tokens]); the mean is NaN for tokens that never
    occur and for layers without attention. A token active in the probe but dormant here reacts to the
    probe's unusual context; one active here too behaves like a trigger on real text."""
    cfg: ModelConfig = model.cfg
    _, cap = run_with_capture(model, inputs, capture=Capture(("blocks.*.attn.pattern@key0",)))
    onehot = jax.nn.one_hot(inputs[:, 1:], n_tokens, dtype=jnp.float32)  # [b, t-1, n]
    count = onehot.sum((0, 1))
    rows = []
    for l in range(cfg.n_layers):
        key = f"blocks.{l}.attn.pattern@key0"
        if key not in cap:
            rows.append(jnp.full((n_tokens, cfg.n_heads), jnp.nan))
            continue
        a = cap[key][:, :, 1:].astype(jnp.float32)  # [b, h, t-1]: queries 1.. of the input
        total = jnp.einsum("bht,btn->nh", a, onehot)
        rows.append(jnp.where(count[:, None] > 0, total / jnp.maximum(count, 1.0)[:, None], jnp.nan))
    return jnp.stack(rows), count


def intervention_names(cfg: ModelConfig) -> list[tuple[str, frozenset[str]]]:
    """(name, ablated sub-layers) for: the full model, all attention removed, all MLPs removed, and
    each layer's attention / MLP removed (for models of more than one layer)."""
    attn = [f"blocks.{l}.attn" for l in range(cfg.n_layers) if cfg.has_attention(l)]
    mlp = [f"blocks.{l}.mlp" for l in range(cfg.n_layers) if cfg.mlp_kind(l) != "none"]
    out = [("full", frozenset()), ("no_attention", frozenset(attn)), ("no_mlp", frozenset(mlp))]
    if cfg.n_layers > 1:
        out += [(f"no_{name.split('.', 1)[1].replace('.', '_')}", frozenset([name])) for name in attn + mlp]
    return out


def intervention_risks(model, tokens: jax.Array, task, ablate: frozenset[str]) -> tuple[jax.Array, jax.Array]:
    """(back-copy excess risk, bigram excess risk) with the sub-layers in `ablate` removed."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    nll = M.token_nll(model(inputs, ablate=ablate), targets)
    oracle = task.oracle_nll(inputs, targets)
    trig = task.trigger_mask(inputs)
    return M.backcopy_risk(nll, oracle, trig), M.bigram_risk(nll, oracle, trig)
