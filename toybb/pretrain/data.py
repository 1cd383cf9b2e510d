"""The data of a pretraining run: documents read through `toybb.texts`, a byte-level BPE tokenizer trained
on them with the `tokenizers` library, the documents packed into one token stream (each followed by
<|endoftext|>), its tail held out, and the batch of step i: `batch_size` windows of the training stream at
offsets drawn from `fold_in(data_key, i)`, each behind the run's first token (BOS, a fixed token or
nothing). A batch depends on the step alone, so a resumed run sees the batches an uninterrupted one sees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import ConfigError, Error
from toybb.llm.pretrain_folder import BOS_TOKEN, EOS_TOKEN, TOKENIZER_NAME, first_token, text_tokenizer
from toybb.llm.load import open_checkpoint
from toybb.llm.tokenizer import TextTokenizer, from_tokenizer_json
from toybb.pretrain.config import PretrainConfig
from toybb.records import atomic_write
from toybb.texts import iter_documents, resolve_source


def read_documents(cfg: PretrainConfig) -> list[str]:
    """The documents of every --text source in order, up to cfg.max_chars characters; empty ones dropped.
    No text at all, or a binary file, is a ConfigError."""
    docs, n = [], 0
    for source in cfg.text:
        for doc in iter_documents(resolve_source(source)):
            if "\x00" in doc:
                raise ConfigError(f"--text {source}: holds binary data (NUL bytes); give text")
            if not doc.strip():
                continue
            if cfg.max_chars is not None and n + len(doc) > cfg.max_chars:
                doc = doc[: cfg.max_chars - n]
            docs.append(doc)
            n += len(doc)
            if cfg.max_chars is not None and n >= cfg.max_chars:
                return docs
    if not docs:
        raise ConfigError(f"--text {','.join(cfg.text)}: holds no text")
    return docs


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` of exactly `vocab_size` tokens (<|endoftext|> = 0, <|bos|> = 1,
    the 256 bytes, then merges) learned from `docs`; a text too small for that many merges is a ConfigError."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    n_chars = sum(len(d) for d in docs)
    if vocab_size > 258 + n_chars:  # each merge needs at least one more character (and the trainer
        # allocates by vocab_size before it looks at the text)
        raise ConfigError(f"--vocab-size {vocab_size} is larger than the text allows: {n_chars} characters give at "
                          f"most {258 + n_chars} tokens; lower --vocab-size or give more text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, BOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got < vocab_size:
        raise ConfigError(f"--vocab-size {vocab_size} is larger than the text allows: byte-level BPE finds only "
                          f"{got} tokens in it; lower --vocab-size or give more text")
    return tok


END_OF_TEXT = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>")  # the document separator, first found
BEGIN_OF_TEXT = (BOS_TOKEN, "<s>", "<bos>", "<|begin_of_text|>")  # a bare tokenizer.json's BOS, first found


def given_tokenizer(source: str) -> tuple[object, int | None]:
    """(tokenizers.Tokenizer, its BOS id or None) of --tokenizer SOURCE: a tokenizer.json file, or any checkpoint
    `toybb.load` reads (a Hugging Face folder, a .gguf file, an offline model's name, a pretrain folder), whose
    weights are not read. Anything else is a ConfigError."""
    if str(source).endswith(".json") and Path(source).is_file():
        tok = from_tokenizer_json(source, bos_id=None).backend
        return tok, next((tok.token_to_id(t) for t in BEGIN_OF_TEXT if tok.token_to_id(t) is not None), None)
    try:
        ck = open_checkpoint(str(source), with_tokenizer=True)
    except Error as e:  # not a checkpoint (a missing path, another format)
        raise ConfigError(f"--tokenizer: {e}; give a tokenizer.json or a checkpoint") from None
    if ck.tokenizer is None or ck.tokenizer.backend is None:
        raise ConfigError(f"--tokenizer {source}: the checkpoint has no tokenizer; give a tokenizer.json")
    return ck.tokenizer.backend, ck.tokenizer.bos_id


def end_of_text(tok) -> int:
    """The id put between packed documents: the first of END_OF_TEXT the tokenizer has (0 in toybb's own)."""
    for t in END_OF_TEXT:
        if tok.token_to_id(t) is not None:
            return tok.token_to_id(t)
    raise ConfigError(f"the tokenizer has none of the end-of-text tokens {', '.join(END_OF_TEXT)} that separate "
                      "the packed documents; give another --tokenizer or none (toybb trains one)")


@dataclass
class TokenData:
    """The packed token stream of a run: train [n_train] and heldout [n_heldout] int32 ids."""

    train: np.ndarray
    heldout: np.ndarray
    n_documents: int

    @property
    def distinct(self) -> int:
        return int(np.unique(self.train).size)


def prepare_data(cfg: PretrainConfig, folder: Path | None, write: bool = True,
                 given=None) -> tuple[TokenData, TextTokenizer]:
    """Documents read, the tokenizer trained (or read back from `folder`/tokenizer.json when resuming) and
    saved there (unless not `write`: the other processes of a multi-host run), the stream packed and split;
    too little text for one sequence is a ConfigError. Runs before anything compiles. `given`: cfg.tokenizer's
    tokenizers.Tokenizer when the caller has read it already (`given_tokenizer`)."""
    docs = read_documents(cfg)
    path = None if folder is None else folder / TOKENIZER_NAME
    if path is not None and path.is_file():
        tok = text_tokenizer(path, cfg.bos).backend
    else:
        if cfg.tokenizer:
            tok = given if given is not None else given_tokenizer(cfg.tokenizer)[0]
        else:
            tok = train_tokenizer(docs, cfg.vocab_size)
        if path is not None and write:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(tok.to_str()), mode="w")
    eos = end_of_text(tok)
    ids = [e.ids + [eos] for e in tok.encode_batch(docs, add_special_tokens=False)]
    stream = np.fromiter((i for doc in ids for i in doc), np.int32)
    n_held = int(len(stream) * cfg.heldout)
    need = cfg.seq_len + 1 - (first_token(cfg.bos) is not None)  # stream tokens per sequence
    if n_held < need or len(stream) - n_held < need:
        raise ConfigError(f"the text gives {len(stream)} tokens: too few for sequences of {cfg.seq_len} tokens with "
                          f"{cfg.heldout:g} of them held out; give more text or lower --seq-len")
    data = TokenData(stream[: len(stream) - n_held], stream[len(stream) - n_held:], len(docs))
    tt = TextTokenizer(tok, first_token(cfg.bos), first_token(cfg.bos) is not None, str(path or "trained"))
    return data, tt


def batch_at(train: jax.Array, key: jax.Array, batch: int, seq_len: int, first: int | None) -> jax.Array:
    """tokens [batch, seq_len + 1] of one step (jit-able): windows of `train` at offsets drawn from `key`,
    behind the first token when there is one. The model reads [:, :-1] and predicts [:, 1:]."""
    n = seq_len + 1 - (first is not None)
    starts = jax.random.randint(key, (batch,), 0, train.shape[0] - n + 1)
    rows = jax.vmap(lambda s: jax.lax.dynamic_slice(train, (s,), (n,)))(starts)
    if first is None:
        return rows
    return jnp.concatenate([jnp.full((batch, 1), first, rows.dtype), rows], axis=1)


def heldout_batch(heldout: np.ndarray, batch: int, seq_len: int, first: int | None) -> np.ndarray:
    """The fixed held-out batch [batch, seq_len + 1]: windows spread evenly over the held-out tail."""
    n = seq_len + 1 - (first is not None)
    starts = np.linspace(0, len(heldout) - n, batch).astype(np.int64)
    rows = np.stack([heldout[s:s + n] for s in starts])
    if first is None:
        return rows
    return np.concatenate([np.full((batch, 1), first, np.int32), rows], axis=1)
