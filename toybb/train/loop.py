"""The training loop of toy models on the BB task: every run of a config (seeds x learning rates) trained
by one `Trainer` (`toybb.train.trainer`), metrics on a fixed evaluation batch on a grid of steps
appended to metrics.csv, atomic checkpoints (`toybb.checkpoints`) and resume, then the final
probes (`toybb.train.final`) and the dynamics figure.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from toybb.checkpoints import CKPT_NAME
from toybb.config import RunConfig, config_diffs
from toybb.errors import CheckpointError, ConfigError, TrainingDiverged
from toybb.plot import plot_dynamics
from toybb.records import (append_metrics_csv, atomic_write, folder_lock, package_versions, read_metrics_csv,
                           remove_temporaries, write_metrics_csv)
from toybb.train.final import write_final_probes
from toybb.train.runs import check_run_folder, record_divergence
from toybb.train.trainer import RunResult, Trainer


@dataclass
class _Progress:
    """Where a run stands: its training state, step, and the evaluated steps with their metrics."""

    state: Any
    step: int
    steps_done: list[int]
    rows: list[dict[str, np.ndarray]]


def _resume_or_start(trainer: Trainer, cfg: RunConfig, out: Path | None) -> _Progress:
    """The run folder's config record written and its checkpoint (with the metrics rows up to it) read
    back, or a fresh state evaluated at step 0; metrics.csv rewritten up to where the run stands."""
    names, runs = trainer.metric_names, trainer.runs
    p = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        meta = {"config": cfg.to_dict(), "runs": [{"seed": s, "lr": lr} for s, lr in runs],
                "versions": package_versions(), "command": " ".join(sys.argv),
                "runs_vmapped_together": trainer.run_chunk, "microbatch": trainer.microbatch}
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(meta, indent=2)), mode="w")
        if (out / CKPT_NAME).exists():
            state, step = trainer.load_checkpoint(out / CKPT_NAME)
            steps_done, rows = read_metrics_csv(out / "metrics.csv", names, runs, step)
            if not steps_done or steps_done[-1] != step:
                raise CheckpointError(
                    f"{out}/metrics.csv does not reach the checkpoint's step {step}; delete {out} to start over"
                )
            p = _Progress(state, step, steps_done, rows)
    if p is None:
        state = trainer.init_state()
        p = _Progress(state, 0, [0], [trainer.evaluate(state)])
    if out is not None:  # the rows up to the checkpoint; later rows are appended as they come
        write_metrics_csv(out / "metrics.csv", names, runs, p.steps_done, p.rows)
    return p


def _train_segments(trainer: Trainer, cfg: RunConfig, out: Path | None, p: _Progress, stop_after: int | None,
                    bar) -> None:
    """Train `p` from its step along the evaluation grid: after each segment check for divergence,
    evaluate, append the rows, and checkpoint when due (always after the rows are on disk)."""
    last_ckpt = p.step if (out is not None and (out / CKPT_NAME).exists()) else None
    for target in cfg.train.eval_steps():
        if target <= p.step:
            continue
        p.state = trainer._segment(p.state, jnp.int32(p.step), jnp.int32(target))
        bad = np.asarray(p.state["bad_step"])
        if (bad >= 0).any():
            first = int(bad[bad >= 0].min())
            raise TrainingDiverged(first, [int(r) for r in np.nonzero(bad >= 0)[0]], last_ckpt,
                                   str(out) if out else None)
        prev, p.step = p.step, target
        p.rows.append(trainer.evaluate(p.state))
        p.steps_done.append(p.step)
        if out is not None:
            append_metrics_csv(out / "metrics.csv", trainer.metric_names, trainer.runs, p.step, p.rows[-1])
        if bar is not None:
            bar.update(p.step - prev)
            bar.set_postfix(loss=f"{np.median(p.rows[-1]['loss']):.3f}",
                            sink=f"{np.median(p.rows[-1].get('sink_attention_l0', np.nan)):.2f}", refresh=False)
        due = p.step // cfg.train.ckpt_every > prev // cfg.train.ckpt_every or p.step == cfg.train.steps
        if out is not None and due:  # after the rows: a checkpoint never points past the rows on disk
            trainer.save_checkpoint(out / CKPT_NAME, p.state, p.step)
            last_ckpt = p.step
        if stop_after is not None and p.step >= stop_after:
            break


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
      existing folder with a checkpoint of the same config is resumed. None: nothing is written. The
      folder is locked while training (FolderBusy if another process writes it); a divergence is
      recorded in it (diverged.json), so a rerun says so instead of training into NaN again.
    stop_after: stop (as if interrupted) once this step is reached; used to test resumption.
    """
    if out_dir is None:
        return _train(cfg, None, progress, trainer, stop_after, write_figure)
    with folder_lock(out_dir):
        check_run_folder(out_dir, cfg)
        try:
            return _train(cfg, Path(out_dir), progress, trainer, stop_after, write_figure)
        except TrainingDiverged as e:
            record_divergence(out_dir, e)
            raise


def _train(cfg: RunConfig, out: Path | None, progress: bool, trainer: Trainer | None, stop_after: int | None,
           write_figure: bool) -> RunResult:
    t0 = time.perf_counter()
    trainer = trainer or Trainer(cfg)
    if config_diffs(trainer.cfg.to_dict(), cfg):
        raise ConfigError("trainer was built for another config (only train.steps, ckpt_every, run_chunk and microbatch may differ)")
    p = _resume_or_start(trainer, cfg, out)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=p.step, unit="step", desc=f"train {len(trainer.runs)} run(s)",
                   dynamic_ncols=True, file=sys.stderr)
    try:
        _train_segments(trainer, cfg, out, p, stop_after, bar)
    finally:
        if bar is not None:
            bar.close()

    metrics = {n: np.stack([r[n] for r in p.rows]) for n in trainer.metric_names}
    result = RunResult(out, cfg, trainer.runs, p.steps_done, metrics, p.state, trainer.graphdef,
                       time.perf_counter() - t0)
    if out is not None and p.step == cfg.train.steps:
        write_final_probes(result, trainer)
        if write_figure:
            plot_dynamics(out, out / "dynamics.png")
    return result
