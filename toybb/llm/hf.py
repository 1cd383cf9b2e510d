"""Loading a Hugging Face model directory: config.json, one or many *.safetensors (with
model.safetensors.index.json), float32/bfloat16/float16 weights. No network access.

Name mapping is a table of regular expressions from Hugging Face names to toybb parameter names,
each with the reshape that turns a PyTorch [out, in] matrix into toybb's per-head layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from toybb.errors import CheckpointError
from toybb.llm.config import from_hf_config
from toybb.llm.weights import Lazy
from toybb.models.config import ModelConfig
from toybb.records import read_json

class SafetensorsFile:
    """A safetensors file read with the `safetensors` library (numpy arrays; bfloat16 through ml_dtypes).

    The library's parse errors become a CheckpointError naming the file; a header that does not
    cover the file's bytes means the file was cut short."""

    def __init__(self, path: str | Path):
        from safetensors import SafetensorError, safe_open  # optional package (extra "llm"): imported on use

        self.path = str(path)
        try:
            self._f = safe_open(self.path, framework="np")
            self._keys = list(self._f.keys())
        except SafetensorError as e:
            msg = str(e)
            hint = " (the file is truncated or was not fully written; download or save it again)" \
                if "not fully covered" in msg or "incomplete" in msg else ""
            raise CheckpointError(f"{self.path}: not a valid safetensors file: {msg}{hint}") from None

    def keys(self):
        return self._keys

    def shape(self, name: str) -> list[int]:
        """The stored shape of tensor `name`, from the header (nothing read)."""
        return self._f.get_slice(name).get_shape()

    def get(self, name: str) -> np.ndarray:
        try:
            return self._f.get_tensor(name)
        except Exception as e:  # the library's SafetensorError, or a dtype numpy cannot hold
            raise CheckpointError(f"{self.path}: cannot read tensor {name}: {e}") from None


def read_config(model_dir: str | Path, dtype: str = "float32") -> ModelConfig:
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise CheckpointError(f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    return from_hf_config(read_json(p, "config", _FIX), dtype=dtype, where=str(p))


_FIX = "download or save the model again"


def open_tensors(model_dir: str | Path) -> dict[str, Lazy]:
    """{hf name: tensor not read yet (its shape from the header)} over every safetensors shard of the directory."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        doc = read_json(index, "weight index", _FIX)
        wm = doc.get("weight_map") if isinstance(doc, dict) else None
        if not (isinstance(wm, dict) and wm and all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items())):
            raise CheckpointError(f"{index}: not a weight index: it must be an object whose 'weight_map' maps each "
                                  f"tensor name to its shard file; {_FIX}")
        shards = sorted(set(wm.values()))
        for s in shards:
            if Path(s).name != s or not s.strip("."):  # a plain file name: no folder, not the folder itself
                raise CheckpointError(f"{index}: shard {s!r} is not a file name in the model folder; {_FIX}")
        for s in shards:
            if not (model_dir / s).is_file():
                raise CheckpointError(f"{index}: shard {s} is missing")
    else:
        shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
        wm = None
    if not shards:
        raise CheckpointError(f"{model_dir}: no *.safetensors files (PyTorch .bin checkpoints are not supported)")
    out: dict[str, Lazy] = {}
    for s in shards:
        f = SafetensorsFile(model_dir / s)
        for k in f.keys():
            if wm is not None and wm.get(k) != s:
                raise CheckpointError(f"{model_dir / s}: tensor {k} is not listed for this shard in the index")
            if k in out:
                raise CheckpointError(f"{model_dir}: tensor {k} appears in more than one shard")
            out[k] = Lazy(lambda f=f, k=k: f.get(k), f.shape(k), name=k)
    if wm is not None:
        absent = sorted(set(wm) - set(out))
        if absent:
            raise CheckpointError(f"{model_dir}: tensors listed in the index but absent: {absent[:10]}")
    return out


# ---- name mapping -------------------------------------------------------------------------------

def _heads(n: int, hd: int):
    return lambda w: w.T.reshape(w.shape[1], n, hd)  # [n*hd, d] -> [d, n, hd]


def _out_heads(n: int, hd: int):
    return lambda w: w.T.reshape(n, hd, w.shape[0])  # [d, n*hd] -> [n, hd, d]


def _bias_heads(n: int, hd: int):
    return lambda b: b.reshape(n, hd)


_T = lambda w: w.T  # noqa: E731
_ID = lambda w: w  # noqa: E731


def _rules(cfg: ModelConfig) -> list[tuple[str, str, Callable]]:
    """(HF name regex, toybb name template, transform). `{0}` in templates is the layer index."""
    h, hk, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    if cfg.arch == "gpt2":
        return [
            (r"wte\.weight", "token_embed", _ID),
            (r"wpe\.weight", "pos_embed", _ID),
            (r"h\.(\d+)\.ln_1\.weight", "blocks.{0}.ln1.scale", _ID),
            (r"h\.(\d+)\.ln_1\.bias", "blocks.{0}.ln1.bias", _ID),
            (r"h\.(\d+)\.ln_2\.weight", "blocks.{0}.ln2.scale", _ID),
            (r"h\.(\d+)\.ln_2\.bias", "blocks.{0}.ln2.bias", _ID),
            (r"h\.(\d+)\.attn\.c_attn\.weight", "blocks.{0}.attn.w{qkv}", None),  # fused, handled below
            (r"h\.(\d+)\.attn\.c_attn\.bias", "blocks.{0}.attn.b{qkv}", None),
            (r"h\.(\d+)\.attn\.c_proj\.weight", "blocks.{0}.attn.wo", lambda w: w.reshape(h, dh, -1)),
            (r"h\.(\d+)\.attn\.c_proj\.bias", "blocks.{0}.attn.bo", _ID),
            (r"h\.(\d+)\.mlp\.c_fc\.weight", "blocks.{0}.mlp.w_in", _ID),
            (r"h\.(\d+)\.mlp\.c_fc\.bias", "blocks.{0}.mlp.b_in", _ID),
            (r"h\.(\d+)\.mlp\.c_proj\.weight", "blocks.{0}.mlp.w_out", _ID),
            (r"h\.(\d+)\.mlp\.c_proj\.bias", "blocks.{0}.mlp.b_out", _ID),
            (r"ln_f\.weight", "ln_f.scale", _ID),
            (r"ln_f\.bias", "ln_f.bias", _ID),
        ]
    if cfg.arch == "gpt_neox":
        return [
            (r"embed_in\.weight", "token_embed", _ID),
            (r"layers\.(\d+)\.input_layernorm\.weight", "blocks.{0}.ln1.scale", _ID),
            (r"layers\.(\d+)\.input_layernorm\.bias", "blocks.{0}.ln1.bias", _ID),
            (r"layers\.(\d+)\.post_attention_layernorm\.weight", "blocks.{0}.ln2.scale", _ID),
            (r"layers\.(\d+)\.post_attention_layernorm\.bias", "blocks.{0}.ln2.bias", _ID),
            (r"layers\.(\d+)\.attention\.query_key_value\.weight", "blocks.{0}.attn.w{qkv}", None),
            (r"layers\.(\d+)\.attention\.query_key_value\.bias", "blocks.{0}.attn.b{qkv}", None),
            (r"layers\.(\d+)\.attention\.dense\.weight", "blocks.{0}.attn.wo", _out_heads(h, dh)),
            (r"layers\.(\d+)\.attention\.dense\.bias", "blocks.{0}.attn.bo", _ID),
            (r"layers\.(\d+)\.mlp\.dense_h_to_4h\.weight", "blocks.{0}.mlp.w_in", _T),
            (r"layers\.(\d+)\.mlp\.dense_h_to_4h\.bias", "blocks.{0}.mlp.b_in", _ID),
            (r"layers\.(\d+)\.mlp\.dense_4h_to_h\.weight", "blocks.{0}.mlp.w_out", _T),
            (r"layers\.(\d+)\.mlp\.dense_4h_to_h\.bias", "blocks.{0}.mlp.b_out", _ID),
            (r"final_layer_norm\.weight", "ln_f.scale", _ID),
            (r"final_layer_norm\.bias", "ln_f.bias", _ID),
            (r"embed_out\.weight", "unembed", _T),
        ]
    # Llama-style names (llama, mistral, qwen2, olmo, olmo2, gemma2, gemma3)
    post_attn = "ln2" if cfg.placement == "pre" else "ln_post_attn"
    a = r"layers\.(\d+)\.self_attn\."
    m = r"layers\.(\d+)\.mlp\."
    rules = [
        (r"embed_tokens\.weight", "token_embed", _ID),
        (a + r"q_proj\.weight", "blocks.{0}.attn.wq", _heads(h, dh)),
        (a + r"k_proj\.weight", "blocks.{0}.attn.wk", _heads(hk, dh)),
        (a + r"v_proj\.weight", "blocks.{0}.attn.wv", _heads(hk, dh)),
        (a + r"o_proj\.weight", "blocks.{0}.attn.wo", _out_heads(h, dh)),
        (a + r"q_proj\.bias", "blocks.{0}.attn.bq", _bias_heads(h, dh)),
        (a + r"k_proj\.bias", "blocks.{0}.attn.bk", _bias_heads(hk, dh)),
        (a + r"v_proj\.bias", "blocks.{0}.attn.bv", _bias_heads(hk, dh)),
        (a + r"o_proj\.bias", "blocks.{0}.attn.bo", _ID),
        (a + r"q_norm\.weight", "blocks.{0}.attn.q_norm.scale", _ID),
        (a + r"k_norm\.weight", "blocks.{0}.attn.k_norm.scale", _ID),
        (m + r"gate_proj\.weight", "blocks.{0}.mlp.w_gate", _T),
        (m + r"up_proj\.weight", "blocks.{0}.mlp.w_in", _T),
        (m + r"down_proj\.weight", "blocks.{0}.mlp.w_out", _T),
        (m + r"gate_proj\.bias", "blocks.{0}.mlp.b_gate", _ID),
        (m + r"up_proj\.bias", "blocks.{0}.mlp.b_in", _ID),
        (m + r"down_proj\.bias", "blocks.{0}.mlp.b_out", _ID),
        (r"layers\.(\d+)\.input_layernorm\.weight", "blocks.{0}.ln1.scale", _ID),
        (r"layers\.(\d+)\.post_attention_layernorm\.weight", "blocks.{0}." + post_attn + ".scale", _ID),
        (r"layers\.(\d+)\.pre_feedforward_layernorm\.weight", "blocks.{0}.ln2.scale", _ID),
        (r"layers\.(\d+)\.post_feedforward_layernorm\.weight", "blocks.{0}.ln_post_mlp.scale", _ID),
        (r"norm\.weight", "ln_f.scale", _ID),
        (r"lm_head\.weight", "unembed", _T),
    ]
    return rules


_PREFIXES = ("model.language_model.", "model.", "transformer.", "gpt_neox.")
# Non-persistent buffers some older checkpoints contain; not weights.
_BUFFERS = re.compile(r".*(\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|\.attention\.masked_bias"
                      r"|rotary_emb\.inv_freq)$")


def map_names(cfg: ModelConfig, tensors: dict[str, Lazy], source: str) -> dict[str, Lazy]:
    """HF {name: tensor} -> toybb {name: tensor} (nothing read). Unknown HF names are collected and reported."""
    rules = [(re.compile(r + "$"), t, fn) for r, t, fn in _rules(cfg)]
    out: dict[str, Lazy] = {}
    unknown, dupes = [], []
    for name, thunk in tensors.items():
        short = name
        if name != "lm_head.weight" and not name.startswith("embed_out"):
            for p in _PREFIXES:
                if short.startswith(p):
                    short = short[len(p):]
                    break
        if _BUFFERS.match(name):
            continue
        for rx, tmpl, fn in rules:
            mt = rx.match(short)
            if not mt:
                continue
            if tmpl == "unembed" and cfg.tie_embeddings:
                # a tied checkpoint may store the head too; accept it only if it is the embedding
                out["__tied_head__"] = thunk
                break
            if fn is None:  # fused q/k/v
                for part, f in _split_fused(cfg, tmpl.endswith("b{qkv}")).items():
                    out[tmpl.format(*mt.groups(), qkv=part)] = thunk.then(f)
                break
            key = tmpl.format(*mt.groups())
            if key in out:
                dupes.append(name)
            out[key] = thunk.then(fn)
            break
        else:
            unknown.append(name)
    if unknown or dupes:
        raise CheckpointError(f"{source}: unexpected weights for {cfg.arch}: {sorted(unknown + dupes)[:20]}"
                              + (f" ... ({len(unknown) + len(dupes)} in all)" if len(unknown) + len(dupes) > 20 else ""))
    tied = out.pop("__tied_head__", None)
    if tied is not None and "token_embed" in out and tied.shape != out["token_embed"].shape:
        raise CheckpointError(f"{source}: config ties the embeddings but lm_head.weight has shape {list(tied.shape)} "
                              f"and the embedding {list(out['token_embed'].shape)}")
    if tied is not None and "token_embed" in out and not np.array_equal(np.asarray(tied()), np.asarray(out["token_embed"]())):
        raise CheckpointError(f"{source}: config ties the embeddings but lm_head.weight differs from the embedding")
    return out


def _split_fused(cfg: ModelConfig, is_bias: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The q, k and v parts of a fused projection, as functions of the stored array."""
    h, dh = cfg.n_heads, cfg.head_dim
    if cfg.arch == "gpt2":  # Conv1D [d, 3*d] in (q | k | v) blocks; bias [3*d]
        def part(i):
            def f(w):
                blk = w[..., i * h * dh:(i + 1) * h * dh]
                return blk.reshape(h, dh) if is_bias else blk.reshape(w.shape[0], h, dh)
            return f
    else:  # GPT-NeoX: rows ordered [head][q|k|v][head_dim]
        def part(i):
            def f(w):
                if is_bias:
                    return w.reshape(h, 3, dh)[:, i]
                return w.reshape(h, 3, dh, w.shape[-1])[:, i].transpose(2, 0, 1)
            return f
    return {"q": part(0), "k": part(1), "v": part(2)}
