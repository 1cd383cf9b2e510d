"""The format of a `toybb pretrain` folder, read as a checkpoint (like `hf.py` and `gguf_loader.py`):
config.json ({"kind": "pretrain", "config": {"model", "pretrain"}, ...}), tokenizer.json (byte-level BPE,
<|endoftext|> = 0, <|bos|> = 1), checkpoint.npz (the training state to resume from) and series/step_NNNNNNN.npz
(the parameters at each step of the series). A step of the series is read back as its config and tokenizer
(`open_step`), then its parameters (`step_params`); `toybb.llm.load.open_checkpoint` builds the model from
them as from any checkpoint. Writing and training such a folder is `toybb.pretrain`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from flax import nnx

from toybb.checkpoints import load_checkpoint
from toybb.config import section_from_dict
from toybb.errors import ConfigError
from toybb.llm.tokenizer import TextTokenizer, from_tokenizer_json
from toybb.models.config import ModelConfig
from toybb.models.transformer import abstract_model
from toybb.records import read_json

KIND = "pretrain"
SERIES = "series"
TOKENIZER_NAME = "tokenizer.json"
BOS_TOKEN, EOS_TOKEN = "<|bos|>", "<|endoftext|>"  # the tokenizer's special tokens (ids 1 and 0)
DEFAULT_BOS = "token"
T = TypeVar("T")


def parse_bos(text: str) -> str:
    """--bos: "token" (the tokenizer's <|bos|> first in every sequence), "none", or "fixed:ID" (token ID
    first in every sequence: a fixed first token, as Gu et al. 2025)."""
    t = text.strip() if isinstance(text, str) else ""
    if t in ("token", "none"):
        return t
    if t.startswith("fixed:") and t[6:].isdigit():
        return f"fixed:{int(t[6:])}"
    raise ConfigError(f"--bos must be token, none or fixed:ID (a token id), got {text!r}")


def first_token(bos: str) -> int | None:
    """The id every sequence starts with under the run's --bos `bos`: <|bos|> (1), the fixed id, or None."""
    if bos == "none":
        return None
    return 1 if bos == "token" else int(bos[6:])


def check_first_token(bos: str, vocab_size: int) -> None:
    """A fixed first token must be a token of the vocabulary."""
    if bos.startswith("fixed:") and first_token(bos) >= vocab_size:
        raise ConfigError(f"--bos {bos}: the token id must be below --vocab-size ({vocab_size})")


def text_tokenizer(path: Path, bos: str) -> TextTokenizer:
    """The run's tokenizer.json as the probes' tokenizer: its first token in front of every text."""
    first = first_token(bos)
    return from_tokenizer_json(path, bos_id=first, add_bos=first is not None)


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


def read_record(folder: str | Path, parse: Callable[[Any], T]) -> tuple[T, ModelConfig]:
    """(parse(the pretrain section of config.json), the model config); a record without them is a ConfigError.
    parse: `PretrainConfig.from_dict` for the whole run config, or `bos_setting` for what loading needs."""
    meta = read_json(Path(folder) / "config.json", "run config", f"delete {folder} to start over")
    try:
        c = meta["config"]
        return parse({**c["pretrain"]}), section_from_dict(ModelConfig, c["model"], "model")  # {**}: it must be a mapping
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{folder}/config.json is not a toybb pretrain record ({e}); delete the folder") from None


def bos_setting(section: dict[str, Any]) -> str:
    """The --bos of a saved pretrain section (what reading the tokenizer back needs of it)."""
    return parse_bos(section.get("bos", DEFAULT_BOS))


def open_step(folder: str | Path, step: int | None = None,
              tokenizer: str | Path | None = None) -> tuple[ModelConfig, TextTokenizer, int]:
    """(model config, tokenizer, step) of a pretrain folder at `step` of its series (None: the latest step it
    holds), without reading any parameters. tokenizer: a tokenizer.json instead of the run's own. An empty
    series, or a step it lacks, is a ConfigError naming the steps it holds."""
    folder = Path(folder)
    bos, model_cfg = read_record(folder, bos_setting)
    check_first_token(bos, model_cfg.vocab_size)
    saved = series_steps(folder)
    if not saved:
        raise ConfigError(f"{folder} holds no checkpoint yet; train it first (toybb pretrain --out {folder})")
    if step is None:
        step = saved[-1]
    if step not in saved:
        raise ConfigError(f"{folder} has no checkpoint of step {step}; its series: {saved}")
    return model_cfg, text_tokenizer(Path(tokenizer or folder / TOKENIZER_NAME), bos), step


def step_params(folder: str | Path, step: int) -> dict[str, np.ndarray]:
    """The parameters at `step` of the series ({"blocks.0.attn.wq": array, ...}, as trained), for
    `toybb.llm.weights.build_model`."""
    _, template = nnx.split(abstract_model(read_record(folder, bos_setting)[1]))
    state, _ = load_checkpoint(series_path(folder, step), template)
    return {".".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(state)}
