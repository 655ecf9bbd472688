"""Point-set sampling helpers (RepPoints / TSD groundwork)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.deform_conv import deform_conv2d
from jaxdet.ops.point_sampling import (
    feature_to_image,
    image_to_feature,
    kernel_offsets,
    location_grid,
    points_to_dcn_offsets,
    sample_at_offsets,
    sample_points,
)
from jaxdet.ops.sampling import bilinear_sample


def test_location_grid_and_kernel_offsets():
    g = np.asarray(location_grid(2, 3, stride=4))
    assert g.shape == (2, 3, 2)
    np.testing.assert_array_equal(g[1, 2], [4, 8])
    k = np.asarray(kernel_offsets((3, 3)))
    np.testing.assert_array_equal(k[0], [-1, -1])
    np.testing.assert_array_equal(k[5], [0, 1])  # k = i*kw + j = 1*3 + 2
    np.testing.assert_array_equal(np.asarray(kernel_offsets((3, 3), dilation=2))[8], [2, 2])


def test_sample_at_offsets_matches_per_point_sampling():
    rng = np.random.default_rng(0)
    feat = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
    off = jnp.asarray(rng.normal(size=(2, 5, 6, 9, 2)) * 2, jnp.float32)
    out = jax.jit(sample_at_offsets)(feat, off)
    assert out.shape == (2, 5, 6, 9, 3)
    base = location_grid(5, 6)[:, :, None, :]
    sample = jax.jit(bilinear_sample)
    for b in range(2):
        ref = sample(feat[b], base + off[b])
        np.testing.assert_allclose(np.asarray(out[b]), np.asarray(ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda f, o: sample_at_offsets(f, o, reduce="mean"))(feat, off)),
        np.asarray(out.mean(-2)),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(ValueError):
        sample_at_offsets(feat, off, reduce="median")


def test_stride_and_absolute_points():
    rng = np.random.default_rng(1)
    feat = jnp.asarray(rng.normal(size=(1, 8, 8, 2)), jnp.float32)
    off = jnp.zeros((1, 4, 4, 1, 2))
    out = jax.jit(lambda f, o: sample_at_offsets(f, o, stride=2))(feat, off)
    np.testing.assert_allclose(np.asarray(out[0, :, :, 0]), np.asarray(feat[0, ::2, ::2]))
    pts = jnp.asarray([[[1.0, 2.0], [7.0, 7.0]]])
    np.testing.assert_allclose(
        np.asarray(jax.jit(sample_points)(feat, pts))[0], np.asarray(feat[0, [1, 7], [2, 7]])
    )
    p = jnp.asarray([[8.0, 16.0]])
    np.testing.assert_allclose(np.asarray(feature_to_image(image_to_feature(p, 8), 8)), p)


def test_points_to_dcn_offsets_reppoints():
    """A 3x3 deform conv fed RepPoints-style offsets = sampling the 9 points and
    contracting with the kernel."""
    rng = np.random.default_rng(2)
    feat = jnp.asarray(rng.normal(size=(2, 6, 7, 4)), jnp.float32)
    pts = jnp.asarray(rng.normal(size=(2, 6, 7, 9, 2)) * 1.5, jnp.float32)
    wt = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    conv = jax.jit(lambda f, p, w: deform_conv2d(f, points_to_dcn_offsets(p), w, padding=1))(
        feat, pts, wt
    )
    ref = jax.jit(
        lambda f, p, w: jnp.einsum("bhwkc,kco->bhwo", sample_at_offsets(f, p), w.reshape(9, 4, 5))
    )(feat, pts, wt)
    np.testing.assert_allclose(np.asarray(conv), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_gradients_flow_to_offsets():
    rng = np.random.default_rng(3)
    feat = jnp.asarray(rng.normal(size=(1, 5, 5, 2)), jnp.float32)
    off = jnp.asarray(rng.uniform(-1.3, 1.3, size=(1, 5, 5, 3, 2)), jnp.float32)
    g = jax.jit(jax.grad(lambda o: jnp.sum(sample_at_offsets(feat, o) ** 2)))(off)
    assert g.shape == off.shape and float(jnp.abs(g).sum()) > 0
