"""Pretrained decoder LLMs: loaders (HF safetensors, GGUF) into toybb's one model, tokenizers, offline
registry, sharding and the `toybb inspect | ppl | models` commands."""

from toybb.llm.config import LLMConfig, from_hf_config
from toybb.llm.load import Checkpoint, Pretrained, load, open_checkpoint, read_config
from toybb.models.forward import forward  # the generic forward, re-exported (formerly toybb.llm.run)
from toybb.models.transformer import Transformer

LLM = Transformer  # former name of the pretrained model class: toybb has one model

__all__ = ["LLMConfig", "from_hf_config", "Checkpoint", "Pretrained", "load", "open_checkpoint", "read_config", "LLM", "Transformer", "forward"]
