"""Long-context options on a small random pretrained-style model (LLM class) and the CLI errors."""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
import pytest
from flax import nnx

from toybb.errors import ConfigError
from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer
from toybb.models.forward import forward
from toybb.longctx.options import rope_scaling, with_options

T = 40


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(arch="llama", vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    mlp_dim=64, max_positions=64)
    return Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 50, (1, T))


@pytest.fixture(scope="module")
def plain(model, tokens):
    return np.asarray(forward(model, tokens)[0])


def test_blocked_selfextend_sink_equal_plain_when_inactive(model, tokens, plain):
    for opts in (dict(attn_block=16), dict(selfextend=(T, 4)), dict(sink_cache=(4, T)), dict(sink_cache=(0, T + 5))):
        got = np.asarray(forward(with_options(model, **opts), tokens)[0])
        np.testing.assert_allclose(got, plain, atol=2e-4, err_msg=str(opts))


def test_active_options_change_logits_and_blocking_is_exact(model, tokens, plain):
    se = with_options(model, selfextend=(8, 4))
    a = np.asarray(forward(se, tokens)[0])
    assert np.abs(a[0, 8:] - plain[0, 8:]).max() > 1e-3 and np.allclose(a[0, :8], plain[0, :8], atol=2e-4)
    b = np.asarray(forward(with_options(model, selfextend=(8, 4), attn_block=16), tokens)[0])
    np.testing.assert_allclose(b, a, atol=2e-4)
    s = np.asarray(forward(with_options(model, sink_cache=(2, 10), attn_block=16), tokens)[0])
    s2 = np.asarray(forward(with_options(model, sink_cache=(2, 10)), tokens)[0])
    np.testing.assert_allclose(s, s2, atol=2e-4)
    assert np.abs(s[0, 12:] - plain[0, 12:]).max() > 1e-3


def test_config_errors(model):
    for bad in (dict(selfextend=(8, 0)), dict(selfextend=(64, 2)), dict(attn_block=0), dict(sink_cache=(-1, 4)),
                dict(sink_cache=(1, 0))):
        with pytest.raises(ConfigError):
            with_options(model, **bad)
    with pytest.raises(ConfigError):
        rope_scaling(pi=0.5)
    with pytest.raises(ConfigError):
        with_options(model, bogus=1)


def test_value_ablation_matches_manual_computation(model, tokens, plain):
    """Zeroing the values of the first K tokens in layer 1 only: layer 0 is untouched, and layer 1's
    attention output z equals the unedited pattern times the unedited values with rows < K set to 0."""
    from toybb.longctx.llm import sequence_nll, value_ablation
    from toybb.models.capture import Capture, run_with_capture

    K, n_layers = 3, model.cfg.n_layers
    vs = value_ablation(n_layers, T, slice(0, K), from_layer=1)
    assert vs[0].all() and not vs[1, :K].any() and vs[1, K:].all()
    cap = Capture(("blocks.*.resid_post", "blocks.1.attn.pattern", "blocks.1.attn.v", "blocks.1.attn.z"))
    tk = jnp.asarray(tokens, jnp.int32)
    _, ref = run_with_capture(model, tk, capture=cap)
    from toybb.models.sites import value_scaling

    logits, got = run_with_capture(model, tk, capture=cap, edits=value_scaling(model.sites(), vs, tk.shape))
    np.testing.assert_allclose(got["blocks.0.resid_post"], ref["blocks.0.resid_post"], atol=1e-6)
    pat, v = np.asarray(ref["blocks.1.attn.pattern"]), np.asarray(ref["blocks.1.attn.v"]).copy()
    v[:, :K] = 0.0
    g = model.cfg.n_heads // model.cfg.n_kv_heads
    z = np.einsum("bhqk,bkhd->bqhd", pat, np.repeat(v, g, axis=2))  # [b, q, heads, hd]
    np.testing.assert_allclose(np.asarray(got["blocks.1.attn.z"]), z, atol=1e-5)
    assert np.abs(z[:, :K]).max() == 0.0  # queries < K only see removed values
    assert np.abs(np.asarray(logits)[0] - plain[0]).max() > 1e-3  # the edit changes the output
    # the same edit through the jitted NLL path; all-ones is the identity
    nll_id = sequence_nll(model, tokens, value_scale=np.ones((n_layers, T), np.float32))
    np.testing.assert_allclose(nll_id, sequence_nll(model, tokens), atol=1e-5)
    assert np.abs(sequence_nll(model, tokens, value_scale=vs) - nll_id).max() > 1e-4
    with pytest.raises(ValueError, match="value scale"):
        sequence_nll(model, tokens, value_scale=np.ones((n_layers, T + 1), np.float32))


class _DigitTokenizer:
    """Character-level tokenizer that, like SmolLM2's, keeps a space before digits as its own token."""

    def encode(self, s, add_bos=False):
        return [ord(c) for c in s]


def test_passkey_answer_is_the_key_only():
    from toybb.longctx.llm import passkey_ids

    for depth in (0.0, 0.5, 1.0):
        ids, ans = passkey_ids(_DigitTokenizer(), 2000, depth, "48213", [1])
        assert "".join(map(chr, ans)) == "48213"  # not " 48213": the separating space is context
        text = "".join(map(chr, ids[1:]))
        assert text.endswith("The pass key is 48213") and ids[-5:] == ans and ids[0] == 1
        needle = text.index("The pass key is 48213. Remember")
        assert needle < text.index("What is the pass key?")  # key before the question at every depth
        assert abs(len(ids) - 2000) < 100


@pytest.mark.parametrize("opts", [pytest.param({}, marks=pytest.mark.slow),
                                  pytest.param(dict(sliding_window=12), marks=pytest.mark.slow), dict(sink_cache=(2, 10))],
                         ids=["full", "window", "sink_cache"])
def test_key_column_capture_under_blocked_attention(model, tokens, opts):
    """pattern@key0/@key1 come out of blocked attention (contiguous, windowed, explicit positions) equal to
    the columns of the full pattern, and logits are unchanged (the sink cache, a window with kept sink
    tokens, in the default run; plain and windowed attention with -m slow)."""
    from toybb.models.capture import Capture

    full_cap = Capture(("blocks.*.attn.pattern",))
    red_cap = Capture(("blocks.*.attn.pattern@key0", "blocks.*.attn.pattern@key1", "blocks.*.resid_post@norm"))
    ref_logits, ref = forward(with_options(model, **opts), tokens, capture=full_cap)
    for extra in (dict(), dict(attn_block=16)):
        for pos in (None, np.arange(T)):
            m = with_options(model, **opts, **extra)
            logits, cap = forward(m, tokens, capture=red_cap, positions=pos)
            np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=2e-4)
            for l in range(2):
                pat = np.asarray(ref[f"blocks.{l}.attn.pattern"])
                for c in (0, 1):
                    np.testing.assert_allclose(np.asarray(cap[f"blocks.{l}.attn.pattern@key{c}"]),
                                               pat[..., c], atol=1e-5, err_msg=f"{opts} {extra} {pos} {l} {c}")
