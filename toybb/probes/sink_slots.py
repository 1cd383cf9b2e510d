"""Toy counterpart of the LLM findings (SPEC §5): does an explicit attention bias or a learned sink token
remove the BOS residual peak (after layer 0) and the BOS sink (layer 1) of a 3-layer BB model?

`bos_metrics` reads a trained toy model on the task's evaluation batch with the SPEC §3 metric functions,
always at the BOS token (position 0 of the sites; a prepended sink token has sites of its own), and also
reports the attention given to the extra slot (k' or the sink token). `python -m toybb.toy_sinks RUN_DIR...`
prints them for runs written by `toybb train`.
"""

from __future__ import annotations

import jax.numpy as jnp

from toybb.models.capture import Capture, run_with_capture
from toybb.probes import metrics as M


def bos_metrics(model, tokens, task, *, resid_layer: int = 0, attn_layer: int = 1) -> dict[str, float]:
    """tokens [batch, seq + 1] from the task. Returns residual norm at BOS after `resid_layer` vs the other
    tokens, attention of non-trigger queries on BOS in `attn_layer`, and on the extra slot."""
    cfg = model.cfg
    inputs = tokens[:, :-1]
    sites = [f"blocks.{resid_layer}.resid_post@norm", f"blocks.{attn_layer}.attn.pattern"]
    if cfg.attn_bias:
        sites.append(f"blocks.{attn_layer}.attn.pattern_bias")
    if cfg.sink_token:  # the sites cover the input; the slot has sites of its own
        sites += [f"blocks.{attn_layer}.attn.pattern_slot", f"blocks.{resid_layer}.resid_post_slot@norm"]
    _, cap = run_with_capture(model, inputs, capture=Capture(tuple(sites)))
    non_trig = ~task.trigger_mask(inputs)
    peak, others, _ = M.residual_peak(cap[f"blocks.{resid_layer}.resid_post@norm"])
    pat = cap[f"blocks.{attn_layer}.attn.pattern"]
    out = {"residual_peak": float(peak), "residual_others": float(others),
           "sink_attention_excl0": float(M.sink_attention(pat, non_trig, exclude_sink_query=True).mean())}
    if cfg.attn_bias:
        extra = cap[f"blocks.{attn_layer}.attn.pattern_bias"]
        out["bias_attention"] = float(M.sink_attention(extra, non_trig, exclude_sink_query=True).mean())
    elif cfg.sink_token:
        slot = cap[f"blocks.{attn_layer}.attn.pattern_slot"]
        out["slot_attention"] = float(M.sink_attention(slot, non_trig, exclude_sink_query=True).mean())
        out["residual_peak_slot"] = float(jnp.mean(cap[f"blocks.{resid_layer}.resid_post_slot@norm"]))
    return out
