"""The Bigram-Backcopy (BB) task (SPEC §1): a character bigram chain with deterministic back-copies.

Vocabulary (for a table of n characters; n = 65 for Tiny Shakespeare, so V = 67):
ids 0..n-1 are the sorted characters, ``bos_id = n`` is BOS ``<s>``, ``delim_id = n + 1`` is a
delimiter that exists in the vocabulary but is never generated.

Generation of one sequence: [BOS], then a first token from ``first_dist`` (unigram without the
triggers), then repeatedly: if the current token is a trigger, the next token is the token just
before it (back-copy); otherwise the next token is drawn from the bigram row ``P[current]``.
The first token is never a trigger and a back-copied token never is either, so triggers are never
adjacent and every trigger has a predecessor.

All tables are numpy arrays built at construction (no device touched); jnp constants are made
inside the methods, so a ``BBTask`` can be closed over or passed as a static argument to ``jax.jit``.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import ConfigError
from toybb.task.build_bigram import FORMAT_VERSION, BigramTable

_DATA = Path(__file__).parent / "data"
PACKAGED_TABLES = {"tinyshakespeare": _DATA / "tinyshakespeare_bigram.npz"}


def _resolve(table: str | Path) -> Path:
    if isinstance(table, str) and table in PACKAGED_TABLES:
        return PACKAGED_TABLES[table]
    p = Path(table)
    if not p.is_file():
        raise ConfigError(
            f"task.table {str(table)!r} is neither a packaged table ({', '.join(sorted(PACKAGED_TABLES))}) "
            "nor an existing .npz file; build one with `python -m toybb.task.build_bigram TEXTFILE -o OUT.npz`"
        )
    return p


def load_bigram_table(table: str | Path = "tinyshakespeare") -> BigramTable:
    """Load and validate a bigram table: a packaged name ("tinyshakespeare") or a path to an .npz
    written by ``toybb.task.build_bigram``.

    Returns BigramTable(chars: str [n], counts: int64 [n, n], unigram: int64 [n]); arrays are read-only.
    Raises ConfigError if the file is missing or is not a valid table.
    """
    p = _resolve(table)
    bad = f"task.table {str(p)!r} is not a valid bigram table"
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = {"chars", "counts", "unigram"} - set(z.files)
            if missing:
                raise ConfigError(f"{bad}: missing array(s) {sorted(missing)}")
            version = int(z["version"]) if "version" in z.files else FORMAT_VERSION
            codes, counts, unigram = z["chars"], z["counts"], z["unigram"]
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        why = "not a .npz file of arrays" if "pickle" in str(e) else f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise ConfigError(f"{bad} ({why}); build one with `python -m toybb.task.build_bigram TEXTFILE -o OUT.npz`") \
            from None
    if version != FORMAT_VERSION:
        raise ConfigError(f"{bad}: format version {version}, expected {FORMAT_VERSION}; rebuild it")
    n = codes.shape[0] if codes.ndim == 1 else -1
    if n < 2 or codes.dtype.kind not in "iu":
        raise ConfigError(f"{bad}: 'chars' must be a 1-D integer array of >= 2 code points")
    if (counts.shape != (n, n) or unigram.shape != (n,)
            or counts.dtype.kind not in "iu" or unigram.dtype.kind not in "iu"):
        raise ConfigError(f"{bad}: expected integer counts [{n}, {n}] and unigram [{n}], "
                          f"got {counts.dtype}{list(counts.shape)} and {unigram.dtype}{list(unigram.shape)}")
    if np.any(np.diff(codes.astype(np.int64)) <= 0) or codes.min() < 0 or codes.max() > 0x10FFFF:
        raise ConfigError(f"{bad}: 'chars' must be strictly increasing Unicode code points")
    if np.any(counts < 0) or np.any(unigram <= 0):
        raise ConfigError(f"{bad}: counts must be >= 0 and every character must occur at least once")
    counts, unigram = counts.astype(np.int64), unigram.astype(np.int64)
    counts.setflags(write=False)
    unigram.setflags(write=False)
    return BigramTable("".join(chr(int(c)) for c in codes), counts, unigram)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class BBTask:
    """Bigram-Backcopy task. Equality and hash use (n_triggers, bos, table) plus a digest of the
    table contents, so the object is a valid static argument / closure constant for ``jax.jit``.

    Attributes (numpy, read-only; V = vocab_size = n + 2):
      chars:      str [n] sorted characters (ids 0..n-1)
      bos_id:     n;  delim_id: n + 1 (never generated)
      unigram:    float64 [V] character frequencies (0 at BOS and delimiter)
      bigram:     float64 [V, V] row-normalised pair counts P; rows BOS and delimiter = unigram;
                  columns BOS and delimiter are 0. A character never followed by another (it occurs
                  only at the end of the text) gets the unigram as its row.
      first_dist: float64 [V] unigram with triggers zeroed, renormalised (law of the first token)
      triggers:   int32 [k] the k most frequent characters, most frequent first
      is_trigger: bool [V]
    """

    n_triggers: int = 3
    bos: bool = True
    table: str = "tinyshakespeare"
    digest: str = field(init=False, repr=False)

    def __post_init__(self):
        k = self.n_triggers
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ConfigError(f"task.n_triggers must be an integer, got {k!r}")
        if not isinstance(self.bos, (bool, np.bool_)):
            raise ConfigError(f"task.bos must be true or false, got {self.bos!r}")
        if not isinstance(self.table, (str, Path)):
            raise ConfigError(f"task.table must be a name or a path, got {self.table!r}")
        set_ = partial(object.__setattr__, self)
        set_("n_triggers", int(k))
        set_("bos", bool(self.bos))
        set_("table", str(self.table))

        tab = load_bigram_table(self.table)
        n = len(tab.chars)
        if not 1 <= self.n_triggers < n:
            raise ConfigError(
                f"task.n_triggers must be between 1 and {n - 1} (the table has {n} characters), got {self.n_triggers}"
            )
        V = n + 2
        set_("digest", hashlib.sha1(tab.chars.encode() + tab.counts.tobytes() + tab.unigram.tobytes()).hexdigest())
        set_("chars", tab.chars)
        set_("n_chars", n)
        set_("vocab_size", V)
        set_("bos_id", n)
        set_("delim_id", n + 1)

        uni = np.zeros(V)
        uni[:n] = tab.unigram / tab.unigram.sum()
        rows = tab.counts.sum(axis=1, keepdims=True)
        P = np.zeros((V, V))
        P[:n, :n] = np.where(rows > 0, tab.counts / np.maximum(rows, 1), uni[None, :n])
        P[n] = P[n + 1] = uni
        # Stable sort: equal counts keep id order, so the trigger set is deterministic.
        triggers = np.argsort(-tab.unigram, kind="stable")[: self.n_triggers].astype(np.int32)
        is_trigger = np.zeros(V, bool)
        is_trigger[triggers] = True
        first = np.where(is_trigger, 0.0, uni)
        first /= first.sum()

        set_("unigram", _readonly(uni))
        set_("bigram", _readonly(P))
        set_("triggers", _readonly(triggers))
        set_("is_trigger", _readonly(is_trigger))
        set_("first_dist", _readonly(first))

        # Sampling tables: row CDFs inverted by counting entries <= u (u ~ U[0, 1)). Zero-probability
        # entries repeat the previous CDF value so they can never be picked; the CDF is forced to 1
        # from the last positive entry on, so float rounding can never run past it.
        set_("_cdf", _readonly(np.stack([_cdf(r) for r in P])))
        set_("_first_cdf", _readonly(_cdf(first)))
        # Oracle rows for non-trigger inputs: the bigram row, except first_dist after BOS.
        orc = P.copy()
        orc[n] = first
        set_("_oracle_rows", _readonly(orc.astype(np.float32)))
        with np.errstate(divide="ignore"):
            set_("_oracle_nll_table", _readonly((-np.log(orc)).astype(np.float32)))

    # ---- sampling ------------------------------------------------------------------------------
    def sample(self, key: jax.Array, batch: int, seq_len: int) -> jax.Array:
        """Draw ``batch`` sequences of ``seq_len + 1`` tokens: int32 [batch, seq_len + 1].

        Token 0 is BOS when ``bos`` is set; otherwise the sequence starts with the first token.
        Use ``inputs = seq[:, :-1]`` and ``targets = seq[:, 1:]``. Pure in ``key``; jit-able and
        vmap-able over ``key`` (``batch`` and ``seq_len`` are static Python ints).
        """
        for name, v in (("batch", batch), ("seq_len", seq_len)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        return _sample(self, key, int(batch), int(seq_len))

    # ---- text ------------------------------------------------------------------------------------
    def encode(self, text: str, bos: bool | None = None) -> np.ndarray:
        """int32 [len(text) (+1)]: one id per character, BOS first when the task has one (or `bos`).
        A character outside the table's vocabulary is a ConfigError naming it."""
        if not isinstance(text, str):
            raise ConfigError(f"text must be a string, got {type(text).__name__}")
        index = {c: i for i, c in enumerate(self.chars)}
        missing = sorted(set(text) - set(index))
        if missing:
            raise ConfigError(f"the text has characters the toy vocabulary lacks: {''.join(missing)!r} (the "
                              f"{self.table} table has {self.n_chars}: {self.chars!r})")
        ids = [index[c] for c in text]
        return np.array(([self.bos_id] if (self.bos if bos is None else bos) else []) + ids, np.int32)

    def decode(self, ids) -> str:
        """Characters of `ids` (BOS as '<s>', the delimiter as '|')."""
        names = {self.bos_id: "<s>", self.delim_id: "|"}
        return "".join(names.get(int(i), self.chars[int(i)] if 0 <= int(i) < self.n_chars else "?")
                       for i in np.asarray(ids).reshape(-1))

    # ---- oracle ----------------------------------------------------------------------------------
    def trigger_mask(self, inputs: jax.Array) -> jax.Array:
        """bool, same shape as ``inputs`` [..., T]: True where the input token is a trigger, i.e.
        where the next token is a back-copy."""
        return jnp.asarray(self.is_trigger)[inputs]

    def oracle_nll(self, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        """Oracle cross-entropy per position, float32 [..., T] (same shape as ``inputs``).

        0 where the input is a trigger (the next token is certain), ``-log first_dist[target]`` where
        the input is BOS, ``-log P[input, target]`` elsewhere (inf for an impossible transition).
        """
        inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
        if inputs.shape != targets.shape:
            raise ConfigError(f"inputs {inputs.shape} and targets {targets.shape} must have the same shape")
        nll = jnp.asarray(self._oracle_nll_table)[inputs, targets]
        return jnp.where(self.trigger_mask(inputs), jnp.float32(0), nll)

    def oracle_probs(self, inputs: jax.Array) -> jax.Array:
        """Oracle next-token distribution, float32 [..., T, V] for ``inputs`` [..., T].

        One-hot on ``inputs[..., t-1]`` where ``inputs[..., t]`` is a trigger; ``first_dist`` after
        BOS; ``P[inputs[..., t]]`` elsewhere. A trigger at t = 0 has no predecessor (the sampler never
        produces one); it gets its bigram row.
        """
        inputs = jnp.asarray(inputs)
        rows = jnp.asarray(self._oracle_rows)[inputs]
        prev = jnp.concatenate([inputs[..., :1], inputs[..., :-1]], axis=-1)
        t = jnp.arange(inputs.shape[-1])
        copy = self.trigger_mask(inputs) & (t > 0)
        onehot = jax.nn.one_hot(prev, self.vocab_size, dtype=jnp.float32)
        return jnp.where(copy[..., None], onehot, rows)


def _cdf(p: np.ndarray) -> np.ndarray:
    """float32 [V] CDF of probability row ``p`` (float64 [V]), exactly 1 from the last positive entry on."""
    c = np.cumsum(p)
    c[np.flatnonzero(p)[-1]:] = 1.0
    return c.astype(np.float32)


@partial(jax.jit, static_argnums=(0, 2, 3))
def _sample(task: BBTask, key: jax.Array, batch: int, seq_len: int) -> jax.Array:
    n_gen = seq_len if task.bos else seq_len + 1  # tokens after the optional BOS
    # All randomness up front: one uniform per generated token (no key splitting inside the scan).
    # Back-copy steps ignore theirs, which keeps the stream simple and position-aligned.
    u = jax.random.uniform(key, (n_gen, batch), jnp.float32)
    cdf = jnp.asarray(task._cdf)  # [V, V]
    is_trig = jnp.asarray(task.is_trigger)  # [V]
    first = jnp.sum(jnp.asarray(task._first_cdf)[None, :] <= u[0][:, None], axis=-1, dtype=jnp.int32)  # [B]

    def step(carry, u_t):
        prev, cur = carry  # [B] each
        drawn = jnp.sum(cdf[cur] <= u_t[:, None], axis=-1, dtype=jnp.int32)  # inverse CDF, [B]
        nxt = jnp.where(is_trig[cur], prev, drawn)
        return (cur, nxt), nxt

    # prev of the first token is never read: the first token is never a trigger.
    init = (jnp.full((batch,), task.bos_id, jnp.int32), first)
    _, rest = jax.lax.scan(step, init, u[1:])  # [n_gen - 1, B]
    seq = jnp.concatenate([first[None], rest], axis=0).T  # [B, n_gen]
    if task.bos:
        seq = jnp.concatenate([jnp.full((batch, 1), task.bos_id, jnp.int32), seq], axis=1)
    return seq
