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
from toybb.models.attention import Attention, AttentionSpec
from toybb.models.capture import NO_CAPTURE, NO_TAP, Capture, Tap
from toybb.models.layers import param
from toybb.models.sites import NO_EDITS, Edits, ModelSites


def _uniform_fan_in(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
    return param(shape, jnp.float32, "uniform", rngs, fan_in)


def attention_spec(cfg: ModelConfig, layer: int) -> AttentionSpec:
    """The toy model's attention layer `layer`: no projection biases, the reference initialisation."""
    return AttentionSpec(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        kind=cfg.attention, position=cfg.position_config(layer),
        scale=None if cfg.logit_scale == 1.0 else cfg.logit_scale * cfg.head_dim**-0.5,
        learned_kv=cfg.attn_bias, init="uniform")


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.mlp_dim
        self.relu, self.layer = cfg.mlp_kind(layer) == "relu", layer
        self.w_in = _uniform_fan_in(rngs, (d, f), d)
        self.w_out = _uniform_fan_in(rngs, (f, d), f)

    def __call__(self, x: jax.Array, tap: Tap = NO_TAP, real=None) -> jax.Array:
        """x [batch, seq, d_model] -> the MLP output (before its site `mlp.out`, tapped by the block)."""
        h = x @ self.w_in[...]
        if self.relu:
            h = jax.nn.relu(h)
        h = tap.part(self, self.layer, "mlp.hidden", h, real) if real else tap(self, self.layer, "mlp.hidden", h)
        return h @ self.w_out[...]


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.layer, self.slot = layer, cfg.sink_token
        self.ln1 = nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, rngs=rngs) if cfg.has_attention(layer) else None
        self.attn = Attention(attention_spec(cfg, layer), layer, rngs=rngs) if cfg.has_attention(layer) else None
        has_mlp = cfg.mlp_kind(layer) != "none"
        self.ln2 = nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, rngs=rngs) if has_mlp else None
        self.mlp = MLP(cfg, layer, rngs=rngs) if has_mlp else None

    def __call__(self, x, positions, tap: Tap = NO_TAP):
        site = _site_fn(self, tap, self.layer, self.slot)
        x = site("resid_pre", x)
        if self.attn is not None:
            a = self.attn(self.ln1(x), positions, tap, contiguous=True, slot=self.slot)
            x = x + _site_fn(self.attn, tap, self.layer, self.slot)("attn.out", a)
        x = site("resid_mid", x)
        if self.mlp is not None:
            m = self.mlp(self.ln2(x), tap, _REAL if self.slot else None)
            x = x + _site_fn(self.mlp, tap, self.layer, self.slot)("mlp.out", m)
        return site("resid_post", x)


_REAL = (slice(None), slice(1, None))  # the real positions of a [batch, seq + 1, ...] site behind a sink slot


def _site_fn(module, tap: Tap, layer: int | None, slot: bool):
    """kind, x -> x through the tap; with a sink slot the real positions are site `kind` and, for the
    residual stream, the slot is site `{kind}_slot`."""
    def site(kind, x):
        if not slot:
            return tap(module, layer, kind, x)
        x = tap.part(module, layer, kind, x, _REAL)
        if kind.startswith("resid") or kind in ("embed", "final_norm"):
            x = tap.part(module, layer, f"{kind}_slot", x, (slice(None), 0))
        return x
    return site


class ToyTransformer(nnx.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.token_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), jnp.float32))
        self.pos_embed = (
            nnx.Param(jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model), jnp.float32))
            if cfg.position == "learned"
            else None
        )
        self.blocks = nnx.List([Block(cfg, l, rngs=rngs) for l in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, rngs=rngs)
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
            if t > self.cfg.max_len:
                raise ValueError(f"sequence of {t} tokens is longer than the position table ({self.cfg.max_len})")
            x = x + self.pos_embed[:t]
        if self.sink_embed is not None:
            s = jnp.broadcast_to(self.sink_embed[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
            x = jnp.concatenate([s, x], axis=1)
            positions = jnp.arange(t + 1)
        site = _site_fn(self, tap, None, self.sink_embed is not None)
        x = site("embed", x)
        for block in self.blocks:
            x = block(x, positions, tap)
        x = site("final_norm", self.ln_f(x))
        logits = x @ self.unembed[...]
        return tap(self, None, "logits", logits[:, 1:] if self.sink_embed is not None else logits)
