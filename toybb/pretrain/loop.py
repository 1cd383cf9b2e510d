"""The training loop of `toybb pretrain`: one model, data parallel over every device (the batch is sharded
over a one-axis mesh, the parameters replicated), trained in jitted `fori_loop` segments between the
evaluation steps. Batch i is drawn from `fold_in(data_key, i)` and a segment's program has a dynamic trip
count, so a run resumed from its checkpoint computes exactly what an uninterrupted one does.

At each evaluation step the fixed held-out batch gives the held-out loss and, per layer, the emergence
metrics of `toybb.probes.metrics` (`metric_names`), appended to metrics.csv; at the steps of the series
the parameters are saved (`toybb.llm.pretrain_folder.series_path`), and every ckpt_every steps the whole
training state (checkpoint.npz), always after the rows it covers are on disk.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toybb.checkpoints import CKPT_NAME, checkpoint_step, load_checkpoint, save_checkpoint
from toybb.errors import CheckpointError, ConfigError, TrainingDiverged
from toybb.llm.pretrain_folder import KIND, first_token, series_path
from toybb.models.capture import Capture, capture_call
from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer, abstract_model
from toybb.names import column
from toybb.plot import plot_emergence
from toybb.pretrain.config import PretrainConfig
from toybb.pretrain.data import TokenData, batch_at, heldout_batch
from toybb.probes import metrics as M
from toybb.records import append_lines, atomic_write, package_versions, read_csv, read_json, remove_temporaries
from toybb.train.optim import make_optimizer
from toybb.train.runs import record_divergence
from toybb.train.trainer import with_precision

ATTN_METRICS = ("sink_attention_excl0", "sink_rate", "value_drain", "value_ratio")
RESID_METRICS = ("residual_peak", "residual_ratio", "massive_ratio", "kurtosis")


def metric_names(model: ModelConfig) -> list[str]:
    """The columns of metrics.csv after step and tokens: the losses, then per layer the attention metrics
    (layers with attention) and the residual-stream metrics."""
    names = [column("train_loss"), column("heldout_loss")]
    for l in range(model.n_layers):
        if model.has_attention(l):
            names += [column(m, l) for m in ATTN_METRICS]
        names += [column(m, l) for m in RESID_METRICS]
    return names


def eval_capture(model: ModelConfig) -> Capture:
    sites = ["blocks.*.resid_post", "blocks.*.resid_post@norm"]
    for l in range(model.n_layers):
        if model.has_attention(l):
            sites += [f"blocks.{l}.attn.pattern@key0", f"blocks.{l}.attn.v_out@norm"]
    return Capture(tuple(sites))


def emergence_metrics(model: Transformer, tokens: jax.Array) -> dict[str, jax.Array]:
    """Held-out loss and the per-layer emergence metrics of `model` on tokens [batch, seq + 1] (jit-able);
    position 0 (the BOS, or the first token) is the sink. sink_attention_excl0: attention on position 0,
    mean over queries 1.. and heads; sink_rate: Sink^ε over the heads; value_drain / value_ratio: ||W_O v||
    at position 0 (mean over heads) and over the median of the others; residual_peak / residual_ratio: the
    same for the residual norm after the block; massive_ratio: largest |activation| / median; kurtosis:
    the excess kurtosis of each token's residual vector, mean over tokens."""
    cfg: ModelConfig = model.cfg
    logits, cap = capture_call(model, tokens[:, :-1], capture=eval_capture(cfg))
    out = {column("heldout_loss"): M.token_nll(logits, tokens[:, 1:]).mean()}
    for l in range(cfg.n_layers):
        if cfg.has_attention(l):
            heads = M.sink_attention(cap[f"blocks.{l}.attn.pattern@key0"], exclude_sink_query=True)
            v = cap[f"blocks.{l}.attn.v_out@norm"]
            out[column("sink_attention_excl0", l)] = heads.mean()
            out[column("sink_rate", l)] = M.sink_rate(heads)
            out[column("value_drain", l)] = M.value_drain(v)[0].mean()
            out[column("value_ratio", l)] = M.ratio_to_others_median(v).mean()
        norm, x = cap[f"blocks.{l}.resid_post@norm"], cap[f"blocks.{l}.resid_post"]
        out[column("residual_peak", l)] = M.residual_peak(norm)[0]
        out[column("residual_ratio", l)] = M.ratio_to_others_median(norm)
        top, _, median = M.activation_profile(x, k=1)
        out[column("massive_ratio", l)] = jnp.mean(top[:, 0] / jnp.maximum(median, jnp.finfo(jnp.float32).tiny))
        out[column("kurtosis", l)] = M.excess_kurtosis(x).mean()
    return out


class Pretrainer:
    """The compiled functions of one pretraining run (init, a training segment, the evaluation)."""

    def __init__(self, cfg: PretrainConfig, model: ModelConfig, data: TokenData):
        self.cfg, self.model_cfg = cfg, model
        devs = jax.devices()
        if cfg.batch % len(devs):
            raise ConfigError(f"--batch {cfg.batch} must be a multiple of the {len(devs)} devices (data parallel)")
        self.mesh = Mesh(np.array(devs), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))
        self.names = metric_names(model)
        self.tx = make_optimizer(cfg.optim, lr=cfg.learning_rate())
        self.first = first_token(cfg.bos)
        self.train_tokens = self.replicate(jnp.asarray(data.train))
        self.eval_tokens = self.replicate(jnp.asarray(heldout_batch(data.heldout, cfg.eval_batch, cfg.seq_len,
                                                                    self.first)))
        init_key, data_key = jax.random.split(jax.random.key(cfg.seed))
        self.init_key, self.data_key = init_key, jax.random.key_data(data_key)
        self.graphdef = nnx.graphdef(abstract_model(model))
        self._build()

    def _build(self):
        cfg, graphdef, tx = self.cfg, self.graphdef, self.tx

        def init(key):
            _, params = nnx.split(Transformer(self.model_cfg, rngs=nnx.Rngs(params=key)))
            return {"params": params, "opt_state": tx.init(params), "loss": jnp.float32(jnp.nan)}

        def loss_fn(params, tokens):
            return M.token_nll(nnx.merge(graphdef, params)(tokens[:, :-1]), tokens[:, 1:]).mean()

        def step(i, state, train, data_key):
            key = jax.random.fold_in(jax.random.wrap_key_data(data_key), i)
            tokens = batch_at(train, key, cfg.batch, cfg.seq_len, self.first)
            tokens = jax.lax.with_sharding_constraint(tokens, self.sharded)
            loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens)
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "loss": loss}

        def segment(state, train, data_key, start, stop):
            return jax.lax.fori_loop(start, stop, lambda i, s: step(i, s, train, data_key), state)

        def evaluate(params, tokens):
            return emergence_metrics(nnx.merge(graphdef, params), tokens)

        prec = cfg.precision
        self._init = init  # eager: compiling the initialisation takes longer than running it
        self._segment = jax.jit(with_precision(segment, prec), donate_argnums=0, out_shardings=self.replicated)
        self._evaluate = jax.jit(with_precision(evaluate, prec))

    def replicate(self, tree):
        """`tree` (the same values in every process) as arrays replicated over the mesh. Across processes each
        builds its copies from its own values (`device_put` would compare them, and NaN != NaN)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, self.replicated, lambda i: a[i]), tree)

    def init_state(self):
        return self.replicate(self._init(self.init_key))

    def compile(self, state) -> float:
        """Compile the training segment for `state` ahead of time (so tokens/s leaves compilation out);
        returns the seconds it took."""
        t0 = time.perf_counter()
        self._compiled = self._segment.lower(state, self.train_tokens, self.data_key, jnp.int32(0),
                                             jnp.int32(0)).compile()
        return time.perf_counter() - t0

    def load(self, path: Path):
        state, step = load_checkpoint(path, jax.eval_shape(self._init, self.init_key))
        return self.replicate(state), step

    def train(self, state, start: int, stop: int):
        return self._compiled(state, self.train_tokens, self.data_key, jnp.int32(start), jnp.int32(stop))

    def evaluate(self, state) -> dict[str, float]:
        out = self._evaluate(state["params"], self.eval_tokens)
        row = {k: float(v) for k, v in out.items()}
        row[column("train_loss")] = float(state["loss"])
        return row


def _row_text(names: list[str], step: int, tokens: int, m: dict[str, float]) -> str:
    return ",".join([str(step), str(tokens), *(f"{m[n]:.9g}" for n in names)]) + "\n"


def _resume(trainer: Pretrainer, out: Path) -> tuple[Any, int, list[dict]]:
    """(state, step, metrics rows) from the folder's checkpoint, or a fresh state at step 0."""
    if (out / CKPT_NAME).exists():
        state, step = trainer.load(out / CKPT_NAME)
        rows = [r for r in read_csv(out / "metrics.csv", "metrics table", required=("step",))
                if r["step"].isdigit() and int(r["step"]) <= step]
        if not rows or int(rows[-1]["step"]) != step:
            raise CheckpointError(f"{out}/metrics.csv does not reach the checkpoint's step {step}; delete {out} to "
                                  "start over")
        return state, step, rows
    return trainer.init_state(), 0, []


def pretrain(cfg: PretrainConfig, model: ModelConfig, data: TokenData, out: str | Path, *, progress: bool = True,
             stop_after: int | None = None, info: dict | None = None, write_figure: bool = True,
             bb_run: str | Path | None = None, write: bool = True) -> dict:
    """Train (or resume) the run in folder `out` up to cfg.steps (or `stop_after`, as if interrupted there);
    returns the summary (also summary.json once the run is finished). `data` and the folder's tokenizer.json
    come from `toybb.pretrain.data.prepare_data`; `info` is added to config.json. A finished run draws
    emergence.png (`toybb.plot.plot_emergence`, with the `toybb train` run `bb_run` beside it when given)
    unless not `write_figure`. With several processes (`jax.distributed`) every process runs this on the same
    data and folder (a shared filesystem) and only the one with `write` writes it; the others train their
    share of each batch and read the folder to resume."""
    out = Path(out)
    if (out / "summary.json").is_file():
        done = read_json(out / "summary.json", "run summary", f"delete it to finish {out} again")
        if isinstance(done, dict) and done.get("step") == cfg.steps:
            return done  # finished already: nothing to train, nothing rewritten
    if write:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        (out / "series").mkdir(exist_ok=True)
    trainer = Pretrainer(cfg, model, data)
    meta = {"kind": KIND, "config": {"model": model.to_dict(), "pretrain": cfg.to_dict()},
            "precision": cfg.precision, "devices": len(jax.devices()), "processes": jax.process_count(),
            "versions": package_versions(),
            "command": " ".join(sys.argv),
            "data": {"documents": data.n_documents, "train_tokens": int(data.train.size),
                     "heldout_tokens": int(data.heldout.size), "distinct_train_tokens": data.distinct},
            **(info or {})}
    if write:
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(meta, indent=2)), mode="w")
    state, step, rows = _resume(trainer, out)
    header = ["step", "tokens", *trainer.names]
    text = "".join(",".join(r[k] for k in header) + "\n" for r in rows)  # the rows as they were appended
    if write:
        atomic_write(out / "metrics.csv", lambda f: f.write(",".join(header) + "\n" + text), mode="w")
    per_step = cfg.batch * cfg.seq_len  # positions the model reads per step
    if step == 0:
        row = trainer.evaluate(state)
        if write:
            append_lines(out / "metrics.csv", _row_text(trainer.names, 0, 0, row))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="pretrain", dynamic_ncols=True, file=sys.stderr)
    compile_s = trainer.compile(state) if step < cfg.steps else 0.0
    trained_s, trained_steps, series = 0.0, 0, set(cfg.series())
    last = None
    try:
        for target in cfg.eval_steps():
            if target <= step:
                continue
            t0 = time.perf_counter()
            state = trainer.train(state, step, target)
            loss = float(state["loss"])  # waits for the segment
            trained_s += time.perf_counter() - t0
            trained_steps += target - step
            if not np.isfinite(loss):
                diverged = TrainingDiverged(target, [], checkpoint_step(out / CKPT_NAME), str(out))
                if write:
                    record_divergence(out, diverged)  # a rerun says so instead of training into NaN again
                raise diverged
            prev, step = step, target
            last = trainer.evaluate(state)
            if write:
                append_lines(out / "metrics.csv", _row_text(trainer.names, step, step * per_step, last))
                if step in series:
                    save_checkpoint(series_path(out, step), state["params"], step)
                if step // cfg.ckpt_every > prev // cfg.ckpt_every or step == cfg.steps:
                    save_checkpoint(out / CKPT_NAME, state, step)
            if bar is not None:  # the postfix first: the update draws it
                bar.set_postfix(loss=f"{loss:.3f}", heldout=f"{last[column('heldout_loss')]:.3f}",
                                tok_s=f"{trained_steps * per_step / max(trained_s, 1e-9):,.0f}", refresh=False)
                bar.update(step - prev)
            if stop_after is not None and step >= stop_after:
                break
    finally:
        if bar is not None:
            bar.close()
    summary = {"step": step, "tokens_seen": step * per_step, "distinct_train_tokens": data.distinct,
               "train_tokens": int(data.train.size), "seconds_training": round(trained_s, 3),
               "seconds_compiling": round(compile_s, 3), "devices": len(jax.devices()),
               "tokens_per_second": round(trained_steps * per_step / trained_s, 1) if trained_s else None,
               "heldout_loss": None if last is None else last[column("heldout_loss")]}
    if step == cfg.steps and write:
        atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2)), mode="w")
        if write_figure:
            plot_emergence(out, bb_run=bb_run)
    return summary
