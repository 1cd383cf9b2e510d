"""RoPE: pairings, partial rotary, relative-position property, the GGUF row permutation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from toybb.models.positional import (RopeScaling, apply_rope, half_to_interleaved, interleaved_to_half,
                                     inv_frequencies, rope_angles)


def _x(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_scores_depend_on_relative_position_only(pairing):
    inv = inv_frequencies(8, 100.0)
    q, k = _x((1, 1, 1, 8)), _x((1, 1, 1, 8), 1)

    def score(i, j):
        cq, sq = rope_angles(jnp.array([i]), inv)
        ck, sk = rope_angles(jnp.array([j]), inv)
        return float(jnp.sum(apply_rope(q, cq, sq, pairing) * apply_rope(k, ck, sk, pairing)))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3


def test_pairings_are_related_by_the_row_permutation():
    """Interleaved RoPE on permuted features == half-split RoPE on the original ones."""
    n, hd = 3, 8
    x = _x((2, 5, n, hd))
    cos, sin = rope_angles(jnp.arange(5), inv_frequencies(hd, 10.0))
    half = apply_rope(x, cos, sin, "half")
    # permute features of each head the way llama.cpp permutes q/k rows
    perm = half_to_interleaved(np.arange(n * hd)[:, None], n)[:, 0].reshape(n, hd) % hd
    xi = jnp.take_along_axis(x, jnp.asarray(perm)[None, None], axis=-1)
    inter = apply_rope(xi, cos, sin, "interleaved")
    back = jnp.take_along_axis(inter, jnp.asarray(np.argsort(perm, axis=-1))[None, None], axis=-1)
    np.testing.assert_allclose(np.asarray(back), np.asarray(half), atol=1e-6)
    assert np.abs(np.asarray(apply_rope(x, cos, sin, "interleaved") - half)).max() > 0.1


def test_row_permutation_roundtrip():
    w = np.random.RandomState(0).randn(4 * 6, 5)
    np.testing.assert_array_equal(interleaved_to_half(half_to_interleaved(w, 4), 4), w)


def test_partial_rotary_passes_tail_through():
    x = _x((1, 4, 2, 8))
    cos, sin = rope_angles(jnp.arange(4), inv_frequencies(4, 10.0))
    y = apply_rope(x, cos, sin, "half")
    np.testing.assert_array_equal(np.asarray(y[..., 4:]), np.asarray(x[..., 4:]))
    assert np.abs(np.asarray(y[:, 1:, :, :4] - x[:, 1:, :, :4])).max() > 1e-3


def test_llama3_scaling_keeps_high_and_divides_low_frequencies():
    base = inv_frequencies(64, 500000.0)
    s = inv_frequencies(64, 500000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 8192))
    assert s[0] == base[0] and s[-1] == pytest.approx(base[-1] / 8)
