"""Property tests of theory/*.md: random valid instances of the reduced models obey each statement.

Shapes are fixed (types padded to 5 with pi = 0, contexts padded to 8 with r = 0) so that every
hypothesis example reuses one compiled program; hypothesis varies values only.
"""

import argparse

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from toybb.errors import ConfigError
from toybb.theory import models as M
from toybb.theory import rates as R
from toybb.theory import statements as S
from toybb.theory.dynamics import Optimiser, log_grid, simulate

NT, NC = 5, 8  # padded shapes
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def instances(draw, contexts=(2, NC), z_scale=(0.5, 2.5), w=(1.0, 6.0)):
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(2, NT))
    c = draw(st.integers(*contexts))
    inst = M.random_instance(np.random.default_rng(seed), n, c, w=draw(st.floats(*w)),
                             z_scale=draw(st.floats(*z_scale)), concentration=draw(st.floats(0.3, 3.0)),
                             max_types=NT, max_contexts=NC)
    return inst, n, np.random.default_rng(seed + 1)


def _params(rng, n, y0=(-1.0, 2.0), s_scale=1.0):
    y = np.zeros(NT)
    y[:n] = rng.uniform(*y0, n)
    s = np.zeros(NT)
    s[:n] = rng.normal(0, s_scale, n)
    return y, s


# ----------------------------------------------------------------------------- theory/01


_both_grads = jax.jit(lambda p, inst: (jax.grad(M.softmax_loss)(p, inst), M.softmax_grads(p, inst)))


@settings(max_examples=25, **SETTINGS)
@given(instances(), st.floats(-3, 4), st.floats(0.1, 3.0))
def test_closed_form_gradients_match_autodiff(data, y_mid, s_scale):
    inst, n, rng = data
    y, s = _params(rng, n, (y_mid - 1, y_mid + 1), s_scale)
    with jax.enable_x64(True):
        ga, gc = jax.tree.map(np.asarray, _both_grads({"y": y, "s": s}, inst))
    for k in ("y", "s"):
        np.testing.assert_allclose(np.asarray(gc[k]), np.asarray(ga[k]), atol=1e-12)
    assert abs(float(np.sum(gc["s"]))) < 1e-12  # mean(s) is conserved
    assert np.all(np.asarray(gc["y"])[n:] == 0)  # padded types do not move


def test_loss_is_zero_iff_output_constant():
    inst = M.make_instance([0.5, 0.5], [[0.7, 0.3], [0.2, 0.8]], [[1.0, -1.0]], w=2.0)
    with jax.enable_x64(True):
        # s cancels z exactly at y = 0: e^0 s + z = const  <=> s = -z + const
        assert float(M.softmax_loss({"y": np.zeros(2), "s": np.array([-1.0, 1.0]) + 3.0}, inst)) < 1e-15
        assert float(M.softmax_loss({"y": np.zeros(2), "s": np.zeros(2)}, inst)) > 1e-3


def test_invalid_instances_raise_config_error():
    good = dict(pi=[0.5, 0.5], p=[[0.5, 0.5], [0.1, 0.9]], z=[[0.0, 1.0]])
    with pytest.raises(ConfigError, match="not a distribution"):
        M.make_instance(good["pi"], [[0.5, 0.6], [0.1, 0.9]], good["z"])
    with pytest.raises(ConfigError, match="not a distribution"):
        M.make_instance(good["pi"], [[1.5, -0.5], [0.1, 0.9]], good["z"])
    with pytest.raises(ConfigError, match="pi"):
        M.make_instance([0.2, 0.2], good["p"], good["z"])
    with pytest.raises(ConfigError, match="contexts"):
        M.make_instance(good["pi"], good["p"], np.zeros((0, 2)))
    with pytest.raises(ConfigError, match="zero contexts|context weights"):
        M.make_instance(good["pi"], good["p"], good["z"], r=[0.0])
    with pytest.raises(ConfigError, match="w must be > 0"):
        M.make_instance(good["pi"], good["p"], good["z"], w=0.0)
    with pytest.raises(ConfigError):
        M.random_instance(np.random.default_rng(0), 3, 0)
    with pytest.raises(ConfigError):
        M.make_residual_instance(kappa=-1.0)
    inst = M.stack([M.make_instance(**good)])
    p0 = {"y": np.zeros((1, 2)), "s": np.zeros((1, 2))}
    for lr in (-0.1, 0.0, float("nan")):
        with pytest.raises(ConfigError, match="step sizes"):
            simulate("softmax", inst, p0, lr, [0, 1])
    with pytest.raises(ConfigError, match="method"):
        Optimiser("lbfgs")
    with pytest.raises(ConfigError, match="record_steps"):
        simulate("softmax", inst, p0, 0.1, [0, 5, 3])
    with pytest.raises(ConfigError, match="sigma_v"):  # one context: no asymptotic regime
        R.predicted_softmax(M.make_instance(**good))


# ----------------------------------------------------------------------------- theory/02


@settings(max_examples=4, **SETTINGS)
@given(instances(contexts=(1, 1), z_scale=(0.5, 2.5)), st.floats(0.5, 1.0))
def test_shared_value_sink_logit_converges(data, lr):
    inst, n, rng = data
    # stated condition (theory/02): convergence is exponential at a rate ~ min_v pi_v; keep it >= 0.1
    assume(inst.pi[:n].min() >= 0.1)
    y, s = _params(rng, n, (-1.0, 1.5), 0.5)
    grid = log_grid(100_000, 10)
    tr = simulate("softmax", M.stack([inst]), {"y": y[None], "s": s[None]}, lr, grid, "gd")
    ys = tr.params["y"][0][:, :n]
    i = np.searchsorted(grid, 50_000)
    assert np.max(np.abs(ys[-1] - ys[i])) < 1e-3  # converged (the randomised model moves by ~0.35 here)
    assert np.ptp(ys[-1]) < 1e-4  # a common finite logit y*
    zc = inst.z[0, :n] - inst.z[0, :n].mean()
    sc = tr.params["s"][0, -1, :n] - tr.params["s"][0, -1, :n].mean()
    np.testing.assert_allclose(sc, -np.exp(-ys[-1].mean()) * zc, atol=1e-4)  # s cancels z
    assert tr.loss[0, -1] < 1e-9


def _minimise_over_s(y, s, inst):
    import jax.numpy as jnp

    gs = jax.grad(lambda s: M.softmax_loss({"y": y, "s": s}, inst))
    return jax.lax.fori_loop(0, 3000, lambda _, s: s - 2.0 * gs(s), s)


_minimise_over_s = jax.jit(_minimise_over_s)


@settings(max_examples=10, **SETTINGS)
@given(instances(contexts=(2, NC)), st.floats(-3, 3), st.floats(-3, 3))
def test_no_finite_stationary_point_with_context_randomness(data, y_level, s_scale):
    """theory/02 (b): at the s-optimum for fixed y, sum_v dL/dy_v < 0 (the flow raises the sinks)."""
    inst, n, rng = data
    y = np.zeros(NT)
    y[:n] = y_level + rng.normal(0, 0.5, n)
    with jax.enable_x64(True):
        import jax.numpy as jnp

        s = _minimise_over_s(jnp.asarray(y), jnp.asarray(rng.normal(0, abs(s_scale) + 0.1, NT)), inst)  # convex in s
        g = jax.tree.map(np.asarray, M.softmax_grads({"y": jnp.asarray(y), "s": s}, inst))
        a = np.asarray(M.alpha(jnp.asarray(y), inst.w))
    assume(float(np.max(np.abs(np.asarray(g["s"])))) < 1e-10)
    # the weighted sum sum_v dL/dy_v / (1 - alpha_v) equals -sum_v pi_v alpha_v Cov_c(g, m) < 0
    assert float(np.sum(np.asarray(g["y"])[:n] / (1 - a[:n]))) < 0


# ----------------------------------------------------------------------------- theory/03


@settings(max_examples=5, **SETTINGS)
@given(instances(z_scale=(1.0, 2.5), w=(1.0, 4.0)), st.floats(1.0, 2.0), st.floats(-1.0, 2.0))
def test_randomised_rates_last_decade(data, lr, y0):
    inst, n, rng = data
    pred = R.predicted_softmax(inst)
    steps = 1_000_000
    # stated condition (theory/03): non-sink attention w k_v / sqrt(t) <= 2% at the window's start
    assume(S.sink_attention_gap(inst, pred["k"], lr * steps / 10) <= 0.02)
    y, s = _params(rng, n, (y0, y0 + 0.5), 0.5)
    tr, pred = S.simulate_randomised(inst, y, s, lr, steps)
    fit = S.fit_randomised(tr, pred)
    assert np.all(np.abs(fit["c"] / 0.5 - 1) < 0.1), fit["c"]
    assert abs(fit["a"] / 0.5 - 1) < 0.1, fit["a"]
    assert abs(fit["b"] - 1) < 0.1, fit["b"]
    assert abs(fit["loss_const_fit"] / pred["loss_const"] - 1) < 0.1  # L ~ N / (4t)
    np.testing.assert_allclose(fit["k_fit"], pred["k"], rtol=0.1)  # y_v - 1/2 log t -> -log k_v
    assert abs(fit["drain_const_fit"] / pred["drain_const"] - 1) < 0.1


def test_k_solves_its_equation_and_loss_constant():
    inst = M.random_instance(np.random.default_rng(3), 4, 6, max_types=NT, max_contexts=NC)
    Q, _, act = R.quadratic_form(inst)
    k = R.solve_k(Q)
    np.testing.assert_allclose(k * (Q @ k), 0.5, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(Q) > 0)
    assert R.predicted_softmax(inst)["loss_const"] == act.sum() / 4  # 1/2 k^T Q k = N/4


# ----------------------------------------------------------------------------- theory/04


@settings(max_examples=6, **SETTINGS)
@given(instances(z_scale=(0.5, 2.0)), st.floats(0.05, 1.0), st.floats(0.1, 1.5))
def test_gd_loss_non_increasing(data, lr, s_scale):
    inst, n, rng = data
    y, s = _params(rng, n, (-2.0, 2.0), s_scale)
    tr = simulate("softmax", M.stack([inst]), {"y": y[None], "s": s[None]}, lr, np.arange(3001), "gd")
    d = np.diff(tr.loss[0])
    assert np.all(d <= 1e-15 * tr.loss[0, :-1] + 1e-300), float(d.max())


# ----------------------------------------------------------------------------- theory/05


@settings(max_examples=4, **SETTINGS)
@given(st.floats(0.3, 3.0), st.floats(0.3, 3.0), st.floats(0.5, 2.0), st.floats(0.5, 2.0), st.floats(2e-4, 1e-3))
def test_residual_adam_beats_sgd_by_predicted_factor(kappa, beta, theta0, m0, lr_adam):
    steps, lr_sgd, mu = 100_000, 0.03, 0.9
    inst = M.stack([M.make_residual_instance(kappa, beta)])
    p0 = {"theta": np.array([theta0]), "m": np.array([m0])}
    grid = log_grid(steps, 10)
    adam = simulate("residual", inst, p0, lr_adam, grid, Optimiser("adam", eps=0.0))
    sgd = simulate("residual", inst, p0, lr_sgd, grid, Optimiser("sgd", momentum=mu))
    rho = R.adam_linear_rate(lr_adam)
    m_adam = adam.params["m"][0]
    late = grid >= steps // 10
    assert abs(np.polyfit(grid[late], m_adam[late], 1)[0] / (rho * lr_adam) - 1) < 0.05  # linear, slope rho lr
    _, m_sgd_pred = S.residual_sgd_prediction(theta0, m0, kappa, beta, np.array([steps * lr_sgd / (1 - mu)]))
    np.testing.assert_allclose(sgd.params["m"][0, -1], m_sgd_pred[0], rtol=0.05)
    ratio_sim = (m_adam[-1] - m0) / (sgd.params["m"][0, -1] - m0)
    ratio_pred = rho * lr_adam * steps / (m_sgd_pred[0] - m0)
    assert abs(ratio_sim / ratio_pred - 1) < 0.1
    assert ratio_sim > 5


@settings(max_examples=4, **SETTINGS)
@given(st.floats(0.3, 3.0), st.floats(0.3, 3.0), st.floats(0.0, 2.0), st.floats(0.3, 2.0))
def test_residual_flow_invariant_and_sqrt_log_growth(kappa, beta, theta0, m0):
    inst = M.stack([M.make_residual_instance(kappa, beta)])
    grid = log_grid(50_000, 10)
    tr = simulate("residual", inst, {"theta": np.array([theta0]), "m": np.array([m0])}, 0.05, grid, "flow")
    th, m = tr.params["theta"][0], tr.params["m"][0]
    inv = R.residual_invariant(th, m, beta)
    assert np.max(np.abs(inv - inv[0])) < 1e-5 * (1 + abs(inv[0]))
    # m^4 ~ 2 beta^2 theta^2 and theta ~ 1/2 log t: m^2 / log t -> (beta^2/2)^(1/2) (slowly)
    np.testing.assert_allclose(m[-1], R.residual_m_from_theta(th[-1], inv[0], beta), rtol=1e-6)
    assert m[-1] < 1.2 * ((beta**2 / 2) ** 0.25 * np.sqrt(np.log(2 * kappa * tr.time()[0, -1])) + m0)


def test_adam_ratio_limits():
    assert R.adam_ratio(0.0) == pytest.approx(1.0)
    assert R.adam_ratio(0.01) == 0.0  # b2 e^{2 delta} >= 1: gradient decays faster than Adam's memory
    assert 0.8 < R.adam_linear_rate(1e-3) < 0.9


# ----------------------------------------------------------------------------- theory/06


@settings(max_examples=4, **SETTINGS)
@given(instances(z_scale=(0.5, 2.0)), st.floats(0.3, 1.0))
def test_relu_attention_no_divergence(data, lr):
    inst, n, rng = data
    y, s = _params(rng, n, (-1.0, 2.0), 1.0)
    x = np.zeros(NT)
    x[:n] = rng.uniform(0.5, 2.0, n)
    grid = log_grid(50_000, 10)
    tr = simulate("relu", M.stack([inst]), {"y": y[None], "x": x[None], "s": s[None]}, lr, grid, "gd")
    ys = tr.params["y"][0][:, :n]
    i = np.searchsorted(grid, 5_000)
    assert np.max(ys[-1] - ys[i]) < 1e-3  # the softmax sink grows by ~1/2 log 10 here
    assert np.all(np.diff(tr.loss[0]) <= 1e-15)
    xs = tr.params["x"][0][:, :n]
    assert np.all(xs[-1] <= np.maximum(xs[i], 0) + 1e-12)  # non-BOS keys switch off instead (x_v -> <= 0)
    sc = tr.params["s"][0][:, :n]
    inv = S.relu_invariant(ys, sc)
    bound = np.sqrt(max(inv[0], 0) + np.max(np.sum((sc - sc.mean(-1, keepdims=True)) ** 2, -1)))
    assert np.max(np.maximum(ys, 0)) <= bound + 1e-6
    assert abs(inv[-1] - inv[0]) < 0.1 * lr * (1 + abs(inv[0]))  # conserved up to O(lr) GD error


# ----------------------------------------------------------------------------- fits and CLI


@settings(max_examples=20, deadline=None, database=None)
@given(st.floats(0.1, 2.0), st.floats(-3, 3), st.floats(0.1, 2.0), st.floats(1e-3, 10.0))
def test_fit_rates_recovers_synthetic_rates(c, c0, a, amp):
    steps = np.unique(np.round(np.logspace(0, 5, 300)))
    f = R.fit_rates(steps, c * np.log(steps) + c0)
    assert f["log_slope"] == pytest.approx(c, rel=1e-9)
    assert f["intercept_log"] == pytest.approx(c0, abs=1e-8)
    assert f["window"] == (1e4, 1e5)
    g = R.fit_rates(steps, amp * steps**-a * (1 + 1 / steps))  # decaying correction: ignored on the last decade
    assert g["power"] == pytest.approx(-a, abs=1e-3)


def test_fit_rates_errors():
    with pytest.raises(ConfigError):
        R.fit_rates([1, 2], [1.0, 2.0])
    with pytest.raises(ConfigError):
        R.fit_rates([1, 2, 3], [1.0, 2.0])


def test_cli_register_and_run(tmp_path, monkeypatch, capsys):
    from toybb.theory import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    monkeypatch.setattr(S, "ALL_CHECKS", (S.check_gradients,
                                          lambda: S.check_residual(steps=2_000, betas=(1.0,))))
    args = parser.parse_args(["theory", "--plot", str(tmp_path / "fig")])
    assert args.func is cli.run
    cli.run(args)
    out = capsys.readouterr().out
    assert "predicted" in out and "simulated" in out
    assert (tmp_path / "fig" / "theory_residual.png").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        cli.run(parser.parse_args(["theory", "--plot", str(tmp_path / "file")]))


# ----------------------------------------------------------------------------- slow: the full checks


@pytest.mark.slow
@pytest.mark.parametrize("check", S.ALL_CHECKS, ids=lambda f: f.__name__)
def test_full_checks(check):
    assert check()["ok"]


@pytest.mark.slow
def test_rates_ten_million_steps_within_two_percent():
    r = S.check_rates(steps=10_000_000, lr=1.0)
    c = np.asarray(r["rows"][0][2])
    assert np.all(np.abs(c / 0.5 - 1) < 0.02) and abs(r["rows"][1][2] / 0.5 - 1) < 0.02


def test_weight_decay_caps_the_sink_logit_at_the_lambert_w_fixed_point():
    from toybb.theory.rates import sink_logit_with_weight_decay

    sigma2 = np.array([0.1, 0.5, 1.0, 3.0])
    for lam in (1e-2, 1e-4):
        ystar = sink_logit_with_weight_decay(sigma2, lam)
        np.testing.assert_allclose(2 * ystar * np.exp(2 * ystar), 2 * sigma2 / lam, rtol=1e-10)
        # the flow dy/dt = sigma2 e^{-2y} - lam y (explicit Euler, steps growing with t), started below and
        # above y*, settles at y*
        for y0 in (0.0, ystar.max() + 2):
            y, t, dt = np.full_like(sigma2, y0), 0.0, 0.05
            while t < 50 / lam:
                y = y + dt * (sigma2 * np.exp(-2 * y) - lam * y)
                t += dt
                dt = min(dt * 1.01, 0.002 / lam)
            np.testing.assert_allclose(y, ystar, rtol=1e-3)
    # without decay the logit would grow like 1/2 log(2 sigma2 t); with decay the cap grows like 1/2 log(1/lam)
    caps = sink_logit_with_weight_decay(1.0, np.array([1e-2, 1e-4, 1e-6]))
    assert np.all(np.diff(caps) > 0) and np.all(caps < 0.5 * np.log(2 / np.array([1e-2, 1e-4, 1e-6])))
    with pytest.raises(ConfigError, match="positive"):
        sink_logit_with_weight_decay(1.0, 0.0)
