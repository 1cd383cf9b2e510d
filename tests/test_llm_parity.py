"""Parity of toybb's pretrained-model definitions with transformers on tiny random models (no network):
every architecture family, MHA / GQA / MQA layouts, float32 logits and per-layer hidden states."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from toybb.errors import CheckpointError, ConfigError  # noqa: E402
from toybb.llm import forward, load  # noqa: E402
from _tiny_hf import make_tiny, tiny_configs  # noqa: E402
from toybb.models.capture import Capture  # noqa: E402

TOL = 1e-4
CASES = list(tiny_configs())
SEQ = 12  # > the sliding windows (4) of the Mistral and Gemma cases


@pytest.fixture(scope="module")
def tokens():
    return np.random.RandomState(0).randint(0, 53, (2, SEQ))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny model, saved once per module: {case: (dir, torch model)}."""
    cache = {}

    def get(name):
        if name not in cache:
            d = str(tmp_path_factory.mktemp(name))
            cache[name] = (d, make_tiny(name, d))
        return cache[name]

    return get


def _reference(model, tokens):
    with torch.no_grad():
        out = model(torch.tensor(tokens), output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("name", CASES)
def test_logits_and_hidden_states_match_transformers(name, saved, tokens):
    d, ref_model = saved(name)
    pre = load(d)
    ref_logits, ref_hidden = _reference(ref_model, tokens)
    logits, cap = forward(pre.model, tokens, capture=Capture(("blocks.*.resid_pre", "final_norm")))
    assert np.abs(np.asarray(logits) - ref_logits).max() <= TOL
    n = pre.cfg.n_layers
    # transformers: hidden_states[l] is the input of layer l; the last one is after the final norm
    for l in range(n):
        assert np.abs(np.asarray(cap[f"blocks.{l}.resid_pre"]) - ref_hidden[l]).max() <= TOL, f"layer {l}"
    assert np.abs(np.asarray(cap["final_norm"]) - ref_hidden[n]).max() <= TOL
    assert np.abs(ref_logits).max() > 1.0  # weights large enough that a wrong model would show


def test_layouts_covered():
    kinds = set()
    for cls, kw in tiny_configs().values():
        h = kw.get("num_attention_heads", kw.get("n_head"))
        kv = kw.get("num_key_value_heads", h)
        kinds.add("mha" if kv == h else "mqa" if kv == 1 else "gqa")
    assert kinds == {"mha", "gqa", "mqa"}


def test_wrong_rotary_pairing_is_caught(saved, tokens):
    """The same weights run with interleaved instead of half-split RoPE give clearly different logits,
    so the parity test above would catch a wrong pairing."""
    import dataclasses

    from toybb.llm.weights import build_model
    from toybb.llm import hf

    d, ref_model = saved("llama_gqa")
    ref_logits, _ = _reference(ref_model, tokens)
    cfg = hf.read_config(d)
    wrong = build_model(dataclasses.replace(cfg, rope_pairing="interleaved"),
                        hf.map_names(cfg, hf.open_tensors(d), d), d)
    diff = np.abs(np.asarray(forward(wrong, tokens)[0]) - ref_logits).max()
    assert diff > 100 * TOL


def test_bfloat16_on_request(saved, tokens):
    d, ref_model = saved("llama_gqa")
    pre = load(d, dtype="bfloat16")
    assert str(pre.model.blocks[0].attn.wq[...].dtype) == "bfloat16"
    ref_logits, _ = _reference(ref_model, tokens)
    logits = np.asarray(forward(pre.model, tokens)[0])
    assert logits.dtype == np.float32
    assert np.abs(logits - ref_logits).max() < 0.1 * np.abs(ref_logits).max()


# ---- strict config and corrupted files ----------------------------------------------------------

def _edit_config(d, **changes):
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    cfg.update(changes)
    json.dump(cfg, open(p, "w"))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_unknown_config_field_is_named(saved, tmp_path):
    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    _edit_config(d, use_magic_attention=True)
    with pytest.raises(ConfigError, match="use_magic_attention"):
        load(d)


def test_unsupported_architecture(saved, tmp_path):
    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    _edit_config(d, model_type="mamba")
    with pytest.raises(ConfigError, match="mamba"):
        load(d)


def test_unsupported_rope_type(saved, tmp_path):
    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 10.0, "factor": 2.0})
    with pytest.raises(ConfigError, match="yarn"):
        load(d)


def _st_file(d):
    return os.path.join(d, "model.safetensors")


def test_truncated_safetensors(saved, tmp_path):
    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    size = os.path.getsize(_st_file(d))
    with open(_st_file(d), "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match="truncated"):
        load(d)


def test_corrupted_safetensors_header(saved, tmp_path):
    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    with open(_st_file(d), "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError):
        load(d)


def test_corrupted_safetensors_values(saved, tmp_path):
    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    size = os.path.getsize(_st_file(d))
    with open(_st_file(d), "r+b") as f:
        f.seek(size - 64)
        f.write(b"\xff" * 64)  # NaN bit patterns in the last tensor
    with pytest.raises(CheckpointError, match="NaN"):
        load(d)


def test_missing_and_unexpected_weights_are_listed(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    w = load_file(_st_file(d))
    w.pop("model.layers.1.mlp.up_proj.weight")
    w["model.layers.1.mlp.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(w, _st_file(d))
    with pytest.raises(CheckpointError) as e:
        load(d)
    assert "model.layers.1.mlp.extra.weight" in str(e.value)
    w.pop("model.layers.1.mlp.extra.weight")
    save_file(w, _st_file(d))
    with pytest.raises(CheckpointError, match=r"missing weights: blocks\.1\.mlp\.w_in"):
        load(d)


def test_sharded_checkpoint_with_index(saved, tmp_path, tokens):
    from safetensors.numpy import load_file, save_file

    d0, ref_model = saved("qwen2")
    d = _copy(d0, tmp_path / "m")
    w = load_file(_st_file(d))
    os.remove(_st_file(d))
    names = sorted(w)
    wm = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fn = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: w[k] for k in part}, os.path.join(d, fn))
        wm.update({k: fn for k in part})
    json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(d, "model.safetensors.index.json"), "w"))
    logits = np.asarray(forward(load(d).model, tokens)[0])
    assert np.abs(logits - _reference(ref_model, tokens)[0]).max() <= TOL


def test_bf16_weights_load(saved, tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    d = _copy(saved("llama_gqa")[0], tmp_path / "m")
    w = load_file(_st_file(d))
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}, _st_file(d))
    pre = load(d)
    np.testing.assert_array_equal(np.asarray(pre.model.token_embed[...]),
                                  w["model.embed_tokens.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))
