"""Parsing a Hugging Face config.json into toybb's one `ModelConfig` (the pretrained families). A field
toybb does not know, or a value it does not implement, is an error naming it: silently ignoring a field
is how a port produces plausible but wrong logits.
"""

from __future__ import annotations

import math
from typing import Any

from toybb.errors import ConfigError
from toybb.models.config import ModelConfig, RopeScaling

LLMConfig = ModelConfig  # former name: the pretrained families are ModelConfigs like the toy models


# Fields of a Hugging Face config.json that do not change the forward pass of a decoder at inference.
_NEUTRAL = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id", "attention_dropout",
    "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "classifier_dropout", "_name_or_path",
    "pretraining_tp", "is_decoder", "tokenizer_class", "output_attentions", "output_hidden_states",
    "return_dict", "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "summary_type",
    "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "task_specific_params", "n_ctx", "use_return_dict", "tie_encoder_decoder", "add_cross_attention",
    "reorder_and_upcast_attn", "_attn_implementation_autoset",
    "max_window_layers", "cache_implementation", "_sliding_window_pattern", "sliding_window_pattern",
    "bos_token", "eos_token", "decoder_start_token_id",
}

# The type of every field toybb reads (null is allowed: the family's default); checked before any field is used,
# in nested mappings too (rope_parameters, Gemma 3's per-layer-type RoPE).
_INT = ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "head_dim",
        "intermediate_size", "max_position_embeddings", "n_embd", "n_head", "n_layer", "n_positions", "n_inner",
        "sliding_window", "sliding_window_pattern", "_sliding_window_pattern", "original_max_position_embeddings")
_FLOAT = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "rope_local_base_freq",
          "attn_logit_softcapping", "final_logit_softcapping", "clip_qkv", "rotary_pct", "rotary_emb_base",
          "partial_rotary_factor", "query_pre_attn_scalar", "factor", "low_freq_factor", "high_freq_factor")
_BOOL = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_parallel_residual", "use_sliding_window",
         "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "use_bidirectional_attention")
_STR = ("model_type", "hidden_act", "hidden_activation", "activation_function", "rope_type", "type")
_TYPES = {**{k: "an integer" for k in _INT}, **{k: "a number" for k in _FLOAT}, **{k: "true or false" for k in _BOOL},
          **{k: "a string" for k in _STR}, "rope_parameters": "a mapping", "rope_scaling": "a mapping",
          "layer_types": "a list of strings"}


def _type_ok(want: str, v) -> bool:
    if want == "an integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if want == "a number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if want == "true or false":
        return isinstance(v, bool)
    if want == "a string":
        return isinstance(v, str)
    if want == "a mapping":
        return isinstance(v, dict)
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check_types(d: dict, where: str, prefix: str = "") -> None:
    """Every field toybb reads has its type (`_TYPES`; null allowed), in nested mappings too: one ConfigError
    naming the field, before any is used."""
    for key, v in d.items():
        want = _TYPES.get(key)
        if want is not None and v is not None and not _type_ok(want, v):
            raise ConfigError(f"{where}: field {prefix + key!r} must be {want}, got {v!r}"[:300])
        if isinstance(v, dict) and key in ("rope_parameters", "rope_scaling", "full_attention", "sliding_attention"):
            check_types(v, where, f"{prefix}{key}.")


_ACT = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


class _Fields:
    """Reads fields from a config dict, recording which were consumed so leftovers can be refused."""

    def __init__(self, d: dict[str, Any], where: str):
        self.d, self.used, self.where = d, set(), where

    def get(self, key, default=None):
        self.used.add(key)
        return self.d.get(key, default)

    def need(self, key):
        self.used.add(key)
        if key not in self.d or self.d[key] is None:
            raise ConfigError(f"{self.where}: required field {key!r} is missing")
        return self.d[key]

    def expect(self, key, allowed: tuple, default=None):
        """A field toybb supports only with the given values."""
        v = self.get(key, default)
        if v not in allowed:
            raise ConfigError(f"{self.where}: field {key!r}={v!r} is not supported (supported: {allowed})")
        return v

    def finish(self):
        left = sorted(k for k in self.d if k not in self.used and k not in _NEUTRAL)
        if left:
            raise ConfigError(
                f"{self.where}: unknown or unsupported config field(s) {left}; toybb refuses to guess "
                "what they do. Remove them if they are irrelevant, or add support in toybb/llm/config.py."
            )


def _act(f: _Fields, key: str) -> str:
    v = f.get(key)
    if v not in _ACT:
        raise ConfigError(f"{f.where}: activation {key}={v!r} is not supported (supported: {sorted(_ACT)})")
    return _ACT[v]


def _scaling(rp: dict, where: str) -> RopeScaling:
    kind = rp.get("rope_type", rp.get("type", "default"))
    known = {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor", "low_freq_factor",
             "high_freq_factor", "original_max_position_embeddings"}
    extra = sorted(set(rp) - known)
    if extra:
        raise ConfigError(f"{where}: unsupported rope_parameters field(s) {extra}")
    if kind == "default":
        return RopeScaling()
    if kind == "linear":
        return RopeScaling("linear", float(rp["factor"]))
    if kind == "llama3":
        return RopeScaling("llama3", float(rp["factor"]), float(rp["low_freq_factor"]),
                           float(rp["high_freq_factor"]), int(rp["original_max_position_embeddings"]))
    raise ConfigError(f"{where}: RoPE type {kind!r} is not supported (supported: default, linear, llama3)")


def _rope(f: _Fields) -> tuple[float, RopeScaling, float | None]:
    """(theta, scaling, partial_rotary_factor) from rope_parameters (transformers 5) or the older
    rope_theta / rope_scaling fields."""
    rp = f.get("rope_parameters")
    old_theta, old_scaling = f.get("rope_theta"), f.get("rope_scaling")
    if rp is None:
        rp = dict(old_scaling or {})
        rp.setdefault("rope_theta", old_theta if old_theta is not None else 10000.0)
    theta = float(rp.get("rope_theta", 10000.0))
    return theta, _scaling(rp, f.where), rp.get("partial_rotary_factor")


def _layer_types(f: _Fields, n_layers: int) -> tuple[str, ...]:
    lt = f.get("layer_types")
    if lt is None:
        return ()
    names = {"full_attention": "full", "sliding_attention": "sliding"}
    bad = sorted(set(lt) - set(names))
    if bad:
        raise ConfigError(f"{f.where}: layer type(s) {bad} are not supported")
    return tuple(names[t] for t in lt)


def from_hf_config(d: dict[str, Any], *, dtype: str = "float32", where: str = "config.json") -> ModelConfig:
    """Parse a Hugging Face config.json dict (transformers 4.x or 5.x layout) into an ModelConfig."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a config must be a JSON object (a mapping of fields), got {type(d).__name__}")
    check_types(d, where)
    mt = d.get("model_type")
    if mt == "gemma3" and isinstance(d.get("text_config"), dict):
        raise ConfigError(f"{where}: multimodal gemma3 checkpoints are not supported; use the text-only model")
    f = _Fields(d, where)
    if f.get("quantization_config") is not None:
        raise ConfigError(f"{where}: quantised HF checkpoints (quantization_config) are not supported")
    common = dict(bos_token_id=_int_or_none(d.get("bos_token_id")), eos_token_id=_int_or_none(d.get("eos_token_id")),
                  dtype=dtype)
    if mt == "gpt2":
        cfg = _gpt2(f, common)
        f.finish()
        return cfg
    if mt not in ("llama", "mistral", "qwen2", "olmo", "olmo2", "gpt_neox", "gemma2", "gemma3_text", "gemma3"):
        raise ConfigError(
            f"{where}: model_type {mt!r} is not supported; supported: llama, mistral, qwen2, olmo, olmo2, "
            "gpt2, gpt_neox, gemma2, gemma3_text")
    arch = "gemma3" if mt.startswith("gemma3") else mt
    d_model, h = f.need("hidden_size"), f.need("num_attention_heads")
    n_layers = f.need("num_hidden_layers")
    kv = f.get("num_key_value_heads") or h
    head_dim = f.get("head_dim") or d_model // h
    kw: dict[str, Any] = dict(arch=arch, vocab_size=f.need("vocab_size"), d_model=d_model, n_layers=n_layers,
                              n_heads=h, n_kv_heads=kv, head_dim=head_dim, mlp_dim=f.need("intermediate_size"),
                              max_positions=f.get("max_position_embeddings", 2048),
                              tie_embeddings=bool(f.get("tie_word_embeddings", arch.startswith("gemma"))))
    kw.update(_hf_rope(f, d, arch, mt, head_dim, where))
    kw.update(_hf_family(f, d, arch, n_layers, where))
    if "attention_bias" in d:
        f.get("attention_bias")
    f.get("rope_parameters"), f.get("rope_theta"), f.get("rope_scaling")
    cfg = ModelConfig(**kw, **common)
    f.finish()
    return cfg


def _gpt2(f: "_Fields", common: dict) -> ModelConfig:
    d_model, h = f.need("n_embd"), f.need("n_head")
    f.expect("scale_attn_weights", (True,), True)
    f.expect("scale_attn_by_inverse_layer_idx", (False,), False)
    inner = f.get("n_inner")
    return ModelConfig(
        arch="gpt2", vocab_size=f.need("vocab_size"), d_model=d_model, n_layers=f.need("n_layer"),
        n_heads=h, n_kv_heads=h, head_dim=d_model // h, mlp_dim=inner or 4 * d_model,
        max_positions=f.need("n_positions"), norm="layer", norm_eps=f.get("layer_norm_epsilon", 1e-5),
        position="learned", qkv_bias=True, o_bias=True, mlp="plain", act=_act(f, "activation_function"),
        mlp_bias=True, tie_embeddings=f.expect("tie_word_embeddings", (True,), True), **common)


def _hf_rope(f: "_Fields", d: dict, arch: str, mt: str, head_dim: int, where: str) -> dict[str, Any]:
    """RoPE fields (base, scaling, local base of Gemma 3's sliding layers, partial rotary)."""
    kw: dict[str, Any] = {}
    if arch == "gemma3":
        rp = f.get("rope_parameters")
        f.get("rope_theta"), f.get("rope_local_base_freq"), f.get("rope_scaling")
        if rp is not None and "full_attention" in rp:
            kw["rope_theta"] = float(rp["full_attention"].get("rope_theta", 1e6))
            kw["rope_scaling"] = _scaling(rp["full_attention"], where)
            kw["rope_local_theta"] = float(rp["sliding_attention"].get("rope_theta", 1e4))
            kw["rope_local_scaling"] = _scaling(rp["sliding_attention"], where)
        else:
            kw["rope_theta"] = float(d.get("rope_theta", 1e6))
            kw["rope_scaling"] = _scaling(dict(d.get("rope_scaling") or {}), where)
            kw["rope_local_theta"] = float(d.get("rope_local_base_freq", 1e4))
        return kw
    theta, scaling, partial = _rope(f)
    kw.update(rope_theta=theta, rope_scaling=scaling)
    if arch == "gpt_neox":
        pct = partial if partial is not None else f.get("rotary_pct", 0.25)
        f.get("rotary_emb_base")
        if d.get("rotary_emb_base") is not None and f.get("rope_parameters") is None:
            kw["rope_theta"] = float(d["rotary_emb_base"])
        kw["rope_dim"] = int(head_dim * pct)
    elif partial not in (None, 1.0):
        raise ConfigError(f"{where}: partial_rotary_factor={partial} is not supported for {mt}")
    return kw


def _hf_family(f: "_Fields", d: dict, arch: str, n_layers: int, where: str) -> dict[str, Any]:
    """Norms, activations, biases, windows and placement of each family."""
    kw: dict[str, Any] = {}
    if arch in ("llama", "mistral", "qwen2"):
        kw.update(norm="rms", norm_eps=f.get("rms_norm_eps", 1e-6), act=_act(f, "hidden_act"))
        if arch == "llama":
            kw["qkv_bias"] = kw["o_bias"] = bool(f.get("attention_bias", False))
            kw["mlp_bias"] = bool(f.get("mlp_bias", False))
        if arch == "qwen2":
            kw["qkv_bias"] = True
            lt = _layer_types(f, n_layers)
            use_sw = f.get("use_sliding_window", False)
            sw = f.get("sliding_window")
            if use_sw and "sliding" in lt:
                kw.update(layer_types=lt, sliding_window=sw)
            elif use_sw:
                raise ConfigError(f"{where}: use_sliding_window without layer_types is not supported")
        if arch == "mistral":
            kw["sliding_window"] = f.get("sliding_window")
    elif arch in ("olmo", "olmo2"):
        kw.update(act=_act(f, "hidden_act"), qkv_bias=bool(f.get("attention_bias", False)))
        kw["o_bias"] = kw["qkv_bias"]
        if arch == "olmo":
            kw.update(norm="layer_noparam", norm_eps=1e-5, clip_qkv=f.get("clip_qkv"))
        else:
            kw.update(norm="rms", norm_eps=f.get("rms_norm_eps", 1e-5), placement="post", qk_norm="full")
    elif arch == "gpt_neox":
        kw.update(norm="layer", norm_eps=f.get("layer_norm_eps", 1e-5), act=_act(f, "hidden_act"),
                  parallel_residual=bool(f.get("use_parallel_residual", True)), mlp="plain", mlp_bias=True)
        kw["qkv_bias"] = kw["o_bias"] = bool(f.get("attention_bias", True))
        kw["tie_embeddings"] = bool(d.get("tie_word_embeddings", False))
    elif arch in ("gemma2", "gemma3"):
        kw.update(_hf_gemma(f, d, arch, n_layers))
    return kw


def _hf_gemma(f: "_Fields", d: dict, arch: str, n_layers: int) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        norm="rms", norm_eps=f.get("rms_norm_eps", 1e-6), norm_plus_one=True, placement="sandwich",
        embed_scale=True, act=_act(f, "hidden_activation"),
        query_scale=float(f.need("query_pre_attn_scalar")) ** -0.5,
        attn_softcap=f.get("attn_logit_softcapping"), final_softcap=f.get("final_logit_softcapping"),
        sliding_window=f.get("sliding_window"))
    kw["qkv_bias"] = kw["o_bias"] = bool(f.get("attention_bias", False))
    f.get("hidden_act")  # gemma configs carry a legacy duplicate; hidden_activation is the one used
    f.expect("use_bidirectional_attention", (None, False), None)
    lt = _layer_types(f, n_layers)
    if not lt:
        # older configs: gemma2 alternates sliding/full; gemma3 has every N-th layer full
        pat = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 2 if arch == "gemma2" else 6))
        lt = tuple("full" if (i + 1) % pat == 0 else "sliding" for i in range(n_layers))
    kw["layer_types"] = lt
    if arch == "gemma3":
        kw["qk_norm"] = "head"
    return kw


def _int_or_none(v):
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, int) else None


def describe(cfg: ModelConfig) -> str:
    """One human-readable line of the architecture."""
    att = "MHA" if cfg.n_kv_heads == cfg.n_heads else ("MQA" if cfg.n_kv_heads == 1 else "GQA")
    return (f"{cfg.arch}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads x {cfg.head_dim} "
            f"({att}, {cfg.n_kv_heads} kv), mlp {cfg.mlp_dim} ({cfg.mlp}/{cfg.act}), vocab {cfg.vocab_size}, "
            f"{cfg.position}{'' if cfg.position != 'rope' else f' theta={cfg.rope_theta:g} {cfg.rope_pairing}'}")
