"""Model definitions: the one config (`config.py`), the one transformer (`transformer.py`: the toy BB model
and every pretrained family), its block and attention layer, the declared sites (capture and
interventions), the forward with capture and edits and the loss under edits (`forward.py`), and the
reduced SimpleModel of SPEC §4 (the theory's closed form)."""

from __future__ import annotations

import re

from flax import nnx

from toybb.models.attention import Attention
from toybb.models.config import ModelConfig
from toybb.models.simple import SimpleAttention, SimpleBlock, SimpleMLP, SimpleModel
from toybb.models.sites import ModelSites, SiteError
from toybb.models.transformer import Transformer
from toybb.models.trunk import MLP, Block

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


def _every_site() -> ModelSites:
    """Every site some toybb model declares, per-layer ones named for layer 0 (for `check_site_pattern`)."""
    top = {k: a for cls in (Transformer, SimpleModel) for k, a in cls.SITES.items()}
    layer = {k: a for cls in (Block, Attention, MLP, SimpleBlock, SimpleAttention, SimpleMLP) for k, a in cls.SITES.items()}
    return ModelSites(1, (), tuple(top.items()) + tuple((f"blocks.0.{k}", a) for k, a in layer.items()))


def check_site_pattern(pattern: str) -> None:
    """A site pattern must match a site that some toybb model declares: a mistyped site fails before any model
    or config is read (which sites and layers one model has is checked against its config); a SiteError
    naming the closest sites."""
    sites = _every_site()
    try:
        sites.match(re.sub(r"^blocks\.[^.]*\.", "blocks.0.", pattern))
    except SiteError:
        sites.match(pattern)  # the error names the pattern as given
