"""Model definitions: the shared attention core, the capture API, the toy transformer."""

from __future__ import annotations

from flax import nnx

from toybb.config import ModelConfig


def build_model(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The toy model named by `cfg.arch` (every one takes (cfg, rngs=...), maps tokens [batch, seq] to
    logits [batch, seq, vocab], accepts capture=/ablate= and exposes `.cfg`)."""
    if cfg.arch == "simple":
        from toybb.theory.simple_model import SimpleModel

        return SimpleModel(cfg, rngs=rngs)
    from toybb.models.toy import ToyTransformer

    return ToyTransformer(cfg, rngs=rngs)
