"""Pretrained decoder-only transformers in Flax NNX, one definition for every supported family.

Differences between families are fields of `LLMConfig`, not subclasses: norm kind and placement
(pre, OLMo-2 post, Gemma sandwich), parallel residual (GPT-NeoX), learned or rotary positions (half or
interleaved pairing, partial rotary), q/k norm, biases, gated or plain MLP, soft-capping, embedding
scale, per-layer sliding windows. Attention itself is toybb's one core (`toybb.models.attention`).
Weights are stored per head like the toy model: wq [d_model, heads, head_dim], wo [heads, head_dim, d_model].
Sites (capture and interventions) are the toy model's (`toybb.models.sites`); the attention layer is
toybb's one `toybb.models.attention.Attention`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.llm.config import LLMConfig
from toybb.models.attention import AttentionSpec
from toybb.models.capture import NO_CAPTURE, Capture, Tap
from toybb.models.layers import param, pv
from toybb.models.trunk import Block, BlockSpec, MLPSpec, NormSpec, make_norm
from toybb.models.quant import QArray
from toybb.models.sites import NO_EDITS, Edits, ModelSites


def _dtype(cfg: LLMConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def norm_spec(cfg: LLMConfig) -> NormSpec:
    return NormSpec(cfg.norm, cfg.norm_eps, cfg.norm_plus_one, cfg.dtype)


def attention_spec(cfg: LLMConfig, layer: int) -> AttentionSpec:
    """Attention layer `layer` of a pretrained family (its window, RoPE base and scaling per layer)."""
    return AttentionSpec(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        position=cfg.position_config(layer), scale=cfg.query_scale, softcap=cfg.attn_softcap,
        qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, clip_qkv=cfg.clip_qkv, qk_norm=cfg.qk_norm, norm=cfg.norm,
        norm_eps=cfg.norm_eps, norm_plus_one=cfg.norm_plus_one, init="normal", dtype=cfg.dtype)


UNEMBED_CHUNK = 8192  # vocabulary rows dequantised at a time by `_packed_unembed`


def _packed_unembed(x: jax.Array, w: QArray) -> jax.Array:
    """x [b, t, d] @ a packed unembedding -> float32 logits [b, t, vocab], dequantising UNEMBED_CHUNK
    vocabulary rows at a time (the packed rows are vocabulary rows in both layouts: the tied embedding
    ("id", [vocab, d]) and output.weight ("T", stored [vocab, d])). Each chunk's scales get an exact zero
    computed from the previous chunk's logits, so XLA cannot hoist all dequantisations and hold the whole
    float matrix (113 MB for SmolLM2's 49k x 576)."""
    assert w.layout in (("id",), ("T",)), w.layout
    rows = w.d.shape[0]
    logits, prev = jnp.zeros(x.shape[:-1] + (rows,), jnp.float32), x
    for s in range(0, rows, UNEMBED_CHUNK):  # written in place (dynamic-update-slice), no concatenation
        e = min(s + UNEMBED_CHUNK, rows)
        zero = jnp.isnan(prev.reshape(-1)[0]).astype(jnp.float16) * jnp.float16(0)
        chunk = dataclasses.replace(w, d=w.d[s:e] + zero, m=None if w.m is None else w.m[s:e], qs=w.qs[s:e],
                                    layout=("id",), shape=(e - s, w.d.shape[1] * 32))
        prev = jnp.einsum("btd,vd->btv", x, chunk.dequantize(), preferred_element_type=jnp.float32)
        logits = logits.at[..., s:e].set(prev)
    return logits


def block_spec(cfg: LLMConfig, layer: int) -> BlockSpec:
    """Block `layer` of a pretrained family."""
    mlp = MLPSpec(cfg.d_model, cfg.mlp_dim, gated=cfg.mlp == "gated", act=cfg.act, bias=cfg.mlp_bias, dtype=cfg.dtype)
    return BlockSpec(norm_spec(cfg), attention_spec(cfg, layer), mlp, cfg.placement, cfg.parallel_residual)


class LLM(nnx.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab] (float32)."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        dt, d = _dtype(cfg), cfg.d_model
        self.embed = param((cfg.vocab_size, d), dt, "normal", rngs, 1)
        self.pos_embed = param((cfg.max_positions, d), dt, "normal", rngs, 1) if cfg.position == "learned" else None
        self.blocks = nnx.List([Block(block_spec(cfg, l), l, rngs=rngs) for l in range(cfg.n_layers)])
        self.final_norm = make_norm(norm_spec(cfg), d)
        self.unembed = None if cfg.tie_embeddings else param((d, cfg.vocab_size), dt, "normal", rngs, d)

    def sites(self) -> ModelSites:
        """The model's declared sites (`toybb.models.sites`)."""
        c = self.cfg
        every = tuple(range(c.n_layers))
        return ModelSites(c.n_layers, (("head", c.n_heads), ("kv_head", c.n_kv_heads), ("d_head", c.head_dim),
                                       ("d_model", c.d_model), ("d_mlp", c.mlp_dim), ("vocab", c.vocab_size)),
                          every, every)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        capture: Capture = NO_CAPTURE,
        edits: Edits = NO_EDITS,
        ablate: frozenset[str] = frozenset(),
    ) -> jax.Array:
        """tokens: [batch, seq]; positions: [seq] or [batch, seq] (default arange(seq)). capture: sites to
        record; edits: interventions inside the forward (`toybb.models.sites`); ablate: sub-layers whose
        output is zeroed, e.g. {"blocks.0.mlp"}. Returns float32 logits [batch, seq, vocab]."""
        cfg = self.cfg
        t = tokens.shape[1]
        tap = Tap.of(self.sites(), capture, edits, ablate, tokens.shape)
        contiguous = positions is None
        if positions is None:
            positions = jnp.arange(t)
        emb = self.embed.get_value()
        x = emb.take_rows(tokens) if isinstance(emb, QArray) else jnp.take(emb, tokens, axis=0)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)  # rounded to the weight dtype, as trained
        if self.pos_embed is not None:
            if t > cfg.max_positions:
                raise ValueError(f"sequence of {t} tokens is longer than the position table ({cfg.max_positions})")
            x = x + jnp.take(pv(self.pos_embed), positions, axis=0)
        x = tap(self, None, "embed", x)
        for block in self.blocks:
            x = block(x, positions, tap, contiguous)
        x = tap(self, None, "final_norm", self.final_norm(x))
        packed = (self.embed if self.unembed is None else self.unembed).get_value()
        if isinstance(packed, QArray):
            logits = _packed_unembed(x, packed)
        else:
            w = pv(self.embed).T if self.unembed is None else pv(self.unembed)
            logits = jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)
        if cfg.final_softcap is not None:
            logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
        return tap(self, None, "logits", logits)


def abstract_model(cfg: LLMConfig) -> LLM:
    """The model's structure with shapes only (no allocation), for loaders to fill."""
    return nnx.eval_shape(lambda: LLM(cfg))
