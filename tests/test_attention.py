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


# ---- the fast path (jax.nn.dot_product_attention) against the exact one ---------------------------
@pytest.mark.parametrize("hk, window, scale", [(4, None, None), (2, None, 0.3), (1, 3, None), (2, 4, None)])
def test_fast_path_matches_exact(hk, window, scale):
    """Forced on the CPU (where it is off by default): same outputs to float32 round-off for MHA, GQA,
    MQA, sliding windows and a custom logit scale, at default and at explicit contiguous positions."""
    q, k, v = _qkv(hk=hk)
    exact = attention(q, k, v, window=window, scale=scale)
    fast = attention(q, k, v, window=window, scale=scale, weights=False, fast=True)
    assert fast.logits is None and fast.pattern is None  # it really took the other path
    np.testing.assert_allclose(fast.out, exact.out, atol=2e-6, rtol=1e-5)
    pos = jnp.arange(q.shape[1])
    fast2 = attention(q, k, v, window=window, scale=scale, q_pos=pos, k_pos=pos, contiguous=True, weights=False,
                      fast=True)
    np.testing.assert_allclose(fast2.out, exact.out, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("t, hk, dh, window, block, cols", [(10, 2, 8, None, 4, (0, 30)), (9, 1, 8, 5, 3, (1,)),
                                                          (21, 2, 16, 9, 2, (0, 5))])
def test_plain_blocked_matches_exact(t, hk, dh, window, block, cols):
    """Blocked contiguous softmax attention without weights (query blocks, key chunks, running softmax):
    the same output, key columns and gradient as the dense exact path, with a partial last block, several
    key chunks inside and outside a window, and a logit scale folded into q (head_dim 16: 1/4)."""
    q, k, v = _qkv(t=t, hk=hk, dh=dh)

    @jax.jit
    def both(q):
        exact = attention(q, k, v, window=window)
        got = attention(q, k, v, window=window, block=block, contiguous=True, weights=False, key_cols=cols)
        def f(q, k, v, **kw):  # through the output and the key columns (the row sums' gradient)
            r = attention(q, k, v, window=window, key_cols=cols, **kw)
            return jnp.sum(jnp.sin(r.out)) + jnp.sum(jnp.cos(3 * r.key_cols))

        return exact, got, [jax.grad(f, argnums=(0, 1, 2))(q, k, v, **kw)
                            for kw in ({}, dict(block=block, contiguous=True, weights=False))]

    exact, got, (g_exact, g_got) = both(q)
    assert got.pattern is None
    np.testing.assert_allclose(got.out, exact.out, atol=2e-6, rtol=1e-5)
    want = np.stack([exact.pattern[..., c] if c < t else np.zeros(exact.pattern.shape[:-1]) for c in cols], -1)
    np.testing.assert_allclose(got.key_cols, want, atol=2e-6, rtol=1e-5)
    for a, b in zip(g_got, g_exact):  # d/dq, d/dk, d/dv
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_long_plain_inputs_block_by_default(monkeypatch):
    """On the CPU, plain attention over at least AUTO_BLOCK_FROM query rows takes the flash-style blocks
    without a `block` (no pattern is built; same output as the dense path); shorter ones, weights, or
    explicit positions keep the dense path."""
    import toybb.models.attention as core

    monkeypatch.setattr(core, "AUTO_BLOCK_FROM", 8)
    monkeypatch.setattr(core, "auto_block", lambda rows: 4)
    q, k, v = _qkv(t=10)
    exact = attention(q, k, v)
    got = attention(q, k, v, weights=False, contiguous=True)
    assert got.pattern is None and exact.pattern is not None
    np.testing.assert_allclose(got.out, exact.out, atol=2e-6, rtol=1e-5)
    assert attention(q[:, :6], k[:, :6], v[:, :6], weights=False, contiguous=True).pattern is not None
    assert attention(q, k, v, contiguous=True).pattern is not None


def test_fast_path_only_where_exact():
    q, k, v = _qkv()
    for bad in (dict(kind="relu"), dict(softcap=5.0), dict(keep_first=1, window=3), dict(alibi=jnp.ones(4)),
                dict(q_pos=jnp.arange(6), k_pos=jnp.arange(6)), dict(key_cols=(0,))):
        with pytest.raises(ValueError, match="fast=True but"):
            attention(q, k, v, weights=False, fast=True, **bad)
        # automatic: the exact path, with its weights
        assert attention(q, k, v, weights=False, **bad).out.shape == q.shape
    with pytest.raises(ValueError, match="weights=False"):
        attention(q, k, v, fast=True)


def test_backend_decision(monkeypatch):
    """One function per decision; forcing the backend flips both (CPU heuristics off, fast attention on)."""
    from toybb import device

    q, k, v = _qkv()
    assert device.cpu_heuristics() and not device.fast_attention()
    assert attention(q, k, v, weights=False).pattern is not None  # CPU default: exact path
    monkeypatch.setattr(device, "backend", lambda: "tpu")
    assert not device.cpu_heuristics() and device.fast_attention()
    assert device.fast_attention_impl(jnp.bfloat16) == "xla"  # cuDNN only on NVIDIA GPUs
    got = attention(q, k, v, weights=False)
    assert got.pattern is None
    np.testing.assert_allclose(got.out, attention(q, k, v).out, atol=2e-6, rtol=1e-5)


def test_toy_model_fast_attention_matches_exact(monkeypatch):
    """The toy model without capture takes the fast path when the backend decision says so; same logits;
    with a captured pattern it keeps the exact path."""
    from flax import nnx

    from toybb import device
    from toybb.config import ModelConfig
    from toybb.models.capture import Capture, run_with_capture
    from toybb.models.transformer import Transformer

    model = Transformer(ModelConfig(d_model=16, max_len=8, n_layers=2, window=5), rngs=nnx.Rngs(0))
    toks = jax.random.randint(jax.random.key(1), (2, 8), 0, 60)
    exact = model(toks)
    monkeypatch.setattr(device, "fast_attention", lambda: True)
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    np.testing.assert_allclose(model(toks), exact, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2  # both layers
    calls.clear()
    _, cap = run_with_capture(model, toks, capture=Capture(("blocks.0.attn.pattern",)))
    assert len(calls) == 1 and cap["blocks.0.attn.pattern"].shape == (2, 1, 8, 8)  # layer 0 captured: exact


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs an NVIDIA GPU")
def test_cudnn_bf16_matches_exact():
    """On a GPU under bfloat16 precision the fast path runs cuDNN on bfloat16 copies: within bf16 round-off."""
    q, k, v = _qkv(b=2, t=128, h=4, hk=2, dh=64)
    exact = attention(q, k, v, window=32)
    with jax.default_matmul_precision("bfloat16"):
        fast = jax.jit(lambda a, b, c: attention(a, b, c, window=32, weights=False, fast=True).out)(q, k, v)
    np.testing.assert_allclose(fast, exact.out, atol=3e-2, rtol=3e-2)
