"""Loading a GGUF file (llama.cpp's format) with the `gguf` package: metadata -> ModelConfig, tensors
dequantised to float32, tokenizer rebuilt from the metadata.

llama.cpp's converter permutes the q/k rows of each head of "llama"-architecture models so that its
interleaved rotary pairing works; toybb undoes the permutation (`interleaved_to_half`) and runs
half-split RoPE, unless asked to keep the stored rows and use interleaved RoPE (same logits).
Gemma GGUF files store norm weights already as 1 + w, so the config applies them as stored; what a
Gemma file leaves implicit (layer pattern, local RoPE base, query scale, Gemma 2's soft-caps) follows
llama.cpp. Llama 3.x files carry a `rope_freqs` tensor: per-frequency factors that divide the inverse
frequencies (`ModelConfig.rope_freq_factors`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toybb.errors import CheckpointError
from toybb.models.config import ModelConfig
from toybb.models import quant
from toybb.models.positional import RopeScaling, interleaved_to_half

# GGUF general.architecture -> toybb arch
# (GPT-2, GPT-NeoX and OLMo load from Hugging Face directories; their GGUF tensor layouts are not mapped.)
_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gemma2": "gemma2", "gemma3": "gemma3"}
# Metadata keys read here or irrelevant to the forward pass; any other "{arch}.*" key is refused.
_KNOWN_ARCH_KEYS = {
    "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon",
    "attention.layer_norm_epsilon", "vocab_size", "rope.dimension_count", "attention.key_length",
    "attention.value_length", "attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping",
    "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length", "rope.freq_base_swa",
    "attention.sliding_window_pattern",
}


def _field_value(f) -> Any:
    try:
        return f.contents()
    except Exception:  # unreadable field in a corrupted file
        return None


class GGUFFile:
    def __init__(self, path: str | Path):
        import gguf

        self.path = str(path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:  # truncated/corrupted files raise ValueError, IndexError, struct errors...
            raise CheckpointError(f"{self.path}: not a readable GGUF file, truncated or corrupted ({type(e).__name__}: {e})") from None
        self.meta = {k: _field_value(f) for k, f in self.reader.fields.items()}
        self.tensors = {t.name: t for t in self.reader.tensors}
        # the reader keeps one numpy array per part of every metadata field (~250k for a 49k-token
        # vocabulary, ~90 MB of host memory); `meta` holds the converted values
        self.reader.fields = {}

    @classmethod
    def open(cls, path: str | Path) -> "GGUFFile":
        """The file, parsed once per process while it is unchanged (same size and modification time): the
        gguf reader takes seconds over a 49k-token vocabulary, and the file is only ever read."""
        st = os.stat(path)
        return _parsed(os.path.realpath(path), st.st_size, st.st_mtime_ns)

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` as float32 numpy in PyTorch layout ([out, in] for matrices)."""
        from gguf import GGMLQuantizationType, quants

        t = self.tensors[name]
        shape = tuple(int(s) for s in reversed(t.shape))
        try:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
                arr = quants.dequantize(np.asarray(t.data), t.tensor_type) if t.tensor_type == \
                    GGMLQuantizationType.BF16 else np.asarray(t.data, np.float32)
            else:
                arr = quants.dequantize(np.asarray(t.data), t.tensor_type)
            return np.asarray(arr, np.float32).reshape(shape)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{self.path}: cannot dequantise {name} ({t.tensor_type.name}: {e})") from None



@functools.lru_cache(maxsize=4)
def _parsed(path: str, size: int, mtime_ns: int) -> GGUFFile:
    return GGUFFile(path)


def _f(v) -> float | None:
    return None if v is None else float(v)


def _rope_scaling(g: GGUFFile, ga: str) -> RopeScaling:
    kind = g.meta.get(f"{ga}.rope.scaling.type")
    if kind in (None, "none"):
        return RopeScaling()
    if kind == "linear":  # llama.cpp's freq_scale = 1 / factor: position interpolation
        factor = g.meta.get(f"{ga}.rope.scaling.factor")
        if not factor or factor <= 0:
            raise CheckpointError(f"{g.path}: GGUF RoPE scaling 'linear' needs a positive {ga}.rope.scaling.factor")
        return RopeScaling("linear", float(factor))
    raise CheckpointError(f"{g.path}: GGUF RoPE scaling {kind!r} is not supported (supported: none, linear)")


def _rope_freq_factors(g: GGUFFile, n: int) -> tuple[float, ...]:
    t = g.tensors["rope_freqs.weight"]
    if int(np.prod(t.shape)) != n:
        raise CheckpointError(f"{g.path}: rope_freqs.weight has {int(np.prod(t.shape))} entries, expected one per "
                              f"rotary frequency ({n})")
    f = g.get("rope_freqs.weight").reshape(-1)
    if not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise CheckpointError(f"{g.path}: rope_freqs.weight must hold positive finite factors")
    return tuple(float(x) for x in f)


def _layer_pattern(pattern, default: int, n_layers: int, where: str) -> tuple[str, ...]:
    """llama.cpp's sliding-window pattern: an int N (every N-th layer global) or one bool per layer
    (True = sliding)."""
    if pattern is None:
        pattern = default
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != n_layers:
            raise CheckpointError(f"{where}: attention.sliding_window_pattern has {len(pattern)} entries for "
                                  f"{n_layers} layers")
        return tuple("sliding" if p else "full" for p in pattern)
    if int(pattern) < 1:
        raise CheckpointError(f"{where}: attention.sliding_window_pattern={pattern!r} is not supported")
    return tuple("full" if (i + 1) % int(pattern) == 0 else "sliding" for i in range(n_layers))


def read_config(g: GGUFFile, *, dtype: str = "float32", rope_pairing: str = "half") -> ModelConfig:
    m, where = g.meta, g.path
    ga = m.get("general.architecture")
    if ga not in _ARCH:
        raise CheckpointError(f"{where}: GGUF architecture {ga!r} is not supported (supported: {sorted(_ARCH)})")
    unknown = sorted(k for k in m if k.startswith(ga + ".") and k[len(ga) + 1:] not in _KNOWN_ARCH_KEYS)
    if unknown:
        raise CheckpointError(f"{where}: unknown or unsupported GGUF metadata {unknown}")

    def need(k):
        v = m.get(f"{ga}.{k}")
        if v is None:
            raise CheckpointError(f"{where}: GGUF metadata {ga}.{k} is missing")
        return v

    def opt(k, default=None):
        return m.get(f"{ga}.{k}", default)

    d, h = int(need("embedding_length")), int(need("attention.head_count"))
    kv = int(opt("attention.head_count_kv", h))
    hd = int(opt("attention.key_length", d // h))
    vocab = int(opt("vocab_size", len(m.get("tokenizer.ggml.tokens") or []) or 0))
    if "token_embd.weight" in g.tensors:
        vocab = int(g.tensors["token_embd.weight"].shape[-1])
    n_layers = int(need("block_count"))
    arch = _ARCH[ga]
    kw: dict[str, Any] = dict(
        arch=arch, vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=h, n_kv_heads=kv, head_dim=hd,
        mlp_dim=int(need("feed_forward_length")), max_positions=int(opt("context_length", 2048)),
        rope_theta=float(opt("rope.freq_base", 10000.0)), tie_embeddings="output.weight" not in g.tensors,
        dtype=dtype, bos_token_id=m.get("tokenizer.ggml.bos_token_id"), eos_token_id=m.get("tokenizer.ggml.eos_token_id"),
    )
    rdim = opt("rope.dimension_count")
    if rdim is not None and int(rdim) != hd:
        kw["rope_dim"] = int(rdim)
    scaling = _rope_scaling(g, ga)
    if arch in ("llama", "mistral", "qwen2"):
        kw.update(norm="rms", norm_eps=float(need("attention.layer_norm_rms_epsilon")), act="silu",
                  qkv_bias=arch == "qwen2", sliding_window=opt("attention.sliding_window"), rope_scaling=scaling)
        if arch in ("llama", "mistral"):
            kw["rope_pairing"] = rope_pairing
        if "rope_freqs.weight" in g.tensors:  # llama3-style per-frequency factors, one tensor for all layers
            kw["rope_freq_factors"] = _rope_freq_factors(g, (kw.get("rope_dim") or hd) // 2)
    elif arch in ("gemma2", "gemma3"):
        win = opt("attention.sliding_window")
        # llama.cpp's conventions for what the file leaves implicit: the layer pattern (Gemma 2 alternates,
        # Gemma 3 has every 6th layer global), Gemma 2's soft-capping defaults, the local RoPE base (10000,
        # unscaled) and the query scale: 1/sqrt(head_dim), except the 27B models (46 / 62 layers), whose
        # query_pre_attn_scalar is d_model / n_heads.
        if win is None and arch == "gemma2":
            win = 4096
        if win is None:
            raise CheckpointError(f"{where}: GGUF metadata {ga}.attention.sliding_window is missing")
        big = n_layers == (46 if arch == "gemma2" else 62)
        softcaps = (50.0, 30.0) if arch == "gemma2" else (None, None)
        kw.update(norm="rms", norm_eps=float(need("attention.layer_norm_rms_epsilon")), norm_plus_one=False,
                  placement="sandwich", embed_scale=True, act="gelu_tanh",
                  query_scale=(d / h) ** -0.5 if big else hd**-0.5,
                  attn_softcap=_f(opt("attn_logit_softcapping", softcaps[0])),
                  final_softcap=_f(opt("final_logit_softcapping", softcaps[1])),
                  sliding_window=int(win), layer_types=_layer_pattern(opt("attention.sliding_window_pattern"),
                                                                    2 if arch == "gemma2" else 6, n_layers, where),
                  tie_embeddings=True, qk_norm="head" if arch == "gemma3" else "none", rope_scaling=scaling)
        if arch == "gemma3":  # the file's RoPE scaling applies to the global layers only
            kw["rope_local_theta"] = float(opt("rope.freq_base_swa", 10000.0))
        elif scaling.kind != "none":
            raise CheckpointError(f"{where}: GGUF RoPE scaling is not supported for gemma2")
    else:
        raise CheckpointError(f"{where}: GGUF loading of {arch} is not supported")
    return ModelConfig(**kw)


def tensor_thunks(g: GGUFFile, cfg: ModelConfig, quantized: bool = False) -> dict[str, Callable[[], Any]]:
    """GGUF tensors -> {toybb name: thunk}; unknown tensor names are an error.

    quantized: Q4_0/Q4_1/Q8_0 matrices stay packed (`quant.QArray`), dequantised in the forward."""
    h, hk, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
    permuted = cfg.arch in ("llama", "mistral")  # llama.cpp permutes q/k rows only for these
    unpermute = permuted and cfg.rope_pairing == "half"

    def heads(n, un):
        def f(w):
            if un:
                w = interleaved_to_half(w, n)
            return w.T.reshape(d, n, dh)
        f.layout, f.unpermute = ("heads", n, dh), (n if un else None)
        return f

    def T(w):
        return w.T
    T.layout, T.unpermute = ("T",), None

    def out_heads(w):
        return w.T.reshape(h, dh, d)
    out_heads.layout, out_heads.unpermute = ("out_heads", h, dh), None

    post_attn = "ln2" if cfg.placement == "pre" else "ln_post_attn"
    table: dict[str, tuple[str, Callable]] = {
        "attn_q.weight": ("attn.wq", heads(h, unpermute)),
        "attn_k.weight": ("attn.wk", heads(hk, unpermute)),
        "attn_v.weight": ("attn.wv", heads(hk, False)),
        "attn_output.weight": ("attn.wo", out_heads),
        "attn_q.bias": ("attn.bq", lambda b: b.reshape(h, dh)),
        "attn_k.bias": ("attn.bk", lambda b: b.reshape(hk, dh)),
        "attn_v.bias": ("attn.bv", lambda b: b.reshape(hk, dh)),
        "attn_q_norm.weight": ("attn.q_norm.scale", lambda w: w),
        "attn_k_norm.weight": ("attn.k_norm.scale", lambda w: w),
        "ffn_gate.weight": ("mlp.w_gate", T),
        "ffn_up.weight": ("mlp.w_in", T),
        "ffn_down.weight": ("mlp.w_out", T),
        "attn_norm.weight": ("ln1.scale", lambda w: w),
        "ffn_norm.weight": ("ln2.scale", lambda w: w),
        "post_attention_norm.weight": (post_attn + ".scale", lambda w: w),
        "post_ffw_norm.weight": ("ln_post_mlp.scale", lambda w: w),
    }
    if cfg.arch in ("gemma2", "gemma3"):
        table["ffn_norm.weight"] = ("ln2.scale", lambda w: w)
    out: dict[str, Callable[[], np.ndarray]] = {}
    unknown = []
    for name in g.tensors:
        get = (lambda name=name: g.get(name))
        if name == "token_embd.weight":
            out["token_embed"] = _packed(g, name, ("id",), None, (cfg.vocab_size, d)) if quantized else get
            if out["token_embed"] is None:
                out["token_embed"] = get
        elif name == "output_norm.weight":
            out["ln_f.scale"] = get
        elif name == "output.weight":
            out["unembed"] = (_packed(g, name, ("T",), None, (d, cfg.vocab_size)) if quantized else None) or \
                (lambda get=get: get().T)
        elif name == "rope_freqs.weight":
            if cfg.rope_freq_factors is None:  # read into the config by read_config for llama-style models
                unknown.append(name + f" (rotary frequency factors: not supported for {cfg.arch})")
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in table:
                unknown.append(name)
                continue
            target, fn = table[rest]
            packed = None
            if quantized and hasattr(fn, "layout"):
                packed = _packed(g, name, fn.layout, fn.unpermute, _param_shape(fn.layout, g.tensors[name]))
            out[f"blocks.{layer}.{target}"] = packed or (lambda get=get, fn=fn: fn(get()))
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"{g.path}: unexpected GGUF tensors: {unknown[:20]}")
    return out


def _param_shape(layout: tuple, t) -> tuple[int, ...]:
    cols, rows = int(t.shape[0]), int(t.shape[1])  # GGUF lists dimensions innermost first
    if layout[0] == "T":
        return (cols, rows)
    if layout[0] == "heads":
        return (cols, layout[1], layout[2])
    if layout[0] == "out_heads":
        return (layout[1], layout[2], rows)
    return (rows, cols)


def _packed(g: GGUFFile, name: str, layout: tuple, unpermute: int | None, shape: tuple):
    """A thunk giving the packed QArray of a Q4_0/Q4_1/Q8_0 matrix, or None for other types."""
    t = g.tensors[name]
    kind = t.tensor_type.name
    if kind not in quant.KINDS or len(t.shape) != 2:
        return None
    cols, rows = int(t.shape[0]), int(t.shape[1])

    def thunk():
        try:
            dq, m, qs = quant.pack(np.asarray(t.data), kind, rows, cols)
        except ValueError as e:
            raise CheckpointError(f"{g.path}: tensor {name} is truncated or corrupted ({e})") from None
        if unpermute is not None:  # q/k rows: permute whole rows, blocks stay intact
            dq, qs = interleaved_to_half(dq, unpermute), interleaved_to_half(qs, unpermute)
            m = interleaved_to_half(m, unpermute) if m is not None else None
        return quant.QArray(dq, m, qs, kind, layout, tuple(shape))

    return thunk
