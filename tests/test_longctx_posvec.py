"""Positional vectors (streaming mean), toy-model position schemes and the longctx CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from toybb.config import ModelConfig
from toybb.errors import ConfigError, ToybbError
from toybb.longctx.posvec import (StreamingMean, beyond_similarity, cosine_matrix, decompose, n_distinct,
                                  positional_vectors)


def test_streaming_mean_equals_batch_mean():
    x = np.random.default_rng(0).normal(size=(23, 3, 5, 4))
    acc = StreamingMean()
    for a, b in ((0, 7), (7, 8), (8, 8), (8, 20), (20, 23)):
        acc.update(x[a:b])
    np.testing.assert_allclose(acc.result(), x.mean(0), atol=1e-12)
    assert acc.n == 23
    p, n = positional_vectors(lambda t: np.moveaxis(t, 0, 1), (x[i : i + 5] for i in range(0, 23, 5)))
    np.testing.assert_allclose(p, x.mean(0), atol=1e-12)
    u, m = decompose(p)
    np.testing.assert_allclose(m.mean(axis=1), 0, atol=1e-12)


def test_zero_samples_is_an_error():
    with pytest.raises(ToybbError, match="N = 0"):
        StreamingMean().result()
    with pytest.raises(ToybbError):
        positional_vectors(lambda t: t, iter(()))


def test_distinct_rule():
    m = np.zeros((10, 3))
    m[:, 0] = 1.0
    m[:, 1] = np.linspace(0, 0.1, 10)  # positions 1..9 nearly parallel
    m[0] = [0.0, 0.0, 1.0]  # the first token stands apart
    assert n_distinct(m, 0.9) == 1
    assert cosine_matrix(m).shape == (10, 10)
    assert beyond_similarity(m[:5], m[5:]).min() > 0.9


@pytest.fixture(scope="module")
def toy():
    from toybb.models.transformer import Transformer

    cfg = ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=4, max_positions=16, position="rope")
    return Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.mark.slow  # SelfExtend below its window equals plain attention: test_longctx_core
def test_toy_selfextend_below_window_and_pi(toy):
    from toybb.longctx.options import rope_scaling, with_options
    from toybb.longctx.toy import mean_nll, with_model_options

    x = np.random.default_rng(0).integers(0, 11, (2, 21))
    base = mean_nll(toy, x)
    assert abs(mean_nll(with_options(toy, selfextend=(32, 2)), x) - base) < 1e-5
    assert abs(mean_nll(with_options(toy, selfextend=(2, 4)), x) - base) > 1e-6
    assert abs(mean_nll(with_options(toy, sliding_window=64), x) - base) < 1e-5
    pi = mean_nll(with_options(toy, rope_scaling=rope_scaling(pi=2.0)), x)
    assert abs(pi - base) > 1e-6
    # the former function and field names still work
    assert mean_nll(with_model_options(toy, rope_scale=2.0), x) == pi
    assert mean_nll(with_model_options(toy, selfextend_window=2, selfextend_group=4), x) == \
        mean_nll(with_options(toy, selfextend=(2, 4)), x)
    # one set of position fields: the toy model takes the families' per-layer attention types too
    assert abs(mean_nll(with_options(toy, layer_types=("full",)), x) - base) < 1e-6
    with pytest.raises(ConfigError, match="unknown option"):
        with_options(toy, window_size=4)


def test_toy_config_errors():
    with pytest.raises(ConfigError):
        ModelConfig(position="rope", selfextend_window=4, selfextend_group=0)
    with pytest.raises(ConfigError):
        ModelConfig(position="learned", selfextend_window=4, selfextend_group=2)
    with pytest.raises(ConfigError):
        ModelConfig(window=0)


@pytest.mark.parametrize("argv", [
    ["toy", "--out", "{tmp}", "--schemes", "bogus"],
    ["ppl-length", "m", "--out", "{tmp}", "--selfextend", "1024,0"],
    ["ppl-length", "m", "--out", "{tmp}", "--tokens", "1000", "--seq-len", "2000"],
    ["posvec", "m", "--out", "{tmp}", "--samples", "0"],
    ["posvec", "m", "--out", "{tmp}", "--seq", "64"],
])
def test_cli_errors_one_line_exit_2(tmp_path, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = subprocess.run([sys.executable, "-m", "toybb.cli", "longctx", *argv], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow  # `longctx toy` runs in the default suite through test_faults (divergence) and its core tests
def test_toy_cli_end_to_end_with_beyond_similarity(tmp_path):
    # tiny models, a few steps: the command runs through and its tables hold sane numbers
    argv = ["toy", "--out", str(tmp_path), "--seq-len", "16", "--factors", "1,2", "--schemes", "none,window",
            "--d-model", "16", "--layers", "1", "--heads", "2", "--steps", "3", "--batch", "4",
            "--eval-windows", "4", "--alphas", "1.0", "--temperatures", "1.0"]
    r = subprocess.run([sys.executable, "-m", "toybb.cli", "longctx", *argv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "toy_beyond_similarity.json").read_text())
    assert [(x["scheme"], x["layer"]) for x in rows] == [("none", 0), ("window", 0)]
    for x in rows:
        assert x["positions_beyond"] == 16 and -1.0 <= x["min_max_cosine"] <= x["mean_max_cosine"] <= 1.0 + 1e-6
    assert (tmp_path / "toy_ppl_length.png").exists()
