"""Text corpora as fixed-length token samples, streamed in batches.

A domain is `name=SOURCE`; SOURCE is resolved by `toybb.texts.resolve_source` (a text file, a folder,
a `.jsonl` file, or a built-in corpus such as `stdlib`, `pydoc` or `pride`).
A sample is `seq_len` tokens: [BOS] + seq_len - 1 text tokens, or seq_len text tokens without BOS. Each
document gives consecutive non-overlapping windows from its start, at most `max_per_doc` of them, so the
samples spread over documents; documents are read in a fixed order, so the samples are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from toybb.errors import ConfigError
from toybb.texts import BUILTINS, iter_documents, resolve_source  # noqa: F401 (BUILTINS, iter_documents: re-exported)


@dataclass(frozen=True)
class Domain:
    name: str
    source: str


def parse_domain(spec: str) -> Domain:
    """'prose=/path/to/dir' -> Domain('prose', '/path/to/dir'); checks the source exists."""
    name, sep, source = spec.partition("=")
    if not sep or not name.strip() or not source.strip():
        raise ConfigError(f"--domain {spec!r} is malformed; write NAME=SOURCE, e.g. code=stdlib or prose=pride")
    name, source = name.strip(), source.strip()
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--domain name {name!r} must be letters, digits, '-' or '_'")
    return Domain(name, resolve_source(source, f"--domain {name}"))


def iter_samples(
    documents: Iterator[str],
    encode: Callable[[str], list[int]],
    *,
    seq_len: int,
    bos_id: int | None,
    max_per_doc: int = 16,
) -> Iterator[np.ndarray]:
    """Fixed-length samples [seq_len] int32 from documents. With `bos_id` each sample starts with it."""
    body = seq_len - (bos_id is not None)
    # ~10 characters per token at most in practice: tokenizing only the head of a long document
    # (a whole novel) keeps the cost per sample bounded
    max_chars = max_per_doc * body * 10
    for doc in documents:
        ids = encode(doc[:max_chars])
        for i in range(min(len(ids) // body, max_per_doc)):
            win = ids[i * body : (i + 1) * body]
            yield np.asarray(([bos_id] if bos_id is not None else []) + list(win), np.int32)


def iter_batches(samples: Iterator[np.ndarray], n: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Up to n samples in batches of exactly `batch` rows (one compiled shape): (tokens [batch, seq] int32,
    valid [batch] bool). The last batch is padded by repeating its last sample, marked invalid."""
    buf: list[np.ndarray] = []
    taken = 0
    for s in samples:
        buf.append(s)
        taken += 1
        if len(buf) == batch:
            yield np.stack(buf), np.ones(batch, bool)
            buf = []
        if taken == n:
            break
    if buf:
        k = len(buf)
        buf += [buf[-1]] * (batch - k)
        yield np.stack(buf), np.arange(batch) < k


def domain_batches(domain: Domain, encode, *, n: int, seq_len: int, batch: int, bos_id: int | None,
                   max_per_doc: int = 16):
    """Batches (tokens, valid) of a domain; raises ConfigError if the corpus holds no full sample."""
    samples = iter_samples(iter_documents(domain.source), encode, seq_len=seq_len, bos_id=bos_id,
                           max_per_doc=max_per_doc)
    first = next(samples, None)
    if first is None:
        raise ConfigError(f"--domain {domain.name}: {domain.source!r} holds no text of {seq_len} tokens; "
                          f"use a larger corpus or a shorter --seq-len")

    def chain():
        yield first
        yield from samples

    return iter_batches(chain(), n, batch)
