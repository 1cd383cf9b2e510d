"""Switch long-context options of a loaded model, toy or pretrained, without copying its weights."""

from __future__ import annotations

import dataclasses

from flax import nnx

from toybb.models.config import RENAMED_MODEL_FIELDS
from toybb.errors import ConfigError
from toybb.models.positional import RopeScaling

OPTIONS = ("attn_block", "selfextend", "sink_cache", "sliding_window", "rope_scaling", "query_scale", "layer_types")


def with_options(model: nnx.Module, **changes) -> nnx.Module:
    """The same parameters under a config with `changes` (long-context fields of the model's config:
    attn_block, selfextend=(w, G), sink_cache=(k, W), sliding_window, rope_scaling, query_scale,
    layer_types, or their former names in `RENAMED_MODEL_FIELDS`).
    The parameters are shared, not copied: only the static structure (positions, masks) changes."""
    cfg = model.cfg
    allowed = set(OPTIONS) | set(RENAMED_MODEL_FIELDS)
    bad = set(changes) - allowed
    if bad:
        raise ConfigError(f"with_options: unknown option(s) {sorted(bad)}; allowed: {sorted(allowed)}")
    cfg = dataclasses.replace(cfg, **changes)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def rope_scaling(pi: float = 1.0, ntk: float = 1.0) -> RopeScaling:
    """Position interpolation by factor `pi` (positions / pi) or NTK-aware base scaling by `ntk`."""
    if pi < 1 or ntk < 1:
        raise ConfigError(f"RoPE scaling factors must be >= 1, got pi={pi}, ntk={ntk}")
    if pi > 1 and ntk > 1:
        raise ConfigError("choose position interpolation (--pi) or NTK base scaling (--ntk), not both")
    if pi > 1:
        return RopeScaling("linear", float(pi))
    if ntk > 1:
        return RopeScaling("ntk", float(ntk))
    return RopeScaling()
