"""One entry point: `load(path)` for a Hugging Face model directory or a .gguf file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from toybb.device import release_host_memory
from toybb.errors import CheckpointError
from toybb.llm import gguf_loader, hf
from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer
from toybb.llm.registry import resolve
from toybb.llm.sharding import param_putter
from toybb.llm.tokenizer import TextTokenizer, check_matches, from_gguf_metadata, from_tokenizer_json
from toybb.llm.weights import build_model


@dataclass
class Pretrained:
    model: Transformer
    cfg: ModelConfig
    tokenizer: TextTokenizer | None
    source: str
    fmt: str  # "hf" | "gguf"


def read_config(path: str, *, dtype: str = "float32") -> tuple[ModelConfig, str]:
    """(config, format) without loading any weights."""
    path = resolve(path)
    if os.path.isdir(path):
        return hf.read_config(path, dtype), "hf"
    if path.endswith(".gguf") and os.path.isfile(path):
        return gguf_loader.read_config(gguf_loader.GGUFFile(path), dtype=dtype), "gguf"
    raise CheckpointError(f"{path}: not a Hugging Face model directory or a .gguf file")


def load(
    path: str,
    *,
    dtype: str = "float32",
    tokenizer: str | None = None,
    mesh=None,
    rope_pairing: str = "half",
    with_tokenizer: bool = True,
    quantized: bool = False,
) -> Pretrained:
    """Load a checkpoint (HF directory or .gguf file, or the name of an offline checkpoint).

    tokenizer: path of a tokenizer.json to use instead of the checkpoint's own.
    mesh: a jax.sharding.Mesh with axes ("data", "model") to shard the parameters over.
    rope_pairing (GGUF llama only): "half" undoes llama.cpp's q/k permutation; "interleaved" keeps the
      stored rows and rotates interleaved pairs (same logits).
    quantized (GGUF only): keep Q4_0/Q4_1/Q8_0 weights packed and dequantise them inside the compiled
      forward (same logits, a fraction of the memory); with a mesh, packed matrices are split over whole
      rows or 32-weight blocks."""
    path = resolve(path)
    put = None
    if mesh is not None:
        put = param_putter(mesh)
    if os.path.isdir(path):
        cfg = hf.read_config(path, dtype)
        tok_path = tokenizer or (str(Path(path) / "tokenizer.json") if (Path(path) / "tokenizer.json").is_file()
                                 else None)
        tok = None
        if with_tokenizer and tok_path:
            tok = from_tokenizer_json(tok_path, cfg.bos_token_id, add_bos=_hf_adds_bos(path))
            check_matches(tok, cfg.vocab_size, path)  # before reading any weights
        model = build_model(cfg, hf.map_names(cfg, hf.open_tensors(path), path), path, put=put)
        fmt = "hf"
    elif path.endswith(".gguf") and os.path.isfile(path):
        g = gguf_loader.GGUFFile(path)
        cfg = gguf_loader.read_config(g, dtype=dtype, rope_pairing=rope_pairing)
        tok = None
        if with_tokenizer:
            tok = (from_tokenizer_json(tokenizer, cfg.bos_token_id) if tokenizer
                   else from_gguf_metadata(g.meta, path))
            check_matches(tok, cfg.vocab_size, path)
        model = build_model(cfg, gguf_loader.tensor_thunks(g, cfg, quantized), path, put=put)
        fmt = "gguf"
        del g
    else:
        raise CheckpointError(f"{path}: not a Hugging Face model directory or a .gguf file")
    release_host_memory()
    return Pretrained(model, cfg, tok, path, fmt)


def _hf_adds_bos(model_dir: str) -> bool:
    import json

    p = Path(model_dir) / "tokenizer_config.json"
    if p.is_file():
        try:
            return bool(json.loads(p.read_text()).get("add_bos_token", False))
        except json.JSONDecodeError:
            return False
    return False
