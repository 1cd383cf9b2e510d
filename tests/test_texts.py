"""A clone with nothing beside it: the built-in corpora, $TOYBB_DATA without a default, and no file of the
repository that reads or names a path outside it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from toybb.errors import ConfigError
from toybb.texts import BUILTINS, CORPORA, EXCERPTS, data_dir, read_source, resolve_source

REPO = Path(__file__).resolve().parents[1]
# what a user's clone holds and runs: the package, its tests, benchmarks, scripts, examples, CI, READMEs
SCANNED = ("toybb", "tests", "benchmarks", "scripts", "examples", "figures", "theory", ".ci")
SUFFIXES = {".py", ".sh", ".md", ".toml", ".yaml", ".yml", ".json", ".cfg", ".txt", ""}
# scripts that rebuild a derived table from a source folder given as their argument (never run by tests)
REBUILDERS = {"scripts/build_corpora.py", "toybb/reference/build.py"}


def _files() -> list[Path]:
    out = [REPO / "README.md", REPO / "pyproject.toml"]
    for top in SCANNED:
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and "corpora" not in p.parts and "__pycache__" not in p.parts:
                out.append(p)
    return out


SHARED = re.compile(r"(?<![\w-])shared/(?!sweeps)")  # `shared/...` or `../shared`, not a word such as `shared_value`
ABOVE = re.compile(r"""\.\./|["']\.\.["']""")  # ../ in a path, or ".." joined onto one


def _parents_above(p: Path, text: str) -> list[str]:
    """`Path(__file__)...parents[N]` (optionally `.parent`) that reaches above the repository root."""
    depth = len(p.relative_to(REPO).parts)  # parents[depth - 1] is the root
    bad = []
    for m in re.finditer(r"parents\[(\d+)\]((?:\.parent)*)", text):
        if int(m.group(1)) + m.group(2).count(".parent") >= depth:
            bad.append(m.group(0))
    return bad


def test_no_file_refers_to_shared_or_above_the_repository():
    bad = []
    for p in _files():
        rel = p.relative_to(REPO).as_posix()
        if rel == "tests/test_texts.py":
            continue  # the patterns themselves
        text = p.read_text(encoding="utf-8", errors="replace")
        for i, line in enumerate(text.splitlines(), 1):
            if SHARED.search(line) or (ABOVE.search(line) and rel not in REBUILDERS and ".../" not in line):
                bad.append(f"{rel}:{i}: {line.strip()[:100]}")
        bad += [f"{rel}: {m}" for m in _parents_above(p, text)]
    assert not bad, "paths outside the repository:\n" + "\n".join(bad)


def test_the_scan_catches_what_it_should(tmp_path):
    assert SHARED.search('DATA = os.path.join(here, "..", "..", "shared", "data")') is None  # caught by ABOVE
    assert ABOVE.search('os.path.join(here, "..", "..", "shared", "data")')
    assert SHARED.search("(`../shared/reference/ada/README.md`)") and SHARED.search('"shared/data/x.txt"')
    assert not SHARED.search("check_shared_value") and not SHARED.search("--out /scratch/sweeps/lr")
    assert _parents_above(REPO / "tests" / "x.py", "Path(__file__).resolve().parents[2] / 'x'")
    assert _parents_above(REPO / "tests" / "x.py", "Path(__file__).resolve().parents[1].parent / 'x'")
    assert not _parents_above(REPO / "tests" / "x.py", "Path(__file__).resolve().parents[1] / 'README.md'")


def test_rebuilders_take_their_source_as_an_argument():
    for rel in REBUILDERS:
        r = subprocess.run([sys.executable, str(REPO / rel)] if rel.startswith("scripts") else
                           [sys.executable, "-m", "toybb.reference.build"], capture_output=True, text=True)
        assert r.returncode == 2 and "src" in r.stderr, (rel, r.stderr)


def test_builtin_corpora_ship_with_the_package(monkeypatch):
    monkeypatch.delenv("TOYBB_DATA", raising=False)
    assert data_dir() is None
    readme = (CORPORA / "README.md").read_text()
    for name in EXCERPTS:
        assert name in BUILTINS and resolve_source(name) == name
        text = read_source(name)
        assert 90_000 < len(text) <= 100_000 and text.endswith("\n") and "\r" not in text
        assert f"| `{name}` | `{name}.txt` | {len(text):,} |" in readme  # the README's size is the file's
    assert read_source("pride").startswith("PRIDE AND PREJUDICE") and "truth universally acknowledged" in \
        read_source("pride")
    assert read_source("shakespeare").startswith("First Citizen:")


def test_missing_text_names_the_builtins_and_how_to_add_ones_own(monkeypatch, tmp_path):
    monkeypatch.delenv("TOYBB_DATA", raising=False)
    with pytest.raises(ConfigError) as e:
        resolve_source("prose/austen")
    msg = str(e.value)
    assert "\n" not in msg and all(b in msg for b in BUILTINS) and "TOYBB_DATA" in msg
    (tmp_path / "novels").mkdir()
    (tmp_path / "novels" / "a.txt").write_text("Call me Ishmael.")
    monkeypatch.setenv("TOYBB_DATA", str(tmp_path))
    assert read_source("novels") == "Call me Ishmael."
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        resolve_source("novels/missing.txt")


def test_cli_error_for_a_missing_text_is_one_line(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "TOYBB_DATA"}
    r = subprocess.run([sys.executable, "-m", "toybb.cli", "longctx", "stream", "smollm2-135m-instruct",
                        "--text", "prose/austen", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pride" in r.stderr, r.stderr  # before loading
