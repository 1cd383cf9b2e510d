"""Reading finished run folders back: the config, the trained models, whether a folder already holds
a finished run of a config (so figures and series reuse it instead of training again)."""

from __future__ import annotations

from pathlib import Path

from toybb.config import RunConfig
from toybb.errors import ConfigError


def run_config(run_dir: str | Path) -> RunConfig:
    from toybb.records import read_run_config

    d = Path(run_dir)
    if not (d / "config.json").is_file():
        raise ConfigError(f"{d} is not a toybb run folder (no config.json); give the --out of `toybb train`")
    return RunConfig.from_dict(read_run_config(d)["config"])


def is_finished(run_dir: str | Path, cfg: RunConfig | None = None) -> bool:
    """True if `run_dir` holds a finished run (summary.json at the last step) of `cfg` (if given)."""
    from toybb.train.loop import _config_matches

    d = Path(run_dir)
    if not (d / "summary.json").exists() or not (d / "config.json").exists():
        return False
    saved = run_config(d)
    if cfg is not None and (_config_matches(saved.to_dict(), cfg) or saved.train.steps != cfg.train.steps):
        return False
    from toybb.records import read_json

    summary = read_json(d / "summary.json", "run summary", f"delete it to redo the final probes of {d}")
    return isinstance(summary, dict) and summary.get("step") == saved.train.steps


def load_models(run_dir: str | Path, trainer=None):
    """(config, trainer, training state of all runs, step) from a run folder's checkpoint;
    `nnx.merge(trainer.graphdef, params[r])` is run r's model (see RunResult.model)."""
    from toybb.train.loop import CKPT_NAME, Trainer

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
