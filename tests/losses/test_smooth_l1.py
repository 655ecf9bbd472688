import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses.smooth_l1 import l1_loss, smooth_l1_loss


def test_known_values_default_beta_one():
    pred = jnp.array([0.0, 0.5, -2.0, 3.0])
    target = jnp.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(smooth_l1_loss(pred, target), [0.0, 0.125, 1.5, 1.5])
    np.testing.assert_allclose(l1_loss(pred, target), [0.0, 0.5, 2.0, 2.0])


def test_beta_zero_is_l1_and_small_beta():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(2, 100)).astype(np.float32)
    np.testing.assert_allclose(smooth_l1_loss(p, t, beta=0.0), np.abs(p - t))
    beta = 1.0 / 9.0
    d = np.abs(p - t)
    ref = np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    np.testing.assert_allclose(smooth_l1_loss(p, t, beta=beta), ref, rtol=1e-6, atol=1e-7)
    # continuous at d = beta
    np.testing.assert_allclose(
        smooth_l1_loss(jnp.array([beta - 1e-6, beta + 1e-6]), 0.0, beta=beta), 0.5 * beta, atol=1e-5
    )
    with pytest.raises(ValueError):
        smooth_l1_loss(p, t, beta=-1.0)


@pytest.mark.parametrize("beta", [0.0, 0.11, 1.0])
def test_grads_finite_and_f32(beta):
    p = jnp.array([0.0, 1e-8, 5.0, -5.0], jnp.bfloat16)
    t = jnp.zeros(4, jnp.bfloat16)
    assert smooth_l1_loss(p, t, beta=beta).dtype == jnp.float32
    g = jax.jit(jax.grad(lambda p: smooth_l1_loss(p, t, beta=beta).sum()))(p.astype(jnp.float32))
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g[2:], [1.0, -1.0])


def test_vmap():
    p = jnp.ones((3, 8, 4))
    out = jax.vmap(smooth_l1_loss)(p, jnp.zeros_like(p))
    np.testing.assert_allclose(out, 0.5)
