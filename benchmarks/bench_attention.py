"""The attention core's two paths on this machine: exact (`_dense`: einsum, masked softmax, einsum, with
the [seq, seq] pattern as output) against `jax.nn.dot_product_attention` (`fast=True`), forward and
backward (a training step's use), causal softmax, one head, float32, compiled, best of `--reps`.

    python benchmarks/bench_attention.py                    # toy shapes: CPU default and paper
    python benchmarks/bench_attention.py --shapes 8x1024x9x64 --window 256

This decides `toybb.device.fast_attention()` on the CPU (see benchmarks/README.md for the numbers).
"""

from __future__ import annotations

import argparse
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
    a = ap.parse_args()
    print(f"devices: {jax.devices()}  window: {a.window}  forward + backward, float32 (highest), best of {a.reps}")
    print(f"{'shape BxTxHxD':>16s} {'exact ms':>9s} {'fast ms':>9s} {'fast/exact':>10s}")
    for b, t, h, dh in a.shapes:
        ex = time_path(b, t, h, dh, False, a.window, a.reps)
        fa = time_path(b, t, h, dh, True, a.window, a.reps)
        print(f"{f'{b}x{t}x{h}x{dh}':>16s} {1e3 * ex:9.2f} {1e3 * fa:9.2f} {fa / ex:10.2f}")


if __name__ == "__main__":
    main()
