"""The run axis sharded over 4 forced CPU devices gives the same numbers as one device (to float32
round-off)."""

import json
import os

import numpy as np
import subprocess
import sys
from pathlib import Path


def train_runs(out) -> dict:
    """Four runs of a tiny config trained on every device there is (the run axis sharded over them)."""
    import jax

    from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from toybb.train.loop import train

    cfg = RunConfig(model=ModelConfig(d_model=16, max_len=16), task=TaskConfig(seq_len=8),
                    optim=OptimConfig(lr=3e-3),
                    train=TrainConfig(steps=20, batch=8, seeds=(0, 1, 2, 3), eval_batch=8, eval_schedule=((10, 0),)))
    r = train(cfg, str(out), progress=False, write_figure=False)
    sharding = r.state["params"]["token_embed"].sharding
    return {"devices": jax.device_count(), "n_shards": len(sharding.device_set),
            "loss": r.metrics["loss"].tolist(), "peak": r.metrics["residual_peak_l0"].tolist()}


def _with_devices(n: int, out) -> dict:
    """`train_runs` in a process with n forced host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_sharding import train_runs; print(json.dumps(train_runs(sys.argv[1])))")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_four_devices_same_numbers(tmp_path):
    import jax

    # in this process when it has one device (the default test run), else in a process of its own
    one = train_runs(tmp_path / "one") if jax.device_count() == 1 else _with_devices(1, tmp_path / "one")
    four = _with_devices(4, tmp_path / "four")
    assert one["devices"] == 1 and four["devices"] == 4 and four["n_shards"] == 4
    # same numbers to float32 round-off: per-device batches of 1 run vs 4 runs take different matmul kernels
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(four["peak"], one["peak"], rtol=1e-5)
