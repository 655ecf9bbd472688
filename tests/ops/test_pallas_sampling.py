"""The Pallas sampling kernel (interpret mode on CPU) equals the XLA path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops import pallas as pallas_cfg
from jaxdet.ops import sampling
from jaxdet.ops.pallas import sampling as pallas_sampling


def _case(seed=0, b=2, h=6, w=7, c=5, n=37):
    rng = np.random.default_rng(seed)
    feat = jnp.asarray(rng.normal(size=(b, h, w, c)), jnp.float32)
    pts = jnp.asarray(rng.uniform(-2.5, max(h, w) + 1.5, size=(n, 2)), jnp.float32)
    bidx = jnp.asarray(rng.integers(0, b, n), jnp.int32)
    g = jnp.asarray(rng.normal(size=(n, c)), jnp.float32)
    return feat, pts, bidx, g


@pytest.mark.parametrize("boundary", ["zero", "clamp"])
def test_values_and_gradients_match_xla(boundary):
    feat, pts, bidx, g = _case()

    def loss(impl):
        def f(feat, pts):
            out = sampling.bilinear_sample_batched(feat, bidx, pts, boundary=boundary, impl=impl)
            return jnp.vdot(out, g), out

        return jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))

    (_, out_x), (dfeat_x, dpts_x) = loss("xla")(feat, pts)
    (_, out_p), (dfeat_p, dpts_p) = loss("pallas")(feat, pts)
    np.testing.assert_allclose(np.asarray(out_p), np.asarray(out_x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dfeat_p), np.asarray(dfeat_x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dpts_p), np.asarray(dpts_x), rtol=1e-5, atol=1e-5)


def test_unbatched_leading_dims_and_block_padding():
    feat, _, _, _ = _case(seed=1, b=1, c=3)
    pts = jnp.asarray(np.random.default_rng(2).uniform(-2, 8, size=(3, 5, 2)), jnp.float32)
    ref = jax.jit(lambda f, p: sampling.bilinear_sample(f, p, impl="xla"))(feat[0], pts)
    for block in (8, 128):
        out = jax.jit(
            lambda f, p, b=block: pallas_sampling.bilinear_sample(f, p, block=b, interpret=True)
        )(feat[0], pts)
        assert out.shape == (3, 5, 3)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_nan_points():
    feat = jnp.ones((1, 4, 4, 2))
    pts = jnp.array([[1.5, 1.5], [np.nan, 1.0], [20.0, 1.0]])
    out = np.asarray(
        jax.jit(lambda f, p: pallas_sampling.bilinear_sample_batched(f, 0, p, interpret=True))(
            feat, pts
        )
    )
    np.testing.assert_allclose(out[0], 1.0)
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[2], 0.0)


def test_dispatch_config():
    # impl="auto" stays on XLA on CPU even when Pallas is enabled.
    assert pallas_cfg.needs_interpret("cpu") and not pallas_cfg.needs_interpret("tpu")
    was = pallas_cfg.is_enabled()
    try:
        pallas_cfg.set_enabled(True)
        assert not pallas_cfg.use_pallas("cpu")
        assert pallas_cfg.use_pallas("gpu") and pallas_cfg.use_pallas("tpu")
        pallas_cfg.set_enabled(False)
        assert not pallas_cfg.use_pallas("gpu")
    finally:
        pallas_cfg.set_enabled(was)
