"""The one forward of `toybb.models.forward`: one cache of compiled functions, the loss under edits with
its two reductions, the one perplexity rule, for the toy transformer and a pretrained model alike."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer
from toybb.models import forward as F
from toybb.models.capture import Capture
from toybb.models.sites import Edit

TOKS = jnp.asarray(np.random.RandomState(0).randint(0, 40, (3, 9)), jnp.int32)
VALID = np.array([True, False, True])


@pytest.fixture(scope="module", params=["toy", "llm"])
def model(request):
    if request.param == "toy":
        cfg = ModelConfig(vocab_size=41, d_model=16, n_heads=2, n_layers=2, max_len=16)
        return Transformer(cfg, rngs=nnx.Rngs(0))
    return Transformer(ModelConfig(arch="llama", vocab_size=41, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8,
                         mlp_dim=24), rngs=nnx.Rngs(1))


def test_one_cache_reuses_the_compiled_function(model):
    graphdef = nnx.graphdef(model)
    cap = Capture("blocks.*.resid_post@norm")
    F.loss(model, TOKS, capture=cap)
    f = F.compiled(F._loss, graphdef, cap, False, "sum")
    hits = F.compiled.cache_info().hits
    F.loss(model, TOKS, capture=("blocks.*.resid_post@norm",), edits=[Edit("blocks.0.mlp.out", "zero")])
    assert F.compiled.cache_info().hits == hits + 1  # same structure: the same compiled function
    assert F.compiled(F._loss, graphdef, cap, False, "sum") is f
    # another kind of call or another capture request is another entry of the same cache
    assert F.compiled(F._forward, graphdef, cap) is not f
    assert F.compiled(F._loss, graphdef, Capture(), False, "sum") is not f


def test_loss_sum_and_token_reductions_agree(model):
    logits, _ = F.forward(model, TOKS)
    ref = np.asarray(F.next_token_nll(logits, TOKS))  # [3, 8]
    tok = F.loss(model, TOKS, valid=VALID, reduction="token")
    np.testing.assert_allclose(np.asarray(tok.nll), ref, rtol=1e-5, atol=1e-6)
    s = F.loss(model, TOKS, valid=VALID)
    assert float(s.count) == float(tok.count) == 2 * 8
    np.testing.assert_allclose(float(s.nll), ref[VALID].sum(), rtol=1e-5)
    # explicit targets: the model reads x[:, :-1] and predicts x[:, 1:], the same positions
    split = F.loss(model, TOKS[:, :-1], TOKS[:, 1:], reduction="token")
    np.testing.assert_allclose(np.asarray(split.nll), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        F.loss(model, TOKS, reduction="mean")


def test_edits_change_the_loss_as_expected(model):
    base = F.loss(model, TOKS)
    # scaling by one, or patching a run with its own activations, changes nothing
    same = F.loss(model, TOKS, edits=[Edit("blocks.1.attn.z", "scale", value=1.0)])
    patched = F.loss(model, TOKS, edits=[Edit("blocks.1.resid_post", "patch", source=TOKS)])
    np.testing.assert_allclose(float(same.nll), float(base.nll), rtol=1e-6)
    np.testing.assert_allclose(float(patched.nll), float(base.nll), rtol=1e-5)
    # zeroing an MLP equals the model's own ablation of it
    zero = F.loss(model, TOKS, edits=[Edit("blocks.0.mlp.out", "zero")], reduction="token")
    ablated = F.next_token_nll(model(TOKS, ablate=frozenset({"blocks.0.mlp"})), TOKS)
    np.testing.assert_allclose(np.asarray(zero.nll), np.asarray(ablated), rtol=1e-5, atol=1e-6)
    assert abs(float(zero.nll.sum()) - float(base.nll)) > 1e-3
    # captures come with the loss, edited
    res = F.loss(model, TOKS, edits=[Edit("blocks.0.resid_post", "set", value=0.0)],
                 capture="blocks.0.resid_post@norm")
    np.testing.assert_array_equal(np.asarray(res.cache["blocks.0.resid_post@norm"]), 0.0)


def test_forward_and_captures_agree(model):
    logits, cap = F.forward(model, TOKS[0], capture="blocks.*.resid_post@norm")
    assert logits.shape[:2] == (1, TOKS.shape[1])
    only = F.captures(model, TOKS[:1], "blocks.*.resid_post@norm")
    assert set(only) == set(cap)
    for k in cap:
        np.testing.assert_allclose(np.asarray(only[k]), np.asarray(cap[k]), rtol=1e-6)


def test_perplexity_is_inf_where_exp_overflows():
    assert F.perplexity([1.0, 3.0]) == math.exp(2.0)
    assert F.perplexity(np.float32(2.5)) == math.exp(2.5)
    assert F.perplexity(705.0) == math.exp(705.0)  # finite: no cap below the float64 limit
    assert F.perplexity(710.0) == math.inf
    assert F.perplexity([1e6, 1e6]) == math.inf
    assert math.isnan(F.perplexity(float("nan")))


def test_one_perplexity_everywhere():
    from toybb.probes import circuit, metrics

    assert metrics.perplexity is F.perplexity and metrics.token_nll is F.token_nll
    row = circuit.Row("none", np.zeros(1), np.zeros(1), np.zeros(1), 800.0)
    assert row.ppl == math.inf  # no OverflowError
