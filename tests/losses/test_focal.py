import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses.focal import quality_focal_loss, sigmoid_focal_loss


def _np_bce(x, t):
    p = 1.0 / (1.0 + np.exp(-x))
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _np_focal(x, t, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss, reduction='none', written in NumPy."""
    p = 1.0 / (1.0 + np.exp(-x))
    p_t = p * t + (1 - p) * (1 - t)
    loss = _np_bce(x, t) * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def test_focal_known_values_at_p_half():
    ln2 = math.log(2.0)
    out = sigmoid_focal_loss(jnp.zeros((2,)), jnp.array([1.0, 0.0]))
    # p = 0.5: BCE = ln 2, (1 - p_t)^2 = 0.25, alpha_t = 0.25 (pos) / 0.75 (neg)
    np.testing.assert_allclose(out, [0.25 * 0.25 * ln2, 0.75 * 0.25 * ln2], rtol=1e-6)
    np.testing.assert_allclose(out, [0.04332169, 0.12996507], rtol=1e-6)
    # gamma = 0, alpha < 0: plain BCE
    np.testing.assert_allclose(
        sigmoid_focal_loss(jnp.zeros(2), jnp.array([1.0, 0.0]), alpha=-1, gamma=0.0), ln2, rtol=1e-6
    )


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.5), (-1.0, 0.0), (0.25, 0.5)])
def test_focal_matches_numpy_formula(alpha, gamma):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (64, 10))
    t = np.eye(10)[rng.integers(0, 10, 64)] * (rng.uniform(size=(64, 1)) < 0.7)
    out = sigmoid_focal_loss(jnp.asarray(x, jnp.float32), t, alpha=alpha, gamma=gamma)
    assert out.shape == (64, 10) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _np_focal(x, t, alpha, gamma), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
def test_focal_extreme_logits_finite_values_and_grads(gamma):
    x = jnp.array([100.0, -100.0, 100.0, -100.0, 0.0, 30.0])
    t = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    out = sigmoid_focal_loss(x, t, gamma=gamma)
    assert np.isfinite(out).all()
    # confident and wrong: loss ~ alpha_t * |x|
    np.testing.assert_allclose(out[2], 0.75 * 100.0, rtol=1e-5)
    np.testing.assert_allclose(out[3], 0.25 * 100.0, rtol=1e-5)
    g = jax.grad(lambda x: sigmoid_focal_loss(x, t, gamma=gamma).sum())(x)
    assert np.isfinite(g).all()
    assert abs(g[0]) < 1e-6 and abs(g[1]) < 1e-6  # confident and right: no gradient


def test_focal_bf16_input_jit_vmap():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.bfloat16)
    t = jnp.asarray(rng.uniform(size=(3, 5, 4)) < 0.2, jnp.float32)
    out = jax.jit(jax.vmap(sigmoid_focal_loss))(x, t)
    assert out.dtype == jnp.float32
    ref = _np_focal(np.asarray(x, np.float64), np.asarray(t), 0.25, 2.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-7)


def test_quality_focal_loss_values():
    ln2 = math.log(2.0)
    x = jnp.zeros(3)
    y = jnp.array([0.0, 0.5, 1.0])
    # p = 0.5: |p - y|^2 = 0.25, 0, 0.25; BCE(0, y) = ln 2 for any y
    np.testing.assert_allclose(quality_focal_loss(x, y), [0.25 * ln2, 0.0, 0.25 * ln2], atol=1e-7)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 3, (50, 6))
    y = rng.uniform(size=(50, 6)) * (rng.uniform(size=(50, 6)) < 0.3)
    p = 1 / (1 + np.exp(-x))
    ref = _np_bce(x, y) * np.abs(p - y) ** 2.0
    np.testing.assert_allclose(
        quality_focal_loss(jnp.asarray(x, jnp.float32), y), ref, rtol=1e-4, atol=1e-7
    )
    # y = 0 reduces to the focal loss without alpha
    np.testing.assert_allclose(
        quality_focal_loss(jnp.asarray(x, jnp.float32), 0.0 * y),
        _np_focal(x, 0.0 * y, -1, 2.0),
        rtol=1e-4,
        atol=1e-7,
    )


@pytest.mark.parametrize("beta", [2.0, 0.5])
def test_quality_focal_loss_extreme_grads(beta):
    x = jnp.array([100.0, -100.0, 100.0, -100.0, 0.0])
    y = jnp.array([1.0, 0.0, 0.3, 0.7, 0.5])
    f = lambda x: quality_focal_loss(x, y, beta=beta).sum()
    assert np.isfinite(f(x)) and np.isfinite(jax.grad(f)(x)).all()
