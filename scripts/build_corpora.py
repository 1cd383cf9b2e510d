#!/usr/bin/env python3
"""Rebuild the public-domain excerpts shipped in `toybb/corpora/` (the built-in corpora `pride`, `emma`,
`mobydick`, `shakespeare`) from the full texts.

    python scripts/build_corpora.py SRC [--out toybb/corpora]

SRC is a folder holding `prose/austen/prideprejudice.txt`, `prose/austen/emma.txt`,
`prose/melville_moby_dick.txt` and `tinyshakespeare.txt` (Project Gutenberg texts and karpathy/char-rnn's
Tiny Shakespeare). Each excerpt is the text from its first line of prose (after any Project Gutenberg header)
up to the last paragraph break before `CHARS` characters, with Unix line ends. Neither the package nor the
tests run this script; `tests/test_texts.py` checks the shipped files against the table below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHARS = 100_000
# name -> (path under SRC, text that starts the excerpt)
SOURCES = {
    "pride": ("prose/austen/prideprejudice.txt", "PRIDE AND PREJUDICE"),
    "emma": ("prose/austen/emma.txt", "EMMA"),
    "mobydick": ("prose/melville_moby_dick.txt", "CHAPTER 1. Loomings."),
    "shakespeare": ("tinyshakespeare.txt", "First Citizen:"),
}


def excerpt(text: str, start: str, chars: int = CHARS) -> str:
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    i = text.find(start)
    if i < 0:
        raise SystemExit(f"error: {start!r} not found in the source text")
    body = text[i:i + chars]
    cut = body.rfind("\n\n")
    return body[:cut].rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="folder of the full texts")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "toybb" / "corpora")
    a = ap.parse_args(argv)
    for name, (rel, start) in SOURCES.items():
        p = a.src / rel
        if not p.is_file():
            print(f"error: {p} is missing; SRC must hold {rel}", file=sys.stderr)
            return 2
        t = excerpt(p.read_text(encoding="utf-8"), start)
        (a.out / f"{name}.txt").write_text(t, encoding="utf-8")
        print(f"{name}.txt: {len(t):,} characters from {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
