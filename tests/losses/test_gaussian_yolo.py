"""Gaussian YOLOv3's NLL: values against the formula, gradients against darknet's
deltas (`delta_gaussian_yolo_box`), finiteness, the sigma_const switch, jit(vmap)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.losses.gaussian_yolo import box_scale, gaussian_nll


def np_density(t, mu, sigma, c):
    return np.exp(-((t - mu) ** 2) / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * (sigma + c))


def test_value_hand_computed():
    # t = 0.5, mu = 0.3, sigma = 0.2: z = 1, N = exp(-1/2) / (sqrt(2 pi) (0.2 + 0.3)).
    v = float(gaussian_nll(0.3, 0.2, 0.5))
    assert math.isclose(v, 0.5 + math.log(math.sqrt(2 * math.pi) * 0.5), rel_tol=1e-5)
    # The paper's formula (no constant): the normal NLL 0.5 z^2 + log(sigma sqrt(2 pi)).
    v0 = float(gaussian_nll(0.3, 0.2, 0.5, sigma_const=0.0))
    assert math.isclose(v0, 0.5 + math.log(0.2 * math.sqrt(2 * math.pi)), rel_tol=1e-5)


def test_values_against_numpy_including_the_eps_floor():
    rng = np.random.default_rng(0)
    mu = rng.uniform(-2, 2, 200)
    sigma = rng.uniform(0.01, 0.99, 200)
    t = rng.uniform(-2, 2, 200)
    ref = -np.log(np_density(t, mu, sigma, 0.3) + 1e-9)
    np.testing.assert_allclose(np.asarray(gaussian_nll(mu, sigma, t)), ref, rtol=1e-4)
    # Far from the mean the density underflows: the loss is -log(1e-9).
    assert math.isclose(float(gaussian_nll(0.0, 0.01, 1.0)), -math.log(1e-9), rel_tol=1e-6)


def test_gradient_equals_darknet_deltas():
    rng = np.random.default_rng(1)
    mu = rng.uniform(-1, 1, 50)
    sigma = rng.uniform(0.05, 0.95, 50)
    t = mu + rng.normal(0, 0.3, 50)
    scale = 2.0 - 0.3 * 0.4
    c = 0.3
    gm, gs = jax.grad(lambda m, s: jnp.sum(0.5 * scale * gaussian_nll(m, s, t, c)),
                      argnums=(0, 1))(jnp.asarray(mu, jnp.float32),
                                      jnp.asarray(sigma, jnp.float32))
    n = np_density(t, mu, sigma, c)
    temp = 0.5 * scale * n / (n + 1e-9)
    z = (t - mu) / sigma
    delta_mu = temp * z / sigma
    delta_sigma = temp * (z ** 2 / sigma - 1 / (sigma + c))
    # darknet's delta is the negative gradient.
    np.testing.assert_allclose(np.asarray(gm), -delta_mu, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gs), -delta_sigma, rtol=1e-3, atol=1e-5)


def test_finite_for_extreme_inputs():
    mu = jnp.asarray([0.0, 100.0, -100.0, 0.5, 0.5])
    sigma = jax.nn.sigmoid(jnp.asarray([-200.0, -30.0, 30.0, 0.0, -104.0]))  # 0 ... 1
    t = jnp.asarray([0.0, -100.0, 100.0, 0.5, 0.7])
    v, g = jax.value_and_grad(lambda m, s: jnp.sum(gaussian_nll(m, s, t)), argnums=(0, 1))(
        mu, sigma)
    assert np.isfinite(float(v))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def test_jit_vmap_and_box_scale():
    rng = np.random.default_rng(2)
    mu, t = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    sigma = rng.uniform(0.1, 0.9, (2, 3, 4))
    out = jax.jit(jax.vmap(gaussian_nll))(mu, sigma, t)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(gaussian_nll(mu[1], sigma[1], t[1])),
                               rtol=1e-6)
    s = box_scale(jnp.asarray([[0.0, 0.0, 64.0, 32.0], [0.0, 0.0, 0.0, 0.0]]), (64, 128))
    np.testing.assert_allclose(np.asarray(s), [2 - 0.5 * 0.5, 2.0])
