"""SentencePiece tokenizers rebuilt from GGUF metadata (tokenizer.ggml.model == "llama": tokens,
scores, token types, byte fallback), against transformers' own GGUF tokenizer load of the same file."""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")

from toybb.errors import CheckpointError  # noqa: E402
from toybb.llm.gguf_loader import GGUFFile  # noqa: E402
from toybb.llm.tokenizer import from_gguf_metadata  # noqa: E402

# pieces in merge order (best first)
PIECES = ["▁", "a", "b", "c", "d", "e", "h", "l", "o", "t", "r", "s", "n", "i", "w", "▁t", "he", "▁the", "▁c",
          "at", "▁cat", "▁a", "an", "▁an", "nd", "▁and", "ll", "ell", "▁h", "▁he", "▁hell", "▁hello", "or", "▁w",
          "▁wor", "ld", "▁world", "▁s", "it", "▁sit", "is", "▁is", "ha", "▁ha", "▁hat", "▁▁", "▁▁▁▁"]
TEXTS = ["the cat and the hat", "hello world", "hellhe worldly", "Ünïcödé ☃ text 日本", "  two  spaces   ",
         "<s> and </s> <ctrl> <tool>x", "tab\tnew\nline\r\n", "", "a" * 40]


def write_sp_gguf(path, arch="llama", *, scores=True, bytes_=True, drop=()):
    """A tiny SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, pieces, a control and a
    user-defined token. Llama style: the pieces are shuffled in the file and their scores give the merge
    order. Gemma style: file order is the merge order, the scores are noise, and the pieces of several
    spaces are stored as real spaces."""
    rng = np.random.RandomState(0)
    n = len(PIECES)
    if arch == "llama":
        order = rng.permutation(n)
        pieces, piece_scores = [PIECES[i] for i in order], [-float(i) for i in order]
    else:
        pieces = [" " * len(p) if set(p) == {"▁"} and len(p) > 1 else p for p in PIECES]
        piece_scores = list(rng.randn(n))
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)] if bytes_ else []
    tokens = ["<unk>", "<s>", "</s>"] + byte_tokens + pieces + ["<ctrl>", "<tool>"]
    types = [2, 3, 3] + [6] * len(byte_tokens) + [1] * n + [3, 4]
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(1)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    if scores:
        w.add_token_scores([0.0] * (3 + len(byte_tokens)) + piece_scores + [0.0, 0.0])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sentencepiece_gguf_tokenizer_matches_transformers(tmp_path, arch):
    write_sp_gguf(tmp_path / "t.gguf", arch)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="t.gguf")
    mine = from_gguf_metadata(GGUFFile(str(tmp_path / "t.gguf")).meta, "t.gguf")
    assert mine.add_bos and mine.bos_id == 1
    for text in TEXTS:
        ids = mine.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert mine.decode(ids) == ref.decode(ids)
        if not (arch == "llama" and text.startswith(" ")):  # Metaspace adds no prefix to a leading space,
            assert mine.decode(ids[1:]) == text  # then the decoder strips one (as transformers does)
    # the merges follow the scores (llama) or the file order (gemma): whole words come out as one piece
    ids = mine.encode("the cat", add_bos=False)
    pieces = [mine.backend.id_to_token(i) for i in ids]
    assert pieces == (["▁the", "▁cat"] if arch == "llama" else ["t", "he", "▁cat"])


def test_sentencepiece_gguf_tokenizer_errors(tmp_path):
    write_sp_gguf(tmp_path / "s.gguf", scores=False)
    with pytest.raises(CheckpointError, match="one score per token"):
        from_gguf_metadata(GGUFFile(str(tmp_path / "s.gguf")).meta, "s.gguf")
    write_sp_gguf(tmp_path / "b.gguf", bytes_=False)
    with pytest.raises(CheckpointError, match="byte-fallback"):
        from_gguf_metadata(GGUFFile(str(tmp_path / "b.gguf")).meta, "b.gguf")
    meta = dict(GGUFFile(str(tmp_path / "b.gguf")).meta, **{"tokenizer.ggml.model": "bert"})
    with pytest.raises(CheckpointError, match="'bert' tokenizer"):
        from_gguf_metadata(meta, "b.gguf")
