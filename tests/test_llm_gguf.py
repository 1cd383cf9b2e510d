"""GGUF loading on tiny float32 files written with llama.cpp's layout (q/k rows permuted for
"llama"), against transformers' own GGUF loader and the original PyTorch model."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from toybb.errors import CheckpointError  # noqa: E402
from toybb.llm import forward, load  # noqa: E402
from _tiny_hf import make_tiny, write_tiny_gguf  # noqa: E402


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
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.w_in"):
        load(str(tmp_path / "m.gguf"), with_tokenizer=False)


@pytest.mark.parametrize("name,arch", [("gemma2_gguf", "gemma2"), ("gemma3_gguf", "gemma3")])
def test_tiny_gemma_gguf_matches_transformers(files, tokens, name, arch):
    """Gemma GGUF (norms stored as 1 + w, q/k norms, soft-caps, sliding window, local/global RoPE bases
    and layer pattern as llama.cpp implies them) against transformers' own GGUF reader and the original."""
    d, orig = files(name, arch)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file="t.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        ref_logits = ref(torch.tensor(tokens)).logits.numpy()
        orig_logits = orig(torch.tensor(tokens)).logits.numpy()
    pre = load(str(d / "t.gguf"), with_tokenizer=False)
    assert pre.cfg.layer_types == tuple("sliding" if t.startswith("sliding") else "full"
                                        for t in orig.config.layer_types)
    logits = np.asarray(forward(pre.model, tokens)[0])
    assert np.abs(logits - ref_logits).max() <= 1e-4
    assert np.abs(logits - orig_logits).max() <= 1e-4


@pytest.mark.parametrize("name,arch", [("gemma3_gguf_linear", "gemma3"), ("llama3_mqa_scaled", "llama")])
def test_gguf_rope_scaling_matches_original(files, tokens, name, arch):
    """Gemma 3's linear RoPE scaling of the global layers (rope.scaling.*) and Llama 3's per-frequency
    factors (the rope_freqs tensor, divided into the inverse frequencies) against the original model's
    scaled RoPE. transformers' GGUF reader ignores both, so its logits must differ: the scaling matters."""
    d, orig = files(name, arch)
    with torch.no_grad():
        orig_logits = orig(torch.tensor(tokens)).logits.numpy()
    pre = load(str(d / "t.gguf"), with_tokenizer=False)
    if arch == "llama":
        assert pre.cfg.rope_freq_factors is not None and max(pre.cfg.rope_freq_factors) == 8.0
    else:
        assert pre.cfg.rope_scaling.kind == "linear" and pre.cfg.rope_local_scaling.kind == "none"
    assert np.abs(np.asarray(forward(pre.model, tokens)[0]) - orig_logits).max() <= 1e-4
    ignoring = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file="t.gguf",
                                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        assert np.abs(ignoring(torch.tensor(tokens)).logits.numpy() - orig_logits).max() > 0.1


def _rewrite(src, dst, arch="llama", drop=(), extra_kv=(), extra_tensors=()):
    """Copy a GGUF file, leaving out tensors/keys in `drop` and adding keys and tensors."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=arch)
    for k, f in r.fields.items():
        if (k.startswith(arch + ".") or k.startswith("tokenizer.")) and k not in drop:
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(k, f.contents(), f.types[0], sub)
    for k, v, t in extra_kv:
        w.add_key_value(k, v, t)
    for t in r.tensors:
        if t.name not in drop:
            w.add_tensor(t.name, np.asarray(t.data).reshape([int(s) for s in reversed(t.shape)]))
    for name, arr in extra_tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bad_rope_freqs_are_refused(files, tmp_path):
    d, _ = files("llama_gqa", "llama")
    _rewrite(d / "t.gguf", tmp_path / "n.gguf", extra_tensors=[("rope_freqs.weight", np.ones(5, np.float32))])
    with pytest.raises(CheckpointError, match="rope_freqs.weight has 5 entries"):
        load(str(tmp_path / "n.gguf"), with_tokenizer=False)
    _rewrite(d / "t.gguf", tmp_path / "z.gguf", extra_tensors=[("rope_freqs.weight", np.zeros(8, np.float32))])
    with pytest.raises(CheckpointError, match="positive"):
        load(str(tmp_path / "z.gguf"), with_tokenizer=False)
    g, _ = files("gemma2_gguf", "gemma2")
    _rewrite(g / "t.gguf", tmp_path / "g.gguf", arch="gemma2",
             extra_tensors=[("rope_freqs.weight", np.ones(128, np.float32))])
    with pytest.raises(CheckpointError, match="rope_freqs.weight"):
        load(str(tmp_path / "g.gguf"), with_tokenizer=False)
    _rewrite(d / "t.gguf", tmp_path / "y.gguf",
             extra_kv=[("llama.rope.scaling.type", "yarn", gguf.GGUFValueType.STRING)])
    with pytest.raises(CheckpointError, match="'yarn' is not supported"):
        load(str(tmp_path / "y.gguf"), with_tokenizer=False)


def _gemma_meta_only(path, arch, n_layers, **kv):
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(n_layers)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_key_length(16)
    w.add_value_length(16)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(53)
    for k, v in kv.items():
        getattr(w, "add_" + k)(v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gemma_gguf_implicit_settings(tmp_path):
    """What llama.cpp implies for a Gemma GGUF: the 27B models (46 / 62 layers) scale queries by
    (d_model / n_heads) ** -0.5, the others by head_dim ** -0.5; Gemma 2's soft-caps default to 50 / 30;
    an explicit sliding_window_pattern wins over the default one."""
    from toybb.llm.load import read_config

    _gemma_meta_only(tmp_path / "a.gguf", "gemma2", 46)
    cfg, _ = read_config(str(tmp_path / "a.gguf"))
    assert cfg.query_scale == pytest.approx(32**-0.5)
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (50.0, 30.0, 4096)
    _gemma_meta_only(tmp_path / "b.gguf", "gemma3", 26, sliding_window=512, sliding_window_pattern=[True, False] * 13)
    cfg, _ = read_config(str(tmp_path / "b.gguf"))
    assert cfg.query_scale == pytest.approx(16**-0.5) and cfg.attn_softcap is None
    assert cfg.layer_types[:3] == ("sliding", "full", "sliding") and cfg.rope_local_theta == 10000.0
    _gemma_meta_only(tmp_path / "c.gguf", "gemma3", 62, sliding_window=512)
    cfg, _ = read_config(str(tmp_path / "c.gguf"))
    assert cfg.query_scale == pytest.approx(32**-0.5)
    assert cfg.layer_types[4:6] == ("sliding", "full")
    _gemma_meta_only(tmp_path / "d.gguf", "gemma3", 26)
    with pytest.raises(CheckpointError, match="sliding_window is missing"):
        read_config(str(tmp_path / "d.gguf"))
