"""The capture API on pretrained-model definitions: every site name, reductions computed inside the
compiled forward, ablation."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer
from toybb.models.forward import forward
from toybb.models.capture import Capture

CFG = ModelConfig(arch="llama", vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=48)


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def toks():
    return np.random.RandomState(1).randint(0, 40, (2, 10))


def test_all_sites_with_shapes(model, toks):
    logits, cap = forward(model, toks, capture=Capture(("*",)))
    b, t, h, hk, dh, d = 2, 10, 4, 2, 8, 32
    assert logits.shape == (b, t, 40)
    expect = {"embed": (b, t, d), "final_norm": (b, t, d), "logits": (b, t, 40)}
    for l in range(2):
        p = f"blocks.{l}"
        expect.update({f"{p}.resid_pre": (b, t, d), f"{p}.resid_mid": (b, t, d), f"{p}.resid_post": (b, t, d),
                       f"{p}.attn.q": (b, t, h, dh), f"{p}.attn.k": (b, t, hk, dh), f"{p}.attn.v": (b, t, hk, dh),
                       f"{p}.attn.q_pre": (b, t, h, dh), f"{p}.attn.k_pre": (b, t, hk, dh),
                       f"{p}.attn.logits": (b, h, t, t), f"{p}.attn.pattern": (b, h, t, t),
                       f"{p}.attn.z": (b, t, h, dh), f"{p}.attn.v_out": (b, t, h, d),
                       f"{p}.attn.out": (b, t, d), f"{p}.mlp.out": (b, t, d), f"{p}.mlp.hidden": (b, t, 48)})
    assert {k: tuple(v.shape) for k, v in cap.items()} == expect
    np.testing.assert_allclose(np.asarray(cap["blocks.1.resid_post"]),
                               np.asarray(cap["blocks.1.resid_mid"] + cap["blocks.1.mlp.out"]), atol=1e-5)
    # v_out summed over heads, weighted by the pattern, is the attention output
    np.testing.assert_allclose(np.asarray(cap["blocks.0.attn.pattern"].sum(-1)), 1.0, atol=1e-5)


def test_reductions_only_return_reduced_arrays(model, toks):
    _, full = forward(model, toks, capture=Capture(("blocks.*.attn.pattern", "blocks.*.resid_post")))
    _, red = forward(model, toks, capture=Capture(("blocks.*.attn.pattern@key0", "blocks.*.resid_post@norm",
                                                   "blocks.*.resid_post@absmax")))
    assert set(red) == {f"blocks.{l}.{s}" for l in range(2) for s in (
        "attn.pattern@key0", "resid_post@norm", "resid_post@absmax", "resid_post@absmax_idx")}
    np.testing.assert_allclose(np.asarray(red["blocks.1.attn.pattern@key0"]),
                               np.asarray(full["blocks.1.attn.pattern"][..., 0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(red["blocks.0.resid_post@norm"]),
                               np.linalg.norm(np.asarray(full["blocks.0.resid_post"]), axis=-1), rtol=1e-5)
    assert red["blocks.0.resid_post@absmax_idx"].shape == (2, 10)


def test_long_sequence_key0_capture_is_small(model):
    """A 4k-token probe returns [batch, heads, seq] per layer, not [batch, heads, seq, seq]."""
    toks = np.zeros((1, 4096), np.int32)
    _, cap = forward(model, toks, capture=Capture(("blocks.*.attn.pattern@key0",)))
    assert all(v.shape == (1, 4, 4096) for v in cap.values())


def test_ablation_changes_output(model, toks):
    from toybb.models.capture import run_with_capture

    base, _ = run_with_capture(model, toks, capture=Capture())
    abl, _ = run_with_capture(model, toks, capture=Capture(), ablate=frozenset({"blocks.0.mlp"}))
    assert np.abs(np.asarray(base) - np.asarray(abl)).max() > 1e-4
