"""Pretrain run folders (written by `toybb pretrain`): config.json ({"kind": "pretrain", "config": {"model",
"pretrain"}, ...}), tokenizer.json, metrics.csv, checkpoint.npz (the training state to resume from),
series/step_NNNNNNN.npz (the parameters at each step of the series) and summary.json. Checking a folder
before a run, and reading a step of the series back as a model."""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from toybb.config import section_from_dict
from toybb.errors import ConfigError
from toybb.llm.tokenizer import TextTokenizer
from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer, abstract_model
from toybb.pretrain.config import PretrainConfig
from toybb.pretrain.data import TOKENIZER_NAME, text_tokenizer
from toybb.records import out_folder, read_json
from toybb.train.checkpoint import CKPT_NAME, checkpoint_step, load_checkpoint

KIND = "pretrain"
SERIES = "series"


def series_path(folder: Path, step: int) -> Path:
    return Path(folder) / SERIES / f"step_{step:07d}.npz"


def series_steps(folder: str | Path) -> list[int]:
    """The steps of the series saved in `folder`."""
    return sorted(int(p.stem[5:]) for p in (Path(folder) / SERIES).glob("step_*.npz") if p.stem[5:].isdigit())


def is_pretrain_folder(path: str | Path) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    meta = read_json(p, "config", "repair or delete it")
    return isinstance(meta, dict) and meta.get("kind") == KIND


def read_configs(folder: str | Path) -> tuple[PretrainConfig, ModelConfig]:
    meta = read_json(Path(folder) / "config.json", "run config", f"delete {folder} to start over")
    try:
        c = meta["config"]
        return PretrainConfig.from_dict(c["pretrain"]), section_from_dict(ModelConfig, c["model"], "model")
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{folder}/config.json is not a toybb pretrain record ({e}); delete the folder") from None


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
    a, b = old_cfg.to_dict(), cfg.to_dict()
    diffs = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in free and a[k] != b[k]]
    ma, mb = json.loads(json.dumps(old_model.to_dict())), json.loads(json.dumps(model.to_dict()))
    diffs += [f"model.{k}: {ma[k]!r} -> {mb[k]!r}" for k in ma if ma[k] != mb.get(k)]
    if diffs:
        raise ConfigError(f"--out {out} holds a pretrain run of another configuration ({'; '.join(diffs[:4])}); "
                          "use another --out or delete the folder")
    step = checkpoint_step(Path(out) / CKPT_NAME)
    if step is not None and step > cfg.steps:  # as `toybb train` says it
        raise ConfigError(f"run folder {out} holds a checkpoint at step {step}, past --steps {cfg.steps}; "
                          f"give --steps {step} or more to continue it, or use another --out")


def load_step(folder: str | Path, step: int | None = None) -> tuple[Transformer, TextTokenizer, ModelConfig, int]:
    """(model, tokenizer, model config, step) of a pretrain folder: the parameters at `step` of its series,
    or (None) at the latest step it holds."""
    folder = Path(folder)
    cfg, model_cfg = read_configs(folder)
    saved = series_steps(folder)
    if step is None:
        if not saved:
            raise ConfigError(f"{folder} holds no checkpoint yet; train it first (toybb pretrain --out {folder})")
        step = saved[-1]
    if step not in saved:
        raise ConfigError(f"{folder} has no checkpoint of step {step}; its series: {saved or 'none yet'}")
    graphdef, template = nnx.split(abstract_model(model_cfg))
    state, got = load_checkpoint(series_path(folder, step), template)
    return nnx.merge(graphdef, state), text_tokenizer(folder / TOKENIZER_NAME, cfg), model_cfg, got
