"""Tokenizers for pretrained models: from a Hugging Face tokenizer.json, or rebuilt from a GGUF file's
metadata (byte-level BPE: tokens and merges; SentencePiece: tokens, scores and token types, with byte
fallback). Built on the `tokenizers` library; no network."""

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


# llama.cpp token types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")


def from_gguf_metadata(meta: dict[str, Any], source: str) -> TextTokenizer:
    """Rebuild the tokenizer a GGUF file describes from its `tokenizer.ggml.*` metadata: byte-level BPE
    ("gpt2") or SentencePiece ("llama": Llama 2, TinyLlama, Mistral v0.1, Gemma)."""
    from tokenizers import AddedToken

    kind = meta.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{source}: rebuilding a {kind!r} tokenizer from GGUF metadata is not supported (only byte-level "
            "BPE 'gpt2' and SentencePiece 'llama'); pass --tokenizer with the model's tokenizer.json")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise CheckpointError(f"{source}: GGUF metadata tokenizer.ggml.tokens is missing")
    types = list(meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise CheckpointError(f"{source}: {len(types)} GGUF token types for {len(tokens)} tokens")
    if kind == "gpt2":
        tok, special_ok = _byte_level_bpe(meta, tokens, types, source)
        add_bos_default = False
    else:
        tok, tokens = _sentencepiece(meta, tokens, types, source)
        special_ok = lambda t: True  # noqa: E731
        add_bos_default = True  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
    vocab = tok.get_vocab()
    # control tokens are matched whole in the text as special tokens, user-defined ones as plain added tokens
    added = [AddedToken(t, special=(ty == _CONTROL), normalized=False) for t, ty in zip(tokens, types)
             if (ty == _CONTROL and special_ok(t)) or (ty == _USER_DEFINED and t in vocab)]
    if added:
        tok.add_tokens(added)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return TextTokenizer(tok, int(bos) if bos is not None else None,
                         bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)), source)


def _vocab(tokens: list[str], source: str) -> dict[str, int]:
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise CheckpointError(f"{source}: duplicate token {t!r} in GGUF vocabulary")
        vocab[t] = i
    return vocab


def _byte_level_bpe(meta, tokens, types, source):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: GGUF pre-tokenizer {pre!r} is not supported (supported: "
                              f"{sorted(PRE_TOKENIZERS)}); pass --tokenizer with the model's tokenizer.json")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    alphabet = set(_bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(_vocab(tokens, source), merges, fuse_unk=False))
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
    # a control token spelled outside the byte alphabet is a mislabelled llama.cpp entry: never matched
    return tok, (lambda t: set(t) <= alphabet)


def _sentencepiece(meta, tokens, types, source):
    """SentencePiece BPE as llama.cpp runs it: spaces become U+2581, then adjacent pieces are merged,
    highest-scoring result first, and characters outside the vocabulary fall back to <0xXX> byte tokens.
    In `tokenizers` terms: a BPE model whose merges are every split of a vocabulary piece into two pieces,
    ranked by the score of the merged piece. Gemma files: the file order is the merge order (their scores
    are not), pieces of several spaces are stored as spaces (looked up as U+2581...), and no prefix space."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    arch = meta.get("general.architecture")
    gemma = arch in _GEMMA_ARCHS
    n = len(tokens)
    if gemma:
        tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
        rank = [-float(i) for i in range(n)]
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != n:
            raise CheckpointError(f"{source}: a SentencePiece GGUF vocabulary needs one score per token "
                                  "(tokenizer.ggml.scores)")
        rank = [float(x) for x in scores]
    vocab = _vocab(tokens, source)
    missing_bytes = [b for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing_bytes:
        raise CheckpointError(f"{source}: SentencePiece GGUF vocabulary lacks byte-fallback tokens "
                              f"(e.g. <0x{missing_bytes[0]:02X}>); not supported")
    merges = []
    for i, t in enumerate(tokens):
        if types[i] not in (_NORMAL, _USER_DEFINED):  # control, unknown, unused and byte pieces are never merged into
            continue
        for k in range(1, len(t)):
            if t[:k] in vocab and t[k:] in vocab:
                merges.append((-rank[i], -k, -(len(t) - k), i, t[:k], t[k:]))
    merges.sort()
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    if unk_id is None:
        unk_id = next((i for i, ty in enumerate(types) if ty == _UNKNOWN), None)
    unk = tokens[int(unk_id)] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab, [(m[4], m[5]) for m in merges], unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        tok.normalizer = normalizers.Replace(" ", "\u2581")
    else:
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix
                                                     else "never", split=False)
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok, tokens


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
