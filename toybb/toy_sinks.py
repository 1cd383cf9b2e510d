"""`python -m toybb.toy_sinks RUN_DIR ...`: the BOS residual peak and the sink of every run of `toybb
train` folders (`toybb.probes.sink_slots.bos_metrics` on each run's evaluation batch), one JSON line per run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from toybb.errors import ToybbError
from toybb.probes.sink_slots import bos_metrics
from toybb.train.runs import load_models, run_config


def run_dir_metrics(run_dir: str | Path) -> list[dict]:
    """bos_metrics of every run (seed) saved in a `toybb train` folder, on its evaluation batch."""
    import jax
    from flax import nnx

    cfg, tr, state, _ = load_models(run_dir)
    rows = []
    for r, (seed, lr) in enumerate(tr.runs):
        params = jax.tree.map(lambda x: x[r], state["params"])
        model = nnx.merge(tr.graphdef, params)
        rows.append({"run": str(run_dir), "seed": seed, "lr": lr, "attn_bias": cfg.model.attn_bias,
                     "sink_token": cfg.model.sink_token, **bos_metrics(model, tr.eval_tokens, tr.task)})
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m toybb.toy_sinks RUN_DIR [RUN_DIR ...] (run folders of `toybb train`)",
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
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
