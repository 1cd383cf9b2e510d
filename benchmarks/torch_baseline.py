"""A plain PyTorch version of toybb's toy model and training step, written for the benchmarks: the baseline
`bench_train.py` measures in the same run as toybb (no reference time typed in).

The model is SPEC §2's: learned token and absolute position embeddings, pre-norm LayerNorm (eps 1e-5)
before attention and before the MLP, final LayerNorm, untied output projection; one softmax attention
head per layer (q/k/v/o without bias, scale 1/sqrt(head_dim), causal), MLP d -> 4d -> d with ReLU and no
bias; PyTorch's default initialisation. The step: cross-entropy of the next token, backward, AdamW
(lr 3e-4, betas (0.9, 0.99), eps 1e-8, weight decay 1e-4). Attention is
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (PyTorch's fastest plain attention).

Data: a pool of BB batches drawn before the clock starts with toybb's own sampler (the same task), cycled
through by the timed steps, so PyTorch's time excludes sampling; toybb's timed segment samples on the
device inside its compiled step, and `bench_train.py` reports that sampling time next to it.

Threads: `torch.set_num_threads(os.cpu_count())`, all cores, as XLA's CPU client uses.

    python benchmarks/torch_baseline.py --d 64 --layers 1 --batch 64 --seq 64 --steps 20
    python benchmarks/torch_baseline.py --llama --batch 16 --seq 64     # `toybb pretrain`'s default model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w_in, self.w_out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        h = self.ln1(x)
        # one head: [batch, 1, seq, d]
        q, k, v = (f(h).unsqueeze(1) for f in (self.q, self.k, self.v))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))
        return x + self.w_out(F.relu(self.w_in(self.ln2(x))))


class ToyTorch(nn.Module):
    """tokens [batch, seq] -> logits [batch, seq, vocab]."""

    def __init__(self, vocab: int, d: int, n_layers: int, max_len: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)  # N(0, 1), as SPEC §2
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.out = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        x = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.out(self.ln_f(x))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaBlock(nn.Module):
    """RMSNorm, attention with RoPE (half pairing, base 10000), RMSNorm, gated SiLU MLP; no biases."""

    def __init__(self, d: int, n_heads: int, mlp_dim: int):
        super().__init__()
        self.h = n_heads
        self.ln1, self.ln2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, mlp_dim, bias=False), nn.Linear(d, mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).view(b, t, self.h, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        q, k = (torch.cat([a1 * cos - a2 * sin, a2 * cos + a1 * sin], -1)
                for a1, a2 in (z.chunk(2, -1) for z in (q, k)))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(z.transpose(1, 2).reshape(b, t, d))
        h = self.ln2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class LlamaTorch(nn.Module):
    """`toybb pretrain`'s default model (toybb.pretrain.config.DEFAULT_MODEL: Llama-style, RoPE, RMSNorm, gated
    SiLU MLP, untied output) in PyTorch: tokens [batch, seq] -> logits [batch, seq, vocab]."""

    def __init__(self, vocab: int, d: int, n_layers: int, n_heads: int, mlp_dim: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(LlamaBlock(d, n_heads, mlp_dim) for _ in range(n_layers))
        self.ln_f, self.out = RMSNorm(d), nn.Linear(d, vocab, bias=False)
        half = d // n_heads // 2
        self.register_buffer("inv_freq", 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float32) / half))

    def forward(self, tokens):
        ang = torch.arange(tokens.shape[1], dtype=torch.float32)[:, None] * self.inv_freq
        cos, sin = ang.cos(), ang.sin()
        x = self.tok(tokens)
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.out(self.ln_f(x))


def time_torch_llama(d: int = 128, n_layers: int = 4, n_heads: int = 4, mlp_dim: int = 512, vocab: int = 1024,
                     batch: int = 16, seq: int = 64, steps: int = 20, warmup: int = 2, lr: float = 1e-3) -> dict:
    """Seconds per training step of `LlamaTorch` (median of `steps` after `warmup`): next-token
    cross-entropy on random token batches [batch, seq + 1] drawn before the clock, backward, AdamW with
    `toybb pretrain`'s defaults (lr 1e-3, betas (0.9, 0.99), eps 1e-8, no weight decay)."""
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, vocab, (batch, seq + 1), generator=gen) for _ in range(4)]
    model = LlamaTorch(vocab, d, n_layers, n_heads, mlp_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)

    def step(tokens):
        loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for i in range(warmup):
        step(pool[i % len(pool)])
    times = []
    for i in range(steps):
        s = time.perf_counter()
        loss = step(pool[i % len(pool)])
        times.append(time.perf_counter() - s)
    times.sort()
    return {"framework": "pytorch", "model": "llama", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "d": d, "layers": n_layers, "batch": batch, "seq": seq, "steps_timed": steps,
            "s_per_step": times[len(times) // 2], "last_loss": loss.item()}


def sample_pool(n: int, batch: int, seq: int, seed: int = 0):
    """`n` BB batches [batch, seq + 1] from toybb's sampler, as int64 torch tensors (drawn untimed)."""
    import jax
    import numpy as np

    from toybb.task import BBTask

    task = BBTask()
    sample = jax.jit(task.sample, static_argnums=(1, 2))
    pool = [torch.from_numpy(np.asarray(sample(jax.random.key(seed + i), batch, seq)).astype(np.int64))
            for i in range(n)]
    return pool, task.vocab_size


def time_torch(d: int, n_layers: int, batch: int, seq: int, steps: int, vocab: int = 67, max_len: int = 256,
               warmup: int = 2, pool_size: int = 4, device: str = "cpu") -> dict:
    """Seconds per training step of the PyTorch toy model (median over `steps` timed steps after
    `warmup`), and the loss before and after (a check that it trains)."""
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    pool, task_vocab = sample_pool(pool_size, batch, seq)
    vocab = max(vocab, task_vocab)
    model = ToyTorch(vocab, d, n_layers, max(max_len, seq)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-4)
    pool = [p.to(device) for p in pool]

    def step(tokens):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    first = step(pool[0]).item()
    for i in range(1, warmup):
        step(pool[i % len(pool)])
    sync()
    times = []
    for i in range(steps):
        s = time.perf_counter()
        loss = step(pool[i % len(pool)])
        sync()
        times.append(time.perf_counter() - s)
    times.sort()
    dt = times[len(times) // 2]
    return {"framework": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device, "d": d, "layers": n_layers, "batch": batch, "seq": seq, "steps_timed": steps,
            "s_per_step": dt, "first_loss": first, "last_loss": loss.item(),
            "uniform_loss": math.log(vocab)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--llama", action="store_true",
                    help="time `toybb pretrain`'s default Llama-style model instead (4 layers, d 128, vocab 1024; "
                         "--batch/--seq/--steps apply, defaults 16 x 64 there)")
    a = ap.parse_args()
    for name in ("d", "layers", "batch", "seq", "steps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be a positive integer")
    if a.llama:
        r = time_torch_llama(batch=a.batch, seq=a.seq, steps=a.steps, warmup=a.warmup)
    else:
        r = time_torch(a.d, a.layers, a.batch, a.seq, a.steps, warmup=a.warmup, device=a.device)
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
