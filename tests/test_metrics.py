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


def test_next_token_nll_and_perplexity_by_hand():
    p = np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # [b=1, T=3, V=3]
    tokens = np.array([[2, 1, 0]])
    nll = M.next_token_nll(jnp.log(jnp.asarray(p, jnp.float32)), jnp.asarray(tokens))
    by_hand = [-np.log(p[0, 0, 1]), -np.log(p[0, 1, 0])]  # p(x1 | x0), p(x2 | x0 x1)
    np.testing.assert_allclose(nll, [by_hand], rtol=1e-6)
    assert M.perplexity(np.asarray(nll)) == pytest.approx(np.exp(np.mean(by_hand)), rel=1e-6)
    assert M.perplexity(np.log(4.0)) == pytest.approx(4.0)  # a mean NLL (e.g. a streamed sum / count)
    assert M.perplexity(1000.0) == float("inf")  # overflow is infinite, not an error


def test_attention_received_is_the_mean_over_the_queries_that_see_each_key():
    t = 4
    rng = np.random.default_rng(0)
    w = np.tril(rng.random((2, 3, t, t))) + np.eye(t)
    w /= w.sum(-1, keepdims=True)  # causal rows summing to one
    by_hand = np.stack([w[..., j:, j].mean(-1) for j in range(t)], -1)  # key j: queries i >= j
    np.testing.assert_allclose(M.attention_received(jnp.asarray(w, jnp.float32)), by_hand, rtol=1e-6)
    qmean = jnp.asarray(w.mean(-2), jnp.float32)  # the capture reduction `@qmean`
    np.testing.assert_allclose(M.attention_received(qmean), by_hand, rtol=1e-6)
    np.testing.assert_allclose(M.attention_received(jnp.asarray(w, jnp.float32), causal=False), w.mean(-2), rtol=1e-6)


def test_sink_attention_over_late_queries_is_the_plain_mean():
    # the long-context caller: queries t >= skip, then the mean over heads (= [..., skip:].mean())
    rng = np.random.default_rng(1)
    key0 = rng.random((2, 3, 9)).astype(np.float32)
    skip = 4
    mask = jnp.broadcast_to(jnp.arange(9) >= skip, (2, 9))
    got = float(M.sink_attention(jnp.asarray(key0), mask).mean())
    assert got == pytest.approx(float(key0[..., skip:].mean()), rel=1e-6)


def test_massive_activation_profile_rule_and_threshold():
    x = np.full((2, 3, 4), 0.5, np.float32)
    x[0, 0, 2] = -3000.0  # massive in sample 0 (> 100 and > 1000 x median 0.5)
    x[1, 1, 3] = 400.0  # > 100 but only 800 x the median: not massive
    top, idx, med = M.activation_profile(jnp.asarray(x), k=2)
    np.testing.assert_allclose(top, [[3000.0, 0.5], [400.0, 0.5]])
    assert int(idx[0, 0]) == 0 * 4 + 2 and int(idx[1, 0]) == 1 * 4 + 3  # flat position * d + dim
    np.testing.assert_allclose(med, [0.5, 0.5])
    big = np.asarray(M.is_massive(jnp.abs(jnp.asarray(x)), med[:, None, None]))
    assert big.sum() == 1 and big[0, 0, 2]
    # the layer rule on host float64 values, and the threshold of an entry
    assert M.is_massive(np.array([3000.0, 400.0, 50.0]), np.array([0.5, 0.5, 0.01])).tolist() == [True, False, False]
    assert M.massive_threshold(0.5) == 500.0 and M.massive_threshold(0.01) == 100.0


def test_sink_rate_and_excess_kurtosis():
    import jax

    from toybb.probes.metrics import SINK_EPS, excess_kurtosis, sink_rate

    assert float(sink_rate(jnp.array([0.1, 0.31, 0.9, 0.3]))) == 0.5 and SINK_EPS == 0.3
    np.testing.assert_allclose(float(sink_rate(jnp.asarray([0.1, 0.5]), eps=0.05)), 1.0)
    gauss = jax.random.normal(jax.random.key(0), (4, 64, 4096))
    assert abs(float(excess_kurtosis(gauss).mean())) < 0.05
    assert np.all(np.asarray(excess_kurtosis(jnp.ones((1, 2, 8)))) == 0)  # a constant vector: no outliers
    spiky = jnp.zeros((2, 3, 100)).at[..., 7].set(50.0)  # one massive feature per position
    np.testing.assert_allclose(np.asarray(excess_kurtosis(spiky)), 100 - 2 - 3 + 1 / 99, rtol=1e-3)


def test_ratio_to_others_median():
    x = jnp.asarray([[10.0, 1, 2, 3], [20, 2, 3, 4]])  # sinks 10, 20 (mean 15); others' median 2.5
    np.testing.assert_allclose(float(M.ratio_to_others_median(x)), 6.0)
    per_head = jnp.stack([x, 2 * x], axis=-1)  # [batch, seq, heads]: the same ratio per head
    np.testing.assert_allclose(np.asarray(M.ratio_to_others_median(per_head)), [6.0, 6.0])
    np.testing.assert_allclose(float(M.ratio_to_others_median(x, sink=1)), 1.5 / 3.5)
