"""Switch long-context options of a loaded pretrained model without copying its weights."""

from __future__ import annotations

import dataclasses

from flax import nnx

from toybb.errors import ConfigError
from toybb.llm.model import LLM, abstract_model
from toybb.models.positional import RopeScaling

_FIELDS = ("attn_block", "selfextend", "sink_cache", "sliding_window", "rope_scaling", "layer_types")


def with_options(model: LLM, **changes) -> LLM:
    """The same parameters under a config with `changes` (long-context fields of `LLMConfig`:
    attn_block, selfextend=(w, G), sink_cache=(k, W), sliding_window, rope_scaling). The parameters are
    shared, not copied: only the static structure (positions, masks) changes."""
    bad = set(changes) - set(_FIELDS)
    if bad:
        raise ConfigError(f"with_options: unknown option(s) {sorted(bad)}; allowed: {_FIELDS}")
    cfg = dataclasses.replace(model.cfg, **changes)
    graphdef = nnx.graphdef(abstract_model(cfg))
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
