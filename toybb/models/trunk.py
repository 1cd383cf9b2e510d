"""The one transformer block of every toybb model: norm choice, MLP (plain or gated), attention and
their placement. The one model (`toybb.models.transformer`) builds its blocks from a `BlockSpec`; the
toy BB transformer and the pretrained families differ in fields, not classes:

- toy: LayerNorm with bias before each sub-layer, a plain ReLU (or linear) MLP, layers without
  attention or MLP, a learned sink slot at position 0;
- pretrained: RMSNorm / LayerNorm, gated or plain MLP with biases, pre, post (OLMo-2) or sandwich
  (Gemma 2/3) norms, parallel residual (GPT-NeoX), GGUF-packed weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from toybb.models.config import ACTIVATIONS as ACTIVATION_NAMES, NORMS, PLACEMENTS
from toybb.models.attention import Attention, AttentionSpec
from toybb.models.capture import NO_TAP, Tap
from toybb.models.layers import Norm, fetch, matmul, param, pv
from toybb.models.sites import RESID, SLOT, declared

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "linear": lambda x: x,
    "silu": jax.nn.silu,
    "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES


@dataclass(frozen=True)
class NormSpec:
    """kind: one of NORMS ("layer_flax": flax's nnx.LayerNorm, the toy models' norm, whose
    numbers and random streams they depend on); plus_one: weights stored as w, applied as (1 + w) (Gemma)."""

    kind: str = "rms"
    eps: float = 1e-5
    plus_one: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in NORMS:
            raise ValueError(f"norm kind must be one of {NORMS}, got {self.kind!r}")


def make_norm(spec: NormSpec, dim: int, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The norm of `spec` over the last axis of a [..., dim] input (parameters `scale`, `bias`)."""
    if spec.kind == "layer_flax":
        return nnx.LayerNorm(dim, epsilon=spec.eps, rngs=rngs)
    return Norm(dim, spec.kind, spec.eps, spec.plus_one, _dtype(spec.dtype))


@dataclass(frozen=True)
class MLPSpec:
    """d_model -> d_mlp -> d_model. gated: act(x W_gate) * (x W_up) (Llama); plain: act(x W_up).
    act: one of ACTIVATIONS ("linear": none). bias: biases on every projection. init: `layers.param`
    init of the weights. Parameters: w_in, w_out (and w_gate), biases b_in, b_out (and b_gate)."""

    d_model: int
    d_mlp: int
    gated: bool = False
    act: str = "relu"
    bias: bool = False
    init: str = "normal"
    dtype: str = "float32"

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {tuple(ACTIVATIONS)}, got {self.act!r}")


@dataclass(frozen=True)
class BlockSpec:
    """One block: `attention` / `mlp` None for a layer without that sub-layer. placement: norms before
    each sub-layer ("pre"), on its output ("post", OLMo-2) or both ("sandwich", Gemma 2/3). parallel:
    the MLP reads the block input, not the residual after attention (GPT-NeoX). slot: position 0 is a
    learned sink slot, not a token (`toybb.models.toy`)."""

    norm: NormSpec
    attention: AttentionSpec | None
    mlp: MLPSpec | None
    placement: str = "pre"
    parallel: bool = False
    slot: bool = False

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"norm placement must be one of {PLACEMENTS}, got {self.placement!r}")


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


class MLP(nnx.Module):
    SITES = {"mlp.hidden": ("batch", "pos", "d_mlp"),  # after the nonlinearity / gate
             "mlp.out": RESID}  # tapped by the block, after a post-norm

    def __init__(self, spec: MLPSpec, layer: int, *, rngs: nnx.Rngs | None = None):
        d, f, dt, init = spec.d_model, spec.d_mlp, _dtype(spec.dtype), spec.init
        self.act, self.layer = spec.act, layer
        self.w_gate = param((d, f), dt, init, rngs, d) if spec.gated else None
        self.w_in = param((d, f), dt, init, rngs, d)
        self.w_out = param((f, d), dt, init, rngs, f)
        self.b_in = param((f,), dt) if spec.bias else None
        self.b_gate = param((f,), dt) if spec.bias and spec.gated else None
        self.b_out = param((d,), dt) if spec.bias else None

    def __call__(self, x: jax.Array, tap: Tap = NO_TAP, real: tuple | None = None) -> jax.Array:
        """x [batch, seq, d_model] -> the MLP output (before its site `mlp.out`, tapped by the block).
        real: the index of the real positions behind a sink slot (the site `mlp.hidden` covers those)."""
        x, ws = fetch(x, *(v for v in (self.w_in, self.w_gate) if v is not None))
        up = matmul(x, ws[0])
        if self.b_in is not None:
            up = up + pv(self.b_in)
        act = ACTIVATIONS[self.act]
        if self.w_gate is not None:
            gate = matmul(x, ws[1])
            if self.b_gate is not None:
                gate = gate + pv(self.b_gate)
            hid = act(gate) * up
        else:
            hid = act(up)
        hid = tap.part(self, self.layer, "mlp.hidden", hid, real) if real else tap(self, self.layer, "mlp.hidden", hid)
        hid, (w,) = fetch(hid, self.w_out)
        out = matmul(hid, w)
        if self.b_out is not None:
            out = out + pv(self.b_out)
        return out


class Block(nnx.Module):
    """x [batch, seq, d_model] -> x [batch, seq, d_model]; sites resid_pre, attn.out, resid_mid, mlp.out,
    resid_post (and those of the attention layer and the MLP)."""

    SITES = {"resid_pre": RESID, "resid_mid": RESID, "resid_post": RESID,
             # the residual stream at a sink slot, when the model has one
             "resid_pre_slot": SLOT, "resid_mid_slot": SLOT, "resid_post_slot": SLOT}

    def __init__(self, spec: BlockSpec, layer: int, *, rngs: nnx.Rngs | None = None):
        self.layer, self.parallel, self.slot = layer, spec.parallel, spec.slot
        attn, mlp, pre, post = spec.attention, spec.mlp, spec.placement != "post", spec.placement != "pre"
        d = (attn or mlp).d_model if attn or mlp else 0
        # creation order = the order random keys are drawn (the toy's norms draw keys)
        self.ln1 = make_norm(spec.norm, d, rngs) if attn and pre else None
        self.ln_post_attn = make_norm(spec.norm, d, rngs) if attn and post else None
        self.attn = Attention(attn, layer, rngs=rngs) if attn else None
        self.ln2 = make_norm(spec.norm, d, rngs) if mlp and pre else None
        self.ln_post_mlp = make_norm(spec.norm, d, rngs) if mlp and post else None
        self.mlp = MLP(mlp, layer, rngs=rngs) if mlp else None

    def site_table(self) -> tuple:
        """((site name, axes), ...) of this block and its sub-layers, in the order they are emitted."""
        resid = ("resid_pre", "resid_mid", "resid_post")
        parts = [(Block, resid)]
        if self.attn is not None:
            parts.append((Attention, self.attn.site_kinds(self.slot)))
        if self.mlp is not None:
            parts.append((MLP, tuple(MLP.SITES)))
        if self.slot:
            parts.append((Block, tuple(f"{k}_slot" for k in resid)))
        return declared(parts, self.layer)

    def __call__(self, x, positions, tap: Tap = NO_TAP, contiguous: bool = False):
        l, slot = self.layer, self.slot
        site = site_fn(self, tap, l, slot)
        x = site("resid_pre", x)
        h = x
        if self.attn is not None:
            a = self.attn(_apply(self.ln1, x), positions, tap, contiguous=contiguous, slot=slot)
            h = x + site_fn(self.attn, tap, l, slot)("attn.out", _apply(self.ln_post_attn, a))
        h = site("resid_mid", h)
        if self.mlp is not None:
            m = self.mlp(_apply(self.ln2, x if self.parallel else h), tap, REAL if slot else None)
            h = h + site_fn(self.mlp, tap, l, slot)("mlp.out", _apply(self.ln_post_mlp, m))
        return site("resid_post", h)


def _apply(norm, x):
    return x if norm is None else norm(x)


REAL = (slice(None), slice(1, None))  # the real positions of a [batch, seq + 1, ...] site behind a sink slot


def site_fn(module, tap: Tap, layer: int | None, slot: bool):
    """kind, x -> x through the tap; with a sink slot the real positions are site `kind` and, for the
    residual stream, the slot is site `{kind}_slot`."""
    def site(kind, x):
        if not slot:
            return tap(module, layer, kind, x)
        x = tap.part(module, layer, kind, x, REAL)
        if kind.startswith("resid") or kind in ("embed", "final_norm"):
            x = tap.part(module, layer, f"{kind}_slot", x, (slice(None), 0))
        return x
    return site
