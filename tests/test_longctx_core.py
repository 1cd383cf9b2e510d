"""Long-context options of the one attention core and the positional module (SPEC §6)."""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from toybb.errors import ConfigError
from toybb.models.attention import attention
from toybb.models.positional import (RopeScaling, alibi_slopes, apply_rope, inv_frequencies, rope_angles,
                                     selfextend_far_positions, selfextend_max_length, selfextend_relative)

B, T, H, HK, D = 2, 37, 4, 2, 8


@pytest.fixture(scope="module")
def qkv():
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(ks[0], (B, T, H, D))
    k = jax.random.normal(ks[1], (B, T, HK, D))
    v = jax.random.normal(ks[2], (B, T, HK, D))
    return q, k, v


def _rot(x, pos, inv):
    c, s = rope_angles(pos, inv)
    return apply_rope(x, c, s)


def test_selfextend_relative_hand_cases():
    # w = 4, G = 2: far distances floor(i/2) - floor(j/2) + (4 - 2)
    rel = selfextend_relative(np.arange(10), np.arange(10), 4, 2)
    assert rel[3, 0] == 3 and rel[9, 6] == 3  # inside the neighbour window: i - j
    assert rel[4, 0] == 2 - 0 + 2 == 4
    assert rel[9, 0] == 4 - 0 + 2 == 6
    assert rel[9, 5] == 4 - 2 + 2 == 4
    assert rel[7, 2] == 3 - 1 + 2 == 4
    # w = 5, G = 3 (w not a multiple of G): w - w//G = 4
    rel = selfextend_relative(np.arange(20), np.arange(20), 5, 3)
    assert rel[19, 0] == 6 - 0 + 4 == 10 and rel[5, 0] == 1 + 4 == 5 and rel[8, 4] == 4
    qf, kf = selfextend_far_positions(jnp.arange(20), jnp.arange(20), 5, 3)
    far = np.asarray(qf)[:, None] - np.asarray(kf)[None]
    np.testing.assert_array_equal(np.where(rel < 5, 0, rel), np.where(np.subtract.outer(np.arange(20), np.arange(20)) < 5, 0, far))


def test_selfextend_equals_plain_below_window(qkv):
    q, k, v = qkv
    inv = inv_frequencies(D, 10000.0)
    pos = jnp.arange(T)
    qr, kr = _rot(q, pos, inv), _rot(k, pos, inv)
    qf, kf = selfextend_far_positions(pos, pos, T, 4)
    plain = attention(qr, kr, v)
    se = attention(qr, kr, v, far=(_rot(q, qf, inv), _rot(k, kf, inv)), near=T)
    np.testing.assert_allclose(se.out, plain.out, atol=1e-6)
    # and when it does group, the logits are exactly RoPE at the merged relative positions
    w, g = 8, 3
    qf, kf = selfextend_far_positions(pos, pos, w, g)
    se = attention(qr, kr, v, far=(_rot(q, qf, inv), _rot(k, kf, inv)), near=w)
    rel = selfextend_relative(np.arange(T), np.arange(T), w, g)
    i, j = 30, 2
    want = jnp.einsum("bhd,bhd->bh", _rot(q[:, i : i + 1], jnp.array([rel[i, j]]), inv)[:, 0],
                      jnp.repeat(k[:, j], H // HK, axis=1)) * D**-0.5
    np.testing.assert_allclose(se.logits[:, :, i, j], want, atol=1e-4)


@pytest.mark.parametrize("kind", ["softmax", "relu"])
@pytest.mark.parametrize("window", [None, 7])
def test_blocked_equals_dense(qkv, kind, window):
    q, k, v = qkv
    dense = attention(q, k, v, kind=kind, window=window)
    blocked = attention(q, k, v, kind=kind, window=window, block=8)  # 37 rows: 5 blocks, last padded
    assert blocked.logits is None
    np.testing.assert_allclose(blocked.out, dense.out, atol=1e-5)


def test_blocked_with_far_sinks_and_alibi(qkv):
    q, k, v = qkv
    slopes = alibi_slopes(H)
    kw = dict(far=(q * 0.5, k * 2.0), near=5, window=9, keep_first=3, alibi=slopes)
    np.testing.assert_allclose(attention(q, k, v, block=6, **kw).out, attention(q, k, v, **kw).out, atol=1e-5)


def test_keep_first_sinks_stay_visible(qkv):
    q, k, v = qkv
    p = attention(q, k, v, window=5, keep_first=2).pattern
    assert float(p[0, 0, 30, 1]) > 0 and float(p[0, 0, 30, 2]) == 0 and float(p[0, 0, 30, 26]) > 0
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, atol=1e-5)
    # window larger than the sequence: the same as full attention
    np.testing.assert_allclose(attention(q, k, v, window=100, keep_first=4).out, attention(q, k, v).out, atol=1e-6)


def test_alibi_slopes():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    np.testing.assert_allclose(alibi_slopes(4), [2.0 ** -(2 * (i + 1)) for i in range(4)])
    s6 = alibi_slopes(6)  # 4 slopes of n=4, then every other slope of n=8: 2^-1, 2^-3
    np.testing.assert_allclose(s6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    assert len(alibi_slopes(12)) == 12 and len(set(alibi_slopes(12))) == 12


def test_alibi_bias_in_core(qkv):
    q, k, v = qkv
    s = alibi_slopes(H)
    res = attention(q, k, v, alibi=s)
    plain = attention(q, k, v)
    np.testing.assert_allclose(res.logits[0, 1, 20, 5], plain.logits[0, 1, 20, 5] - s[1] * 15, atol=1e-5)


def test_pi_and_ntk():
    base = inv_frequencies(64, 1e4)
    np.testing.assert_allclose(inv_frequencies(64, 1e4, RopeScaling("linear", 4.0)), base / 4)
    ntk = inv_frequencies(64, 1e4, RopeScaling("ntk", 4.0))
    assert ntk[0] == base[0]  # the highest frequency is kept
    np.testing.assert_allclose(ntk[-1], base[-1] / 4, rtol=1e-12)  # the lowest is divided by the factor
    assert np.all(ntk <= base + 1e-15)
    # PI: position p under factor s rotates like position p / s
    c1, s1 = rope_angles(jnp.array([8]), inv_frequencies(64, 1e4, RopeScaling("linear", 4.0)))
    c2, s2 = rope_angles(jnp.array([2]), base)
    np.testing.assert_allclose(c1, c2, atol=1e-6)


def test_selfextend_errors():
    with pytest.raises(ConfigError):
        selfextend_relative(np.arange(4), np.arange(4), 2, 0)
    with pytest.raises(ConfigError):
        selfextend_max_length(100, 100, 2)
    assert selfextend_max_length(8192, 1024, 2) == 15360


@pytest.mark.parametrize("kind", ["softmax", "relu"])
@pytest.mark.parametrize("kw", [dict(), dict(window=7), dict(window=9, keep_first=3, far="x", near=5),
                                dict(window=3, keep_first=6)])
def test_contiguous_blocked_equals_dense(qkv, kind, kw):
    q, k, v = qkv
    kw = dict(kw)
    if kw.get("far"):
        kw["far"] = (q * 0.5, k * 2.0)
    dense = attention(q, k, v, kind=kind, **kw)
    blocked = attention(q, k, v, kind=kind, block=8, contiguous=True, **kw)
    np.testing.assert_allclose(blocked.out, dense.out, atol=1e-5)
