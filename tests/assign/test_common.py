"""Pieces of `jaxdet.assign.common` the assigners share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.assign import common


def test_max_nonneg_equals_the_float_max():
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 257)).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero row
    x[0, 1, :] = np.float32(0.6)  # ties
    x[1, 2, 7] = np.float32(1e-40)  # a denormal
    x[2, 3, ::3] = 0.0
    x[1, 4] = rng.random(257).astype(np.float32) * np.float32(1e-30)
    for axis in (0, 1, 2, -1):
        got = jax.jit(lambda v, axis=axis: common.max_nonneg(v, axis=axis))(x)
        np.testing.assert_array_equal(np.asarray(got), x.max(axis=axis))
    # vmapped, as inside the folds; a NaN row stays NaN
    y = x.copy()
    y[2, 0, 5] = np.nan
    got = np.asarray(jax.jit(jax.vmap(lambda v: common.max_nonneg(v, axis=1)))(jnp.asarray(y)))
    np.testing.assert_array_equal(got[:2], y[:2].max(axis=2))
    assert np.isnan(got[2, 0]) and np.array_equal(got[2, 1:], y[2, 1:].max(axis=1))
