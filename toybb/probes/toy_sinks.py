"""Toy counterpart of the LLM findings (SPEC §5): does an explicit attention bias or a learned sink token
remove the BOS residual peak (after layer 0) and the BOS sink (layer 1) of a 3-layer BB model?

`bos_metrics` reads a trained toy model on the task's evaluation batch with the SPEC §3 metric functions,
always at the BOS token (position 1 when the model has a prepended sink token), and also reports the
attention given to the extra slot (k' or the sink token). `python -m toybb.probes.toy_sinks RUN_DIR...`
prints them for runs written by `toybb train`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

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
    out = {"resid_bos": float(peak), "resid_others": float(others),
           "attn_bos": float(M.sink_attention(pat, non_trig, exclude_sink_query=True).mean())}
    if cfg.attn_bias:
        extra = cap[f"blocks.{attn_layer}.attn.pattern_bias"]
        out["attn_extra"] = float(M.sink_attention(extra, non_trig, exclude_sink_query=True).mean())
    elif cfg.sink_token:
        slot = cap[f"blocks.{attn_layer}.attn.pattern_slot"]
        out["attn_extra"] = float(M.sink_attention(slot, non_trig, exclude_sink_query=True).mean())
        out["resid_sink_slot"] = float(jnp.mean(cap[f"blocks.{resid_layer}.resid_post_slot@norm"]))
    return out


def run_dir_metrics(run_dir: str | Path) -> list[dict]:
    """bos_metrics of every run (seed) saved in a `toybb train` folder, on its evaluation batch."""
    import jax
    from flax import nnx

    from toybb.train.runs import load_models

    cfg, tr, state, _ = load_models(run_dir)
    rows = []
    for r, (seed, lr) in enumerate(tr.runs):
        params = jax.tree.map(lambda x: x[r], state["params"])
        model = nnx.merge(tr.graphdef, params)
        rows.append({"run": str(run_dir), "seed": seed, "lr": lr, "attn_bias": cfg.model.attn_bias,
                     "sink_token": cfg.model.sink_token, **bos_metrics(model, tr.eval_tokens, tr.task)})
    return rows


def main(argv: list[str]) -> int:
    from toybb.errors import ToybbError
    from toybb.train.runs import run_config

    if not argv:
        print("usage: python -m toybb.probes.toy_sinks RUN_DIR [RUN_DIR ...] (run folders of `toybb train`)",
              file=sys.stderr)
        return 2
    try:
        for d in argv:  # every folder's config before any model is built
            run_config(d)
        for d in argv:
            for row in run_dir_metrics(d):
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    except ToybbError as e:
        print(f"toy_sinks: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
