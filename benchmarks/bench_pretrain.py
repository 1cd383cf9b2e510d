"""Throughput of `toybb pretrain` on this machine, to choose the CPU configuration (issue 26, item 5).

For each candidate model (layers x d_model, heads, sequence length, batch) the real compiled training
segment (batch drawn from the token stream + forward + backward + AdamW) is timed after compilation, best
of two repeats, and the evaluation (held-out loss and every emergence metric) once; printed: parameters,
s/step, tokens/s, and the minutes a run of --steps steps with an evaluation every --eval-every steps takes.

    python benchmarks/bench_pretrain.py                  # all candidates
    python benchmarks/bench_pretrain.py --only 1         # one of them (index)
    python benchmarks/bench_pretrain.py --only 1 --torch # and the same model's step in PyTorch, same run

--torch times `torch_baseline.py --llama` (the same Llama-style model and AdamW step in PyTorch, on token
batches drawn before its clock) in a subprocess after the default candidate (4 x 128), and prints
PyTorch / toybb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from toybb.pretrain.config import PretrainConfig, build_model_config
from toybb.pretrain.data import prepare_data
from toybb.pretrain.loop import Pretrainer

TEXT = ("pride", "emma", "mobydick", "shakespeare", "pydoc")
# (layers, d_model, heads, seq_len, batch)
CANDIDATES = [(2, 128, 4, 64, 16), (4, 128, 4, 64, 16), (4, 192, 6, 64, 16), (6, 128, 4, 128, 16)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", type=int, default=None)
    ap.add_argument("--timed-steps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--torch", action="store_true", help="also time the same model's step in PyTorch")
    a = ap.parse_args()
    print(f"devices: {jax.devices()}")
    for i, (L, d, h, T, B) in enumerate(CANDIDATES):
        if a.only is not None and i != a.only:
            continue
        cfg = PretrainConfig(text=TEXT, vocab_size=a.vocab_size, seq_len=T, batch=B, steps=a.steps,
                             eval_every=a.eval_every)
        model = build_model_config(dict(n_layers=L, d_model=d, n_heads=h, mlp_dim=4 * d), cfg.vocab_size, T)
        t0 = time.perf_counter()
        data, _ = prepare_data(cfg, None)
        t_data = time.perf_counter() - t0
        tr = Pretrainer(cfg, model, data)
        state = tr.init_state()
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
        t_compile = tr.compile(state)
        tr.evaluate(state)  # compiles the evaluation
        times, step = [], 0
        for _ in range(2):
            t0 = time.perf_counter()
            state = tr.train(state, step, step + a.timed_steps)
            float(state["loss"])
            times.append(time.perf_counter() - t0)
            step += a.timed_steps
        t0 = time.perf_counter()
        tr.evaluate(state)
        t_eval = time.perf_counter() - t0
        per_step = min(times) / a.timed_steps
        run_min = (a.steps * per_step + (a.steps // a.eval_every) * t_eval) / 60
        print(f"[{i}] {L} layers x d {d}, {h} heads, T {T}, B {B}: {n_params / 1e6:.2f} M parameters, "
              f"{data.train.size:,} train tokens ({data.distinct:,} distinct; data {t_data:.1f} s); compile "
              f"{t_compile:.1f} s; {per_step * 1e3:.1f} ms/step = {B * T / per_step:,.0f} tokens/s; eval "
              f"{t_eval * 1e3:.0f} ms; a run of {a.steps} steps: {run_min:.1f} min, "
              f"{a.steps * B * T / 1e6:.1f} M tokens", flush=True)
        if a.torch and (L, d, h) == (4, 128, 4):  # the PyTorch baseline is `toybb pretrain`'s default model
            r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "torch_baseline.py"), "--llama", "--batch", str(B),
                                "--seq", str(T), "--steps", "20"], capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                raise SystemExit(f"PyTorch baseline failed:\n{r.stderr[-2000:]}")
            pt = json.loads(line[-1][7:])
            print(f"    PyTorch {pt['torch']} ({pt['threads']} threads), same model and AdamW step: "
                  f"{pt['s_per_step'] * 1e3:.1f} ms/step; PyTorch / toybb = {pt['s_per_step'] / per_step:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
