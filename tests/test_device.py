"""Backend decisions (toybb.device): the CPU-only heuristics switch off on accelerators, and training on the
default device equals training on the CPU within tolerance (a real comparison where the default device is
an accelerator: benchmarks/device_check.py runs this file there)."""

import jax
import numpy as np
import pytest

from toybb import device
from toybb.config import RunConfig
from toybb.train.loop import train
from toybb.train.trainer import microbatch_size, runs_vmapped_together

from _shared import TINY


def test_cpu_heuristics_follow_the_backend_decision(monkeypatch):
    paper = RunConfig().replace(train={"seeds": tuple(range(8))})
    monkeypatch.setattr(device, "backend", lambda: "cpu")
    assert device.cpu_heuristics()
    assert microbatch_size(paper) == 8 and runs_vmapped_together(paper) == 1  # cache-sized on a CPU
    calls = []
    monkeypatch.setattr("ctypes.CDLL", lambda name: type("L", (), {"malloc_trim": lambda self, n: calls.append(n)})())
    from toybb.device import release_host_memory

    release_host_memory()
    assert calls == [0]
    monkeypatch.setattr(device, "backend", lambda: "gpu")
    assert not device.cpu_heuristics()
    assert microbatch_size(paper) == 512 and runs_vmapped_together(paper) == 8  # whole batch, all runs
    release_host_memory()
    assert calls == [0]  # no malloc_trim on an accelerator


@pytest.mark.skipif(jax.default_backend() == "cpu", reason="compares an accelerator's training with the CPU's")
def test_training_on_default_device_matches_cpu():
    cfg = TINY.replace(train={"seeds": (0,), "steps": 10})
    here = train(cfg, None, progress=False)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        ref = train(cfg, None, progress=False)
    platforms = lambda r: {d.platform for x in jax.tree.leaves(r.state["params"]) for d in x.devices()}  # noqa: E731
    assert platforms(ref) == {"cpu"} and platforms(here) == {jax.default_backend()}
    # float32 ("highest") on both; different kernels (and the fast attention path on accelerators)
    np.testing.assert_allclose(here.metrics["loss"], ref.metrics["loss"], rtol=1e-4)
    np.testing.assert_allclose(here.metrics["sink_attention_l0"], ref.metrics["sink_attention_l0"], rtol=1e-3,
                               atol=1e-4)
