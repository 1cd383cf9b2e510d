"""Run folders: whether one may hold a run of a config (`check_run_folder`), and reading
finished ones back: the config, the trained models, whether a folder already holds a finished run of a
config (so figures and series reuse it instead of training again)."""

from __future__ import annotations

import json
from pathlib import Path

from toybb.checkpoints import CKPT_NAME, checkpoint_step
from toybb.config import RunConfig, config_diffs
from toybb.errors import ConfigError, TrainingDiverged
from toybb.records import atomic_write, out_folder, read_json, read_run_config
from toybb.train.trainer import Trainer

DIVERGED_NAME = "diverged.json"  # written when a run diverges: a rerun says so instead of diverging again
RUN_FILES = ("config.json", "metrics.csv", CKPT_NAME, "summary.json", "active_dormant.csv", "interventions.csv",
             "dynamics.png", DIVERGED_NAME)


def check_run_folder(out_dir: str | Path, cfg: RunConfig) -> None:
    """Before compiling: `out_dir` must be a folder (or creatable) holding no run of another config or kind,
    no checkpoint past `cfg`'s steps, no run that diverged, and no folder where a run file goes."""
    d = out_folder(out_dir)
    for name in RUN_FILES:
        if (d / name).is_dir():
            raise ConfigError(f"{d / name} is a folder where the run writes a file; remove it or use another --out")
    if (d / "config.json").exists():
        meta = read_json(d / "config.json", "run config", "use another --out or delete the folder")
        if isinstance(meta, dict) and meta.get("kind", "train") != "train":
            raise ConfigError(f"run folder {out_dir} holds another kind of run ({meta.get('kind')!r}, not a "
                              "`toybb train` run); use another --out")
        diffs = config_diffs(read_run_config(out_dir)["config"], cfg)
        if diffs:
            raise ConfigError(
                f"run folder {out_dir} holds a run with another config ({'; '.join(diffs[:4])}); "
                "use another --out or delete the folder"
            )
    check_not_diverged(d)
    step = checkpoint_step(d / CKPT_NAME)
    if step is not None and step > cfg.train.steps:
        raise ConfigError(f"run folder {d} holds a checkpoint at step {step}, past --steps {cfg.train.steps}; "
                          f"give --steps {step} or more to continue it, or use another --out")


def check_not_diverged(folder: str | Path) -> None:
    """A run folder (of `toybb train` or `toybb pretrain`) whose run diverged before holds its record
    (diverged.json): TrainingDiverged (exit 3) naming the step, instead of training into NaN again."""
    d = Path(folder)
    if (d / DIVERGED_NAME).exists():
        rec = read_json(d / DIVERGED_NAME, "divergence record", "delete it to train the folder again")
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ConfigError(f"divergence record {str(d / DIVERGED_NAME)!r} is malformed; delete it to train again")
        raise TrainingDiverged(rec["step"], rec.get("runs") or [], rec.get("last_good_step"), str(d),
                               what=f"run folder {d} diverged before ({DIVERGED_NAME}; delete it to retry)")


def record_divergence(folder: str | Path, e: TrainingDiverged) -> None:
    """Write the divergence record that `check_not_diverged` reads."""
    rec = {"step": e.step, "runs": e.runs, "last_good_step": e.last_good_step}
    atomic_write(Path(folder) / DIVERGED_NAME, lambda f: f.write(json.dumps(rec)), mode="w")


def is_run_folder(path: str | Path) -> bool:
    """True if `path` is a folder whose config.json is a `toybb train` record (a Hugging Face model folder
    has a config.json too, without the `config` section); a malformed config.json is a ConfigError."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    meta = read_json(p / "config.json", "config", "repair or delete it")
    return (isinstance(meta, dict) and isinstance(meta.get("config"), dict) and "model" in meta["config"]
            and meta.get("kind", "train") == "train")  # `toybb pretrain` folders say "kind": "pretrain"


def run_config(run_dir: str | Path) -> RunConfig:
    d = Path(run_dir)
    if not (d / "config.json").is_file():
        raise ConfigError(f"{d} is not a toybb run folder (no config.json); give the --out of `toybb train`")
    return RunConfig.from_dict(read_run_config(d)["config"])


def is_finished(run_dir: str | Path, cfg: RunConfig | None = None) -> bool:
    """True if `run_dir` holds a finished run (summary.json at the last step) of `cfg` (if given)."""
    d = Path(run_dir)
    if not (d / "summary.json").exists() or not (d / "config.json").exists():
        return False
    saved = run_config(d)
    if cfg is not None and (config_diffs(saved.to_dict(), cfg) or saved.train.steps != cfg.train.steps):
        return False

    summary = read_json(d / "summary.json", "run summary", f"delete it to redo the final probes of {d}")
    return isinstance(summary, dict) and summary.get("step") == saved.train.steps


def load_models(run_dir: str | Path, trainer=None):
    """(config, trainer, training state of all runs, step) from a run folder's checkpoint;
    `nnx.merge(trainer.graphdef, params[r])` is run r's model (see RunResult.model)."""
    d = Path(run_dir)
    cfg = run_config(d)
    if not (d / CKPT_NAME).exists():
        raise ConfigError(f"{d} has no {CKPT_NAME}; train it first (toybb train --out {d})")
    trainer = trainer or Trainer(cfg)
    state, step = trainer.load_checkpoint(d / CKPT_NAME)
    return cfg, trainer, state, step


def model_of(trainer, state, run: int = 0):
    import jax
    from flax import nnx

    return nnx.merge(trainer.graphdef, jax.tree.map(lambda x: x[run], state["params"]))
