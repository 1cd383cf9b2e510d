"""Laying parameters and activations out over a `jax.sharding.Mesh`, so models larger than one
accelerator run. Mesh axes: "data" (batch) and "model" (tensor parallel: heads, MLP hidden units,
vocabulary). An axis that does not divide a dimension is left replicated; XLA inserts collectives."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toybb.models.quant import QArray

# parameter name suffix -> which axis is split over "model"
_MODEL_AXIS = {
    "attn.wq": 1, "attn.wk": 1, "attn.wv": 1, "attn.wo": 0, "attn.bq": 0, "attn.bk": 0, "attn.bv": 0,
    "mlp.w_gate": 1, "mlp.w_in": 1, "mlp.w_out": 0, "mlp.b_gate": 0, "mlp.b_in": 0,
    "token_embed": 0, "unembed": 1,
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


# packed GGUF matrices (`quant.QArray`) are stored as GGUF rows [rows, blocks, ...]: which stored axis
# (0 rows, 1 blocks) holds each axis of the toybb parameter, per layout
_PACKED_AXIS = {"id": (0, 1), "T": (1, 0), "heads": (1, 0, 0), "out_heads": (1, 1, 0)}


def _packed_put(name: str, q, mesh: Mesh):
    """A packed matrix split over "model" along the stored axis that holds the parameter's split axis
    (rows or whole 32-weight blocks, never inside a block), or replicated if that axis does not divide."""
    import dataclasses

    spec = tuple(param_spec(name, q.shape, mesh))
    axis = next((_PACKED_AXIS[q.layout[0]][i] for i, a in enumerate(spec) if a == "model"), None)
    if axis is not None and q.d.shape[axis] % mesh.shape["model"]:
        axis = None

    def place(a):
        if a is None:
            return None
        s = [None] * a.ndim
        if axis is not None:
            s[axis] = "model"
        return jax.device_put(a, NamedSharding(mesh, P(*s)))

    return dataclasses.replace(q, d=place(q.d), m=place(q.m), qs=place(q.qs))


def param_putter(mesh: Mesh):
    """put(name, array) for `weights.build_model`: places each parameter with its sharding (packed
    GGUF weights stay packed, split over whole rows or blocks)."""
    def put(name: str, arr):
        if isinstance(arr, QArray):
            return _packed_put(name, arr, mesh)
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
    leaves = [(p, v.replace(value=put(".".join(map(str, p)), v.get_value()))) for p, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
