"""Toy decoder-only transformer of SPEC §2 in Flax NNX.

Learned token + absolute position embeddings, pre-norm LayerNorm blocks, final LayerNorm, untied
output projection; q/k/v/o without bias, head weights stored per head ([d_model, heads, head_dim]).
Initialisation follows the reference PyTorch code (embeddings N(0, 1); linear weights
U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which sets the step-0 values of the SPEC §3 trajectory.

Two options give the model a sink that is not a token of the input (SPEC §5):
- attn_bias: every attention layer has a learned key k'_h and value v'_h per (kv) head, prepended to
  the keys and values of every sequence and visible to every query (key position -1 in the core's
  causal mask). Captured `attn.logits` / `attn.pattern` cover the real keys only (key 0 stays the
  BOS); the attention on k' is the site `attn.pattern_bias` [batch, heads, q_seq].
- sink_token: a learned vector s [d_model] is prepended to the embedded sequence as an extra
  position (no token or position embedding added to it), seen by every later query like a BOS. The
  residual stream and every captured site then have seq + 1 positions, position 0 being s (the BOS,
  if the task has one, is position 1); the logits of the extra position are dropped, so the output
  is [batch, seq, vocab] as without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.config import ModelConfig
from toybb.models.attention import AttentionSpec
from toybb.models.capture import NO_CAPTURE, Capture, Tap
from toybb.models.layers import param
from toybb.models.trunk import Block, BlockSpec, MLPSpec, NormSpec, make_norm, site_fn
from toybb.models.sites import NO_EDITS, Edits, ModelSites


def _uniform_fan_in(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
    return param(shape, jnp.float32, "uniform", rngs, fan_in)


def attention_spec(cfg: ModelConfig, layer: int) -> AttentionSpec:
    """The toy model's attention layer `layer`: no projection biases, the reference initialisation."""
    return AttentionSpec(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        kind=cfg.attention, position=cfg.position_config(layer),
        scale=cfg.query_scale,
        learned_kv=cfg.attn_bias, init="uniform")


def block_spec(cfg: ModelConfig, layer: int) -> BlockSpec:
    """The toy model's block `layer`: flax's LayerNorm before each sub-layer, a plain ReLU or linear MLP
    without biases (weights w_in / w_out), either sub-layer possibly absent."""
    kind = cfg.mlp_kind(layer)
    mlp = None if kind == "none" else MLPSpec(cfg.d_model, cfg.mlp_dim, act="relu" if kind == "relu" else "linear",
                                              init="uniform", names=("w_in", "w_out"))
    attn = attention_spec(cfg, layer) if cfg.has_attention(layer) else None
    return BlockSpec(norm_spec(cfg), attn, mlp, slot=cfg.sink_token)


def norm_spec(cfg: ModelConfig) -> NormSpec:
    return NormSpec("layer_flax", cfg.norm_eps)


class ToyTransformer(nnx.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.token_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), jnp.float32))
        self.pos_embed = (
            nnx.Param(jax.random.normal(rngs.params(), (cfg.max_positions, cfg.d_model), jnp.float32))
            if cfg.position == "learned"
            else None
        )
        self.blocks = nnx.List([Block(block_spec(cfg, l), l, rngs=rngs) for l in range(cfg.n_layers)])
        self.ln_f = make_norm(norm_spec(cfg), cfg.d_model, rngs)
        self.unembed = _uniform_fan_in(rngs, (cfg.d_model, cfg.vocab_size), cfg.d_model)
        # learned sink token: drawn like a token embedding
        self.sink_embed = (nnx.Param(jax.random.normal(rngs.params(), (cfg.d_model,), jnp.float32))
                           if cfg.sink_token else None)

    def sites(self) -> ModelSites:
        """The model's declared sites (`toybb.models.sites`)."""
        cfg = self.cfg
        extra = {n for n in ("attn_bias", "sink_token") if getattr(cfg, n)}
        return ModelSites(cfg.n_layers, (("head", cfg.n_heads), ("kv_head", cfg.kv_heads), ("d_head", cfg.head_dim),
                                         ("d_model", cfg.d_model), ("d_mlp", cfg.mlp_dim), ("vocab", cfg.vocab_size)),
                          tuple(l for l in range(cfg.n_layers) if cfg.has_attention(l)),
                          tuple(l for l in range(cfg.n_layers) if cfg.mlp_kind(l) != "none"), frozenset(extra))

    def __call__(
        self,
        tokens: jax.Array,
        *,
        capture: Capture = NO_CAPTURE,
        edits: Edits = NO_EDITS,
        ablate: frozenset[str] = frozenset(),
    ) -> jax.Array:
        """tokens: [batch, seq] -> logits [batch, seq, vocab].

        capture: sites to record (`toybb.models.capture`). edits: interventions applied inside the
        forward (`toybb.models.sites`: `Edit` specs are resolved with `resolve_edits`). ablate: sub-layers
        whose output is zeroed, e.g. {"blocks.0.attn", "blocks.0.mlp"} (shorthand for zero edits of
        their `attn.out` / `mlp.out`).
        """
        tap = Tap.of(self.sites(), capture, edits, ablate, tokens.shape)
        t = tokens.shape[1]
        positions = jnp.arange(t)
        emb = self.token_embed[...]
        if emb.shape[0] <= 4096:
            # exact, and much faster to differentiate on CPU than a gather (whose gradient is a scatter)
            x = jax.nn.one_hot(tokens, emb.shape[0], dtype=emb.dtype) @ emb
        else:
            x = jnp.take(emb, tokens, axis=0)
        if self.pos_embed is not None:
            if t > self.cfg.max_positions:
                raise ValueError(f"sequence of {t} tokens is longer than the position table ({self.cfg.max_positions})")
            x = x + self.pos_embed[:t]
        if self.sink_embed is not None:
            s = jnp.broadcast_to(self.sink_embed[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
            x = jnp.concatenate([s, x], axis=1)
            positions = jnp.arange(t + 1)
        site = site_fn(self, tap, None, self.sink_embed is not None)
        x = site("embed", x)
        for block in self.blocks:
            x = block(x, positions, tap, contiguous=True)
        x = site("final_norm", self.ln_f(x))
        logits = x @ self.unembed[...]
        return tap(self, None, "logits", logits[:, 1:] if self.sink_embed is not None else logits)
