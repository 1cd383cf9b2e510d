"""The strict LLM config: unknown fields are named, unsupported values refused."""

from __future__ import annotations

import pytest

from toybb.errors import ConfigError
from toybb.llm.config import from_hf_config
from toybb.models.config import ModelConfig

LLAMA = {"model_type": "llama", "vocab_size": 11, "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
         "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
         "transformers_version": "5.0.0", "architectures": ["LlamaForCausalLM"]}


def test_parses_llama():
    c = from_hf_config(LLAMA)
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.rope_theta) == (4, 2, 16, 500.0)


def test_old_style_rope_fields():
    d = {k: v for k, v in LLAMA.items() if k != "rope_parameters"}
    d["rope_theta"] = 1234.0
    d["rope_scaling"] = None
    assert from_hf_config(d).rope_theta == 1234.0


@pytest.mark.parametrize("field,value", [("foo_bar", 1), ("sliding_window_magic", 3)])
def test_unknown_field_is_named(field, value):
    with pytest.raises(ConfigError, match=field):
        from_hf_config({**LLAMA, field: value})


@pytest.mark.parametrize("changes,match", [
    ({"model_type": "bert"}, "bert"),
    ({"hidden_act": "relu6"}, "relu6"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1.0, "factor": 2.0}}, "dynamic"),
    ({"num_key_value_heads": 3}, "n_kv_heads"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_unsupported_values(changes, match):
    with pytest.raises(ConfigError, match=match):
        from_hf_config({**LLAMA, **changes})


def test_validation():
    with pytest.raises(ConfigError, match="rope_pairing"):
        ModelConfig(arch="llama", vocab_size=1, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=4, mlp_dim=8,
                  rope_pairing="diagonal")
    with pytest.raises(ConfigError, match="sliding_window"):
        ModelConfig(arch="llama", vocab_size=1, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=4, mlp_dim=8,
                  layer_types=("sliding",))
