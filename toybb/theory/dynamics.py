"""Simulators of the reduced models: gradient flow (fine-step RK4), gradient descent, SGD with
heavy-ball momentum, and Adam, vectorised over a batch of instances, one compiled program per
(model, optimiser, batch shape). Runs in float64 (enabled only inside these calls).

The reduced models are deterministic (no minibatch noise), so "SGD" here is momentum gradient
descent with PyTorch's convention v <- mu v + g, theta <- theta - lr v.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import ConfigError
from toybb.theory.models import LOSSES

METHODS = ("flow", "gd", "sgd", "adam")


@dataclass(frozen=True)
class Optimiser:
    """method: flow (RK4 on d theta/dt = -grad L, lr is the time step dt), gd, sgd, adam.
    momentum: for sgd. b1, b2, eps: for adam (eps = 0 is the normalised-update limit)."""

    method: str = "gd"
    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ConfigError(f"Adam betas must be in [0, 1), got ({self.b1}, {self.b2})")
        if self.eps < 0:
            raise ConfigError(f"Adam eps must be >= 0, got {self.eps}")


@dataclass
class Trajectory:
    """steps [G]; params {name: [B, G, ...]}; loss [B, G]; lr [B]; time = steps * lr for gd/flow."""

    steps: np.ndarray
    params: dict
    loss: np.ndarray
    lr: np.ndarray
    method: str

    def time(self) -> np.ndarray:
        """[B, G] gradient-flow time t = lr * step (the time scale on which the rates are stated)."""
        return self.lr[:, None] * self.steps[None, :]


def log_grid(n_steps: int, points_per_decade: int = 40) -> np.ndarray:
    """Sorted unique record steps 0, 1, ..., n_steps, dense on a log scale."""
    if n_steps < 1:
        raise ConfigError(f"n_steps must be >= 1, got {n_steps}")
    g = np.unique(np.round(np.logspace(0, np.log10(n_steps), max(2, int(points_per_decade * np.log10(n_steps)) + 1))))
    return np.unique(np.concatenate([[0], g.astype(np.int64), [n_steps]]))


def _init_state(opt: Optimiser, params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    if opt.method == "sgd":
        return {"v": zeros}
    if opt.method == "adam":
        return {"mu": zeros, "nu": jax.tree.map(jnp.zeros_like, params), "k": jnp.zeros((), jnp.float64)}
    return {}


def _update(opt: Optimiser, grad_fn, params, state, lr):
    """One step for one instance."""
    if opt.method == "gd":
        g = grad_fn(params)
        return jax.tree.map(lambda p, g: p - lr * g, params, g), state
    if opt.method == "flow":
        k1 = grad_fn(params)
        k2 = grad_fn(jax.tree.map(lambda p, k: p - 0.5 * lr * k, params, k1))
        k3 = grad_fn(jax.tree.map(lambda p, k: p - 0.5 * lr * k, params, k2))
        k4 = grad_fn(jax.tree.map(lambda p, k: p - lr * k, params, k3))
        return jax.tree.map(lambda p, a, b, c, d: p - lr / 6 * (a + 2 * b + 2 * c + d), params, k1, k2, k3, k4), state
    g = grad_fn(params)
    if opt.method == "sgd":
        v = jax.tree.map(lambda v, g: opt.momentum * v + g, state["v"], g)
        return jax.tree.map(lambda p, v: p - lr * v, params, v), {"v": v}
    k = state["k"] + 1
    mu = jax.tree.map(lambda m, g: opt.b1 * m + (1 - opt.b1) * g, state["mu"], g)
    nu = jax.tree.map(lambda n, g: opt.b2 * n + (1 - opt.b2) * g * g, state["nu"], g)
    c1, c2 = 1 - opt.b1**k, 1 - opt.b2**k

    def upd(p, m, n):
        den = jnp.sqrt(n / c2) + opt.eps
        return p - lr * jnp.where(den > 0, (m / c1) / jnp.where(den > 0, den, 1.0), 0.0)

    return jax.tree.map(upd, params, mu, nu), {"mu": mu, "nu": nu, "k": k}


@partial(jax.jit, static_argnames=("model", "opt"))
def _run(model: str, opt: Optimiser, inst, params0, lr, deltas):
    loss_fn = LOSSES[model]

    def one(inst, params0, lr):
        grad_fn = jax.grad(lambda p: loss_fn(p, inst))

        def seg(carry, n):
            params, state = carry
            params, state = jax.lax.fori_loop(0, n, lambda _, c: _update(opt, grad_fn, c[0], c[1], lr), (params, state))
            return (params, state), (params, loss_fn(params, inst))

        state0 = _init_state(opt, params0)
        _, (ps, ls) = jax.lax.scan(seg, (params0, state0), deltas)
        return ps, ls

    return jax.vmap(one)(inst, params0, lr)


def simulate(model: str, inst, params0: dict, lr, record_steps, opt: Optimiser | str = "gd") -> Trajectory:
    """Run `model` (softmax, relu, residual) from params0 on a batch of instances.

    inst: a batched instance (leading axis B); params0: {name: [B, ...]}; lr: scalar or [B] step
    sizes (the time step dt for method flow); record_steps: sorted steps (0 first) at which params
    and loss are recorded. One compiled lax.scan over segments, each a fori_loop of plain steps.
    """
    if model not in LOSSES:
        raise ConfigError(f"unknown reduced model {model!r}; choose one of {', '.join(LOSSES)}")
    opt = Optimiser(opt) if isinstance(opt, str) else opt
    steps = np.asarray(record_steps, np.int64)
    if steps.ndim != 1 or steps.size == 0 or steps[0] < 0 or np.any(np.diff(steps) <= 0):
        raise ConfigError("record_steps must be a non-empty increasing sequence of steps >= 0")
    b = np.asarray(jax.tree.leaves(inst)[0]).shape[0]
    lr = np.broadcast_to(np.asarray(lr, np.float64), (b,)).copy()
    if not np.all(np.isfinite(lr)) or np.any(lr <= 0):
        raise ConfigError(f"step sizes must be positive and finite, got {lr.tolist()}")
    deltas = np.diff(np.concatenate([[0], steps])).astype(np.int32)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        ps, ls = _run(model, opt, f64(inst), f64(params0), jnp.asarray(lr), jnp.asarray(deltas))
        ps = jax.tree.map(np.asarray, ps)
        ls = np.asarray(ls)
    return Trajectory(steps=steps, params=ps, loss=ls, lr=lr, method=opt.method)
