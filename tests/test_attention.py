"""The shared attention core: masks, GQA layout, softmax and ReLU formulas (SPEC §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toybb.models.attention import attention, causal_mask


def _qkv(b=2, t=6, h=4, hk=2, dh=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, t, h, dh)), jax.random.normal(ks[1], (b, t, hk, dh)),
            jax.random.normal(ks[2], (b, t, hk, dh)))


def _reference(q, k, v, kind, window=None):
    """Plain numpy attention, one head at a time."""
    q, k, v = map(np.asarray, (q, k, v))
    b, t, h, dh = q.shape
    g = h // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            kk, vv = k[bi, :, hi // g], v[bi, :, hi // g]
            s = q[bi, :, hi] @ kk.T / np.sqrt(dh)
            for i in range(t):
                vis = [j for j in range(t) if j <= i and (window is None or i - j < window)]
                if kind == "softmax":
                    e = np.exp(s[i, vis] - s[i, vis].max())
                    a = e / e.sum()
                else:
                    a = np.maximum(s[i, vis], 0) / (i + 1)
                out[bi, i, hi] = a @ vv[vis]
    return out


@pytest.mark.parametrize("kind", ["softmax", "relu"])
@pytest.mark.parametrize("hk", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_attention_matches_reference(kind, hk):
    q, k, v = _qkv(hk=hk)
    res = attention(q, k, v, kind=kind)
    np.testing.assert_allclose(res.out, _reference(q, k, v, kind), atol=1e-5)


def test_sliding_window_matches_reference():
    q, k, v = _qkv()
    res = attention(q, k, v, window=3)
    np.testing.assert_allclose(res.out, _reference(q, k, v, "softmax", window=3), atol=1e-5)
    assert float(res.pattern[0, 0, 5, :3].sum()) == 0.0


def test_softmax_rows_sum_to_one_and_are_causal():
    q, k, v = _qkv()
    p = attention(q, k, v).pattern
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    assert float(jnp.triu(p[0, 0], 1).sum()) == 0.0


def test_relu_attention_formula_exact():
    """A_ij = ReLU(q_i.k_j / sqrt(d_h)) / (i+1) for j <= i, no renormalisation."""
    q, k, v = _qkv(hk=4)
    p = np.asarray(attention(q, k, v, kind="relu").pattern)
    s = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.asarray(k)) / np.sqrt(8)
    i = np.arange(6)
    expect = np.where(i[None, :] <= i[:, None], np.maximum(s, 0), 0) / (i[:, None] + 1)
    np.testing.assert_allclose(p, expect, atol=1e-6)


def test_causal_mask_positions():
    m = causal_mask(jnp.array([3, 4]), jnp.arange(5), window=2)
    assert m.tolist() == [[False, False, True, True, False], [False, False, False, True, True]]


def test_bad_layout_and_kind():
    q, k, v = _qkv(h=4, hk=3)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k[:, :, :3], v[:, :, :3])
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="kind"):
        attention(q, k, v, kind="linear")
