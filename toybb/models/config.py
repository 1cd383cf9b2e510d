"""The one model config: every toybb model, the toy BB transformer of SPEC §2 and every pretrained family,
is a `ModelConfig`. Families differ in fields, not classes; a field left None takes its family's default
(`FAMILY_DEFAULTS`). Named constructors: `ModelConfig.toy(...)` (the paper's models and their variants); the pretrained
families come from their checkpoints (`toybb.llm.config.from_hf_config`, `toybb.llm.gguf_loader.read_config`).

Adding a position scheme: a name in POSITION_KINDS (and its fields here and in `PositionConfig`), its
computation in `toybb.models.positional`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from toybb.errors import ConfigError

# toy architectures: "transformer" (SPEC §2) and "simple" (the reduced SimpleModel of SPEC §4,
# `toybb.models.simple`); the others are the pretrained families (`toybb.llm.config.from_hf_config`)
TOY_ARCHS = ("transformer", "simple")
FAMILIES = ("llama", "mistral", "qwen2", "olmo", "olmo2", "gpt2", "gpt_neox", "gemma2", "gemma3")
ARCHS = TOY_ARCHS + FAMILIES
# how attention weighs the visible keys (`toybb.models.attention.attention`): softmax, the paper's ReLU, sigmoid
# without / with row normalisation, softpick
ATTENTION_KINDS = ("softmax", "relu", "sigmoid", "sigmoid_norm", "softpick")
ATTENTION_SINKS = ("none", "zero", "learned")  # an extra key of value 0: logit 0 (off by one) or learned per head
ATTENTION_GATES = ("none", "head", "element")  # sigmoid output gate per head or per head and feature
# position schemes of the token positions ("learned" adds a table to the embeddings; the others act in
# attention); every scheme, and each long-context option of PositionConfig, works on toy and pretrained models
POSITION_KINDS = ("learned", "none", "rope", "alibi")
RELATIVE_POSITIONS = ("rope", "alibi")  # the schemes SelfExtend can regroup
PAIRINGS = ("half", "interleaved")  # RoPE feature pairings (toybb.models.positional)
# "layer_flax": flax's nnx.LayerNorm (var = E[x^2] - E[x]^2, one random key drawn per parameter), the
# norm the toy models were trained with; "layer_noparam": LayerNorm without weights (OLMo)
NORMS = ("rms", "layer", "layer_noparam", "layer_flax")
PLACEMENTS = ("pre", "post", "sandwich")  # norms before sub-layers, on their outputs (OLMo-2), both (Gemma)
QK_NORMS = ("none", "head", "full")
MLPS = ("plain", "gated")
ACTIVATIONS = ("relu", "linear", "silu", "gelu", "gelu_tanh")
DTYPES = ("float32", "bfloat16")
# the defaults of the fields left None, per family
_TOY = dict(position="learned", max_positions=256, norm="layer_flax", mlp="plain", act="relu")
_PRETRAINED = dict(position="rope", max_positions=2048, norm="rms", mlp="gated", act="silu")
FAMILY_DEFAULTS = {a: _TOY if a in TOY_ARCHS else _PRETRAINED for a in ARCHS}


# Upper bounds of every size and count, checked before anything is allocated or compiled. The model sizes
# hold every pretrained family toybb loads with room to spare (Llama 3.1 405B: 126 layers, d_model 16,384,
# MLP 53,248; Gemma 3: a 262,144-token vocabulary; 128k-token contexts).
LIMITS = {
    "n_layers": 1024, "d_model": 2**16, "n_heads": 1024, "n_kv_heads": 1024, "head_dim": 2**16, "mlp_dim": 2**18,
    "vocab_size": 2**22, "max_positions": 2**24,
    "steps": 10**9,  # training steps
    "evaluations": 10**5,  # evaluations of one run (rows of its metrics.csv)
    "seed": 2**32 - 1,  # numpy's and JAX's generators take seeds below 2**32
    "runs": 4096,  # seeds x learning rates trained together
    "sweep_runs": 10**5,  # runs of one sweep file (settings x seeds)
    "batch": 2**20,  # sequences per step or evaluation
    "seq_len": 2**20,  # tokens per training sequence
    "samples": 2**20,  # text samples per domain of a probe or an intervention
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_count(value, where: str, limit: str, low: int = 1) -> int:
    """`value` as an integer in [low, LIMITS[limit]], else one ConfigError naming `where` and the range."""
    hi = LIMITS[limit]
    _check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= hi,
           f"{where} must be an integer from {low} to {hi:,}, got {value!r}")
    return value


def _layer_list(name: str, layers: tuple[int, ...], n_layers: int) -> None:
    for l in layers:
        _check(
            isinstance(l, int) and 0 <= l < n_layers,
            f"{name}: layer {l!r} is out of range for a {n_layers}-layer model (use 0..{n_layers - 1})",
        )


@dataclass(frozen=True)
class RopeScaling:
    """Frequency rescaling. kind: "none", "linear" (positions / factor: position interpolation, PI),
    "ntk" (NTK-aware base scaling: theta * factor ** (rot_dim / (rot_dim - 2)), so the lowest
    frequency is divided by `factor` and the highest is unchanged) or "llama3" (Llama 3.1 bands)."""

    kind: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


@dataclass(frozen=True)
class PositionConfig:
    """How one attention layer sees positions (SPEC §2, §6); built by `ModelConfig.position_config`,
    applied by `toybb.models.positional`.

    kind: one of POSITION_KINDS. rope_*: RoPE base, frequency scaling, rotated features (None: all),
    pairing and llama.cpp's per-pair frequency factors. window: sliding-window attention. selfextend
    (w, G): SelfExtend's grouped positions beyond the neighbour window w. sink_cache (k, W): StreamingLLM,
    a recent window of W keys plus the first k keys, at re-assigned cache positions (with learned or no
    positions only the mask applies). block: query rows
    per attention block (exact; bounds memory on long inputs)."""

    kind: str = "none"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    rope_dim: int | None = None
    rope_pairing: str = "half"
    rope_freq_factors: tuple[float, ...] | None = None
    window: int | None = None
    selfextend: tuple[int, int] | None = None
    sink_cache: tuple[int, int] | None = None
    block: int | None = None

    def __post_init__(self):
        _check(self.kind in POSITION_KINDS, f"position must be one of {', '.join(POSITION_KINDS)}; got {self.kind!r}")
        _check(self.rope_pairing in PAIRINGS, f"RoPE pairing must be one of {PAIRINGS}, got {self.rope_pairing!r}")
        _check(self.window is None or (isinstance(self.window, int) and self.window > 0),
               f"sliding window must be a positive integer, got {self.window!r}")
        _check(self.block is None or (isinstance(self.block, int) and self.block > 0),
               f"attention block must be a positive number of query rows, got {self.block!r}")
        if self.selfextend is not None:
            _check(len(self.selfextend) == 2 and all(isinstance(x, int) and x >= 1 for x in self.selfextend),
                   f"SelfExtend needs (w, G) with neighbour window w >= 1 and group size G >= 1, got {self.selfextend!r}")
            _check(self.kind in RELATIVE_POSITIONS,
                   f"SelfExtend regroups relative positions (position rope or alibi), not {self.kind!r}")
        if self.sink_cache is not None:
            _check(len(self.sink_cache) == 2 and all(isinstance(x, int) for x in self.sink_cache)
                   and self.sink_cache[0] >= 0 and self.sink_cache[1] >= 1,
                   f"sink cache needs (sink tokens k >= 0, recent window W >= 1), got {self.sink_cache!r}")
            _check(self.selfextend is None, "SelfExtend and a sink cache cannot be combined; choose one")


# former field names -> (current name, conversion of the old value given the other fields); old config
# files, run folders' config.json and keyword arguments keep working
RENAMED_MODEL_FIELDS = {
    "d_mlp": ("mlp_dim", lambda v, d: v),
    "max_len": ("max_positions", lambda v, d: v),
    "ln_eps": ("norm_eps", lambda v, d: v),
    "window": ("sliding_window", lambda v, d: v),
    "rope_scale": ("rope_scaling", lambda v, d: RopeScaling("linear", float(v)) if v > 1 else RopeScaling()),
    "logit_scale": ("query_scale", lambda v, d: None if v == 1.0 else v * (
        d.get("d_model", 256) // d.get("n_heads", 1)) ** -0.5),
    "selfextend_window": ("selfextend", lambda v, d: None if v is None else (v, d.get("selfextend_group", 1))),
    "selfextend_group": ("selfextend", lambda v, d: d.get("selfextend")),
}
# fields whose None default is derived from others: a copy that changes those re-derives them
DERIVED_FIELDS = ("n_kv_heads", "head_dim", "mlp_dim")


def renamed_model_fields(d: dict[str, Any]) -> dict[str, Any]:
    """A model section / keyword arguments with former field names replaced by the current ones
    (d_mlp -> mlp_dim, max_len -> max_positions, ln_eps -> norm_eps, window -> sliding_window,
    rope_scale -> rope_scaling, logit_scale t -> query_scale t / sqrt(head_dim),
    selfextend_window / selfextend_group -> selfextend (w, G)); a former name overrides a current one."""
    if not set(d) & set(RENAMED_MODEL_FIELDS):
        return d
    out = dict(d)
    for old in ("selfextend_window", *RENAMED_MODEL_FIELDS):  # the window first: it reads the group
        if old in out:
            new, conv = RENAMED_MODEL_FIELDS[old]
            value = conv(out[old], out)
            out.pop(old)
            out[new] = value
    return out


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer: the toy BB model (arch "transformer", SPEC §2; its defaults are the
    paper's 1-layer model), the reduced SimpleModel (arch "simple", SPEC §4) or a pretrained family.
    Former field names are accepted (`RENAMED_MODEL_FIELDS`). A field left None takes its family's value
    (`FAMILY_DEFAULTS`; n_kv_heads: n_heads, head_dim: d_model // n_heads, mlp_dim: 4 * d_model)."""

    arch: str = "transformer"
    vocab_size: int = 67
    d_model: int = 256
    n_layers: int = 1
    n_heads: int = 1
    n_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int | None = None  # MLP hidden width
    max_positions: int | None = None  # size of the learned position table / the trained context
    # attention
    attention: str = "softmax"  # one of ATTENTION_KINDS
    attn_sink: str = "none"  # one of ATTENTION_SINKS (softmax only)
    attn_gate: str = "none"  # one of ATTENTION_GATES
    softmax_clip: tuple[float, ...] | None = None  # clipped softmax (gamma <= 0, zeta >= 1)
    sigmoid_bias: float = 0.0  # b of sigmoid attention: sigmoid(s + b)
    query_scale: float | None = None  # attention logit scale; None: head_dim ** -0.5
    attn_softcap: float | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    clip_qkv: float | None = None
    qk_norm: str = "none"  # none | head (per head, Gemma 3) | full (across heads, OLMo-2)
    # positions: one of POSITION_KINDS; rope_*: RoPE base, rotated features (None: all), pairing, frequency
    # scaling and llama.cpp's per-pair frequency factors (global layers only); rope_local_*: base and scaling
    # of the sliding-window layers (Gemma 3; None: the global ones). sliding_window: window of every layer,
    # or of the "sliding" entries of layer_types (per layer "full" | "sliding"; () = all alike).
    # selfextend (w, G), sink_cache (k, W), attn_block: see `PositionConfig`.
    position: str | None = None
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None
    rope_dim: int | None = None
    rope_pairing: str = "half"
    rope_scaling: RopeScaling = RopeScaling()
    rope_local_scaling: RopeScaling = RopeScaling()
    rope_freq_factors: tuple[float, ...] | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    selfextend: tuple[int, ...] | None = None
    sink_cache: tuple[int, ...] | None = None
    attn_block: int | None = None
    # norms
    norm: str | None = None  # one of NORMS
    norm_eps: float = 1e-5
    norm_plus_one: bool = False  # weights stored as w, applied as (1 + w) (Gemma)
    placement: str = "pre"  # one of PLACEMENTS
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
    # MLP
    mlp: str | None = None  # plain (in/out) | gated (gate/in/out)
    act: str | None = None  # one of ACTIVATIONS
    mlp_bias: bool = False
    # layers built without attention or MLP, or with a linear MLP (ablations)
    no_attention: tuple[int, ...] = ()
    no_mlp: tuple[int, ...] = ()
    linear_mlp: tuple[int, ...] = ()
    # sinks that are not input tokens (SPEC §5)
    attn_bias: bool = False  # learned k', v' per kv head, prepended to every layer's keys and values
    sink_token: bool = False  # a learned vector prepended to the sequence as an extra position
    # embeddings and output
    tie_embeddings: bool = False
    embed_scale: bool = False  # Gemma: x * sqrt(d_model)
    final_softcap: float | None = None
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        _check(self.arch in ARCHS, f"model.arch must be one of {', '.join(ARCHS)}; got {self.arch!r}")
        for name, value in FAMILY_DEFAULTS[self.arch].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_positions"):
            check_count(getattr(self, name), f"model.{name}", name)
        if self.head_dim is None:
            _check(self.d_model % self.n_heads == 0,
                   f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        for name, value in self.derived_values().items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in DERIVED_FIELDS:
            check_count(getattr(self, name), f"model.{name}", name)
        _check(self.n_heads % self.n_kv_heads == 0,
               f"model.n_kv_heads ({self.n_kv_heads}) must be a positive divisor of model.n_heads ({self.n_heads})")
        for name, allowed in (("attention", ATTENTION_KINDS), ("attn_sink", ATTENTION_SINKS),
                              ("attn_gate", ATTENTION_GATES), ("position", POSITION_KINDS), ("norm", NORMS),
                              ("placement", PLACEMENTS), ("qk_norm", QK_NORMS), ("mlp", MLPS),
                              ("act", ACTIVATIONS), ("dtype", DTYPES), ("rope_pairing", PAIRINGS)):
            _check(getattr(self, name) in allowed,
                   f"model.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        self._check_attention_options()
        _check(self.norm_eps > 0, f"model.norm_eps must be positive, got {self.norm_eps!r}")
        _check(self.rope_theta > 0 and (self.query_scale is None or self.query_scale > 0),
               "model.rope_theta and model.query_scale must be positive")
        _check(isinstance(self.rope_scaling, RopeScaling) and self.rope_scaling.factor >= 1,
               f"model.rope_scaling needs a factor >= 1, got {self.rope_scaling!r}")
        _check(self.rope_dim is None or (self.rope_dim % 2 == 0 and 0 < self.rope_dim <= self.head_dim),
               f"model.rope_dim must be even and in (0, head_dim={self.head_dim}], got {self.rope_dim!r}")
        if self.rope_freq_factors is not None:
            n = (self.rope_dim or self.head_dim) // 2
            _check(self.position == "rope" and len(self.rope_freq_factors) == n
                   and all(isinstance(f, float) and f > 0 for f in self.rope_freq_factors),
                   f"model.rope_freq_factors must be {n} positive floats (one per rotary pair) on a RoPE model")
        for name in ("no_attention", "no_mlp", "linear_mlp"):
            _layer_list(f"model.{name}", getattr(self, name), self.n_layers)
        for name in ("attn_bias", "sink_token"):
            _check(isinstance(getattr(self, name), bool), f"model.{name} must be true or false, got "
                   f"{getattr(self, name)!r}")
            _check(not getattr(self, name) or self.arch != "simple",
                   f"model.{name} needs a transformer (the simple model has no such slot)")
        # k' sits at key position -1: a window would hide it and ALiBi / SelfExtend would give it a distance
        _check(not self.attn_bias or (self.sliding_window is None and self.selfextend is None
                                      and self.sink_cache is None and self.position in ("learned", "none", "rope")),
               "model.attn_bias works with position learned, none or rope and no window, sink cache or "
               "SelfExtend; drop one of the two options")
        for name in ("selfextend", "sink_cache"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, (tuple, list)) and len(v) == 2),
                   f"model.{name} must be a pair of integers or null, got {v!r}")
            if v is not None:
                object.__setattr__(self, name, tuple(v))
        if self.selfextend is not None:
            _check(self.selfextend[0] < self.max_positions,
                   f"model.selfextend: the neighbour window w must be smaller than the context ({self.max_positions})")
        _check(not self.layer_types or (len(self.layer_types) == self.n_layers
                                        and set(self.layer_types) <= {"full", "sliding"}),
               f"model.layer_types needs one entry per layer ({self.n_layers}), each full or sliding")
        _check("sliding" not in self.layer_types or bool(self.sliding_window),
               "model.sliding_window: sliding layers (model.layer_types) need a window size")
        try:
            for l in range(self.n_layers):
                self.position_config(l)
        except ConfigError as e:
            raise ConfigError(f"model: {e}") from None

    def _check_attention_options(self) -> None:
        """The mitigation options of the attention layer fit the model and each other."""
        if self.arch == "simple":
            _check((self.attention, self.attn_sink, self.attn_gate, self.softmax_clip) == ("softmax", "none", "none", None),
                   "the simple model (model.arch = simple) has plain softmax attention only; use model.arch = "
                   "transformer for other attention kinds, sinks, gates or clipping")
        if self.attn_sink != "none" or self.softmax_clip is not None:
            _check(self.attention == "softmax", f"model.attn_sink and model.softmax_clip change softmax attention; "
                   f"model.attention is {self.attention!r}")
        if self.attn_gate != "none" or self.attn_sink != "none":
            _check(len(self.no_attention) < self.n_layers,
                   "model.attn_gate / model.attn_sink need a layer with attention (model.no_attention removes all)")
        if self.softmax_clip is not None:
            c = self.softmax_clip
            _check(len(c) == 2 and c[0] <= 0 and c[1] >= 1,
                   f"model.softmax_clip must be (gamma, zeta) with gamma <= 0 and zeta >= 1, got {c!r}")
            object.__setattr__(self, "softmax_clip", (float(c[0]), float(c[1])))
        _check(isinstance(self.sigmoid_bias, (int, float)) and abs(self.sigmoid_bias) < 1e4,
               f"model.sigmoid_bias must be a finite number, got {self.sigmoid_bias!r}")
        _check(self.sigmoid_bias == 0 or self.attention in ("sigmoid", "sigmoid_norm"),
               f"model.sigmoid_bias applies to sigmoid attention; model.attention is {self.attention!r}")

    @classmethod
    def toy(cls, **fields) -> "ModelConfig":
        """The toy BB transformer (SPEC §2): the paper's 1-layer model, with `fields` changed (n_layers=3:
        the paper's 3-layer model; attention="relu", attn_bias=True, sink_token=True, ...: its variants)."""
        return cls(**{"arch": "transformer", **fields})

    def derived_values(self) -> dict[str, int]:
        """The values DERIVED_FIELDS take when left None: n_kv_heads = n_heads (multi-head), head_dim =
        d_model // n_heads, mlp_dim = 4 * d_model."""
        values = {"n_kv_heads": self.n_heads, "head_dim": self.d_model // self.n_heads, "mlp_dim": 4 * self.d_model}
        assert tuple(values) == DERIVED_FIELDS
        return values

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads

    @property
    def toy_init(self) -> bool:
        """The toy models' initialisation (the authors' PyTorch defaults, SPEC §2) rather than N(0, 1/fan_in)."""
        return self.arch in TOY_ARCHS

    def mlp_act(self, layer: int) -> str | None:
        """The MLP activation of `layer`; None for a layer without MLP."""
        if layer in self.no_mlp:
            return None
        return "linear" if layer in self.linear_mlp else self.act

    def mlp_kind(self, layer: int) -> str:
        """"none" for a layer without MLP, else its activation."""
        return self.mlp_act(layer) or "none"

    def has_attention(self, layer: int) -> bool:
        return layer not in self.no_attention

    def window(self, layer: int) -> int | None:
        """Sliding-window size of `layer`, None for full causal attention."""
        if self.layer_types:
            return self.sliding_window if self.layer_types[layer] == "sliding" else None
        return self.sliding_window

    def position_config(self, layer: int) -> PositionConfig:
        """The position scheme of attention layer `layer` (sliding layers may have their own RoPE base and
        scaling; llama.cpp's frequency factors apply to the global layers)."""
        local = self.window(layer) is not None and self.rope_local_theta is not None
        return PositionConfig(
            kind=self.position, rope_theta=self.rope_local_theta if local else self.rope_theta,
            rope_scaling=self.rope_local_scaling if local else self.rope_scaling, rope_dim=self.rope_dim,
            rope_pairing=self.rope_pairing, rope_freq_factors=None if local else self.rope_freq_factors,
            window=self.window(layer), selfextend=self.selfextend, sink_cache=self.sink_cache,
            block=self.attn_block)

    def with_dtype(self, dtype: str) -> "ModelConfig":
        return dataclasses.replace(self, dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields of a copy with `fields` changed: derived fields (DERIVED_FIELDS) left at their derived
        value follow the fields they derive from (a wider d_model widens the default MLP)."""
        fields = renamed_model_fields(fields)
        merged = {**dataclasses.asdict(self), **fields}
        for name, value in self.derived_values().items():
            if name not in fields and getattr(self, name) == value:
                merged[name] = None
        return merged


def _accept_former_names(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **renamed_model_fields(kwargs))
    return __init__


ModelConfig.__init__ = _accept_former_names(ModelConfig.__init__)
