"""The attention core's two paths on this machine: exact (`_dense`: einsum, masked softmax, einsum, with
the [seq, seq] pattern as output) against `jax.nn.dot_product_attention` (`fast=True`), forward and
backward (a training step's use), causal softmax, one head, float32, compiled, best of `--reps`.

    python benchmarks/bench_attention.py                    # toy shapes: CPU default and paper
    python benchmarks/bench_attention.py --shapes 8x1024x9x64 --window 256
    python benchmarks/bench_attention.py --blocked 128 --seq 1024 2048 4096   # SmolLM2's attention, forward

This decides `toybb.device.fast_attention()` on the CPU (see benchmarks/README.md for the numbers).
--blocked B times one layer's forward attention of SmolLM2-135M's shape (batch 1, 9 query heads, 3 kv
heads, head_dim 64, causal, no weights returned) in blocks of B query rows: the exact blocked path
(`fast=False`: each block's [rows, visible keys] logits at once), the plain path toybb takes by default
(`_plain_blocked`: key chunks with a running softmax) and PyTorch's `scaled_dot_product_attention`
(flash attention on the CPU), alternating, medians of `--reps`.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from toybb.models.attention import attention


def time_path(b: int, t: int, h: int, dh: int, fast: bool, window: int | None, reps: int) -> float:
    """Seconds of one forward + backward of attention on [b, t, h, dh] inputs (best of `reps`)."""
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, dh), jnp.float32) for kk in ks)

    def loss(q, k, v):
        return attention(q, k, v, window=window, weights=False, fast=fast).out.sum()

    f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    with jax.default_matmul_precision("highest"):
        jax.block_until_ready(f(q, k, v))
        best = float("inf")
        for _ in range(reps):
            s = time.perf_counter()
            jax.block_until_ready(f(q, k, v))
            best = min(best, time.perf_counter() - s)
    return best


def time_blocked(seqs: list[int], block: int, reps: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count())
    print(f"one layer of SmolLM2-135M's attention (1 x T x 9 heads / 3 kv heads x 64), forward, block {block}, "
          f"median of {reps}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'T':>6s} {'exact blocked ms':>17s} {'plain path ms':>14s} {'torch SDPA ms':>14s} {'plain/exact':>12s} "
          f"{'plain/torch':>12s}")
    for t in seqs:
        r = np.random.default_rng(0)
        qn, kn, vn = (r.normal(size=(1, t, n, 64)).astype(np.float32) for n in (9, 3, 3))
        q, k, v = map(jnp.asarray, (qn, kn, vn))
        paths = {fast: jax.jit(lambda q, k, v, fast=fast: attention(q, k, v, weights=False, block=block,
                                                                      contiguous=True, fast=fast).out)
                 for fast in (False, None)}
        tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (qn, kn, vn))

        def sdpa():
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)

        runs = {"exact": lambda: paths[False](q, k, v).block_until_ready(),
                "plain": lambda: paths[None](q, k, v).block_until_ready(), "torch": sdpa}
        times = {n: [] for n in runs}
        for f in runs.values():
            f()
        for _ in range(reps):
            for n, f in runs.items():
                s = time.perf_counter()
                f()
                times[n].append(time.perf_counter() - s)
        ms = {n: 1e3 * float(np.median(x)) for n, x in times.items()}
        print(f"{t:6d} {ms['exact']:17.1f} {ms['plain']:14.1f} {ms['torch']:14.1f} {ms['plain'] / ms['exact']:12.2f} "
              f"{ms['plain'] / ms['torch']:12.2f}", flush=True)


def shape(s: str) -> tuple[int, int, int, int]:
    try:
        b, t, h, dh = (int(x) for x in s.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be BxTxHxD (e.g. 64x64x1x64), got {s!r}") from None
    if min(b, t, h, dh) < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {s!r}")
    return b, t, h, dh


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=shape, nargs="+", default=[shape("64x64x1x64"), shape("32x256x1x256")],
                    help="BxTxHxD: batch, sequence, heads, head dim")
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocked", type=int, default=None, metavar="B",
                    help="instead: SmolLM2's attention forward in blocks of B query rows (see above)")
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096], help="sequence lengths for --blocked")
    a = ap.parse_args()
    if a.blocked is not None:
        if a.blocked < 1 or min(a.seq) < 1 or a.reps < 1:
            ap.error("--blocked, --seq and --reps must be positive")
        return time_blocked(a.seq, a.blocked, a.reps)
    print(f"devices: {jax.devices()}  window: {a.window}  forward + backward, float32 (highest), best of {a.reps}")
    print(f"{'shape BxTxHxD':>16s} {'exact ms':>9s} {'fast ms':>9s} {'fast/exact':>10s}")
    for b, t, h, dh in a.shapes:
        ex = time_path(b, t, h, dh, False, a.window, a.reps)
        fa = time_path(b, t, h, dh, True, a.window, a.reps)
        print(f"{f'{b}x{t}x{h}x{dh}':>16s} {1e3 * ex:9.2f} {1e3 * fa:9.2f} {fa / ex:10.2f}")


if __name__ == "__main__":
    main()
