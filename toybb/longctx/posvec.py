"""Positional vectors (SPEC §6, after Dong et al. 2024): h_{l,t} = p_{l,t} + c_{l,t} with p_{l,t} the
mean hidden state at layer l and position t over N samples, accumulated as a stream (samples are never
stored together); p_{l,t} = u_l + m_{l,t} with u_l the mean over positions.

Rule for the number of distinct positional vectors (documented choice): position t is *distinct* at
layer l when the cosine similarity of m_{l,t} with every other position's m_{l,t'} is below `tau`
(default 0.9). Neighbouring positions far from the start have near-parallel m's (similarity > 0.9), so
the count measures how many positions carry a vector of their own, the initial "anchor" tokens."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from toybb.errors import ToybbError


class StreamingMean:
    """Running mean over the first axis of batches [n, ...] of a fixed trailing shape (float64)."""

    def __init__(self):
        self.n = 0
        self.mean: np.ndarray | None = None

    def update(self, batch) -> None:
        batch = np.asarray(batch, np.float64)
        k = batch.shape[0]
        if k == 0:
            return
        if self.mean is None:
            self.mean = batch.mean(0)
        else:
            if batch.shape[1:] != self.mean.shape:
                raise ToybbError(f"streaming mean: batch shape {batch.shape[1:]} != {self.mean.shape}")
            self.mean += (batch.sum(0) - k * self.mean) / (self.n + k)
        self.n += k

    def result(self) -> np.ndarray:
        if self.n == 0:
            raise ToybbError("positional vectors need at least one sample (N = 0)")
        return self.mean


def positional_vectors(hidden: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
    """hidden: tokens [n, T] -> hidden states [layers, n, T, d]; batches: token arrays [n, T].
    Returns (p [layers, T, d], N samples)."""
    acc = StreamingMean()
    for toks in batches:
        h = np.asarray(hidden(np.asarray(toks)), np.float64)  # [L, n, T, d]
        acc.update(np.moveaxis(h, 1, 0))
    return acc.result(), acc.n


def decompose(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p [layers, T, d] -> (u [layers, d] mean over positions, m [layers, T, d] = p - u)."""
    u = p.mean(axis=1)
    return u, p - u[:, None]


def cosine_matrix(m: np.ndarray) -> np.ndarray:
    """m [T, d] -> cosine similarities [T, T]."""
    n = m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
    return n @ n.T


def pca(m: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """m [T, d] -> (coordinates [T, k] on the top-k principal axes, explained-variance ratios [k])."""
    x = m - m.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    return x @ vt[:k].T, var[:k] / var.sum()


def n_distinct(m: np.ndarray, tau: float = 0.9) -> int:
    """Number of positions t whose m_t has cosine < tau with every other position (see module doc)."""
    c = cosine_matrix(m)
    np.fill_diagonal(c, -np.inf)
    return int(np.sum(c.max(axis=1) < tau))


def beyond_similarity(m_in: np.ndarray, m_out: np.ndarray) -> np.ndarray:
    """For each position beyond the window (m_out [T2, d]), the max cosine with any position inside
    (m_in [T1, d]) -> [T2]. Low values = out-of-distribution positional vectors."""
    a = m_in / np.maximum(np.linalg.norm(m_in, axis=-1, keepdims=True), 1e-12)
    b = m_out / np.maximum(np.linalg.norm(m_out, axis=-1, keepdims=True), 1e-12)
    return (b @ a.T).max(axis=1)
