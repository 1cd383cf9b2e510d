"""Reduced models of the extreme-token dynamics (theory/01..06): instances, losses, analytic gradients.

Reduced attention model (theory/01_reduced_model.md). Token types v = 0..N-1 query the head; each
has a stationary weight pi_v and a target row p_v (a distribution over V outputs). The head's logit
on BOS is y_v; the other w keys have logit 0 (softmax) and their values sum to z_c in context c
(contexts drawn with weights r_c). With m_c = z_c / w and alpha_v = e^{y_v} / (e^{y_v} + w):

    o_{v,c} = alpha_v s + (1 - alpha_v) m_c           (head output, [N, C, V])
    L       = sum_v pi_v sum_c r_c KL(p_v || softmax(log p_v + o_{v,c}))

ReLU attention (theory/06_relu_attention.md): the BOS key has logit y_v, the w other keys a common
logit x_v; no softmax, no renormalisation, weights ReLU(.) / (w + 1):

    o_{v,c} = (ReLU(y_v) s + ReLU(x_v) z_c) / (w + 1)

Residual-peak model (theory/05_residual_peak.md): the sink logit y = theta * phi(m) with
phi(m) = m / sqrt(m^2 + beta^2) (the BOS key after normalisation of a residual m e + beta e_perp)
and the drained sink loss l(y) = kappa / 2 * exp(-2 y) (theory/03_rates.md).

All arrays are float64 inside the simulators; instances are NamedTuples of arrays so that a batch
of instances (leading axis) is one pytree for `jax.vmap`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toybb.errors import ConfigError


class AttentionInstance(NamedTuple):
    """One instance of the reduced attention model (or a batch: every field gets a leading axis).

    pi: [N] stationary weights (sum 1; 0 marks a padded type). p: [N, V] target rows.
    z: [C, V] sum of the non-BOS values per context. r: [C] context weights (sum 1; 0 = padding).
    w: [] number of non-BOS keys (> 0).
    """

    pi: np.ndarray
    p: np.ndarray
    z: np.ndarray
    r: np.ndarray
    w: np.ndarray


class ResidualInstance(NamedTuple):
    """Residual-peak model: kappa [] scale of the drained sink loss, beta [] off-axis residual norm."""

    kappa: np.ndarray
    beta: np.ndarray


_TOL = 1e-8


def make_instance(pi, p, z, r=None, w: float = 1.0) -> AttentionInstance:
    """Validated float64 instance. Raises ConfigError naming the field that is wrong."""
    pi = np.asarray(pi, np.float64)
    p = np.asarray(p, np.float64)
    z = np.asarray(z, np.float64)
    if p.ndim != 2:
        raise ConfigError(f"bigram rows p must be a 2-d array [types, outputs], got shape {p.shape}")
    n, v = p.shape
    if pi.shape != (n,):
        raise ConfigError(f"stationary weights pi must have shape ({n},) to match p, got {pi.shape}")
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != v:
        raise ConfigError(f"context values z must have shape [contexts, {v}], got {z.shape}")
    c = z.shape[0]
    if c == 0:
        raise ConfigError("the number of contexts must be at least 1 (z has no rows)")
    r = np.full(c, 1.0 / c) if r is None else np.asarray(r, np.float64)
    if r.shape != (c,):
        raise ConfigError(f"context weights r must have shape ({c},), got {r.shape}")
    for name, arr in (("pi", pi), ("p", p), ("z", z), ("r", r)):
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{name} contains NaN or inf")
    if np.any(p < 0) or np.any(np.abs(p.sum(1) - 1) > _TOL):
        bad = int(np.argmax(np.abs(p.sum(1) - 1) + (p < 0).any(1)))
        raise ConfigError(f"bigram row {bad} is not a distribution (entries must be >= 0 and sum to 1, "
                          f"sum is {p[bad].sum():.6g}); normalise the rows")
    if np.any(pi < 0) or abs(pi.sum() - 1) > _TOL:
        raise ConfigError(f"stationary weights pi must be >= 0 and sum to 1, got sum {pi.sum():.6g}")
    if np.any(r < 0) or abs(r.sum() - 1) > _TOL:
        raise ConfigError(f"context weights r must be >= 0 and sum to 1, got sum {r.sum():.6g}")
    if not np.any(r > 0):
        raise ConfigError("zero contexts: at least one context needs a positive weight")
    if not (np.isfinite(w) and w > 0):
        raise ConfigError(f"the number of non-BOS keys w must be > 0, got {w}")
    return AttentionInstance(pi, p, z, r, np.float64(w))


def make_residual_instance(kappa: float = 1.0, beta: float = 1.0) -> ResidualInstance:
    if not (np.isfinite(kappa) and kappa > 0):
        raise ConfigError(f"kappa (scale of the sink loss) must be > 0, got {kappa}")
    if not (np.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta (off-axis residual norm) must be > 0, got {beta}")
    return ResidualInstance(np.float64(kappa), np.float64(beta))


def random_instance(rng: np.random.Generator, n_types: int = 4, n_contexts: int = 8, *, z_scale: float = 1.0,
                    w: float = 4.0, concentration: float = 1.0, min_p: float = 0.02, max_types: int | None = None,
                    max_contexts: int | None = None) -> AttentionInstance:
    """A random valid instance: Dirichlet bigram rows (floored at min_p, so every row has full
    support), the stationary distribution of that chain, Gaussian context values. Padded with zero
    weights to max_types / max_contexts so that instances of different sizes share one shape."""
    if n_types < 1 or n_contexts < 1:
        raise ConfigError(f"need at least one token type and one context, got {n_types}, {n_contexts}")
    nt = max_types or n_types
    nc = max_contexts or n_contexts
    if nt < n_types or nc < n_contexts:
        raise ConfigError("max_types / max_contexts must be >= n_types / n_contexts")
    p = rng.dirichlet(np.full(n_types, concentration), size=n_types)
    p = np.maximum(p, min_p)
    p /= p.sum(1, keepdims=True)
    evals, evecs = np.linalg.eig(p.T)
    pi = np.abs(np.real(evecs[:, np.argmin(np.abs(evals - 1))]))
    pi /= pi.sum()
    z = rng.normal(0, z_scale, size=(n_contexts, n_types))
    P = np.zeros((nt, nt))
    P[:n_types, :n_types] = p
    P[n_types:, :] = 1.0 / nt  # padded types: any valid row; their weight is 0
    PI = np.zeros(nt)
    PI[:n_types] = pi
    Z = np.zeros((nc, nt))
    Z[:n_contexts, :n_types] = z
    R = np.zeros(nc)
    R[:n_contexts] = 1.0 / n_contexts
    return make_instance(PI, P, Z, R, w)


def stack(instances):
    """A batch (leading axis) from a list of instances of equal shapes."""
    return type(instances[0])(*(np.stack(f) for f in zip(*instances)))


# ---------------------------------------------------------------------------------------------
# losses


def _kl_rows(p, o):
    """KL(p || softmax(log p + o)) over the last axis; entries with p = 0 are excluded (their
    output probability is 0 whatever o is)."""
    mask = p > 0
    logp = jnp.where(mask, jnp.log(jnp.where(mask, p, 1.0)), 0.0)
    logits = jnp.where(mask, logp + o, -jnp.inf)
    logq = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.where(mask, p * (logp - jnp.where(mask, logq, 0.0)), 0.0), axis=-1)


def alpha(y, w):
    """Softmax attention on BOS: e^y / (e^y + w), computed stably as sigmoid(y - log w)."""
    return jax.nn.sigmoid(y - jnp.log(w))


def softmax_output(params, inst: AttentionInstance):
    """o_{v,c} [N, C, V] of the softmax reduced model."""
    a = alpha(params["y"], inst.w)[:, None, None]
    m = inst.z / inst.w
    return a * params["s"][None, None, :] + (1 - a) * m[None, :, :]


def softmax_loss(params, inst: AttentionInstance):
    """L = sum_v pi_v sum_c r_c KL(p_v || softmax(log p_v + o_{v,c})). params: y [N], s [V]."""
    kl = _kl_rows(inst.p[:, None, :], softmax_output(params, inst))  # [N, C]
    return jnp.sum(inst.pi * jnp.sum(kl * inst.r[None, :], axis=1))


def softmax_grads(params, inst: AttentionInstance):
    """Closed-form gradients of `softmax_loss` (theory/01): with g_{v,c} = q_{v,c} - p_v,
    dL/ds = sum_v pi_v alpha_v sum_c r_c g_{v,c};
    dL/dy_v = pi_v alpha_v (1 - alpha_v) sum_c r_c g_{v,c} . (s - m_c)."""
    o = softmax_output(params, inst)
    mask = inst.p > 0
    logits = jnp.where(mask[:, None, :], jnp.log(jnp.where(mask, inst.p, 1.0))[:, None, :] + o, -jnp.inf)
    g = jax.nn.softmax(logits, axis=-1) - inst.p[:, None, :]  # [N, C, V]
    a = alpha(params["y"], inst.w)
    gbar = jnp.einsum("c,ncv->nv", inst.r, g)
    ds = jnp.einsum("n,n,nv->v", inst.pi, a, gbar)
    diff = params["s"][None, :] - inst.z / inst.w  # [C, V]
    dy = inst.pi * a * (1 - a) * jnp.einsum("c,ncv,cv->n", inst.r, g, diff)
    return {"y": dy, "s": ds}


def relu_output(params, inst: AttentionInstance):
    ay = jax.nn.relu(params["y"])[:, None, None]
    ax = jax.nn.relu(params["x"])[:, None, None]
    return (ay * params["s"][None, None, :] + ax * inst.z[None, :, :]) / (inst.w + 1)


def relu_loss(params, inst: AttentionInstance):
    """ReLU-attention reduced model. params: y [N] (BOS logit), x [N] (logit on the other keys), s [V]."""
    kl = _kl_rows(inst.p[:, None, :], relu_output(params, inst))
    return jnp.sum(inst.pi * jnp.sum(kl * inst.r[None, :], axis=1))


def phi(m, beta):
    """Alignment of the normalised BOS residual m e + beta e_perp with e."""
    return m / jnp.sqrt(m * m + beta * beta)


def residual_loss(params, inst: ResidualInstance):
    """Drained sink loss kappa/2 exp(-2 y) at the sink logit y = theta phi(m). params: theta [], m []."""
    y = params["theta"] * phi(params["m"], inst.beta)
    return 0.5 * inst.kappa * jnp.exp(-2.0 * y)


LOSSES = {"softmax": softmax_loss, "relu": relu_loss, "residual": residual_loss}


# ---------------------------------------------------------------------------------------------
# derived quantities


def centred(s):
    """s - mean(s) over the output axis (softmax ignores the mean; it is conserved, theory/01)."""
    return s - jnp.mean(s, axis=-1, keepdims=True)
