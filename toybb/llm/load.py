"""One entry point: `load(path)` for a Hugging Face model directory, a .gguf file or a `toybb pretrain` folder
(a step of its series). `open_checkpoint(path)` reads its config and tokenizer only, so a command checks its
input before the weights load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from toybb.device import release_host_memory
from toybb.errors import CheckpointError, ConfigError
from toybb.llm import gguf_loader, hf, pretrain_folder
from toybb.models.config import ModelConfig
from toybb.models.sites import ModelSites
from toybb.models.transformer import Transformer, abstract_model
from toybb.llm.registry import resolve, say_found
from toybb.llm.sharding import param_putter
from toybb.llm.tokenizer import TextTokenizer, check_matches, from_gguf_metadata, from_tokenizer_json
from toybb.llm.weights import build_model
from toybb.records import read_json


@dataclass
class Pretrained:
    model: Transformer
    cfg: ModelConfig
    tokenizer: TextTokenizer | None
    source: str
    fmt: str  # "hf" | "gguf" | "toybb pretrain"
    step: int | None = None  # the step of a pretrain folder's series


def read_config(path: str, *, dtype: str = "float32", step: int | None = None) -> tuple[ModelConfig, str]:
    """(config, format) without loading any weights."""
    ck = open_checkpoint(path, dtype=dtype, with_tokenizer=False, step=step)
    return ck.cfg, ck.fmt


@dataclass
class Checkpoint:
    """A checkpoint whose config and tokenizer are read and whose weights are not: everything a command
    checks its input against (layers, heads, context, the texts' token counts) before `load_weights`."""

    cfg: ModelConfig
    tokenizer: TextTokenizer | None
    source: str
    fmt: str  # "hf" | "gguf" | "toybb pretrain"
    step: int | None = None  # the step of a pretrain folder's series
    _gguf: object = None

    def sites(self) -> ModelSites:
        """The model's sites, from its structure alone (nothing allocated)."""
        return abstract_model(self.cfg).sites()

    def load_weights(self, *, mesh=None, quantized: bool = False) -> Pretrained:
        """The model (see `load` for `mesh` and `quantized`)."""
        put = param_putter(mesh) if mesh is not None else None
        say_found(self.source)
        if self.fmt == "hf":
            arrays = hf.map_names(self.cfg, hf.open_tensors(self.source), self.source)
        elif self.fmt == "toybb pretrain":  # stored as trained; build_model casts them to self.cfg.dtype
            arrays = {k: (lambda a=a: a) for k, a in pretrain_folder.step_params(self.source, self.step).items()}
        else:
            arrays = gguf_loader.tensor_thunks(self._gguf, self.cfg, quantized)
        model = build_model(self.cfg, arrays, self.source, put=put)
        self._gguf = None
        release_host_memory()
        return Pretrained(model, self.cfg, self.tokenizer, self.source, self.fmt, self.step)


def open_checkpoint(path: str, *, dtype: str = "float32", tokenizer: str | None = None,
                    rope_pairing: str = "half", with_tokenizer: bool = True, step: int | None = None) -> Checkpoint:
    """The config and tokenizer of a checkpoint (HF directory, .gguf file, `toybb pretrain` folder, or the name
    of an offline checkpoint), without reading any weights. tokenizer: a tokenizer.json instead of the
    checkpoint's own. step: the checkpoint of a pretrain folder's series (default: its latest); a step the
    series lacks is a ConfigError naming the steps it holds."""
    path = resolve(path)
    tok = None
    if pretrain_folder.is_pretrain_folder(path):
        cfg, tok, step = pretrain_folder.open_step(path, step, tokenizer)
        cfg = cfg.with_dtype(dtype)
        tok = tok if with_tokenizer else None
        ck = Checkpoint(cfg, tok, path, "toybb pretrain", step)
    elif step is not None:
        raise ConfigError(f"{path}: a step chooses a checkpoint of a `toybb pretrain` folder; this is not one")
    elif os.path.isdir(path):
        cfg = hf.read_config(path, dtype)
        tok_path = tokenizer or (str(Path(path) / "tokenizer.json") if (Path(path) / "tokenizer.json").is_file()
                                 else None)
        if with_tokenizer and tok_path:
            tok = from_tokenizer_json(tok_path, cfg.bos_token_id, add_bos=_hf_adds_bos(path))
        ck = Checkpoint(cfg, tok, path, "hf")
    elif path.endswith(".gguf") and os.path.isfile(path):
        g = gguf_loader.GGUFFile.open(path)
        cfg = gguf_loader.read_config(g, dtype=dtype, rope_pairing=rope_pairing)
        if with_tokenizer:
            tok = (from_tokenizer_json(tokenizer, cfg.bos_token_id) if tokenizer
                   else from_gguf_metadata(g.meta, path))
        ck = Checkpoint(cfg, tok, path, "gguf", _gguf=g)
    else:
        raise CheckpointError(f"{path}: not a Hugging Face model directory, a .gguf file or a `toybb pretrain` folder")
    if tok is not None:
        check_matches(tok, cfg.vocab_size, path)
    return ck


def load(
    path: str,
    *,
    dtype: str = "float32",
    tokenizer: str | None = None,
    mesh=None,
    rope_pairing: str = "half",
    with_tokenizer: bool = True,
    quantized: bool = False,
    step: int | None = None,
) -> Pretrained:
    """Load a checkpoint (HF directory, .gguf file, `toybb pretrain` folder, or the name of an offline
    checkpoint).

    tokenizer: path of a tokenizer.json to use instead of the checkpoint's own.
    mesh: a jax.sharding.Mesh with axes ("data", "model") to shard the parameters over.
    rope_pairing (GGUF llama only): "half" undoes llama.cpp's q/k permutation; "interleaved" keeps the
      stored rows and rotates interleaved pairs (same logits).
    quantized (GGUF only): keep Q4_0/Q4_1/Q8_0 weights packed and dequantise them inside the compiled
      forward (same logits, a fraction of the memory); with a mesh, packed matrices are split over whole
      rows or 32-weight blocks.
    step (pretrain folder only): the checkpoint of its series (default: its latest)."""
    return open_checkpoint(path, dtype=dtype, tokenizer=tokenizer, rope_pairing=rope_pairing,
                           with_tokenizer=with_tokenizer, step=step).load_weights(mesh=mesh, quantized=quantized)


def _hf_adds_bos(model_dir: str) -> bool:
    p = Path(model_dir) / "tokenizer_config.json"
    if not p.is_file():
        return False
    d = read_json(p, "tokenizer config", "download or save the model again")
    if not isinstance(d, dict) or not isinstance(d.get("add_bos_token", False), (bool, type(None))):
        raise CheckpointError(f"{p}: not a tokenizer config (an object whose add_bos_token is true or false)")
    return bool(d.get("add_bos_token", False))
