"""Memory a training program will need, checked before it is compiled: `toybb train` and every sweep
group go through `check_memory`, so a model or batch that cannot fit is one line, not an allocation
failure minutes later."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from toybb.config import RunConfig
from toybb.errors import ConfigError
from toybb.models import build_model
from toybb.task import BBTask
from toybb.train.trainer import microbatch_size, run_axis_devices, runs_vmapped_together


def estimate_group_bytes(cfg: RunConfig) -> int:
    """Rough bytes of one program (one `toybb train` or one sweep group): params, gradients and
    optimizer state of every run, plus the activations of one training step (kept for the backward
    pass) and of the evaluation batch."""
    from flax import nnx

    task = BBTask(n_triggers=cfg.task.n_triggers, bos=cfg.task.bos, table=cfg.task.table)
    abstract = nnx.eval_shape(lambda: build_model(cfg.model, nnx.Rngs(0), task))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))
    opt_copies = 2 if cfg.optim.name == "adam" else 1
    m, T = cfg.model, cfg.task.seq_len
    # per token and layer: residual, LN, q/k/v/out, MLP hidden (x2 for ReLU input/output), attention row
    per_tok = m.n_layers * (8 * m.d_model + 2 * m.mlp_dim + 3 * m.n_heads * T) + 2 * m.vocab_size
    n_runs = len(cfg.runs())
    together = runs_vmapped_together(cfg, max(1, len(run_axis_devices(n_runs))))  # as the Trainer will
    # training activations exist for one micro-batch of the runs vmapped together at a time (micro-
    # batches add one gradient accumulator per run); the evaluation vmaps all runs
    micro = microbatch_size(cfg)
    acts = 4 * per_tok * T * max(together * micro, n_runs * cfg.train.eval_batch)
    grad_copies = 3 if micro < cfg.train.batch else 2
    return n_runs * 4 * n_params * (grad_copies + opt_copies) + acts


def available_bytes() -> tuple[int, str]:
    """(bytes available to one program, where from): the memory limit of all local accelerators, or
    MemAvailable of /proc/meminfo for CPU devices (they share host memory)."""
    devs = jax.local_devices()
    if devs[0].platform != "cpu":
        stats = devs[0].memory_stats() or {}  # None on backends that do not report it
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) * len(devs), f"{len(devs)} x {devs[0].device_kind} memory limit"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable of /proc/meminfo"
    except OSError:
        pass
    return 1 << 62, "unknown (no /proc/meminfo)"


def check_memory(cfg: RunConfig, name: str, limit: int | None = None) -> int:
    """Raise ConfigError when `cfg` needs more than `limit` bytes (default: what is available);
    returns the estimate."""
    avail, src = (limit, "--max-memory-gb") if limit is not None else available_bytes()
    need = estimate_group_bytes(cfg)
    if need > avail:
        m = cfg.model
        raise ConfigError(
            f"{name} ({len(cfg.runs())} runs, d_model {m.d_model}, {m.n_layers} layer(s), batch "
            f"{cfg.train.batch}, seq {cfg.task.seq_len}) needs about {need / 2**30:.1f} GiB "
            f"(params + optimizer + activations) but {avail / 2**30:.1f} GiB are available ({src}); "
            "use fewer seeds/learning rates, a smaller model or batch")
    return need
