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
from toybb.models.attention import attention
from toybb.models.capture import NO_CAPTURE, Capture
from toybb.models.positional import (RopeScaling, alibi_slopes, apply_rope, inv_frequencies, rope_angles,
                                     selfextend_far_positions)


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
        # explicit attention bias: one learned key/value per kv head (initialised like a projected input)
        self.k_bias = _uniform_fan_in(rngs, (hk, dh), d) if cfg.attn_bias else None
        self.v_bias = _uniform_fan_in(rngs, (hk, dh), d) if cfg.attn_bias else None
        self.cfg = cfg
        scaling = RopeScaling("linear", cfg.rope_scale) if cfg.rope_scale > 1 else RopeScaling()
        self.inv_freq = (tuple(float(f) for f in inv_frequencies(dh, cfg.rope_theta, scaling))
                         if cfg.position == "rope" else None)
        self.slopes = tuple(float(s) for s in alibi_slopes(h)) if cfg.position == "alibi" else None

    def _position_options(self, q, k, positions) -> tuple[jax.Array, jax.Array, dict]:
        """RoPE rotation, ALiBi slopes, window, SelfExtend and logit temperature for the core."""
        cfg, opts = self.cfg, {}
        if cfg.window is not None:
            opts["window"] = cfg.window
        if cfg.logit_scale != 1.0:
            opts["scale"] = cfg.logit_scale * q.shape[-1] ** -0.5
        w, g = cfg.selfextend_window, cfg.selfextend_group
        if self.inv_freq is not None:
            inv = jnp.asarray(self.inv_freq)
            rot = lambda x, p: apply_rope(x, *rope_angles(p, inv))  # noqa: E731
            if w is not None:
                qf, kf = selfextend_far_positions(positions, positions, w, g)
                opts.update(far=(rot(q, qf), rot(k, kf)), near=w)
            q, k = rot(q, positions), rot(k, positions)
        if self.slopes is not None:
            slopes = jnp.asarray(self.slopes, jnp.float32)
            if w is None:
                opts["alibi"] = slopes
            else:  # ALiBi at SelfExtend's merged relative positions
                qf, kf = selfextend_far_positions(positions, positions, w, g)
                rel = positions[:, None] - positions[None, :]
                rel = jnp.where(rel < w, rel, qf[:, None] - kf[None, :])
                opts["bias"] = -slopes[:, None, None] * rel.astype(jnp.float32)
        return q, k, opts

    def __call__(self, x: jax.Array, positions: jax.Array, capture: Capture = NO_CAPTURE) -> jax.Array:
        """x: [batch, seq, d_model] -> [batch, seq, d_model]."""
        q = jnp.einsum("btd,dhe->bthe", x, self.wq[...])
        k = jnp.einsum("btd,dhe->bthe", x, self.wk[...])
        v = jnp.einsum("btd,dhe->bthe", x, self.wv[...])
        q, k, opts = self._position_options(q, k, positions)
        if self.k_bias is not None:
            b = x.shape[0]
            kb = jnp.broadcast_to(self.k_bias[...][None, None], (b, 1) + k.shape[2:])
            vb = jnp.broadcast_to(self.v_bias[...][None, None], (b, 1) + v.shape[2:])
            # key position -1 lies before every query, so the causal mask makes k' visible to all
            k_pos = jnp.concatenate([jnp.full((1,), -1, positions.dtype), positions])
            res = attention(q, jnp.concatenate([kb, k], 1), jnp.concatenate([vb, v], 1), kind=self.kind,
                            q_pos=positions, k_pos=k_pos, **opts)
            logits, pattern, bias_pattern = res.logits[..., 1:], res.pattern[..., 1:], res.pattern[..., 0]
        else:  # positions are arange(seq): contiguous; the weights only when captured
            weights = capture.wants(f"{self.prefix}.logits") or capture.wants(f"{self.prefix}.pattern")
            res = attention(q, k, v, kind=self.kind, q_pos=positions, k_pos=positions, contiguous=True,
                            weights=weights, **opts)
            logits, pattern, bias_pattern = res.logits, res.pattern, None
        out = jnp.einsum("bthe,hed->btd", res.out, self.wo[...])
        if capture:
            p = self.prefix
            if bias_pattern is not None:
                capture.sow(self, f"{p}.pattern_bias", bias_pattern)
            for name, val in (("q", q), ("k", k), ("v", v), ("logits", logits), ("pattern", pattern),
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
        # learned sink token: drawn like a token embedding
        self.sink_embed = (nnx.Param(jax.random.normal(rngs.params(), (cfg.d_model,), jnp.float32))
                           if cfg.sink_token else None)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        capture: Capture = NO_CAPTURE,
        ablate: frozenset[str] = frozenset(),
        resid_add: dict[int, jax.Array] | None = None,
    ) -> jax.Array:
        """tokens: [batch, seq] -> logits [batch, seq, vocab].

        ablate: names of sub-layers to skip, e.g. {"blocks.0.attn", "blocks.0.mlp"} (interventions).
        resid_add: {layer: [seq, d_model]} added to the residual stream after that block (e.g.
          positional-vector replacement).
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
        if self.sink_embed is not None:
            s = jnp.broadcast_to(self.sink_embed[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
            x = jnp.concatenate([s, x], axis=1)
            positions = jnp.arange(t + 1)
        if capture:
            capture.sow(self, "embed", x)
        for l, block in enumerate(self.blocks):
            x = block(x, positions, capture, ablate)
            if resid_add and l in resid_add:
                x = x + resid_add[l]
        x = self.ln_f(x)
        if capture:
            capture.sow(self, "final_norm", x)
        logits = x @ self.unembed[...]
        return logits[:, 1:] if self.sink_embed is not None else logits
