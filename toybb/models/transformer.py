"""The one decoder-only transformer of toybb, in Flax NNX: the toy BB model of SPEC §2 and every pretrained
family are configurations of it (`toybb.models.config.ModelConfig`), built from the one block
(`toybb.models.trunk`) and the one attention layer (`toybb.models.attention`).

Differences are fields, not subclasses: norm kind and placement (pre, OLMo-2 post, Gemma sandwich),
parallel residual (GPT-NeoX), learned or rotary positions (half or interleaved pairing, partial rotary),
q/k norm, biases, gated or plain MLP, soft-capping, embedding scale, per-layer sliding windows, tied
embeddings, layers without attention or MLP, and sinks that are not input tokens. Weights are stored per
head: wq [d_model, heads, head_dim], wo [heads, head_dim, d_model].

Initialisation: the toy architectures follow the authors' PyTorch code (embeddings N(0, 1); linear
weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)); flax's LayerNorm), which sets the step-0 values of the
SPEC §3 trajectory; the pretrained families N(0, 1/fan_in) (their loaders overwrite every parameter).

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

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.models.attention import Attention, AttentionSpec
from toybb.models.capture import NO_CAPTURE, Capture, Tap
from toybb.models.config import ModelConfig
from toybb.models.layers import matmul, param, pv
from toybb.models.quant import QArray
from toybb.models.sites import NO_EDITS, RESID, SLOT, Edits, ModelSites, declared
from toybb.models.trunk import Block, BlockSpec, MLPSpec, NormSpec, make_norm, site_fn

ONE_HOT_VOCAB = 4096  # embeddings of vocabularies up to this size are a one-hot matmul (exact; its
# gradient is much faster on CPU than a gather's scatter)
UNEMBED_CHUNK = 8192  # vocabulary rows dequantised at a time by `_packed_unembed`


def _dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _init(cfg: ModelConfig) -> str:
    return "uniform" if cfg.toy_init else "normal"


def norm_spec(cfg: ModelConfig) -> NormSpec:
    return NormSpec(cfg.norm, cfg.norm_eps, cfg.norm_plus_one, cfg.dtype)


def attention_spec(cfg: ModelConfig, layer: int) -> AttentionSpec:
    """Attention layer `layer` (its window, RoPE base and scaling per layer)."""
    return AttentionSpec(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        kind=cfg.attention, position=cfg.position_config(layer), scale=cfg.query_scale,
        softcap=cfg.attn_softcap, qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, clip_qkv=cfg.clip_qkv,
        qk_norm=cfg.qk_norm, norm=cfg.norm, norm_eps=cfg.norm_eps, norm_plus_one=cfg.norm_plus_one,
        learned_kv=cfg.attn_bias, sink=cfg.attn_sink, clip=cfg.softmax_clip, sigmoid_bias=cfg.sigmoid_bias,
        gate=cfg.attn_gate, init=_init(cfg), dtype=cfg.dtype)


def block_spec(cfg: ModelConfig, layer: int) -> BlockSpec:
    """Block `layer`; either sub-layer may be absent (`no_attention`, `no_mlp`)."""
    act = cfg.mlp_act(layer)
    mlp = None if act is None else MLPSpec(cfg.d_model, cfg.mlp_dim, gated=cfg.mlp == "gated", act=act,
                                           bias=cfg.mlp_bias, init=_init(cfg), dtype=cfg.dtype)
    attn = attention_spec(cfg, layer) if cfg.has_attention(layer) else None
    return BlockSpec(norm_spec(cfg), attn, mlp, cfg.placement, cfg.parallel_residual, slot=cfg.sink_token)


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


class Transformer(nnx.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab] (float32). Parameters: token_embed, pos_embed
    (learned positions), blocks, ln_f (the final norm), unembed (None when tied), sink_embed (sink_token)."""

    SITES = {"embed": RESID,  # token (+ learned position) embedding, scaled as the model does
             "final_norm": RESID, "logits": ("batch", "pos", "vocab"),
             "embed_slot": SLOT, "final_norm_slot": SLOT}  # the sink slot's, with sink_token only

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        dt, d = _dtype(cfg), cfg.d_model
        # creation order = the order random keys are drawn
        self.token_embed = param((cfg.vocab_size, d), dt, "normal", rngs, 1)
        self.pos_embed = param((cfg.max_positions, d), dt, "normal", rngs, 1) if cfg.position == "learned" else None
        self.blocks = nnx.List([Block(block_spec(cfg, l), l, rngs=rngs) for l in range(cfg.n_layers)])
        self.ln_f = make_norm(norm_spec(cfg), d, rngs)
        self.unembed = None if cfg.tie_embeddings else param((d, cfg.vocab_size), dt, _init(cfg), rngs, d)
        self.sink_embed = param((d,), dt, "normal", rngs, 1) if cfg.sink_token else None

    def sites(self) -> ModelSites:
        """The model's sites, as its modules declare them (`toybb.models.sites`)."""
        c = self.cfg
        own = ("embed", "final_norm", "logits") + (("embed_slot", "final_norm_slot") if c.sink_token else ())
        table = declared([(Transformer, own)], None) + sum((b.site_table() for b in self.blocks), ())
        return ModelSites(c.n_layers, (("head", c.n_heads), ("kv_head", c.n_kv_heads), ("d_head", c.head_dim),
                                       ("d_model", c.d_model), ("d_mlp", c.mlp_dim), ("vocab", c.vocab_size)),
                          table, Attention.READ_ONLY)

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
        record (`toybb.models.capture`); edits: interventions inside the forward (`toybb.models.sites`);
        ablate: sub-layers whose output is zeroed, e.g. {"blocks.0.mlp"} (shorthand for zero edits of their
        `attn.out` / `mlp.out`). Returns float32 logits [batch, seq, vocab]."""
        cfg = self.cfg
        t = tokens.shape[1]
        tap = Tap.of(self.sites(), capture, edits, ablate, tokens.shape)
        contiguous = positions is None
        if positions is None:
            positions = jnp.arange(t)
        elif self.sink_embed is not None:
            raise ValueError("a model with a sink token takes no positions= (its positions are the slot's and arange)")
        emb = self.token_embed.get_value()
        if isinstance(emb, QArray):
            x = emb.take_rows(tokens)
        elif emb.shape[0] <= ONE_HOT_VOCAB:
            x = matmul(jax.nn.one_hot(tokens, emb.shape[0], dtype=emb.dtype), emb)
        else:
            x = jnp.take(emb, tokens, axis=0)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)  # rounded to the weight dtype, as trained
        if self.pos_embed is not None:
            if t > cfg.max_positions:
                raise ValueError(f"sequence of {t} tokens is longer than the position table ({cfg.max_positions})")
            table = pv(self.pos_embed)
            x = x + (table[:t] if contiguous else jnp.take(table, positions, axis=0))
        if self.sink_embed is not None:
            s = jnp.broadcast_to(pv(self.sink_embed).astype(x.dtype), (x.shape[0], 1, x.shape[2]))
            x = jnp.concatenate([s, x], axis=1)
            positions = jnp.arange(t + 1)
        site = site_fn(self, tap, None, self.sink_embed is not None)
        x = site("embed", x)
        for block in self.blocks:
            x = block(x, positions, tap, contiguous)
        x = site("final_norm", self.ln_f(x))
        packed = (self.token_embed if self.unembed is None else self.unembed).get_value()
        if isinstance(packed, QArray):
            logits = _packed_unembed(x, packed)
        else:
            w = pv(self.token_embed).T if self.unembed is None else pv(self.unembed)
            logits = matmul(x, w, preferred_element_type=jnp.float32)
        if cfg.final_softcap is not None:
            logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
        return tap(self, None, "logits", logits[:, 1:] if self.sink_embed is not None else logits)


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model's structure with shapes only (no allocation), for loaders to fill. Random keys only where
    flax's LayerNorm (the toy models') asks for them: tracing a random initialiser for every parameter of
    a 30-layer model takes seconds, and the loaders overwrite every parameter."""
    rngs = nnx.Rngs(0) if norm_spec(cfg).kind == "layer_flax" else None
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=rngs))
