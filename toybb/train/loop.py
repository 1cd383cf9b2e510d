"""Training of toy models on the BB task: all runs (seeds x learning rates) vmapped in one compiled
program, metrics on a fixed evaluation batch on a grid of steps, atomic checkpoints and resume.

Design: the model is split once (`nnx.split`); the training state of all runs is one pytree with a
leading run axis. Between two evaluation steps a jitted `fori_loop` with a dynamic trip count runs
the vmapped train step, so every segment length shares one compiled program and a resumed run
replays exactly the same computation as an uninterrupted one. Batch `i` of a run is sampled on the
device from `fold_in(data_key, i)`, so data never depends on how the steps were segmented.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toybb import device
from toybb.config import PRECISIONS, RunConfig
from toybb.errors import CheckpointError, ConfigError, TrainingDiverged
from toybb.models import build_model
from toybb.models.toy import ToyTransformer
from toybb.probes import bb as bbprobes
from toybb.probes.metrics import token_nll
from toybb.records import (append_lines, atomic_write as _atomic_write, out_folder, read_csv, read_run_config,
                           remove_temporaries)
from toybb.task import BBTask
from toybb.train.optim import make_optimizer

CKPT_NAME = "checkpoint.npz"


def package_versions() -> dict[str, str]:
    import flax
    import jaxlib

    import toybb

    return {
        "python": platform.python_version(),
        "toybb": toybb.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": str(jax.devices()),
    }


@dataclass
class RunResult:
    out_dir: Path | None
    config: RunConfig
    runs: list[tuple[int, float]]
    steps: list[int]  # evaluation steps
    metrics: dict[str, np.ndarray]  # name -> [n_eval_steps, n_runs]
    state: Any  # final training state (params with a leading run axis, ...)
    graphdef: Any
    wall_seconds: float

    def model(self, run: int = 0) -> ToyTransformer:
        """The trained model of run `run` (index into `runs`)."""
        params = jax.tree.map(lambda x: x[run], self.state["params"])
        return nnx.merge(self.graphdef, params)

    def final(self, name: str) -> np.ndarray:
        return self.metrics[name][-1]


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


class Trainer:
    """Compiled functions of one run config (share one Trainer between calls to reuse compilation)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.task = BBTask(n_triggers=cfg.task.n_triggers, bos=cfg.task.bos, table=cfg.task.table)
        if self.task.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the task's vocabulary ({self.task.vocab_size})")
        self.runs = cfg.runs()
        self.metric_names = bbprobes.metric_names(cfg.model)
        abstract = nnx.eval_shape(lambda: build_model(cfg.model, nnx.Rngs(0), self.task))
        self.graphdef, _ = nnx.split(abstract)
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
        self._init = jax.jit(jax.vmap(init_one))
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
        leaves = jax.tree.leaves(state)
        arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
        arrays["__step__"] = np.array(step, np.int64)
        arrays["__n_leaves__"] = np.array(len(leaves), np.int64)
        _atomic_write(path, lambda f: np.savez(f, **arrays))

    def load_checkpoint(self, path: Path):
        template = jax.eval_shape(self.init_state)
        leaves, treedef = jax.tree.flatten(template)
        try:
            with np.load(path, allow_pickle=False) as z:
                n = int(z["__n_leaves__"])
                step = int(z["__step__"])
                if n != len(leaves):
                    raise CheckpointError(
                        f"checkpoint {path} holds {n} arrays but this config needs {len(leaves)}; "
                        "it was written by a different model or optimiser: use another --out"
                    )
                new = []
                for i, t in enumerate(leaves):
                    a = z[f"leaf_{i:05d}"]
                    if a.shape != t.shape or a.dtype != t.dtype:
                        raise CheckpointError(
                            f"checkpoint {path}: array {i} has shape {a.shape} {a.dtype}, expected {t.shape} {t.dtype}; "
                            "it does not match this config: use another --out"
                        )
                    new.append(a)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to start over") from None
        return self._shard(jax.tree.unflatten(treedef, [jnp.asarray(a) for a in new])), step


def _csv_lines(names: list[str], runs, step: int, m: dict[str, np.ndarray]) -> list[list[str]]:
    return [[str(step), str(seed), f"{lr:g}", *(f"{float(m[n][r]):.9g}" for n in names)]
            for r, (seed, lr) in enumerate(runs)]


def _write_metrics_csv(path: Path, names: list[str], runs, steps: list[int], rows: list[dict[str, np.ndarray]]):
    def write(f):
        w = csv.writer(f)
        w.writerow(["step", "seed", "lr", *names])
        for step, m in zip(steps, rows):
            w.writerows(_csv_lines(names, runs, step, m))

    _atomic_write(path, write, mode="w")


def _append_metrics_csv(path: Path, names: list[str], runs, step: int, m: dict[str, np.ndarray]) -> None:
    """Append one evaluation step's rows in one write (a resumed run truncates to its checkpoint's step first)."""
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(_csv_lines(names, runs, step, m))
    append_lines(path, buf.getvalue())


def _read_metrics_csv(path: Path, names: list[str], runs, upto: int) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    steps: list[int] = []
    rows: list[dict[str, np.ndarray]] = []
    if not path.exists():
        return steps, rows
    by_step: dict[int, list[dict[str, str]]] = {}
    for row in read_csv(path, "metrics table"):  # drops a torn last line
        if any(row.get(k) in (None, "") for k in ("step", "seed", *names)):
            continue
        try:
            s = int(row["step"])
        except ValueError:
            continue
        if s <= upto:
            by_step.setdefault(s, []).append(row)
    for s in sorted(by_step):
        group = by_step[s]
        if len(group) != len(runs):
            continue
        steps.append(s)
        rows.append({n: np.array([float(g[n]) for g in group], np.float32) for n in names})
    return steps, rows


def _config_matches(saved: dict, cfg: RunConfig) -> list[str]:
    """Fields that differ between a saved config and `cfg`, ignoring those a resumed run may change."""
    now = json.loads(json.dumps(cfg.to_dict()))
    saved = json.loads(json.dumps(saved))
    diffs = []
    for sec in now:
        for k, v in now[sec].items():
            if sec == "train" and k in ("steps", "ckpt_every", "run_chunk", "microbatch"):
                continue
            old = saved.get(sec, {}).get(k)
            if sec == "train" and k == "precision" and old is None:
                old = "highest"  # folders written before the field existed trained at full float32 on CPU
            if v != old:
                diffs.append(f"{sec}.{k}: {old!r} -> {v!r}")
    return diffs


def check_run_folder(out_dir: str | Path, cfg: RunConfig) -> None:
    """Before compiling: `out_dir` must be a folder (or creatable) holding no run of another config."""
    out_folder(out_dir)
    if (Path(out_dir) / "config.json").exists():
        diffs = _config_matches(read_run_config(out_dir)["config"], cfg)
        if diffs:
            raise ConfigError(
                f"run folder {out_dir} holds a run with another config ({'; '.join(diffs[:4])}); "
                "use another --out or delete the folder"
            )


def train(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    trainer: Trainer | None = None,
    stop_after: int | None = None,
    write_figure: bool = True,
) -> RunResult:
    """Train every run of `cfg` (seeds x learning rates, vmapped) and record the dynamics.

    out_dir: run folder (config.json, metrics.csv, checkpoint.npz, final probes, dynamics.png); an
      existing folder with a checkpoint of the same config is resumed. None: nothing is written.
    stop_after: stop (as if interrupted) once this step is reached; used to test resumption.
    """
    t0 = time.perf_counter()
    if out_dir is not None:
        check_run_folder(out_dir, cfg)
    trainer = trainer or Trainer(cfg)
    if _config_matches(trainer.cfg.to_dict(), cfg):
        raise ValueError("trainer was built for another config (only train.steps, ckpt_every, run_chunk and microbatch may differ)")
    out = Path(out_dir) if out_dir is not None else None
    names, runs = trainer.metric_names, trainer.runs
    grid = cfg.train.eval_steps()

    state, step, steps_done, rows = None, 0, [], []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        cfg_path = out / "config.json"
        meta = {"config": cfg.to_dict(), "runs": [{"seed": s, "lr": lr} for s, lr in runs],
                "versions": package_versions(), "command": " ".join(sys.argv),
                "runs_vmapped_together": trainer.run_chunk, "microbatch": trainer.microbatch}
        _atomic_write(cfg_path, lambda f: f.write(json.dumps(meta, indent=2)), mode="w")
        if (out / CKPT_NAME).exists():
            state, step = trainer.load_checkpoint(out / CKPT_NAME)
            steps_done, rows = _read_metrics_csv(out / "metrics.csv", names, runs, step)
            if not steps_done or steps_done[-1] != step:
                raise CheckpointError(
                    f"{out}/metrics.csv does not reach the checkpoint's step {step}; delete {out} to start over"
                )
    if state is None:
        state = trainer.init_state()
        step = 0
        rows = [trainer.evaluate(state)]
        steps_done = [0]
    if out is not None:  # the rows up to the checkpoint; later rows are appended as they come
        _write_metrics_csv(out / "metrics.csv", names, runs, steps_done, rows)
    last_ckpt = step if (out is not None and (out / CKPT_NAME).exists()) else None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=step, unit="step", desc=f"train {len(runs)} run(s)",
                   dynamic_ncols=True, file=sys.stderr)
    try:
        for target in grid:
            if target <= step:
                continue
            state = trainer._segment(state, jnp.int32(step), jnp.int32(target))
            bad = np.asarray(state["bad_step"])
            if (bad >= 0).any():
                first = int(bad[bad >= 0].min())
                raise TrainingDiverged(first, [int(r) for r in np.nonzero(bad >= 0)[0]], last_ckpt,
                                       str(out) if out else None)
            prev, step = step, target
            rows.append(trainer.evaluate(state))
            steps_done.append(step)
            if out is not None:
                _append_metrics_csv(out / "metrics.csv", names, runs, step, rows[-1])
            if bar is not None:
                bar.update(step - prev)
                bar.set_postfix(loss=f"{np.median(rows[-1]['loss']):.3f}",
                                sink=f"{np.median(rows[-1].get('sink_attention_l0', np.nan)):.2f}", refresh=False)
            due = step // cfg.train.ckpt_every > prev // cfg.train.ckpt_every or step == cfg.train.steps
            if out is not None and due:  # after the rows: a checkpoint never points past the rows on disk
                trainer.save_checkpoint(out / CKPT_NAME, state, step)
                last_ckpt = step
            if stop_after is not None and step >= stop_after:
                break
    finally:
        if bar is not None:
            bar.close()

    metrics = {n: np.stack([r[n] for r in rows]) for n in names}
    result = RunResult(out, cfg, runs, steps_done, metrics, state, trainer.graphdef, time.perf_counter() - t0)
    if out is not None and step == cfg.train.steps:
        write_final_probes(result, trainer)
        if write_figure:
            from toybb.plot import plot_dynamics

            plot_dynamics(out, out / "dynamics.png")
    return result


def probe_label(task, cfg: RunConfig) -> str:
    """"paper" when the active/dormant probe [BOS] + every non-trigger + [v] fits the trained sequence
    length; otherwise "truncated" (its body cut to the trained positions: not the paper's probe)."""
    full = bbprobes.dormancy_probe_tokens(task).shape[1]
    return "paper" if full <= cfg.task.seq_len else "truncated"


def final_probes(result: RunResult, trainer: Trainer) -> tuple[list[dict], list[dict]]:
    """Active/dormant rows (run, token, layer, head, attention on BOS, dormant, is_trigger) and
    intervention rows (run, intervention, back-copy risk, bigram risk) for every run."""
    cfg, task = result.config, trainer.task
    probe = jnp.asarray(bbprobes.dormancy_probe_tokens(task, cfg.task.seq_len))
    probe_kind = probe_label(task, cfg)
    if probe.shape[1] > cfg.model.max_len and cfg.model.position == "learned":
        raise ConfigError(
            f"the active/dormant probe needs {probe.shape[1]} positions but model.max_len is {cfg.model.max_len}"
        )
    graphdef, tokens = trainer.graphdef, trainer.eval_tokens
    interventions = bbprobes.intervention_names(cfg.model)

    # the in-text counterpart of the probe needs rare characters to occur: a natural sample of at least
    # 2^16 tokens (e.g. ~20 'z' among Tiny Shakespeare's bigrams), drawn from its own fixed seed
    n_nat = max(cfg.train.eval_batch, -(-(1 << 16) // cfg.task.seq_len))
    natural_tokens = task.sample(jax.random.key(cfg.train.eval_seed + 1), n_nat, cfg.task.seq_len)[:, :-1]

    probes = getattr(trainer, "_final_probes", None)  # compiled once per Trainer (sweeps reuse it)
    if probes is None:
        def probes(all_params, natural_tokens):  # one compiled program for all final probes
            def probe_one(params):
                model = nnx.merge(graphdef, params)
                attn = bbprobes.sink_attention_of_last_query(model, probe)
                risks = jnp.stack([jnp.stack(bbprobes.intervention_risks(model, tokens, task, ab)) for _, ab in interventions])
                return attn, risks

            def natural_one(params):  # run by run: the large sample's patterns exist for one run at a time
                return bbprobes.bos_attention_by_token(nnx.merge(graphdef, params), natural_tokens, probe.shape[0])

            # run by run: at the paper's size the interventions' activations of many runs at once exceed
            # the memory of a CPU machine
            attn, risks = jax.lax.map(probe_one, all_params)
            natural, count = jax.lax.map(natural_one, all_params)
            return attn, natural, count, risks

        probes = jax.jit(with_precision(probes, cfg.train.precision))
        trainer._final_probes = probes

    # [runs, layers, tokens, heads] x2, [runs, tokens], [runs, n_iv, 2]
    attn, natural, count, risks = (np.asarray(x) for x in probes(result.state["params"], natural_tokens))
    ad_rows = []
    for r, (seed, lr) in enumerate(result.runs):
        for l in range(cfg.model.n_layers):
            if not cfg.model.has_attention(l):
                continue
            for v in range(attn.shape[2]):
                for h in range(attn.shape[3]):
                    a = float(attn[r, l, v, h])
                    ad_rows.append({"seed": seed, "lr": lr, "layer": l, "head": h, "token": v,
                                    "char": task.chars[v], "is_trigger": bool(task.is_trigger[v]),
                                    "bos_attention": a, "probe": probe_kind, "probe_len": probe.shape[1], "dormant": a >= bbprobes.M.DORMANT_THRESHOLD,
                                    # the same query on a natural sample of >= 2^16 tokens (NaN: absent there)
                                    "natural_bos_attention": float(natural[r, l, v, h]), "natural_count": int(count[r, v])})
    iv_rows = []
    for i, (name, _) in enumerate(interventions):
        for r, (seed, lr) in enumerate(result.runs):
            iv_rows.append({"seed": seed, "lr": lr, "intervention": name,
                            "backcopy_risk": float(risks[r, i, 0]), "bigram_risk": float(risks[r, i, 1])})
    return ad_rows, iv_rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    if rows:
        _atomic_write(path, write, mode="w")


def summarize(result: RunResult, ad_rows: list[dict], iv_rows: list[dict]) -> dict[str, Any]:
    """Final metrics (median and per run), active tokens per run and layer, intervention medians."""
    summary: dict[str, Any] = {"step": result.steps[-1], "wall_seconds": round(result.wall_seconds, 2),
                               "runs": [{"seed": s, "lr": lr} for s, lr in result.runs],
                               "initial_median": {}, "final_median": {}, "final_per_run": {}}
    for n, v in result.metrics.items():
        summary["initial_median"][n] = float(np.median(v[0]))
        summary["final_median"][n] = float(np.median(v[-1]))
        summary["final_per_run"][n] = [float(x) for x in v[-1]]
    active: dict[str, list[str]] = {}
    in_text: dict[str, list[str]] = {}  # probe-active and also off BOS on the evaluation batch
    for row in ad_rows:
        if not row["dormant"]:
            key = f"seed{row['seed']}_lr{row['lr']:g}_l{row['layer']}h{row['head']}"
            active.setdefault(key, []).append(row["char"])
            if row["natural_bos_attention"] < bbprobes.M.DORMANT_THRESHOLD:  # False for NaN (absent token)
                in_text.setdefault(key, []).append(row["char"])
    summary["active_tokens"] = active
    summary["active_tokens_in_text"] = in_text
    if ad_rows:  # "truncated": the probe was cut to the trained length and is not the paper's
        summary["active_dormant_probe"] = {"kind": ad_rows[0]["probe"], "length": ad_rows[0]["probe_len"]}
    ivs: dict[str, dict[str, float]] = {}
    for row in iv_rows:
        ivs.setdefault(row["intervention"], {"backcopy_risk": [], "bigram_risk": []})
        ivs[row["intervention"]]["backcopy_risk"].append(row["backcopy_risk"])
        ivs[row["intervention"]]["bigram_risk"].append(row["bigram_risk"])
    summary["interventions_median"] = {k: {m: float(np.median(v)) for m, v in d.items()} for k, d in ivs.items()}
    return summary


def write_final_probes(result: RunResult, trainer: Trainer) -> dict[str, Any]:
    ad_rows, iv_rows = final_probes(result, trainer)
    out = result.out_dir
    _write_rows(out / "active_dormant.csv", ad_rows)
    _write_rows(out / "interventions.csv", iv_rows)
    summary = summarize(result, ad_rows, iv_rows)
    _atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2)), mode="w")
    return summary
