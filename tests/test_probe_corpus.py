"""Corpora for the LLM probes: fixed-length samples, BOS on/off, deterministic order, padding of the
last batch, and the errors for bad domain specs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toybb.errors import ConfigError
from toybb.probes.corpus import domain_batches, iter_batches, iter_documents, iter_samples, parse_domain


def encode(text: str) -> list[int]:  # a stand-in tokenizer: one id per character
    return [ord(c) % 250 + 3 for c in text]


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "b.txt").write_text("second document " * 20)
    (tmp_path / "a.txt").write_text("first document " * 20)
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00\x81")  # not UTF-8: skipped
    return tmp_path


@pytest.mark.parametrize("bos", [None, 1])
def test_fixed_length_with_and_without_bos(folder, bos):
    s = list(iter_samples(iter_documents(str(folder)), encode, seq_len=16, bos_id=bos, max_per_doc=3))
    assert len(s) == 6 and all(x.shape == (16,) and x.dtype == np.int32 for x in s)
    if bos is None:
        assert s[0].tolist() == encode("first document first document ")[:16]
    else:
        assert all(x[0] == 1 for x in s) and s[0][1:].tolist() == encode("first document ")[:15]
    assert s[3].tolist()[-5:] == encode(("second document " * 2)[:16 - (bos is not None)])[-5:]


def test_deterministic_and_builtins():
    take = lambda src: [x.tolist() for _, x in zip(range(5), iter_samples(iter_documents(src), encode,  # noqa: E731
                                                                            seq_len=32, bos_id=0, max_per_doc=2))]
    assert take("stdlib") == take("stdlib") and len(take("stdlib")) == 5
    assert take("pydoc") == take("pydoc") and len(take("pydoc")) == 5


def test_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["x" * 40, "y" * 10, "z" * 40])))
    s = list(iter_samples(iter_documents(str(p)), encode, seq_len=20, bos_id=None))
    assert [chr(x[0] - 3) for x in s] == ["x", "x", "z", "z"]  # "y" * 10 is shorter than a sample
    (tmp_path / "bad.jsonl").write_text('{"txt": "no text field"}\n')
    with pytest.raises(ConfigError, match="text"):
        list(iter_documents(str(tmp_path / "bad.jsonl")))


def test_batches_pad_last_and_stop_at_n():
    samples = (np.full(4, i, np.int32) for i in range(100))
    got = list(iter_batches(samples, 7, 3))
    assert [b[0].shape for b in got] == [(3, 4)] * 3
    assert [b[1].tolist() for b in got] == [[True] * 3, [True] * 3, [True, False, False]]
    assert got[2][0][:, 0].tolist() == [6, 6, 6]


def test_domain_errors(tmp_path):
    for bad in ("prose", "=stdlib", "prose=", "a b=stdlib"):
        with pytest.raises(ConfigError, match="domain"):
            parse_domain(bad)
    with pytest.raises(ConfigError, match="neither"):
        parse_domain(f"x={tmp_path / 'missing'}")
    assert parse_domain("code=stdlib").source == "stdlib"
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ConfigError, match="holds no text"):
        domain_batches(parse_domain(f"s={tmp_path / 'short.txt'}"), encode, n=4, seq_len=64, batch=2, bos_id=0)
