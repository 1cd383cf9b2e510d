"""Pretrained decoder-only transformers in Flax NNX, one definition for every supported family.

Differences between families are fields of `LLMConfig`, not subclasses: norm kind and placement
(pre, OLMo-2 post, Gemma sandwich), parallel residual (GPT-NeoX), learned or rotary positions (half or
interleaved pairing, partial rotary), q/k norm, biases, gated or plain MLP, soft-capping, embedding
scale, per-layer sliding windows. Attention itself is toybb's one core (`toybb.models.attention`).
Weights are stored per head like the toy model: wq [d_model, heads, head_dim], wo [heads, head_dim, d_model].
Capture sites are the toy model's (`toybb.models.capture`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb.llm.config import LLMConfig
from toybb.models.attention import attention
from toybb.models.capture import NO_CAPTURE, Capture
from toybb.llm.quant import QArray, value as qvalue
from toybb.models.positional import (apply_rope, inv_frequencies, rope_angles, selfextend_far_positions,
                                    sink_far_positions)


class HeadEdit(NamedTuple):
    """Per-head interventions, as dynamic arrays so one compilation serves every head.

    scale: [n_layers, n_heads] multiplies each head's attention output z (1 = keep, 0 = zero the head).
    to_bos: [n_layers, n_heads] in [0, 1]: fraction of each query's attention moved onto key 0 (the BOS
      or first token); 1 replaces z by the value at key 0 (what full attention on key 0 gives)."""

    scale: jax.Array
    to_bos: jax.Array

    @staticmethod
    def identity(n_layers: int, n_heads: int) -> "HeadEdit":
        return HeadEdit(jnp.ones((n_layers, n_heads), jnp.float32), jnp.zeros((n_layers, n_heads), jnp.float32))


class ResidEdit(NamedTuple):
    """Overwrite residual-stream activations after one block (massive-activation interventions).

    After block `layer` (int32 scalar; -1 = none), entries x[b, t, dims[i]] with |x| >= min_abs are set to
    value[i]. dims: [k] int32, value: [k] float32, min_abs: float32 scalar. All dynamic: zero and mean
    interventions at any layer share one compilation."""

    layer: jax.Array
    dims: jax.Array
    value: jax.Array
    min_abs: jax.Array

    @staticmethod
    def none(k: int = 1) -> "ResidEdit":
        return ResidEdit(jnp.int32(-1), jnp.zeros((k,), jnp.int32), jnp.zeros((k,), jnp.float32), jnp.float32(0))

    def apply(self, x: jax.Array, layer: int) -> jax.Array:
        """x: [batch, seq, d_model] -> x with the edit applied if `layer` is the edited one."""
        cols = x[..., self.dims]  # [batch, seq, k]
        new = jnp.where(jnp.abs(cols) >= self.min_abs, self.value.astype(x.dtype), cols)
        return jnp.where(self.layer == layer, x.at[..., self.dims].set(new), x)


_KEY_COLS = ("key0", "key1")  # pattern reductions that are single key columns


def _dtype(cfg: LLMConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _param(shape, dtype, init: str = "zeros", rngs: nnx.Rngs | None = None, fan_in: int = 1) -> nnx.Param:
    # Loaders overwrite every parameter; random init only serves tests and nnx.eval_shape.
    if init == "ones":
        return nnx.Param(jnp.ones(shape, dtype))
    if init == "zeros" or rngs is None:
        return nnx.Param(jnp.zeros(shape, dtype))
    return nnx.Param((jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5).astype(dtype))


class Norm(nnx.Module):
    """RMSNorm / LayerNorm over the last axis, computed in float32, returned in the input dtype."""

    def __init__(self, dim: int, cfg: LLMConfig):
        self.kind, self.eps, self.plus_one = cfg.norm, cfg.norm_eps, cfg.norm_plus_one
        dt = _dtype(cfg)
        self.scale = None if self.kind == "layer_noparam" else _param((dim,), dt, "zeros" if self.plus_one else "ones")
        self.bias = _param((dim,), dt) if self.kind == "layer" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        if self.kind == "rms":
            y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        else:
            mu = jnp.mean(xf, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
            y = (xf - mu) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            w = _v(self.scale).astype(jnp.float32)
            y = y * (1.0 + w if self.plus_one else w)
        if self.bias is not None:
            y = y + _v(self.bias).astype(jnp.float32)
        return y.astype(x.dtype)


def _v(var: nnx.Variable) -> jax.Array:
    """A parameter's array; GGUF-quantised parameters are dequantised here, inside the compiled forward."""
    return qvalue(var.get_value())


def _after(x: jax.Array, *vars: nnx.Variable) -> tuple[jax.Array, list[jax.Array]]:
    """(x, parameter arrays), with packed parameters dequantised only once x exists. Without a data
    dependency XLA hoists every layer's dequantisation to the start and holds all float32 weights at
    once (the CPU backend drops optimization barriers), so the scales get an exact zero computed from x."""
    vals = [v.get_value() for v in vars]
    if any(isinstance(v, QArray) for v in vals):
        zero = jnp.isnan(x.reshape(-1)[0]).astype(jnp.float16) * jnp.float16(0)
        vals = [dataclasses.replace(v, d=v.d + zero) if isinstance(v, QArray) else v for v in vals]
    return x, [qvalue(v) for v in vals]


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


def _act(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=(name == "gelu_tanh"))


class Attention(nnx.Module):
    def __init__(self, cfg: LLMConfig, layer: int, *, rngs: nnx.Rngs | None = None):
        d, h, hk, dh, dt = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, _dtype(cfg)
        self.cfg, self.prefix, self.window = cfg, f"blocks.{layer}.attn", cfg.window(layer)
        self.wq = _param((d, h, dh), dt, "normal", rngs, d)
        self.wk = _param((d, hk, dh), dt, "normal", rngs, d)
        self.wv = _param((d, hk, dh), dt, "normal", rngs, d)
        self.wo = _param((h, dh, d), dt, "normal", rngs, h * dh)
        self.bq = _param((h, dh), dt) if cfg.qkv_bias else None
        self.bk = _param((hk, dh), dt) if cfg.qkv_bias else None
        self.bv = _param((hk, dh), dt) if cfg.qkv_bias else None
        self.bo = _param((d,), dt) if cfg.o_bias else None
        if cfg.qk_norm == "none":
            self.q_norm = self.k_norm = None
        else:
            full = cfg.qk_norm == "full"
            self.q_norm = Norm(h * dh if full else dh, cfg)
            self.k_norm = Norm(hk * dh if full else dh, cfg)
        if cfg.position == "rope":
            local = self.window is not None and cfg.rope_local_theta is not None
            theta = cfg.rope_local_theta if local else cfg.rope_theta
            scaling = cfg.rope_local_scaling if local else cfg.rope_scaling
            inv = inv_frequencies(cfg.rope_dim or dh, theta, scaling)
            if cfg.rope_freq_factors is not None and not local:
                inv = inv / np.asarray(cfg.rope_freq_factors, np.float64)
            self.inv_freq = tuple(float(f) for f in inv)
        else:
            self.inv_freq = None

    def _qk_norm(self, x: jax.Array, norm: Norm) -> jax.Array:
        if self.cfg.qk_norm == "full":  # OLMo-2 normalises across all heads at once
            b, t, n, dh = x.shape
            return norm(x.reshape(b, t, n * dh)).reshape(b, t, n, dh)
        return norm(x)

    def __call__(self, x: jax.Array, positions: jax.Array, capture: Capture = NO_CAPTURE,
                 head_edit: tuple[jax.Array, jax.Array] | None = None, contiguous: bool = False,
                 value_scale: jax.Array | None = None) -> jax.Array:
        """x: [batch, seq, d_model], positions: [seq] or [batch, seq] -> [batch, seq, d_model].
        head_edit: this layer's (scale [heads], to_bos [heads]) of a `HeadEdit`.
        value_scale: [seq] multiplies the value vector of each key (0 = remove that token's value).
        contiguous: positions are arange(seq) (lets blocked attention skip invisible key blocks)."""
        cfg, p = self.cfg, self.prefix
        x, (wq, wk, wv) = _after(x, self.wq, self.wk, self.wv)
        q = jnp.einsum("btd,dhe->bthe", x, wq)
        k = jnp.einsum("btd,dhe->bthe", x, wk)
        v = jnp.einsum("btd,dhe->bthe", x, wv)
        if self.bq is not None:
            q, k, v = q + _v(self.bq), k + _v(self.bk), v + _v(self.bv)
        if cfg.clip_qkv is not None:
            q, k, v = (jnp.clip(a, -cfg.clip_qkv, cfg.clip_qkv) for a in (q, k, v))
        if value_scale is not None:  # value ablation: the pattern is unchanged, key t contributes scale_t * v_t
            v = v * value_scale.astype(v.dtype)[None, :, None, None]
        if self.q_norm is not None:
            q, k = self._qk_norm(q, self.q_norm), self._qk_norm(k, self.k_norm)
        if self.inv_freq is not None:
            if capture:
                capture.sow(self, f"{p}.q_pre", q)
                capture.sow(self, f"{p}.k_pre", k)
            q_raw, k_raw = q, k
            cos, sin = rope_angles(positions, jnp.asarray(self.inv_freq))
            q, k = apply_rope(q, cos, sin, cfg.rope_pairing), apply_rope(k, cos, sin, cfg.rope_pairing)
        opts = dict(window=self.window)
        far_pos = None
        if cfg.selfextend is not None:
            w, g = cfg.selfextend
            far_pos, opts["near"] = selfextend_far_positions(positions, positions, w, g), w
        elif cfg.sink_cache is not None:
            n_sink, cache_w = cfg.sink_cache
            far_pos, opts["near"] = sink_far_positions(positions, positions, n_sink, cache_w), cache_w
            opts.update(window=cache_w if self.window is None else min(cache_w, self.window), keep_first=n_sink)
        if far_pos is not None:  # the same q/k rotated at the scheme's positions, merged by the core
            fq, fk = (rope_angles(p_, jnp.asarray(self.inv_freq)) for p_ in far_pos)
            opts["far"] = (apply_rope(q_raw, *fq, cfg.rope_pairing), apply_rope(k_raw, *fk, cfg.rope_pairing))
        # @key0/@key1 of the pattern come out of blocked attention as key columns; anything else of the
        # logits or the pattern needs the full [q_seq, k_seq] matrices (no blocking)
        pat_reds = capture.requests_for(f"{p}.pattern")
        key_cols = tuple(int(r[3:]) for r in pat_reds if r in _KEY_COLS)
        full = capture.wants(f"{p}.logits") or any(r not in _KEY_COLS for r in pat_reds)
        block = None if full else cfg.attn_block
        res = attention(q, k, v, q_pos=positions, k_pos=positions, scale=cfg.query_scale,
                        softcap=cfg.attn_softcap, block=block, contiguous=contiguous,
                        key_cols=() if full else key_cols, weights=full, **opts)
        z = res.out
        if head_edit is not None:
            scale, to_bos = (a.astype(z.dtype)[None, None, :, None] for a in head_edit)
            g = q.shape[2] // v.shape[2]
            v0 = jnp.repeat(v[:, :1], g, axis=2) if g > 1 else v[:, :1]  # value at key 0: [b, 1, heads, hd]
            z = ((1 - to_bos) * z + to_bos * v0) * scale
        z, (wo,) = _after(z, self.wo)
        out = jnp.einsum("bthe,hed->btd", z, wo)
        if self.bo is not None:
            out = out + _v(self.bo)
        if capture:
            for name, val in (("q", q), ("k", k), ("v", v), ("logits", res.logits), ("z", res.out), ("out", out)):
                capture.sow(self, f"{p}.{name}", val)
            if full:
                capture.sow(self, f"{p}.pattern", res.pattern)
            else:
                for i, c in enumerate(key_cols):
                    capture.sow_reduced(self, f"{p}.pattern", f"key{c}", res.key_cols[..., i])
            if capture.wants(f"{p}.head_out"):
                g = q.shape[2] // v.shape[2]
                vh = jnp.repeat(v, g, axis=2) if g > 1 else v
                capture.sow(self, f"{p}.head_out", jnp.einsum("bthe,hed->bthd", vh, wo))
        return out


class MLP(nnx.Module):
    def __init__(self, cfg: LLMConfig, layer: int, *, rngs: nnx.Rngs | None = None):
        d, f, dt = cfg.d_model, cfg.mlp_dim, _dtype(cfg)
        self.act, self.prefix = cfg.act, f"blocks.{layer}.mlp"
        self.w_gate = _param((d, f), dt, "normal", rngs, d) if cfg.mlp == "gated" else None
        self.w_up = _param((d, f), dt, "normal", rngs, d)
        self.w_down = _param((f, d), dt, "normal", rngs, f)
        self.b_up = _param((f,), dt) if cfg.mlp_bias else None
        self.b_gate = _param((f,), dt) if cfg.mlp_bias and cfg.mlp == "gated" else None
        self.b_down = _param((d,), dt) if cfg.mlp_bias else None

    def __call__(self, x: jax.Array, capture: Capture = NO_CAPTURE) -> jax.Array:
        x, ws = _after(x, *(v for v in (self.w_up, self.w_gate) if v is not None))
        up = x @ ws[0]
        if self.b_up is not None:
            up = up + _v(self.b_up)
        if self.w_gate is not None:
            gate = x @ ws[1]
            if self.b_gate is not None:
                gate = gate + _v(self.b_gate)
            hid = _act(self.act, gate) * up
        else:
            hid = _act(self.act, up)
        hid, (w_down,) = _after(hid, self.w_down)
        out = hid @ w_down
        if self.b_down is not None:
            out = out + _v(self.b_down)
        if capture:
            capture.sow(self, f"{self.prefix}.hidden", hid)
            capture.sow(self, f"{self.prefix}.out", out)
        return out


class Block(nnx.Module):
    def __init__(self, cfg: LLMConfig, layer: int, *, rngs: nnx.Rngs | None = None):
        self.prefix, self.placement, self.parallel = f"blocks.{layer}", cfg.placement, cfg.parallel_residual
        d = cfg.d_model
        self.ln1 = Norm(d, cfg) if cfg.placement != "post" else None
        self.ln2 = Norm(d, cfg) if cfg.placement != "post" else None
        self.ln_post_attn = Norm(d, cfg) if cfg.placement != "pre" else None
        self.ln_post_mlp = Norm(d, cfg) if cfg.placement != "pre" else None
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.mlp = MLP(cfg, layer, rngs=rngs)

    def __call__(self, x, positions, capture: Capture = NO_CAPTURE, ablate: frozenset[str] = frozenset(),
                 head_edit=None, contiguous: bool = False, value_scale=None):
        p = self.prefix
        if capture:
            capture.sow(self, f"{p}.resid_pre", x)
        skip_attn, skip_mlp = f"{p}.attn" in ablate, f"{p}.mlp" in ablate
        a = 0.0
        if not skip_attn:
            a = self.attn(self.ln1(x) if self.ln1 is not None else x, positions, capture, head_edit, contiguous,
                          value_scale)
            if self.ln_post_attn is not None:
                a = self.ln_post_attn(a)
        h = x + a
        if capture:
            capture.sow(self, f"{p}.resid_mid", h)
        m = 0.0
        if not skip_mlp:
            mlp_in = x if self.parallel else h
            m = self.mlp(self.ln2(mlp_in) if self.ln2 is not None else mlp_in, capture)
            if self.ln_post_mlp is not None:
                m = self.ln_post_mlp(m)
        out = h + m
        if capture:
            capture.sow(self, f"{p}.resid_post", out)
        return out


class LLM(nnx.Module):
    """tokens [batch, seq] int -> logits [batch, seq, vocab] (float32)."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        dt, d = _dtype(cfg), cfg.d_model
        self.embed = _param((cfg.vocab_size, d), dt, "normal", rngs, 1)
        self.pos_embed = _param((cfg.max_positions, d), dt, "normal", rngs, 1) if cfg.position == "learned" else None
        self.blocks = nnx.List([Block(cfg, l, rngs=rngs) for l in range(cfg.n_layers)])
        self.final_norm = Norm(d, cfg)
        self.unembed = None if cfg.tie_embeddings else _param((d, cfg.vocab_size), dt, "normal", rngs, d)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        capture: Capture = NO_CAPTURE,
        ablate: frozenset[str] = frozenset(),
        head_edit: HeadEdit | None = None,
        resid_edit: ResidEdit | None = None,
        resid_add: dict[int, jax.Array] | None = None,
        value_scale: jax.Array | None = None,
    ) -> jax.Array:
        """tokens: [batch, seq]; positions: [seq] or [batch, seq] (default arange(seq)).
        ablate: sub-layers to skip, e.g. {"blocks.0.mlp"}. head_edit / resid_edit: interventions (see
        `HeadEdit`, `ResidEdit`). resid_add: {layer: [seq, d_model] or [batch, seq, d_model]} added to
        the residual stream after that block (e.g. positional-vector removal). value_scale: [n_layers, seq]
        multiplies the value vector of key t in layer l (0 = remove the value of that token there, keeping
        the attention pattern; a dynamic array, so every choice shares one compilation). Returns float32
        logits [batch, seq, vocab]."""
        cfg = self.cfg
        t = tokens.shape[1]
        if value_scale is not None and value_scale.shape != (cfg.n_layers, t):
            raise ValueError(f"value_scale must have shape [n_layers, seq] = {(cfg.n_layers, t)}, got {value_scale.shape}")
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
            x = x + jnp.take(_v(self.pos_embed), positions, axis=0)
        if capture:
            capture.sow(self, "embed", x)
        for l, block in enumerate(self.blocks):
            he = None if head_edit is None else (head_edit.scale[l], head_edit.to_bos[l])
            vs = None if value_scale is None else value_scale[l]
            x = block(x, positions, capture, ablate, he, contiguous, vs)
            if resid_edit is not None:
                x = resid_edit.apply(x, l)
            if resid_add and l in resid_add:
                x = x + resid_add[l].astype(x.dtype)
        x = self.final_norm(x)
        if capture:
            capture.sow(self, "final_norm", x)
        packed = (self.embed if self.unembed is None else self.unembed).get_value()
        if isinstance(packed, QArray):
            logits = _packed_unembed(x, packed)
        else:
            w = _v(self.embed).T if self.unembed is None else _v(self.unembed)
            logits = jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)
        if cfg.final_softcap is not None:
            logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
        return logits


def abstract_model(cfg: LLMConfig) -> LLM:
    """The model's structure with shapes only (no allocation), for loaders to fill."""
    return nnx.eval_shape(lambda: LLM(cfg))


def param_count(model: LLM) -> int:
    return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
