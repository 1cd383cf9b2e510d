"""Tiny randomly initialised transformers models (and GGUF files of them) for the parity tests (no network).

Needs torch and transformers (the `parity` extra); the tests that use it import it after checking for them."""

from __future__ import annotations

import math


def tiny_configs():
    """{case name: (config class name, kwargs)}; covers MHA, GQA and MQA layouts."""
    rope = lambda theta=500.0, **kw: {"rope_theta": theta, "rope_type": "default", **kw}  # noqa: E731
    base = dict(vocab_size=53, hidden_size=64, intermediate_size=96, num_hidden_layers=3)
    return {
        "llama_gqa": ("LlamaConfig", dict(base, num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope())),
        "llama_mha_bias": ("LlamaConfig", dict(base, num_attention_heads=4, num_key_value_heads=4, attention_bias=True,
                                               mlp_bias=True, tie_word_embeddings=True, rope_parameters=rope())),
        "llama3_mqa_scaled": ("LlamaConfig", dict(base, num_attention_heads=4, num_key_value_heads=1, rope_parameters={
            "rope_theta": 500.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
        "mistral_window": ("MistralConfig", dict(base, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                 sliding_window=4, rope_parameters=rope())),
        "mistral_nowindow": ("MistralConfig", dict(base, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                                   sliding_window=None, rope_parameters=rope())),
        "qwen2": ("Qwen2Config", dict(base, num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope())),
        "olmo": ("OlmoConfig", dict(base, num_attention_heads=4, num_key_value_heads=4, clip_qkv=0.5,
                                    pad_token_id=1, eos_token_id=2, rope_parameters=rope())),
        "olmo2": ("Olmo2Config", dict(base, num_attention_heads=4, num_key_value_heads=2, pad_token_id=1,
                                      eos_token_id=2, rope_parameters=rope())),
        "gpt2": ("GPT2Config", dict(vocab_size=53, n_embd=64, n_layer=3, n_head=4, n_positions=32)),
        "gpt_neox": ("GPTNeoXConfig", dict(base, num_attention_heads=4, rope_parameters=rope(
            partial_rotary_factor=0.5), use_parallel_residual=True)),
        "gpt_neox_serial": ("GPTNeoXConfig", dict(base, num_attention_heads=2, rope_parameters=rope(
            partial_rotary_factor=0.25), use_parallel_residual=False)),
        "gemma2": ("Gemma2Config", dict(base, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        query_pre_attn_scalar=16, sliding_window=4, attn_logit_softcapping=2.0,
                                        final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1,
                                        bos_token_id=2, rope_parameters=rope())),
        "gemma3": ("Gemma3TextConfig", dict(base, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                            query_pre_attn_scalar=16, sliding_window=4, pad_token_id=0,
                                            eos_token_id=1, bos_token_id=2,
                                            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                            rope_parameters={"sliding_attention": rope(10.0),
                                                             "full_attention": rope(1000.0)})),
    }


def gguf_tiny_configs():
    """Tiny models for GGUF files, with every setting either stated in the file or equal to what
    llama.cpp implies and transformers' GGUF reader assumes (Gemma: head_dim = query_pre_attn_scalar =
    256, Gemma 2's soft-caps 50 / 30, Gemma 3's global layer every 6th, local RoPE base 10000)."""
    rope = lambda theta, **kw: {"rope_theta": theta, "rope_type": "default", **kw}  # noqa: E731
    base = dict(vocab_size=53, hidden_size=64, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
                head_dim=256, query_pre_attn_scalar=256, sliding_window=4, pad_token_id=0, eos_token_id=1,
                bos_token_id=2)
    g3 = dict(base, num_hidden_layers=7, layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                                      for i in range(7)])
    return {
        "gemma2_gguf": ("Gemma2Config", dict(base, num_hidden_layers=4, attn_logit_softcapping=50.0,
                                             final_logit_softcapping=30.0, rope_parameters=rope(10000.0))),
        "gemma3_gguf": ("Gemma3TextConfig", dict(g3, rope_parameters={"sliding_attention": rope(10000.0),
                                                                      "full_attention": rope(1000.0)})),
        # Gemma 3 4B+ scale the global layers' positions by 8 (GGUF rope.scaling.type "linear")
        "gemma3_gguf_linear": ("Gemma3TextConfig", dict(g3, rope_parameters={
            "sliding_attention": rope(10000.0), "full_attention": rope(1000.0, rope_type="linear", factor=8.0)})),
    }


def make_tiny(name: str, out_dir: str, seed: int = 0):
    """Build, randomise (weights large enough that errors show) and save a tiny HF model; returns it."""
    import torch
    import transformers

    cls_name, kw = {**tiny_configs(), **gguf_tiny_configs()}[name]
    cfg = getattr(transformers, cls_name)(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[0] if "wte" in pname or "wpe" in pname or "embed" in pname else p.shape[1]
                if cls_name == "GPT2Config" and ".h." in pname:
                    fan_in = p.shape[0]  # Conv1D stores [in, out]
                p.copy_(torch.randn_like(p) * (1.0 if "embed" in pname or "wte" in pname or "wpe" in pname
                                                else 1.5 / math.sqrt(fan_in)))
            elif "norm" in pname or "ln_" in pname or "layernorm" in pname:
                p.copy_((0.0 if cls_name.startswith("Gemma") else 1.0) + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def write_tiny_gguf(hf_model, path: str, arch: str = "llama", quant: str | None = None) -> None:
    """Write a tiny HF model as a float32 GGUF file the way llama.cpp's converter lays it out
    (q/k rows permuted for interleaved RoPE in "llama"), with a placeholder byte-level vocabulary.
    quant: "Q4_0" | "Q4_1" | "Q8_0" quantises every matrix whose rows are whole 32-weight blocks."""
    import gguf
    import numpy as np

    from toybb.models.positional import half_to_interleaved

    c = hf_model.config
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    h, hk = c.num_attention_heads, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // h
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(h)
    w.add_head_count_kv(hk)
    rp = c.rope_parameters.get("full_attention", c.rope_parameters)  # Gemma 3: the global layers' RoPE
    w.add_rope_freq_base(float(rp["rope_theta"]))
    if rp.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rp["factor"]))
    elif rp.get("rope_type") == "llama3":  # llama.cpp's converter stores the factors as a tensor
        w.add_tensor("rope_freqs.weight", llama3_freq_factors(rp, hd))
    elif rp.get("rope_type", "default") != "default":
        raise ValueError(f"write_tiny_gguf: RoPE type {rp['rope_type']!r} not handled")
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_rope_dimension_count(hd)
    gemma = arch.startswith("gemma")
    if gemma:  # llama.cpp stores Gemma's (1 + w) norms as 1 + w and implies the layer pattern
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(c.sliding_window)
        if getattr(c, "attn_logit_softcapping", None):
            w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        if getattr(c, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(c.final_logit_softcapping)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([chr(ord("a") + i % 26) * (1 + i // 26) for i in range(c.vocab_size)])
    w.add_token_types([1] * c.vocab_size)
    w.add_token_merges([])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    if gemma:
        names.update({"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                      "post_feedforward_layernorm": "post_ffw_norm"})
    for k, v in sd.items():
        if k == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif k == "model.norm.weight":
            out = "output_norm.weight"
            v = v + 1 if gemma else v
        elif k == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            out = "output.weight"
        else:
            _, _, layer, rest = k.split(".", 3)
            mod, leaf = rest.rsplit(".", 1)
            out = f"blk.{layer}.{names[mod]}.{leaf}"
            if gemma and "norm" in mod:
                v = v + 1
            if arch == "llama" and mod in ("self_attn.q_proj", "self_attn.k_proj"):
                v = half_to_interleaved(v, h if mod == "self_attn.q_proj" else hk)
        v = np.ascontiguousarray(v, np.float32)
        if quant is not None and v.ndim == 2 and v.shape[1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType[quant]
            w.add_tensor(out, gguf.quants.quantize(v, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(out, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_freq_factors(rp: dict, head_dim: int):
    """The factors that divide each inverse frequency under Llama 3.1's RoPE scaling (float32
    [head_dim // 2]): 1 for short wavelengths, `factor` for long ones, a smooth blend between."""
    import numpy as np

    inv = 1.0 / rp["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / inv
    old, lo, hi = rp["original_max_position_embeddings"], rp["low_freq_factor"], rp["high_freq_factor"]
    blend = (old / wavelen - lo) / (hi - lo)
    mid = 1.0 / ((1 - blend) / rp["factor"] + blend)
    f = np.where(wavelen < old / hi, 1.0, np.where(wavelen > old / lo, rp["factor"], mid))
    return f.astype(np.float32)


TINY_LLAMA = dict(model_type="llama", vocab_size=53, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-5,
                  hidden_act="silu", bos_token_id=1, tie_word_embeddings=False)


def llama_shapes(c: dict) -> dict:
    """{Hugging Face tensor name: shape} of a Llama config `c`."""
    d, v, m = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    dh = d // c["num_attention_heads"]
    out = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out.update({p + "self_attn.q_proj.weight": (c["num_attention_heads"] * dh, d),
                    p + "self_attn.k_proj.weight": (c["num_key_value_heads"] * dh, d),
                    p + "self_attn.v_proj.weight": (c["num_key_value_heads"] * dh, d),
                    p + "self_attn.o_proj.weight": (d, c["num_attention_heads"] * dh),
                    p + "mlp.gate_proj.weight": (m, d), p + "mlp.up_proj.weight": (m, d),
                    p + "mlp.down_proj.weight": (d, m), p + "input_layernorm.weight": (d,),
                    p + "post_attention_layernorm.weight": (d,)})
    return out


def write_tiny_llama(d, config: dict | None = None, shapes: dict | None = None):
    """A tiny Llama folder without torch: config.json (TINY_LLAMA updated by `config`), random float32
    weights in model.safetensors (`shapes` overrides tensor shapes) and a word-level tokenizer.json (w0 .. w52,
    whitespace-separated). Returns the folder."""
    import json
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    c = {**TINY_LLAMA, **(config or {})}
    (d / "config.json").write_text(json.dumps(c))
    rng = np.random.default_rng(0)
    save_file({k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in {**llama_shapes(c), **(shapes or {})}.items()},
              str(d / "model.safetensors"))
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(c["vocab_size"])}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    return d
