"""Model definitions: the one config (`config.py`), the one transformer (`transformer.py`: the toy BB model
and every pretrained family), its block and attention layer, the declared sites (capture and
interventions), the forward with capture and edits and the loss under edits (`forward.py`), and the
reduced SimpleModel of SPEC §4 (the theory's closed form)."""

from __future__ import annotations

from flax import nnx

from toybb.models.config import ModelConfig
from toybb.models.simple import SimpleModel
from toybb.models.transformer import Transformer

ToyTransformer = Transformer  # former name of the toy model class: toybb has one model


def build_model(cfg: ModelConfig, rngs: nnx.Rngs, task=None) -> nnx.Module:
    """The toy model named by `cfg.arch` (every one takes (cfg, rngs=...), maps tokens [batch, seq] to
    logits [batch, seq, vocab], accepts capture=/ablate= and exposes `.cfg`). `task` (a BBTask)
    supplies the trigger and BOS ids to models that hard-wire them (the SimpleModel)."""
    if cfg.arch == "simple":
        if task is None:
            return SimpleModel(cfg, rngs=rngs)
        return SimpleModel(cfg, rngs=rngs, triggers=tuple(int(t) for t in task.triggers), bos_id=int(task.bos_id))

    return Transformer(cfg, rngs=rngs)
