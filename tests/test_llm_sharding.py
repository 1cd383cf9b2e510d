"""Parameters and activations laid out over a 4-device mesh give the same logits and captures as one
device. Runs in a subprocess so XLA_FLAGS=--xla_force_host_platform_device_count=4 applies."""

from __future__ import annotations

import pytest
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from toybb.models.config import ModelConfig
    from toybb.models.transformer import Transformer
    from toybb.models.forward import forward
    from toybb.llm.sharding import make_mesh, shard_model, shard_tokens
    from toybb.models.capture import Capture

    assert len(jax.devices()) == 4, jax.devices()
    cfg = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    mlp_dim=48, sliding_window=5)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    toks = np.random.RandomState(0).randint(0, 64, (4, 16))
    cap = Capture(("blocks.*.resid_post@norm", "blocks.*.attn.pattern@key0"))
    ref_logits, ref_cap = forward(model, toks, capture=cap)
    for data, mp in ((1, 4), (2, 2)):
        mesh = make_mesh(4, model_parallel=mp)
        sharded = shard_model(model, mesh)
        spec = sharded.blocks[0].attn.wq[...].sharding.spec
        assert tuple(spec) == (None, "model", None), spec
        assert len(sharded.blocks[0].mlp.w_in[...].sharding.device_set) == 4
        logits, got = forward(sharded, shard_tokens(toks, mesh), capture=cap)
        assert len(logits.sharding.device_set) == 4
        d = float(np.abs(np.asarray(logits) - np.asarray(ref_logits)).max())
        assert d <= 1e-5, d
        for k in ref_cap:
            assert np.abs(np.asarray(got[k]) - np.asarray(ref_cap[k])).max() <= 1e-4, k
    # the loaders' path: every array placed with its sharding as it is read (never whole on one device)
    from toybb.llm.sharding import param_putter
    from toybb.llm.weights import build_model
    arrays = {".".join(map(str, p)): (lambda v=v: np.asarray(v[...]))
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    mesh = make_mesh(4, model_parallel=2)
    loaded = build_model(cfg, arrays, "test", put=param_putter(mesh))
    assert tuple(loaded.blocks[1].mlp.w_out[...].sharding.spec) == ("model", None)
    d = float(np.abs(np.asarray(forward(loaded, shard_tokens(toks, mesh))[0]) - np.asarray(ref_logits)).max())
    assert d <= 1e-5, d
    print("SHARDING_OK")
""")


def test_four_device_mesh_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "SHARDING_OK" in r.stdout, r.stderr[-3000:]


PACKED_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    from toybb.llm import forward, load
    from toybb.models.quant import QArray
    from toybb.llm.sharding import make_mesh, shard_tokens
    from _tiny_hf import make_tiny, write_tiny_gguf

    assert len(jax.devices()) == 4, jax.devices()
    d = sys.argv[1]
    write_tiny_gguf(make_tiny("llama_gqa", d), d + "/q.gguf", "llama", quant="Q4_1")
    toks = np.random.RandomState(0).randint(0, 53, (4, 12))
    one = load(d + "/q.gguf", quantized=True, with_tokenizer=False)
    assert isinstance(one.model.blocks[0].attn.wq.get_value(), QArray)
    ref = np.asarray(forward(one.model, toks)[0])
    dense = np.asarray(forward(load(d + "/q.gguf", with_tokenizer=False).model, toks)[0])
    assert np.abs(ref - dense).max() <= 1e-4  # packed = dequantised at load
    for mp in (2, 4):
        mesh = make_mesh(4, model_parallel=mp)
        pre = load(d + "/q.gguf", quantized=True, mesh=mesh, with_tokenizer=False)
        wq, wo = pre.model.blocks[0].attn.wq.get_value(), pre.model.blocks[0].attn.wo.get_value()
        assert isinstance(wq, QArray) and tuple(wq.qs.sharding.spec)[:1] == ("model",), wq.qs.sharding
        assert len(wq.qs.sharding.device_set) == 4 and wq.qs.addressable_shards[0].data.shape[0] == 64 // mp
        if mp == 2:  # attn_output is [d, heads*hd] = 2 blocks per row: split over blocks
            assert tuple(wo.qs.sharding.spec)[:2] == (None, "model"), wo.qs.sharding
        logits = forward(pre.model, shard_tokens(toks, mesh))[0]
        err = float(np.abs(np.asarray(logits) - ref).max())
        print("mp", mp, "max abs diff", err)
        assert err <= 1e-4, err  # sharded reductions sum in another order
    print("PACKED_SHARDING_OK")
""")


@pytest.mark.slow  # the 4-device mesh is guarded by test_four_device_mesh_matches_one_device
def test_packed_gguf_weights_on_a_mesh_match_one_device(tmp_path):
    """quantized=True with a mesh: packed Q4_1 matrices split over whole rows or blocks give the
    logits of the single-device packed model."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))  # _tiny_hf
    r = subprocess.run([sys.executable, "-c", PACKED_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "PACKED_SHARDING_OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
