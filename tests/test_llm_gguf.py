"""GGUF loading on tiny float32 files written with llama.cpp's layout (q/k rows permuted for
"llama"), against transformers' own GGUF loader and the original PyTorch model."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from toybb.errors import CheckpointError  # noqa: E402
from toybb.llm import forward, load  # noqa: E402
from toybb.llm.testing import make_tiny, write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tokens():
    return np.random.RandomState(0).randint(0, 53, (2, 12))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    cache = {}

    def get(name, arch):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            m = make_tiny(name, str(d))
            write_tiny_gguf(m, str(d / "t.gguf"), arch)
            cache[name] = (d, m)
        return cache[name]

    return get


@pytest.mark.parametrize("name,arch", [("llama_gqa", "llama"), ("qwen2", "qwen2")])
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_tiny_gguf_matches_transformers(files, tokens, name, arch, pairing):
    d, orig = files(name, arch)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file="t.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        ref_logits = ref(torch.tensor(tokens)).logits.numpy()
        orig_logits = orig(torch.tensor(tokens)).logits.numpy()
    pre = load(str(d / "t.gguf"), rope_pairing=pairing, with_tokenizer=False)
    logits = np.asarray(forward(pre.model, tokens)[0])
    assert np.abs(logits - ref_logits).max() <= 1e-4
    assert np.abs(logits - orig_logits).max() <= 1e-4


def test_tiny_gemma2_gguf_norms_stored_plus_one(files, tokens):
    """Gemma norms stored as 1 + w (llama.cpp's layout) are applied as stored. Compared with the
    original model: transformers' GGUF loader assumes query_pre_attn_scalar = 256 for every Gemma 2."""
    d, orig = files("gemma2", "gemma2")
    with torch.no_grad():
        orig_logits = orig(torch.tensor(tokens)).logits.numpy()
    pre = load(str(d / "t.gguf"), with_tokenizer=False)
    assert not pre.cfg.norm_plus_one and pre.cfg.layer_types == ("sliding", "full", "sliding")
    assert np.abs(np.asarray(forward(pre.model, tokens)[0]) - orig_logits).max() <= 1e-4


def test_unknown_gguf_metadata_is_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), arch="llama")
    w.add_block_count(1)
    w.add_uint32("llama.magic_new_feature", 3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="magic_new_feature"):
        load(str(tmp_path / "x.gguf"))


def test_unsupported_gguf_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), arch="rwkv6")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="rwkv6"):
        load(str(tmp_path / "x.gguf"))


def test_missing_gguf_tensor_is_listed(files, tmp_path):
    d, _ = files("llama_gqa", "llama")
    r = gguf.GGUFReader(str(d / "t.gguf"))
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), arch="llama")
    for k, f in r.fields.items():
        if k.startswith("llama.") or k.startswith("tokenizer."):
            w.add_key_value(k, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name != "blk.1.ffn_up.weight":
            w.add_tensor(t.name, np.asarray(t.data).reshape([int(s) for s in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.w_up"):
        load(str(tmp_path / "m.gguf"), with_tokenizer=False)
