"""Tokenizers for pretrained models: from a Hugging Face tokenizer.json, or rebuilt from a GGUF file's
metadata (byte-level BPE: tokens and merges). Built on the `tokenizers` library; no network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toybb.errors import CheckpointError

# llama.cpp pre-tokenizer names -> split regex applied before byte-level BPE (None: GPT-2's own regex).
_GPT2 = None
_DIGITS_THEN_GPT2 = "digits"  # SmolLM: every digit on its own, then GPT-2's regex
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "default": _GPT2, "gpt-2": _GPT2, "gpt2": _GPT2,
    "smollm": _DIGITS_THEN_GPT2,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
    "qwen2": _QWEN2,
}


@dataclass
class TextTokenizer:
    """Thin wrapper: encode(text) -> ids (adds BOS when the model expects it), decode(ids) -> text."""

    backend: Any  # tokenizers.Tokenizer
    bos_id: int | None = None
    add_bos: bool = False
    source: str = ""

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def max_id(self) -> int:
        return max(self.backend.get_vocab(with_added_tokens=True).values())

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def from_tokenizer_json(path: str | Path, bos_id: int | None = None, add_bos: bool = False) -> TextTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on malformed files
        raise CheckpointError(f"{path}: cannot read tokenizer ({e})") from None
    return TextTokenizer(tok, bos_id, add_bos, str(path))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (a published, fixed mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def from_gguf_metadata(meta: dict[str, Any], source: str) -> TextTokenizer:
    """Rebuild a byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{source}: rebuilding a {kind!r} tokenizer from GGUF metadata is not supported (only byte-level "
            "BPE, 'gpt2'); pass --tokenizer with the model's tokenizer.json")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: GGUF pre-tokenizer {pre!r} is not supported (supported: "
                              f"{sorted(PRE_TOKENIZERS)}); pass --tokenizer with the model's tokenizer.json")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    alphabet = set(_bytes_to_unicode().values())
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise CheckpointError(f"{source}: duplicate token {t!r} in GGUF vocabulary")
        vocab[t] = i
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    split = PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in (_GPT2, _DIGITS_THEN_GPT2))
    if split is _GPT2:
        tok.pre_tokenizer = byte_level
    elif split == _DIGITS_THEN_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     byte_level])
    tok.decoder = decoders.ByteLevel()
    # control (3) and user-defined (4) tokens are matched whole in the text
    special = [AddedToken(t, special=(ty == 3), normalized=False)
               for t, ty in zip(tokens, types) if ty in (3, 4) and set(t) <= alphabet]
    if special:
        tok.add_tokens(special)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return TextTokenizer(tok, int(bos) if bos is not None else None,
                         bool(meta.get("tokenizer.ggml.add_bos_token", False)), source)


def check_matches(tok: TextTokenizer, vocab_size: int, source: str) -> None:
    """A tokenizer whose ids exceed the model's vocabulary belongs to another model."""
    top = tok.max_id()
    if top >= vocab_size:
        raise CheckpointError(
            f"{source}: tokenizer {tok.source} does not match the model: it produces ids up to {top} but the "
            f"model's vocabulary has {vocab_size} entries")
    if tok.vocab_size < 0.9 * vocab_size:  # models pad their vocabulary a little, never by 10%
        raise CheckpointError(
            f"{source}: tokenizer {tok.source} does not match the model: {tok.vocab_size} tokens for a model "
            f"vocabulary of {vocab_size}")
