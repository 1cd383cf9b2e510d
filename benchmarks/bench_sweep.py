"""Sweep throughput (issue 7): run-steps per second of R runs vmapped in one compiled program (one
sweep group) against the same runs trained one by one, and the scaling of a vmapped group over
1, 2, 4 forced CPU devices.

The timed work is the Trainer's compiled training segment (sampling + forward + backward + optimiser),
excluding compilation and evaluation. "One by one" trains single-run Trainers back to back (one
compiled program shared by all of them, as a loop over `toybb train --seeds 1` in one process
would); it is measured on a subset of runs and extrapolated linearly to R (its cost per run does not
depend on R), which the output says.

    python benchmarks/bench_sweep.py                 # d 32, batch 32, sequence 32 (the CPU gallery runs)
    python benchmarks/bench_sweep.py --d 64 --batch 64 --seq 64   # the CPU default
    python benchmarks/bench_sweep.py --scaling-only

Measured 2026-11-23 on 2 CPU cores shared with other jobs (load average 4-12), run-steps/s:
  d 32, B 32, T 32 (load ~12): one by one 188; vmapped 1 / 8 / 64 runs: 195 / 174 / 146
    = 1.04x / 0.92x / 0.78x one by one; 64 runs on 1 / 2 / 4 forced devices: 157 / 172 / 161 (1.00 / 1.10 / 1.03x)
  d 16, B 8, T 8 (load ~5): one by one 7219; vmapped 1 / 8 / 64: 7376 / 9101 / 8276
    = 1.02x / 1.26x / 1.15x; 64 runs on 1 / 2 / 4 forced devices: 7478 / 8581 / 9501 (1.00 / 1.15 / 1.27x)
Session 11, quiet machine (load ~3), d 32, B 32, T 32, `--runs 1,8,64 --seq-measured 3 --end-to-end 64
--e2e-steps 300`: one by one 267; vmapped 1 / 8 / 64: 374 / 329 / 369 (1.40 / 1.24 / 1.38x); 64 runs with
the automatic train.run_chunk (2 at a time): 398 (1.49x); 1 / 2 / 4 forced devices 401 / 470 / 445
(1.00 / 1.17 / 1.11x). End to end (`toybb train` processes: start-up, compilation, evaluation and
writing included), 64 runs x 300 steps: one by one 64 x 7.2 s = 461 s, one `toybb train --seeds 64`
57 s = 8.1x.
The 5x target is met end to end but not by the compiled step alone: each run's segment is already one
compiled fori_loop (no per-step dispatch to amortise) and two cores are saturated by one run's matmuls,
so vmapping removes per-run start-up, compilation and evaluation calls, not compute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from toybb.config import cpu_preset


def config(d: int, batch: int, seq: int, n_runs: int, chunk: int | None = -1):
    """chunk -1: all runs vmapped together; None: toybb's automatic train.run_chunk; k: k at a time."""
    return cpu_preset().replace(model={"d_model": d, "max_len": seq}, task={"seq_len": seq},
                                train={"batch": batch, "eval_batch": batch, "seeds": tuple(range(n_runs)),
                                       "run_chunk": n_runs if chunk == -1 else chunk})


def time_vmapped(cfg, steps: int) -> tuple[float, float]:
    """(run-steps/s, compile seconds) of all runs of `cfg` vmapped in one program."""
    from toybb.train.trainer import Trainer

    tr = Trainer(cfg)
    state = tr.init_state()
    t = time.perf_counter()
    state = tr._segment(state, jnp.int32(0), jnp.int32(1))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state = tr._segment(state, jnp.int32(1), jnp.int32(1 + steps))
    jax.block_until_ready(state)
    return len(cfg.runs()) * steps / (time.perf_counter() - t), compile_s


def time_sequential(cfg, n_measured: int, steps: int) -> float:
    """run-steps/s of single-run Trainers trained one after another (n_measured of them)."""
    from toybb.train.trainer import Trainer

    tr = Trainer(cfg.replace(train={"seeds": (0,)}))
    state = tr._segment(tr.init_state(), jnp.int32(0), jnp.int32(1))  # compile once
    jax.block_until_ready(state)
    t = time.perf_counter()
    for seed in range(n_measured):
        tr1 = tr  # same shapes: the compiled program is reused; a fresh state per run
        s = tr1._init(jnp.array([seed], jnp.uint32), jnp.array([cfg.optim.learning_rate], jnp.float32))
        s = tr1._segment(s, jnp.int32(0), jnp.int32(steps))
        jax.block_until_ready(s)
    return n_measured * steps / (time.perf_counter() - t)


def end_to_end(d, batch, seq, R, steps, n_measured) -> dict:
    """Wall time of R runs as one `toybb train --seeds R` process vs `toybb train --seeds 1` processes
    one after another (n_measured of them timed, extrapolated to R): what a researcher waits for."""
    import tempfile

    base = [sys.executable, "-m", "toybb.cli", "train", "--d-model", str(d), "--batch", str(batch),
            "--eval-batch", str(batch), "--seq-len", str(seq), "--steps", str(steps), "--no-progress", "--no-plot"]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))

    def wall(seeds: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            r = subprocess.run(base + ["--seeds", str(seeds), "--out", tmp], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-2000:])
            return time.perf_counter() - t

    one = sorted(wall(1) for _ in range(n_measured))[n_measured // 2]
    together = wall(R)
    out = {"runs": R, "steps": steps, "one_run_process_s": one, "one_by_one_s": R * one,
           "one_process_s": together, "ratio": R * one / together}
    print(f"end to end, {R} runs x {steps} steps: one by one {R * one:.0f} s (one process {one:.1f} s, median of "
          f"{n_measured}, x {R}); one `toybb train --seeds {R}` {together:.0f} s  = {R * one / together:.2f}x")
    return out


SCALING_SCRIPT = """
import json, sys, jax
sys.path.insert(0, {root!r})
from benchmarks.bench_sweep import config, time_vmapped
cfg = config({d}, {batch}, {seq}, {runs})
rate, comp = time_vmapped(cfg, {steps})
print(json.dumps({{"devices": jax.local_device_count(), "run_steps_per_s": rate, "compile_s": comp}}))
"""


def scaling(d, batch, seq, runs, steps, devices=(1, 2, 4)) -> list[dict]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    for n in devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        code = SCALING_SCRIPT.format(root=root, d=d, batch=batch, seq=seq, runs=runs, steps=steps)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--runs", default="1,8,64", help="vmapped group sizes")
    ap.add_argument("--seq-measured", type=int, default=4, help="runs timed one by one (extrapolated)")
    ap.add_argument("--work", type=int, default=1600, help="about this many run-steps per measurement")
    ap.add_argument("--scaling-runs", type=int, default=64)
    ap.add_argument("--scaling-only", action="store_true")
    ap.add_argument("--end-to-end", type=int, default=0, metavar="R",
                    help="also time R runs as one `toybb train --seeds R` process against `toybb train --seeds 1` "
                         "processes one after another (start-up, compilation and evaluation included)")
    ap.add_argument("--e2e-steps", type=int, default=300)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    print(f"devices: {jax.devices()}  os.cpu_count(): {os.cpu_count()}  load average: {os.getloadavg()}")
    print(f"config: 1-layer softmax, Adam, d {args.d}, batch {args.batch}, sequence {args.seq}")
    res: dict = {"d": args.d, "batch": args.batch, "seq": args.seq}
    if not args.scaling_only:
        steps1 = max(20, args.work // max(1, args.seq_measured))
        seq_rate = time_sequential(config(args.d, args.batch, args.seq, 1), args.seq_measured, steps1)
        print(f"one by one: {seq_rate:.1f} run-steps/s (measured on {args.seq_measured} runs x {steps1} steps; "
              f"R runs one by one take R times as long: extrapolated linearly)")
        res["sequential_run_steps_per_s"] = seq_rate
        res["vmapped"] = []
        for R in (int(x) for x in args.runs.split(",")):
            steps = max(10, args.work // R)
            rate, comp = time_vmapped(config(args.d, args.batch, args.seq, R), steps)
            res["vmapped"].append({"runs": R, "run_steps_per_s": rate, "ratio_vs_sequential": rate / seq_rate,
                                   "compile_s": comp, "steps": steps})
            print(f"{R:3d} runs vmapped: {rate:8.1f} run-steps/s  = {rate / seq_rate:5.2f}x one by one  "
                  f"(compile {comp:.1f} s, {steps} steps timed)")
        R = max(int(x) for x in args.runs.split(","))
        steps = max(10, args.work // R)
        rate, comp = time_vmapped(config(args.d, args.batch, args.seq, R, chunk=None), steps)
        res["automatic_chunk"] = {"runs": R, "run_steps_per_s": rate, "ratio_vs_sequential": rate / seq_rate}
        print(f"{R:3d} runs, automatic train.run_chunk: {rate:8.1f} run-steps/s  = {rate / seq_rate:5.2f}x one by one")
    if args.end_to_end:
        res["end_to_end"] = end_to_end(args.d, args.batch, args.seq, args.end_to_end, args.e2e_steps, args.seq_measured)
    sc = scaling(args.d, args.batch, args.seq, args.scaling_runs, max(10, args.work // args.scaling_runs))
    base = sc[0]["run_steps_per_s"]
    for r in sc:
        r["speedup_vs_1"] = r["run_steps_per_s"] / base
        print(f"{args.scaling_runs} runs vmapped on {r['devices']} forced CPU device(s): {r['run_steps_per_s']:8.1f} "
              f"run-steps/s = {r['speedup_vs_1']:.2f}x 1 device (compile {r['compile_s']:.1f} s)")
    res["scaling"] = sc
    print("target: 64 vmapped runs >= 5x the throughput of the same runs one by one")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
