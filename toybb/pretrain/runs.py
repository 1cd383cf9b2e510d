"""Pretrain run folders (written by `toybb pretrain`; their format, and reading a step of their series back as a
checkpoint, are `toybb.llm.pretrain_folder`'s): reading a folder's run config, and checking a folder before a
run."""

from __future__ import annotations

import json
from pathlib import Path

from toybb.checkpoints import CKPT_NAME, checkpoint_step
from toybb.errors import ConfigError
from toybb.llm.pretrain_folder import is_pretrain_folder, read_record
from toybb.models.config import ModelConfig
from toybb.pretrain.config import PretrainConfig
from toybb.records import out_folder
from toybb.train.runs import check_not_diverged


def read_configs(folder: str | Path) -> tuple[PretrainConfig, ModelConfig]:
    return read_record(folder, PretrainConfig.from_dict)


def check_pretrain_folder(out: str | Path, cfg: PretrainConfig, model: ModelConfig) -> None:
    """Before anything is read or compiled: `out` is a folder (or creatable) holding nothing, or a pretrain
    run of the same configuration (only --steps, --eval-every, --ckpt-every and the series may differ) whose
    checkpoint is not past --steps."""
    out_folder(out)
    p = Path(out) / "config.json"
    if not p.exists():
        return
    if not is_pretrain_folder(out):
        raise ConfigError(f"--out {out} holds another kind of run (its config.json is not a toybb pretrain record); "
                          "use another --out")
    old_cfg, old_model = read_configs(out)
    free = ("steps", "eval_every", "ckpt_every", "series_per_decade", "series_steps")
    if "cosine" in (old_cfg.schedule, cfg.schedule):  # the cosine decay ends at --steps: another --steps is another run
        free = tuple(k for k in free if k != "steps")
    a, b = old_cfg.to_dict(), cfg.to_dict()
    diffs = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in free and a[k] != b[k]]
    ma, mb = json.loads(json.dumps(old_model.to_dict())), json.loads(json.dumps(model.to_dict()))
    diffs += [f"model.{k}: {ma[k]!r} -> {mb[k]!r}" for k in ma if ma[k] != mb.get(k)]
    if diffs:
        raise ConfigError(f"--out {out} holds a pretrain run of another configuration ({'; '.join(diffs[:4])}); "
                          "use another --out or delete the folder")
    check_not_diverged(out)
    step = checkpoint_step(Path(out) / CKPT_NAME)
    if step is not None and step > cfg.steps:  # as `toybb train` says it
        raise ConfigError(f"run folder {out} holds a checkpoint at step {step}, past --steps {cfg.steps}; "
                          f"give --steps {step} or more to continue it, or use another --out")
