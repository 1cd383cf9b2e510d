"""Toy decoder-only transformer of SPEC §2 in Flax NNX.

Learned token + absolute position embeddings, pre-norm LayerNorm blocks, final LayerNorm, untied
output projection; q/k/v/o without bias, head weights stored per head ([d_model, heads, head_dim]).
Initialisation follows the reference PyTorch code (embeddings N(0, 1); linear weights
U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which sets the step-0 values of the SPEC §3 trajectory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.config import ModelConfig
from toybb.models.attention import attention
from toybb.models.capture import NO_CAPTURE, Capture


def _uniform_fan_in(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
    bound = fan_in**-0.5
    return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d, h, hk, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.kind, self.prefix = cfg.attention, f"blocks.{layer}.attn"
        self.wq = _uniform_fan_in(rngs, (d, h, dh), d)
        self.wk = _uniform_fan_in(rngs, (d, hk, dh), d)
        self.wv = _uniform_fan_in(rngs, (d, hk, dh), d)
        self.wo = _uniform_fan_in(rngs, (h, dh, d), h * dh)

    def __call__(self, x: jax.Array, positions: jax.Array, capture: Capture = NO_CAPTURE) -> jax.Array:
        """x: [batch, seq, d_model] -> [batch, seq, d_model]."""
        q = jnp.einsum("btd,dhe->bthe", x, self.wq[...])
        k = jnp.einsum("btd,dhe->bthe", x, self.wk[...])
        v = jnp.einsum("btd,dhe->bthe", x, self.wv[...])
        res = attention(q, k, v, kind=self.kind, q_pos=positions, k_pos=positions)
        out = jnp.einsum("bthe,hed->btd", res.out, self.wo[...])
        if capture:
            p = self.prefix
            for name, val in (("q", q), ("k", k), ("v", v), ("logits", res.logits), ("pattern", res.pattern),
                              ("z", res.out), ("out", out)):
                capture.sow(self, f"{p}.{name}", val)
            if capture.wants(f"{p}.head_out"):
                g = q.shape[2] // v.shape[2]
                vh = jnp.repeat(v, g, axis=2) if g > 1 else v
                capture.sow(self, f"{p}.head_out", jnp.einsum("bthe,hed->bthd", vh, self.wo[...]))
        return out


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.mlp_dim
        self.relu, self.prefix = cfg.mlp_kind(layer) == "relu", f"blocks.{layer}.mlp"
        self.w_in = _uniform_fan_in(rngs, (d, f), d)
        self.w_out = _uniform_fan_in(rngs, (f, d), f)

    def __call__(self, x: jax.Array, capture: Capture = NO_CAPTURE) -> jax.Array:
        h = x @ self.w_in[...]
        if self.relu:
            h = jax.nn.relu(h)
        out = h @ self.w_out[...]
        if capture:
            capture.sow(self, f"{self.prefix}.hidden", h)
            capture.sow(self, f"{self.prefix}.out", out)
        return out


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.prefix = f"blocks.{layer}"
        self.ln1 = nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, rngs=rngs) if cfg.has_attention(layer) else None
        self.attn = Attention(cfg, layer, rngs=rngs) if cfg.has_attention(layer) else None
        has_mlp = cfg.mlp_kind(layer) != "none"
        self.ln2 = nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, rngs=rngs) if has_mlp else None
        self.mlp = MLP(cfg, layer, rngs=rngs) if has_mlp else None

    def __call__(self, x, positions, capture: Capture = NO_CAPTURE, ablate: frozenset[str] = frozenset()):
        p = self.prefix
        if capture:
            capture.sow(self, f"{p}.resid_pre", x)
        if self.attn is not None and f"{p}.attn" not in ablate:
            x = x + self.attn(self.ln1(x), positions, capture)
        if capture:
            capture.sow(self, f"{p}.resid_mid", x)
        if self.mlp is not None and f"{p}.mlp" not in ablate:
            x = x + self.mlp(self.ln2(x), capture)
        if capture:
            capture.sow(self, f"{p}.resid_post", x)
        return x


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

    def __call__(
        self,
        tokens: jax.Array,
        *,
        capture: Capture = NO_CAPTURE,
        ablate: frozenset[str] = frozenset(),
    ) -> jax.Array:
        """tokens: [batch, seq] -> logits [batch, seq, vocab].

        ablate: names of sub-layers to skip, e.g. {"blocks.0.attn", "blocks.0.mlp"} (interventions).
        """
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
        if capture:
            capture.sow(self, "embed", x)
        for block in self.blocks:
            x = block(x, positions, capture, ablate)
        x = self.ln_f(x)
        if capture:
            capture.sow(self, "final_norm", x)
        return x @ self.unembed[...]
