"""Time 10^6 steps of the reduced models (one compiled lax.scan of fori_loops) on the CPU.

    JAX_PLATFORMS=cpu python benchmarks/bench_theory.py [--steps 1000000] [--batch 1,8]

Prints compile+run and run-only seconds and microseconds per step for gradient descent on the
softmax reduced model (5 types, 8 contexts), Adam on the residual model, and RK4 flow.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from toybb.theory import models as M  # noqa: E402
from toybb.theory.dynamics import Optimiser, log_grid, simulate  # noqa: E402


def _time(fn):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    return first, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--batch", default="1,8")
    args = ap.parse_args()
    grid = log_grid(args.steps, 20)
    rng = np.random.default_rng(0)
    print(f"{'model':<28}{'batch':>6}{'steps':>10}{'first (s)':>11}{'run (s)':>9}{'us/step':>9}")
    for b in (int(x) for x in args.batch.split(",")):
        inst = M.stack([M.random_instance(rng, 5, 8, w=2.0) for _ in range(b)])
        p0 = {"y": np.zeros((b, 5)), "s": rng.normal(0, 0.5, (b, 5))}
        rinst = M.stack([M.make_residual_instance(1.0, 1.0)] * b)
        r0 = {"theta": np.ones(b), "m": np.ones(b)}
        cases = [
            ("softmax, gradient descent", lambda: simulate("softmax", inst, p0, 1.0, grid, "gd")),
            ("softmax, flow (RK4)", lambda: simulate("softmax", inst, p0, 0.5, grid, "flow")),
            ("residual, Adam", lambda: simulate("residual", rinst, r0, 1e-3, grid, Optimiser("adam", eps=0.0))),
            ("residual, SGD momentum", lambda: simulate("residual", rinst, r0, 0.03, grid, "sgd")),
        ]
        for name, fn in cases:
            first, run = _time(fn)
            print(f"{name:<28}{b:>6}{args.steps:>10}{first:>11.2f}{run:>9.2f}{1e6 * run / args.steps:>9.2f}")


if __name__ == "__main__":
    main()
