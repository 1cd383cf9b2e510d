"""The run axis sharded over 4 forced CPU devices gives the same numbers as one device (to float32
round-off)."""

import json
import os

import numpy as np
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys, jax
    from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from toybb.train.loop import train
    cfg = RunConfig(model=ModelConfig(d_model=16, max_len=16), task=TaskConfig(seq_len=8),
                    optim=OptimConfig(lr=3e-3),
                    train=TrainConfig(steps=20, batch=8, seeds=(0, 1, 2, 3), eval_batch=8, eval_schedule=((10, 0),)))
    r = train(cfg, sys.argv[1], progress=False, write_figure=False)
    sharding = r.state["params"]["token_embed"].sharding
    print(json.dumps({"devices": jax.device_count(), "n_shards": len(sharding.device_set),
                      "loss": r.metrics["loss"].tolist(), "peak": r.metrics["residual_peak_l0"].tolist()}))
""")


def _run(n_devices, out):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_four_devices_same_numbers(tmp_path):
    one, four = _run(1, tmp_path / "one"), _run(4, tmp_path / "four")
    assert one["devices"] == 1 and four["devices"] == 4 and four["n_shards"] == 4
    # same numbers to float32 round-off: per-device batches of 1 run vs 4 runs take different matmul kernels
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(four["peak"], one["peak"], rtol=1e-5)
