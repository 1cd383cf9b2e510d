"""Metric functions on hand-built arrays whose answers are known."""

import jax.numpy as jnp
import numpy as np
import pytest

from toybb.probes import metrics as M


def _uniform_causal(b, h, t):
    i = np.arange(t)
    p = (i[None, :] <= i[:, None]) / (i[:, None] + 1.0)
    return jnp.asarray(np.broadcast_to(p, (b, h, t, t)).copy())


def test_sink_attention_uniform_and_all_on_sink():
    t = 8
    p = _uniform_causal(2, 1, t)
    expect = np.mean(1.0 / (np.arange(t) + 1))  # H(t)/t
    np.testing.assert_allclose(M.sink_attention(p), [expect], rtol=1e-6)
    np.testing.assert_allclose(M.sink_attention(p, exclude_sink_query=True), [np.mean(1 / np.arange(2, t + 1))], rtol=1e-6)
    all_sink = jnp.zeros((2, 1, t, t)).at[..., 0].set(1.0)
    np.testing.assert_allclose(M.sink_attention(all_sink), [1.0])


def test_sink_attention_respects_query_mask_and_key0_reduction():
    p = np.zeros((1, 2, 4, 4), np.float32)
    p[0, :, :, 0] = [[1, 0.5, 0.2, 0.1], [1, 1, 1, 1]]
    mask = np.array([[True, False, True, False]])
    np.testing.assert_allclose(M.sink_attention(jnp.asarray(p), jnp.asarray(mask)), [0.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(M.sink_attention(jnp.asarray(p[..., 0]), jnp.asarray(mask)), [0.6, 1.0], rtol=1e-6)


def test_sink_logit_gap():
    # query i's logits: 5 on the sink, k on key k for 1 <= k < i  -> gap = 5 - mean(1..i-1)
    t = 6
    logits = np.zeros((1, 1, t, t), np.float32)
    logits[..., 0] = 5.0
    for k in range(1, t):
        logits[..., k] = k
    gaps = [5 - np.mean(np.arange(1, i)) for i in range(2, t)]
    np.testing.assert_allclose(M.sink_logit_gap(jnp.asarray(logits)), [np.mean(gaps)], rtol=1e-6)


def test_value_drain_and_residual_peak():
    norms = np.ones((3, 5, 2), np.float32)
    norms[:, 0, :] = [0.1, 4.0]
    sink, others = M.value_drain(jnp.asarray(norms))
    np.testing.assert_allclose(sink, [0.1, 4.0], rtol=1e-6)
    np.testing.assert_allclose(others, [1.0, 1.0])
    r = np.full((2, 4), 10.0, np.float32)
    r[:, 0] = 100.0
    peak, oth, excess = M.residual_peak(jnp.asarray(r))
    assert (float(peak), float(oth), float(excess)) == (100.0, 10.0, 90.0)


def test_risks_and_nll():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
    nll = M.token_nll(logits, jnp.array([[0, 1]]))
    np.testing.assert_allclose(nll, [[np.log(2), -np.log(0.1)]], rtol=1e-6)
    oracle = jnp.array([[np.log(2), 0.0]])
    trig = jnp.array([[False, True]])
    np.testing.assert_allclose(M.backcopy_risk(nll, oracle, trig), -np.log(0.1), rtol=1e-6)
    np.testing.assert_allclose(M.bigram_risk(nll, oracle, trig), 0.0, atol=1e-6)


def test_classify_dormant_threshold():
    assert M.classify_dormant(jnp.array([0.95, 0.89, 0.5])).tolist() == [True, True, False]


def test_type_mean_averages_each_type_first_then_types_unweighted():
    # type 0 at 3 positions (values 1, 1, 1), type 1 at one position (value 5), type 2 masked out
    vals = jnp.asarray(np.array([[[1.0, 1.0, 1.0, 5.0, 100.0]]], np.float32))  # [b=1, h=1, t=5]
    types = jnp.asarray(np.array([[0, 0, 0, 1, 2]]))
    mask = jnp.asarray(np.array([[True, True, True, True, False]]))
    np.testing.assert_allclose(M.type_mean(vals, types, mask, 3), [3.0])  # (1 + 5) / 2, not 8 / 4
    # ids >= n_types (e.g. BOS) never count
    np.testing.assert_allclose(M.type_mean(vals, types, jnp.ones((1, 5), bool), 2), [3.0])


def test_expected_cross_entropy_and_entropy():
    p = jnp.asarray([[[0.25, 0.75, 0.0]]])
    logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25]]]))
    ce = -(0.25 * np.log(0.5) + 0.75 * np.log(0.25))
    np.testing.assert_allclose(M.expected_cross_entropy(logits, p), [[ce]], rtol=1e-6)
    np.testing.assert_allclose(M.entropy(p), [[-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))]], rtol=1e-6)
    # the model equal to the target: expected CE = entropy (zero excess)
    np.testing.assert_allclose(M.expected_cross_entropy(jnp.log(jnp.asarray([[[0.25, 0.75]]])),
                                                        jnp.asarray([[[0.25, 0.75]]])),
                               M.entropy(jnp.asarray([[[0.25, 0.75]]])), rtol=1e-6)
