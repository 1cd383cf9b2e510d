"""Build a character bigram table (the input of the Bigram-Backcopy task) from a text file.

Usage::

    python -m toybb.task.build_bigram TEXTFILE -o OUT.npz

The ``.npz`` holds only derived counts, never the text:

- ``chars``   uint32 [n]: Unicode code points of the distinct characters, sorted (ids 0..n-1).
- ``counts``  int64 [n, n]: ``counts[a, b]`` = number of positions i with text[i] = a, text[i+1] = b.
- ``unigram`` int64 [n]: occurrences of each character.
- ``version`` int64 []: format version (currently 1).

This module imports numpy only, so the script starts fast and never needs a device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from toybb.errors import ConfigError
from toybb.records import read_text

FORMAT_VERSION = 1


class BigramTable(NamedTuple):
    """Raw character statistics of a text.

    chars:   str of the n distinct characters, sorted by code point.
    counts:  np.int64 [n, n] consecutive-pair counts (row = current char, column = next char).
    unigram: np.int64 [n] character counts.
    """

    chars: str
    counts: np.ndarray
    unigram: np.ndarray


def build_table(text: str) -> BigramTable:
    """Count characters and consecutive character pairs of ``text`` (needs >= 2 distinct characters)."""
    if len(set(text)) < 2:
        raise ConfigError(
            f"a bigram table needs a text with at least 2 distinct characters, got {len(set(text))}"
        )
    # UTF-32 gives one uint32 code point per character, so numpy does the counting (1M chars in ms).
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, ids = np.unique(codes, return_inverse=True)
    n = len(uniq)
    ids = ids.reshape(-1).astype(np.int64)
    counts = np.bincount(ids[:-1] * n + ids[1:], minlength=n * n).reshape(n, n).astype(np.int64)
    unigram = np.bincount(ids, minlength=n).astype(np.int64)
    chars = "".join(chr(c) for c in uniq)
    return BigramTable(chars, counts, unigram)


def mix_uniform(table: BigramTable, weight: float, scale: int = 1_000_000) -> BigramTable:
    """Every row mixed with the uniform distribution: P'[a] = (1 - weight) P[a] + weight / n, stored as
    integer counts summing to about ``scale`` per row (the unigram is kept). All rows then share one
    support (every character), the condition of theory/03 that the raw Tiny Shakespeare table breaks."""
    if not 0.0 < weight <= 1.0:
        raise ConfigError(f"uniform mixing weight must lie in (0, 1], got {weight!r}")
    if not (isinstance(scale, int) and scale >= 10 * len(table.chars)):
        raise ConfigError(f"scale must be an integer >= 10 x the number of characters, got {scale!r}")
    counts = np.asarray(table.counts, np.float64)
    rows = counts.sum(1, keepdims=True)
    # a character that is never followed by anything (the last one of the text) gets the uniform row
    p = np.divide(counts, rows, out=np.full_like(counts, 1.0 / counts.shape[1]), where=rows > 0)
    p = (1.0 - weight) * p + weight / counts.shape[1]
    mixed = np.maximum(np.rint(p * scale), 1).astype(np.int64)
    return BigramTable(table.chars, mixed, np.asarray(table.unigram, np.int64))


def build_table_from_file(path: str | Path) -> BigramTable:
    """Read a UTF-8 text file and build its table; unreadable files raise ConfigError."""
    text = read_text(path, "text file")
    try:
        return build_table(text)
    except ConfigError as e:
        raise ConfigError(f"{str(path)!r}: {e}") from None


def save_table(table: BigramTable, path: str | Path) -> Path:
    """Write ``table`` as a compressed .npz (a few KB for ~65 characters); returns the path written."""
    p = Path(path)
    if p.suffix != ".npz":  # np.savez would silently append .npz; make the name explicit instead
        p = p.with_name(p.name + ".npz")
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        p,
        chars=np.array([ord(c) for c in table.chars], dtype=np.uint32),
        counts=np.asarray(table.counts, dtype=np.int64),
        unigram=np.asarray(table.unigram, dtype=np.int64),
        version=np.int64(FORMAT_VERSION),
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0 on success; bad input prints one line to stderr and exits 2."""
    ap = argparse.ArgumentParser(
        prog="python -m toybb.task.build_bigram",
        description="Build the character bigram table of a text file for the Bigram-Backcopy task.",
    )
    ap.add_argument("textfile", help="UTF-8 text file (e.g. tinyshakespeare.txt)")
    ap.add_argument("-o", "--out", required=True, help="output .npz path")
    ap.add_argument("--uniform-mix", type=float, metavar="W",
                    help="mix every bigram row with the uniform distribution at weight W in (0, 1]: all rows "
                    "then share one support (theory/03's condition)")
    args = ap.parse_args(argv)
    try:
        table = build_table_from_file(args.textfile)
        if args.uniform_mix is not None:
            table = mix_uniform(table, args.uniform_mix)
        out = save_table(table, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the output directory is not writable
        print(f"error: cannot write {args.out!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    n_chars = int(table.unigram.sum())
    print(f"wrote {out}: {len(table.chars)} distinct characters, {n_chars} characters, "
          f"{n_chars - 1} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
