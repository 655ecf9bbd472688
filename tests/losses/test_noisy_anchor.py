"""Soft-label focal loss and re-weighting factors of noisy-anchor training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses import noisy_anchor as na_loss
from jaxdet.losses.focal import sigmoid_focal_loss
from jaxdet.losses.noisy_anchor import inverse_complement, reweight_factors, soft_focal_loss


def test_soft_focal_hand_computed():
    # logit 0 (p = 0.5), t = 0.5, alpha 0.25, gamma 2:
    # 0.5 * 0.25 * 0.25 * ln 2 + 0.5 * 0.75 * 0.25 * ln 2
    want = (0.5 * 0.25 * 0.25 + 0.5 * 0.75 * 0.25) * np.log(2.0)
    np.testing.assert_allclose(soft_focal_loss(jnp.zeros(1), jnp.full(1, 0.5)), [want], rtol=1e-6)
    # gamma 0, alpha off: plain BCE with a soft target.
    x, t = 1.3, 0.3
    p = 1 / (1 + np.exp(-x))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    got = soft_focal_loss(jnp.array([x]), jnp.array([t]), alpha=-1, gamma=0.0)
    np.testing.assert_allclose(got, [bce], rtol=1e-5)


def test_soft_focal_equals_focal_on_hard_targets():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(scale=3, size=(5, 7)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 2, size=(5, 7)), jnp.float32)
    for alpha, gamma in ((0.25, 2.0), (0.5, 1.5), (-1.0, 0.0)):
        np.testing.assert_allclose(
            soft_focal_loss(x, t, alpha, gamma), sigmoid_focal_loss(x, t, alpha, gamma),
            rtol=1e-5, atol=1e-7,
        )


def test_soft_focal_finite_for_extreme_logits():
    x = jnp.array([-100.0, -30.0, 0.0, 30.0, 100.0])
    t = jnp.array([0.0, 0.3, 0.5, 0.7, 1.0])
    loss, grad = jax.value_and_grad(lambda x: jnp.sum(soft_focal_loss(x, t)))(x)
    assert np.all(np.isfinite(np.asarray(loss))) and np.all(np.isfinite(np.asarray(grad)))
    # The loss is lowest where p = t (for gamma 0, alpha off it is the BCE minimum).
    f = lambda x: soft_focal_loss(x, jnp.full_like(x, 0.7), alpha=-1, gamma=0.0)
    xs = jnp.linspace(-3, 3, 601)
    assert abs(1 / (1 + np.exp(-float(xs[jnp.argmin(f(xs))]))) - 0.7) < 0.01


def test_reweight_hand_computed():
    # alpha 0.75, gamma 1: f(0.5) = 2, f(0) = 1 -> raw [2, 1], mean 1.5 -> [4/3, 2/3];
    # the non-positive third entry gets 1.
    r = reweight_factors(jnp.array([0.5, 0.0, 0.9]), jnp.array([0.5, 0.0, 0.9]),
                         jnp.array([True, True, False]))
    np.testing.assert_allclose(r, [4 / 3, 2 / 3, 1.0], rtol=1e-6)
    # Mixing: loc 0.5 (f 2), cls 0 (f 1) -> 0.75 * 2 + 0.25 = 1.75; vs loc 0, cls 0.5 -> 1.25.
    r = reweight_factors(jnp.array([0.5, 0.0]), jnp.array([0.0, 0.5]), jnp.array([True, True]))
    np.testing.assert_allclose(r, [1.75 / 1.5, 1.25 / 1.5], rtol=1e-6)
    # gamma 2 squares before normalising: [1.75^2, 1.25^2] / mean.
    r = reweight_factors(jnp.array([0.5, 0.0]), jnp.array([0.0, 0.5]), jnp.array([True, True]),
                         gamma=2.0)
    raw = np.array([1.75**2, 1.25**2])
    np.testing.assert_allclose(r, raw / raw.mean(), rtol=1e-6)


def test_reweight_invariants():
    rng = np.random.default_rng(1)
    loc = jnp.asarray(rng.uniform(size=(4, 50)), jnp.float32).at[0, 0].set(1.0)
    cls = jnp.asarray(rng.uniform(size=(4, 50)), jnp.float32).at[1, 1].set(1.0)
    pos = jnp.asarray(rng.uniform(size=(4, 50)) < 0.3).at[0, 0].set(True).at[1, 1].set(True)
    r = np.asarray(reweight_factors(loc, cls, pos))
    assert np.all(np.isfinite(r)) and np.all(r > 0)
    np.testing.assert_allclose(r[np.asarray(pos)].sum(), np.asarray(pos).sum(), rtol=1e-5)
    assert np.all(r[~np.asarray(pos)] == 1.0)
    # Cleaner anchors weigh more: r is increasing in loc (cls fixed).
    loc1 = jnp.linspace(0, 1, 11)
    r1 = np.asarray(reweight_factors(loc1, jnp.full(11, 0.2), jnp.ones(11, bool)))
    assert np.all(np.diff(r1) >= 0)
    # f is clipped at max_score: f(1) = f(0.99) = 100.
    np.testing.assert_allclose(inverse_complement(jnp.array([0.0, 0.99, 1.0])), [1, 100, 100],
                               rtol=1e-5)


def test_reweight_without_positives_is_one_and_has_no_gradient():
    r = reweight_factors(jnp.zeros(5), jnp.zeros(5), jnp.zeros(5, bool))
    np.testing.assert_array_equal(r, np.ones(5))
    g = jax.grad(lambda x: jnp.sum(reweight_factors(x, x, jnp.ones(5, bool)) * x))(
        jnp.linspace(0.1, 0.5, 5)
    )
    r = reweight_factors(jnp.linspace(0.1, 0.5, 5), jnp.linspace(0.1, 0.5, 5), jnp.ones(5, bool))
    np.testing.assert_allclose(g, r, rtol=1e-6)  # d(r * l)/dl = r: r is a constant


def test_jit_vmap():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 20, 4)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=(3, 20, 4)), jnp.float32)
    out = jax.jit(jax.vmap(soft_focal_loss))(x, t)
    np.testing.assert_allclose(out, soft_focal_loss(x, t), rtol=1e-6)
    loc = jnp.asarray(rng.uniform(size=(3, 20)), jnp.float32)
    pos = jnp.asarray(rng.uniform(size=(3, 20)) < 0.5)
    per_image = jax.jit(jax.vmap(reweight_factors))(loc, loc, pos)
    for i in range(3):
        np.testing.assert_allclose(per_image[i], reweight_factors(loc[i], loc[i], pos[i]),
                                   rtol=1e-6)


def test_rescaled_soft_labels_hand_computed_and_range():
    loc = jnp.array([0.2, 0.4, 0.6, 0.9])
    cls = jnp.array([0.1, 0.3, 0.2, 0.5])
    pos = jnp.array([True, True, True, False])
    out = na_loss.rescaled_soft_labels(loc, cls, pos, alpha=0.75)
    ml, mc = 0.4, 0.2
    s = 0.75 * np.array([0.2, 0.4, 0.6]) / ml + 0.25 * np.array([0.1, 0.3, 0.2]) / mc
    want = ml + (1 - ml) * (s - s.min()) / (s.max() - s.min())
    np.testing.assert_allclose(out[:3], want, rtol=1e-6)
    assert float(out[3]) == 0.0
    np.testing.assert_allclose([out[:3].min(), out[:3].max()], [ml, 1.0], rtol=1e-6)


def test_rescaled_soft_labels_degenerate_and_no_gradient():
    one = na_loss.rescaled_soft_labels(jnp.array([0.3, 0.5]), jnp.array([0.2, 0.9]),
                                       jnp.array([True, False]))
    np.testing.assert_allclose(one, [1.0, 0.0])
    none = na_loss.rescaled_soft_labels(jnp.ones(3) * 0.5, jnp.ones(3) * 0.5,
                                        jnp.zeros(3, bool))
    np.testing.assert_allclose(none, 0.0)
    g = jax.grad(lambda x: jnp.sum(na_loss.rescaled_soft_labels(
        x, jnp.array([0.1, 0.2, 0.3]), jnp.array([True, True, True]))))(
        jnp.array([0.2, 0.5, 0.7]))
    np.testing.assert_allclose(g, 0.0)


def test_rescaled_soft_labels_jit_vmap():
    key = jax.random.PRNGKey(0)
    loc = jax.random.uniform(key, (3, 40))
    cls = jax.random.uniform(jax.random.fold_in(key, 1), (3, 40))
    pos = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.3, (3, 40))
    f = lambda a, b, c: na_loss.rescaled_soft_labels(a, b, c, alpha=0.75)
    out = jax.jit(jax.vmap(f))(loc, cls, pos)
    for i in range(3):
        np.testing.assert_allclose(out[i], f(loc[i], cls[i], pos[i]), rtol=1e-6)
        assert float(jnp.max(jnp.where(pos[i], out[i], 0.0))) == pytest.approx(1.0)
