"""Text sources: what `--text SOURCE` and `--domain NAME=SOURCE` accept, resolved by one function.

SOURCE is a text file, a folder (every UTF-8 file under it, sorted by path), a `.jsonl` file (the `text`
field of each line), or a built-in corpus (`BUILTINS`), which every install has:
  stdlib       the Python standard-library sources (real code), files sorted by path, site-packages excluded;
  pydoc        `pydoc_data.topics` (Python's documentation topics: real English prose), topics sorted by name;
  pride, emma, mobydick, shakespeare
               public-domain excerpts of about 100,000 characters shipped in `toybb/corpora/` (Pride and
               Prejudice, Emma, Moby Dick, Tiny Shakespeare; sources in its README.md, rebuilt by
               scripts/build_corpora.py).
A relative path that does not exist as given is looked up under $TOYBB_DATA when it is set (a folder of
one's own corpora: `TOYBB_DATA=~/corpora toybb ... --text novels/emma.txt` works from any folder).
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator

from toybb.errors import ConfigError

CORPORA = Path(__file__).resolve().parent / "corpora"
EXCERPTS = ("pride", "emma", "mobydick", "shakespeare")  # toybb/corpora/NAME.txt
BUILTINS = ("stdlib", "pydoc", *EXCERPTS)


def data_dir() -> str | None:
    """$TOYBB_DATA (a folder of one's own corpora), or None when it is not set."""
    return os.environ.get("TOYBB_DATA") or None


def resolve_source(source: str, flag: str = "--text") -> str:
    """A built-in corpus name, or the path of an existing file or folder (as given, else under $TOYBB_DATA).
    A file is checked whole (UTF-8; a .jsonl file line by line) here, before any model loads."""
    source = source.strip()
    if source in BUILTINS:
        return source
    root = data_dir()
    for cand in (source, os.path.join(root, source) if root else None):
        if source and cand and os.path.exists(cand):
            if os.path.isfile(cand):
                st = os.stat(cand)
                _check_file(cand, st.st_size, st.st_mtime_ns)
            return cand
    where = (f"relative paths are also tried under $TOYBB_DATA = {root}" if root else
             "set $TOYBB_DATA to a folder of your own texts to name them by relative path")
    raise ConfigError(f"{flag}: {source!r} is neither a file, a folder nor a built-in corpus ({', '.join(BUILTINS)}); "
                      f"give a path to your own text, or {where}")


@functools.lru_cache(maxsize=32)  # keyed by size and time too: a file checked once per version
def _check_file(path: str, size: int, mtime_ns: int) -> None:
    """A .jsonl file: every line (as `_jsonl` reads it); another file: UTF-8 throughout, read in chunks."""
    if path.endswith(".jsonl"):
        for _ in _jsonl(path):
            pass
        return
    line, offset, rest = 1, 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            data = rest + chunk
            try:
                _, used = codecs.utf_8_decode(data, "strict", not chunk)  # keeps a split character for the next
            except UnicodeDecodeError as e:
                at = line + data.count(b"\n", 0, e.start)
                raise ConfigError(f"{path}:{at}: not UTF-8 text (byte {offset + e.start}); give a UTF-8 text "
                                  "file") from None
            line, offset, rest = line + data.count(b"\n", 0, used), offset + used, data[used:]
            if not chunk:
                return


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary or unreadable files in a folder are skipped, not fatal


def _jsonl(source: str) -> Iterator[str]:
    offset = 0
    with open(source, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{source}:{i}: not UTF-8 text (byte {offset + e.start}); a .jsonl file holds "
                                  "one UTF-8 JSON object per line") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{source}:{i}: not a JSON line; each line must be an object with a "
                                  f"'text' field") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ConfigError(f"{source}:{i}: no string 'text' field")
            yield rec["text"]


def iter_documents(source: str) -> Iterator[str]:
    """The documents of a resolved source, in a fixed order."""
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        for p in sorted(root.rglob("*.py")):
            if "site-packages" in p.parts or "dist-packages" in p.parts:
                continue
            if (t := _read(p)) is not None:
                yield t
    elif source in EXCERPTS:
        yield (CORPORA / f"{source}.txt").read_text(encoding="utf-8")
    elif source == "pydoc":
        import pydoc_data.topics as topics

        for k in sorted(topics.topics):
            yield topics.topics[k]
    elif os.path.isdir(source):
        for p in sorted(Path(source).rglob("*")):
            if p.is_file() and (t := _read(p)) is not None:
                yield t
    elif source.endswith(".jsonl"):
        yield from _jsonl(source)
    elif os.path.isfile(source):
        t = _read(Path(source))
        if t is None:
            _check_file(source, -1, -1)  # names the line and byte
            raise ConfigError(f"{source}: cannot be read")
        yield t
    else:
        raise ConfigError(f"{source!r} is neither a file, a folder nor a built-in corpus ({', '.join(BUILTINS)})")


def read_source(source: str, flag: str = "--text", max_chars: int | None = None) -> str:
    """The text of SOURCE: its documents joined by blank lines, stopping once `max_chars` are read."""
    parts, n = [], 0
    for doc in iter_documents(resolve_source(source, flag)):
        parts.append(doc)
        n += len(doc) + 2
        if max_chars is not None and n >= max_chars:
            break
    if not parts or not any(p.strip() for p in parts):
        raise ConfigError(f"{flag}: {source!r} holds no text")
    return "\n\n".join(parts)
