"""The compiled functions of one run config: all runs (seeds x learning rates) vmapped in one program.

The model is split once (`nnx.split`); the training state of all runs is one pytree with a leading run
axis. Between two evaluation steps a jitted `fori_loop` with a dynamic trip count runs the vmapped train
step, so every segment length shares one compiled program and a resumed run replays exactly the same
computation as an uninterrupted one. Batch `i` of a run is sampled on the device from
`fold_in(data_key, i)`, so data never depends on how the steps were segmented. How the runs are laid
out (devices, vmapped chunks, micro-batches) is decided here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toybb import device
from toybb.checkpoints import load_checkpoint, save_checkpoint
from toybb.config import PRECISIONS, RunConfig
from toybb.errors import ConfigError
from toybb.models import build_model
from toybb.models.transformer import Transformer
from toybb.probes import bb as bbprobes
from toybb.probes.metrics import token_nll
from toybb.task import BBTask
from toybb.train.optim import make_optimizer


def trainer_key(cfg: RunConfig) -> str:
    """Configs with the same key share one Trainer (and its compiled functions): a Trainer serves any
    number of steps, so train.steps and train.ckpt_every are left out."""
    d = cfg.to_dict()
    d["train"]["steps"], d["train"]["ckpt_every"] = 0, 0
    return json.dumps(d, sort_keys=True)


def run_axis_devices(n_runs: int) -> list:
    """Local devices the run axis is sharded over: all of them when they divide the runs evenly, else
    none (one device runs everything)."""
    devs = jax.local_devices()  # multi-host sweeps give each process its own groups (toybb.train.sweep)
    return devs if len(devs) > 1 and n_runs % len(devs) == 0 else []


def runs_vmapped_together(cfg: RunConfig, n_devices: int = 1) -> int:
    """How many runs the compiled training step vmaps together (train.run_chunk resolved); the
    remaining chunks run one after another in the same program. With several devices the run axis
    is sharded and all runs are vmapped."""
    R = len(cfg.runs())
    if n_devices > 1:
        if cfg.train.run_chunk is not None and cfg.train.run_chunk < R // n_devices:
            raise ConfigError(
                f"train.run_chunk={cfg.train.run_chunk} applies on one device; with {n_devices} devices "
                "the runs are vmapped across them: set run_chunk to null (automatic)"
            )
        return R
    if cfg.train.run_chunk is not None:
        return min(cfg.train.run_chunk, R)
    if not device.cpu_heuristics():  # accelerators: all runs in one vmapped step
        return R
    # CPU: keep one chunk's MLP activations within ~1 MiB (2^18 floats); wider vmapped batches are
    # memory-bound (measured in benchmarks/bench_train.py)
    per_run = cfg.train.batch * cfg.task.seq_len * max(cfg.model.mlp_dim, cfg.model.d_model)
    return int(max(1, min(R, (1 << 18) // per_run)))


def microbatch_size(cfg: RunConfig) -> int:
    """Sequences per gradient micro-batch (train.microbatch resolved): the whole batch on
    accelerators; on a CPU the largest divisor of the batch whose MLP activations stay within
    ~8 MiB (2^21 floats), so a slice's forward and backward run in cache (bench_train.py: the paper
    configuration takes 4.6 s per step in slices of 8 sequences, 4.7-4.9 in 16, 5.1 in 32, 6.3 whole)."""
    B = cfg.train.batch
    if cfg.train.microbatch is not None:
        return cfg.train.microbatch
    if not device.cpu_heuristics():  # accelerators: the whole batch
        return B
    per_seq = cfg.task.seq_len * max(cfg.model.mlp_dim, cfg.model.d_model)
    fit = max(1, (1 << 21) // per_seq)
    return max(m for m in range(1, min(B, fit) + 1) if B % m == 0)


def with_precision(fn: Callable, precision: str) -> Callable:
    """`fn` traced under the run's float32 matmul precision (train.precision; "highest" = full float32,
    which JAX's GPU default, TF32, is not)."""
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(PRECISIONS[precision]):
            return fn(*args, **kwargs)
    return wrapped


@dataclass
class RunResult:
    """What `toybb.train.loop.train` returns: the evaluated metrics of every run and the final state."""

    out_dir: Path | None
    config: RunConfig
    runs: list[tuple[int, float]]
    steps: list[int]  # evaluation steps
    metrics: dict[str, np.ndarray]  # name -> [n_eval_steps, n_runs]
    state: Any  # final training state (params with a leading run axis, ...)
    graphdef: Any
    wall_seconds: float

    def model(self, run: int = 0) -> Transformer:
        """The trained model of run `run` (index into `runs`)."""
        params = jax.tree.map(lambda x: x[run], self.state["params"])
        return nnx.merge(self.graphdef, params)

    def final(self, name: str) -> np.ndarray:
        return self.metrics[name][-1]

    @property
    def task(self) -> BBTask:
        """The run's Bigram-Backcopy task (sampler, oracle, `encode`/`decode` of text)."""
        t = self.config.task
        return BBTask(n_triggers=t.n_triggers, bos=t.bos, table=t.table)


class Trainer:
    """Compiled functions of one run config (share one Trainer between calls to reuse compilation)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.task = BBTask(n_triggers=cfg.task.n_triggers, bos=cfg.task.bos, table=cfg.task.table)
        if self.task.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the task's vocabulary ({self.task.vocab_size})")
        self.runs = cfg.runs()
        abstract = nnx.eval_shape(lambda: build_model(cfg.model, nnx.Rngs(0), self.task))
        self.graphdef, _ = nnx.split(abstract)
        self.metric_names = bbprobes.metric_names(abstract, self.task, cfg.task.seq_len)
        self.tx = make_optimizer(cfg.optim)
        devs = run_axis_devices(len(self.runs))
        self.mesh = Mesh(np.array(devs), ("runs",)) if devs else None
        self.run_chunk = runs_vmapped_together(cfg, max(1, len(devs)))
        self.microbatch = microbatch_size(cfg)
        self._build()

    # ---- pure functions -------------------------------------------------------------------
    def _build(self):
        cfg, task, graphdef = self.cfg, self.task, self.graphdef
        B, T = cfg.train.batch, cfg.task.seq_len

        def init_one(seed, lr):
            init_key, data_key = jax.random.split(jax.random.key(seed))
            model = build_model(cfg.model, nnx.Rngs(params=init_key), task)
            _, params = nnx.split(model)
            opt_state = make_optimizer(cfg.optim, lr).init(params)
            return {"params": params, "opt_state": opt_state, "data_key": jax.random.key_data(data_key),
                    "bad_step": jnp.int32(-1)}

        def loss_fn(params, tokens):
            model = nnx.merge(graphdef, params)
            return token_nll(model(tokens[:, :-1]), tokens[:, 1:]).mean()

        def step_one(state, i):
            key = jax.random.fold_in(jax.random.wrap_key_data(state["data_key"]), i)
            tokens = task.sample(key, B, T)
            n_mb = B // self.microbatch
            if n_mb == 1:
                loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens)
            else:  # the mean over equal slices of the slices' means: the full-batch loss and gradient
                def acc(total, part):
                    return jax.tree.map(jnp.add, total, jax.value_and_grad(loss_fn)(state["params"], part)), None

                zero = (jnp.float32(0), jax.tree.map(jnp.zeros_like, state["params"]))
                total, _ = jax.lax.scan(acc, zero, tokens.reshape(n_mb, self.microbatch, T + 1))
                loss, grads = jax.tree.map(lambda x: x / n_mb, total)
            updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            # the first step whose parameters give a non-finite loss or are non-finite themselves, so a
            # checkpoint (saved only after a segment without one) never holds a diverged state
            finite = jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]))
            first = jnp.where(jnp.isfinite(loss), i + 1, i)
            bad = jnp.where((state["bad_step"] < 0) & ~(jnp.isfinite(loss) & finite), first, state["bad_step"])
            return {**state, "params": params, "opt_state": opt_state, "bad_step": bad}

        chunk = self.run_chunk
        if chunk >= len(self.runs):
            step_all = jax.vmap(step_one, in_axes=(0, None))
        else:  # chunks of `chunk` vmapped runs, one after another inside the compiled step
            def step_all(state, i):
                return jax.lax.map(lambda st: step_one(st, i), state, batch_size=chunk)

        def segment(state, start, stop):
            return jax.lax.fori_loop(start, stop, lambda i, s: step_all(s, i), state)

        def evaluate_one(params, tokens):
            return bbprobes.dynamics_metrics(nnx.merge(graphdef, params), tokens, task)

        prec = cfg.train.precision
        # eager, not compiled: its small kernels are shared by every config of the same shapes, where XLA
        # compiles each config's whole initialisation anew (5-10 s on a CPU); the same numbers either way
        self._init = jax.vmap(init_one)
        self._segment = jax.jit(with_precision(segment, prec), donate_argnums=0)
        self._evaluate = jax.jit(with_precision(jax.vmap(evaluate_one, in_axes=(0, None)), prec))
        self.eval_tokens = task.sample(jax.random.key(cfg.train.eval_seed), cfg.train.eval_batch, T)

    # ---- state --------------------------------------------------------------------------------
    def init_state(self):
        seeds = jnp.array([s for s, _ in self.runs], jnp.uint32)
        lrs = jnp.array([lr for _, lr in self.runs], jnp.float32)
        return self._shard(self._init(seeds, lrs))

    def _shard(self, state):
        if self.mesh is None:
            return state
        return jax.device_put(state, NamedSharding(self.mesh, P("runs")))

    def evaluate(self, state) -> dict[str, np.ndarray]:
        out = self._evaluate(state["params"], self.eval_tokens)
        return {k: np.asarray(v) for k, v in out.items()}

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, state, step: int) -> None:
        save_checkpoint(path, state, step)

    def load_checkpoint(self, path: Path):
        """(training state laid out like `init_state`, step) from a checkpoint of this config."""
        arrays, step = load_checkpoint(path, jax.eval_shape(self.init_state))
        return self._shard(arrays), step
