"""Toy-model counterparts of the LLM sinks: explicit attention bias (k', v') and a learned sink token,
their config validation and `toybb train` flags."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.config import ModelConfig
from toybb.errors import ConfigError
from toybb.models.capture import Capture, run_with_capture
from toybb.models.transformer import Transformer

TOKS = jnp.asarray(np.random.RandomState(0).randint(0, 67, (2, 9)))


def _model(**kw):
    return Transformer(ModelConfig(d_model=16, n_heads=2, max_len=16, **kw), rngs=nnx.Rngs(0))


def test_attention_bias_is_an_extra_always_visible_key():
    m = _model(attn_bias=True)
    m.blocks[0].attn.k_bias.set_value(jnp.zeros((2, 8)))  # logit 0 on k' for every query
    m.blocks[0].attn.v_bias.set_value(jnp.zeros((2, 8)))
    plain = _model()  # same seed: identical weights except the two bias parameters
    sites = ("blocks.0.attn.pattern", "blocks.0.attn.logits")
    _, c = run_with_capture(m, TOKS, capture=Capture(sites + ("blocks.0.attn.pattern_bias",)))
    _, p = run_with_capture(plain, TOKS, capture=Capture(sites))
    pb, pat = np.asarray(c["blocks.0.attn.pattern_bias"]), np.asarray(c["blocks.0.attn.pattern"])
    assert pat.shape == (2, 2, 9, 9) and pb.shape == (2, 2, 9)
    np.testing.assert_allclose(pat.sum(-1) + pb, 1.0, atol=1e-5)
    # softmax over [0, logits]: the real keys keep their relative weights, scaled by 1 - p(k')
    np.testing.assert_allclose(pat, np.asarray(p["blocks.0.attn.pattern"]) * (1 - pb)[..., None], atol=1e-5)
    expect = 1 / (1 + np.exp(np.asarray(p["blocks.0.attn.logits"])).sum(-1, where=np.tril(np.ones((9, 9), bool))))
    np.testing.assert_allclose(pb, expect, rtol=1e-4)


def test_sink_token_is_an_extra_first_position():
    m = _model(sink_token=True, n_layers=2)
    sites = ("blocks.1.attn.pattern", "blocks.1.attn.pattern_slot", "blocks.0.resid_post", "blocks.0.resid_post_slot")
    logits, c = run_with_capture(m, TOKS, capture=Capture(sites))
    assert logits.shape == (2, 9, 67)
    # the sites cover the real positions; the slot has sites of its own
    assert c["blocks.0.resid_post"].shape == (2, 9, 16) and c["blocks.0.resid_post_slot"].shape == (2, 16)
    pat, slot = np.asarray(c["blocks.1.attn.pattern"]), np.asarray(c["blocks.1.attn.pattern_slot"])
    assert pat.shape == (2, 2, 9, 9) and slot.shape == (2, 2, 9) and (slot > 0).all()
    np.testing.assert_allclose(pat.sum(-1) + slot, 1.0, atol=1e-5)  # the slot is one more key of every row
    m2 = nnx.clone(m)
    m2.sink_embed.set_value(m.sink_embed.get_value() + 1.0)
    assert not np.allclose(np.asarray(m2(TOKS)), np.asarray(logits))  # the slot is read by every query


def test_config_validation_and_cli_flags():
    with pytest.raises(ConfigError, match="attn_bias"):
        ModelConfig(arch="simple", attn_bias=True)
    with pytest.raises(ConfigError, match="sink_token must be true or false"):
        ModelConfig(sink_token="yes")
    from toybb.cli import make_parser
    from toybb.commands.train import build_config

    args = make_parser().parse_args(["train", "--layers", "3", "--attn-bias", "--sink-token"])
    cfg = build_config(args)
    assert cfg.model.attn_bias and cfg.model.sink_token and cfg.model.n_layers == 3
    assert not build_config(make_parser().parse_args(["train"])).model.attn_bias


def test_bb_metrics_of_a_sink_token_model_measure_the_bos():
    """With a learned sink token the dynamics metrics slice its slot away: Attn<s> is the attention on
    the BOS (key 1 of the captured pattern), the residual and value norms are those of the input."""
    import jax

    from toybb.probes import bb
    from toybb.probes import metrics as M
    from toybb.task import BBTask

    m = _model(sink_token=True, n_layers=2)
    task = BBTask(n_triggers=3)
    tokens = task.sample(jax.random.key(0), 2, 9)
    out = bb.dynamics_metrics(m, tokens, task)
    assert all(np.isfinite(np.asarray(v)).all() for v in out.values())
    inputs = tokens[:, :-1]
    sites = ("blocks.1.attn.pattern", "blocks.1.attn.pattern_slot", "blocks.1.resid_post@norm")
    _, c = run_with_capture(m, inputs, capture=Capture(sites))
    pat = c["blocks.1.attn.pattern"][:, :, :, 0]  # input queries on the BOS key (the sites skip the slot)
    expect = M.sink_attention(pat, ~task.trigger_mask(inputs)).mean()
    np.testing.assert_allclose(out["sink_attention_l1"], expect, rtol=1e-5)
    slot = M.sink_attention(c["blocks.1.attn.pattern_slot"], ~task.trigger_mask(inputs)).mean()
    np.testing.assert_allclose(out["slot_attention_l1"], slot, rtol=1e-5)
    np.testing.assert_allclose(out["residual_peak_l1"], c["blocks.1.resid_post@norm"][:, 0].mean(), rtol=1e-5)


def test_attention_bias_refuses_position_options_that_would_misplace_it():
    for kw in ({"window": 4}, {"position": "alibi"}, {"position": "rope", "selfextend_window": 4}):
        with pytest.raises(ConfigError, match="attn_bias"):
            ModelConfig(attn_bias=True, **kw)
    ModelConfig(attn_bias=True, position="rope")  # rotation of the real keys leaves k' position-free
