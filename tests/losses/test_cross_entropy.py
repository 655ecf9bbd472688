import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy, softmax_cross_entropy


def test_bce_values():
    out = sigmoid_binary_cross_entropy(
        jnp.array([0.0, 0.0, 100.0, -100.0, 2.0]), jnp.array([1.0, 0.3, 0.0, 1.0, 1.0])
    )
    np.testing.assert_allclose(
        out, [math.log(2), math.log(2), 100.0, 100.0, math.log(1 + math.exp(-2.0))], rtol=1e-6
    )
    rng = np.random.default_rng(0)
    x = rng.normal(0, 4, 200)
    t = rng.uniform(size=200)
    p = 1 / (1 + np.exp(-x))
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(
        sigmoid_binary_cross_entropy(jnp.asarray(x, jnp.float32), t), ref, rtol=1e-5, atol=1e-6
    )


def test_bce_extreme_grads_and_dtype():
    x = jnp.array([100.0, -100.0, 100.0, -100.0], jnp.bfloat16)
    t = jnp.array([1.0, 0.0, 0.0, 1.0])
    out = sigmoid_binary_cross_entropy(x, t)
    assert out.dtype == jnp.float32
    g = jax.grad(lambda x: sigmoid_binary_cross_entropy(x, t).sum())(x.astype(jnp.float32))
    np.testing.assert_allclose(g, [0.0, 0.0, 1.0, -1.0], atol=1e-6)


def test_softmax_ce_values_and_ignore():
    np.testing.assert_allclose(
        softmax_cross_entropy(jnp.zeros((2, 5)), jnp.array([0, 4])), math.log(5), rtol=1e-6
    )
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (30, 7))
    y = rng.integers(0, 7, 30)
    ref = np.log(np.exp(x).sum(-1)) - x[np.arange(30), y]
    np.testing.assert_allclose(
        softmax_cross_entropy(jnp.asarray(x, jnp.float32), y), ref, rtol=1e-5
    )
    x = jnp.array([[1000.0, -1000.0, 0.0], [0.0, 1.0, 2.0]])
    labels = jnp.array([1, -1])
    out = softmax_cross_entropy(x, labels)
    np.testing.assert_allclose(out, [2000.0, 0.0], rtol=1e-6)
    g = jax.grad(lambda x: softmax_cross_entropy(x, labels).sum())(x)
    assert np.isfinite(g).all() and np.all(g[1] == 0)


def test_jit_vmap():
    x = jnp.ones((4, 3, 5))
    y = jnp.zeros((4, 3), jnp.int32)
    out = jax.jit(jax.vmap(softmax_cross_entropy))(x, y)
    np.testing.assert_allclose(out, math.log(5), rtol=1e-6)
