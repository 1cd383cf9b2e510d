"""Perplexity of a pretrained model on a text: the one implementation the CLI and the tests use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toybb.errors import ToybbError
from toybb.llm.load import Pretrained
from toybb.models.forward import perplexity as _perplexity, token_logprobs


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    n_predicted: int
    n_tokens: int
    window: int


def perplexity(
    pre: Pretrained,
    text: str | None = None,
    *,
    ids: list[int] | None = None,
    max_tokens: int | None = 1024,
    window: int = 1024,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity over the first `max_tokens` tokens of `text`, in non-overlapping windows of `window`
    tokens (each window predicts all but its first token). With a BOS token the model expects, each
    window starts with it."""
    if max_tokens is not None and max_tokens < 0:
        raise ToybbError(f"max_tokens must be >= 0 (0 or None = all tokens), got {max_tokens}")
    if ids is None:
        if pre.tokenizer is None:
            raise ToybbError(f"{pre.source}: no tokenizer found; pass --tokenizer tokenizer.json")
        ids = pre.tokenizer.encode(text, add_bos=False)
    ids = list(ids)[:max_tokens] if max_tokens else list(ids)
    add_bos = pre.tokenizer is not None and pre.tokenizer.add_bos and pre.tokenizer.bos_id is not None
    window = min(window, pre.cfg.max_positions)
    step = window - 1 if add_bos else window
    if len(ids) < 2:
        raise ToybbError("text too short: need at least 2 tokens for a perplexity")
    chunks = [ids[i : i + step] for i in range(0, len(ids), step)]
    it = chunks
    if progress:
        from tqdm import tqdm

        it = tqdm(chunks, desc="perplexity", unit="window")
    total, count = 0.0, 0
    for c in it:
        seq = ([pre.tokenizer.bos_id] if add_bos else []) + c
        if len(seq) < 2:
            continue
        lp = token_logprobs(pre.model, np.asarray([seq]))
        total -= float(np.sum(lp, dtype=np.float64))
        count += lp.size
    nll = total / count
    return PerplexityResult(_perplexity(nll), nll, count, len(ids), window)
