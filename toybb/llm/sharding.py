"""Laying parameters and activations out over a `jax.sharding.Mesh`, so models larger than one
accelerator run. Mesh axes: "data" (batch) and "model" (tensor parallel: heads, MLP hidden units,
vocabulary). An axis that does not divide a dimension is left replicated; XLA inserts collectives."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# parameter name suffix -> which axis is split over "model"
_MODEL_AXIS = {
    "attn.wq": 1, "attn.wk": 1, "attn.wv": 1, "attn.wo": 0, "attn.bq": 0, "attn.bk": 0, "attn.bv": 0,
    "mlp.w_gate": 1, "mlp.w_up": 1, "mlp.w_down": 0, "mlp.b_gate": 0, "mlp.b_up": 0,
    "embed": 0, "unembed": 1,
}


def make_mesh(n_devices: int | None = None, model_parallel: int | None = None) -> Mesh:
    """A ("data", "model") mesh over the first n_devices devices (default all, all on "model")."""
    devs = jax.devices()[: n_devices or len(jax.devices())]
    mp = model_parallel or len(devs)
    if len(devs) % mp:
        raise ValueError(f"model_parallel={mp} must divide the number of devices ({len(devs)})")
    return Mesh(np.array(devs).reshape(len(devs) // mp, mp), ("data", "model"))


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    n = mesh.shape["model"]
    for suffix, axis in _MODEL_AXIS.items():
        if name == suffix or name.endswith("." + suffix):
            if shape[axis] % n == 0:
                spec = [None] * len(shape)
                spec[axis] = "model"
                return P(*spec)
            break
    return P()


def param_putter(mesh: Mesh):
    """put(name, array) for `weights.build_model`: places each parameter with its sharding."""
    def put(name: str, arr):
        return jax.device_put(arr, NamedSharding(mesh, param_spec(name, arr.shape, mesh)))
    return put


def shard_tokens(tokens, mesh: Mesh):
    """tokens [batch, seq] split over "data" where the batch divides."""
    spec = P("data") if tokens.shape[0] % mesh.shape["data"] == 0 else P()
    return jax.device_put(tokens, NamedSharding(mesh, spec))


def shard_model(model, mesh: Mesh):
    """The same model with every parameter placed on `mesh` (see `param_spec`)."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    put = param_putter(mesh)
    leaves = [(p, v.replace(value=put(".".join(map(str, p)), v[...]))) for p, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
