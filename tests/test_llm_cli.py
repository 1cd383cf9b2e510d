"""`toybb inspect | ppl | models` on a tiny saved checkpoint (and SmolLM2 when installed)."""

from __future__ import annotations

import argparse

import pytest

from toybb.llm import cli as llm_cli


def _run(argv) -> int:
    """The lead's CLI when present, else a minimal argparse harness around `register`."""
    try:
        from toybb.cli import main

        return main(argv)
    except ImportError:
        parser = argparse.ArgumentParser(prog="toybb")
        llm_cli.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(argv)
        return args.func(args)


def test_register_adds_subcommands():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    llm_cli.register(sub)
    for argv in (["inspect", "m"], ["ppl", "m", "--text", "t.txt"], ["models"]):
        assert callable(parser.parse_args(argv).func)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from _tiny_hf import make_tiny

    d = tmp_path_factory.mktemp("tiny")
    make_tiny("llama_gqa", str(d))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(f"w{i}" for i in range(53))}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    return d


def test_inspect(tiny_dir, capsys):
    assert _run(["inspect", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "llama" in out and "3 layers" in out and "parameters:" in out and "float32" in out


def test_ppl(tiny_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 53}" for i in range(40)))
    assert _run(["ppl", str(tiny_dir), "--text", str(text), "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_ppl_missing_text_is_one_line_error(tiny_dir, capsys):
    from toybb.errors import ToybbError

    try:
        code = _run(["ppl", str(tiny_dir), "--text", "/nonexistent/text.txt"])
    except ToybbError:
        code = 2
    assert code == 2


def test_models_lists_toybb_models_dirs(tiny_dir, monkeypatch, capsys):
    monkeypatch.setenv("TOYBB_MODELS", str(tiny_dir.parent))
    assert _run(["models"]) == 0
    assert str(tiny_dir) in capsys.readouterr().out


def test_models_lists_a_malformed_folder_as_unreadable(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("[1, 2]")  # valid JSON, not an object
    (bad / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("TOYBB_MODELS", str(tmp_path))
    assert _run(["models"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if str(bad) in x]
    assert line and "hf, unreadable" in line[0], line


def test_unsupported_architecture_is_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "mamba", "hidden_size": 8}')
    assert _run(["inspect", str(tmp_path)]) == 2
    assert "mamba" in capsys.readouterr().err
