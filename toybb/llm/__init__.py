"""Pretrained decoder LLMs in Flax NNX: config, model, loaders (HF safetensors, GGUF), tokenizers,
offline registry, sharding and the `toybb inspect | ppl | models` commands."""

from toybb.llm.config import LLMConfig, from_hf_config
from toybb.llm.load import Pretrained, load, read_config
from toybb.llm.model import LLM
from toybb.models.forward import forward  # the generic forward, re-exported (formerly toybb.llm.run)

__all__ = ["LLMConfig", "from_hf_config", "Pretrained", "load", "read_config", "LLM", "forward"]
