"""bilinear_sample against NumPy transcriptions of torchvision's CPU kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdet.ops.sampling import bilinear_sample, bilinear_sample_batched


def bilinear_zero_ref(img, y, x):
    """torchvision deform_conv2d_kernel.cpp `bilinear_interpolate`, img [H, W, C]."""
    h, w, c = img.shape
    if y <= -1 or h <= y or x <= -1 or w <= x:
        return np.zeros(c)
    y_low, x_low = int(np.floor(y)), int(np.floor(x))
    y_high, x_high = y_low + 1, x_low + 1
    lh, lw = y - y_low, x - x_low
    hh, hw = 1 - lh, 1 - lw
    v1 = img[y_low, x_low] if (y_low >= 0 and x_low >= 0) else 0
    v2 = img[y_low, x_high] if (y_low >= 0 and x_high <= w - 1) else 0
    v3 = img[y_high, x_low] if (y_high <= h - 1 and x_low >= 0) else 0
    v4 = img[y_high, x_high] if (y_high <= h - 1 and x_high <= w - 1) else 0
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def bilinear_clamp_ref(img, y, x):
    """torchvision roi_align_common.h sampling rule, img [H, W, C]."""
    h, w, c = img.shape
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return np.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * img[y_low, x_low]
        + hy * lx * img[y_low, x_high]
        + ly * hx * img[y_high, x_low]
        + ly * lx * img[y_high, x_high]
    )


REFS = {"zero": bilinear_zero_ref, "clamp": bilinear_clamp_ref}


def _points(rng, n, h, w):
    pts = np.stack([rng.uniform(-3, h + 2, n), rng.uniform(-3, w + 2, n)], -1)
    special = np.array(
        [
            [0, 0],
            [h - 1, w - 1],
            [-1, 2],
            [2, -1],
            [h, 1],
            [1, w],
            [-0.5, -0.5],
            [h - 0.5, w - 0.5],
            [-1.0001, 1],
            [1e6, 1],
            [-1e6, -1e6],
            [3, 2],
            [2.5, 3],
        ],
        np.float64,
    )
    return np.concatenate([pts, special]).astype(np.float32)


@pytest.mark.parametrize("boundary", ["zero", "clamp"])
@pytest.mark.parametrize("layout", ["rows", "packed"])
def test_matches_reference(boundary, layout):
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(5, 7, 3)).astype(np.float32)
    pts = _points(rng, 80, 5, 7)
    out = jax.jit(lambda f, p: bilinear_sample(f, p, boundary=boundary, layout=layout))(feat, pts)
    ref = np.stack([REFS[boundary](feat.astype(np.float64), *p.astype(np.float64)) for p in pts])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["rows", "packed"])
def test_batched_and_leading_dims(layout):
    rng = np.random.default_rng(1)
    feat = rng.normal(size=(3, 4, 6, 2)).astype(np.float32)
    pts = rng.uniform(-2, 6, size=(3, 5, 4, 2)).astype(np.float32)
    bidx = np.array([2, 0, 1])[:, None, None]
    out = jax.jit(lambda f, b, p: bilinear_sample_batched(f, b, p, layout=layout))(feat, bidx, pts)
    assert out.shape == (3, 5, 4, 2)
    single = jax.jit(lambda f, p: bilinear_sample(f, p, layout=layout))
    for i in range(3):
        np.testing.assert_allclose(
            np.asarray(out[i]),
            np.asarray(single(feat[bidx[i, 0, 0]], pts[i])),
            rtol=1e-6,
            atol=1e-6,
        )


def test_nan_and_inf_points():
    feat = jnp.ones((4, 4, 2))
    pts = jnp.array([[1.5, 1.5], [np.nan, 1.0], [1.0, np.nan], [np.inf, 1.0], [-np.inf, 2.0]])
    for boundary in ("zero", "clamp"):
        for layout in ("rows", "packed"):
            f = jax.jit(
                lambda f, p, b=boundary, lo=layout: bilinear_sample(f, p, boundary=b, layout=lo)
            )
            out = np.asarray(f(feat, pts))
            np.testing.assert_allclose(out[0], 1.0)
            assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
            np.testing.assert_array_equal(out[3:], 0.0)


@pytest.mark.parametrize("boundary", ["zero", "clamp"])
@pytest.mark.parametrize("layout", ["rows", "packed"])
def test_gradients(boundary, layout):
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        feat = jnp.asarray(rng.normal(size=(4, 5, 3)))
        # keep points away from integer coordinates (kinks of the interpolant)
        pts = rng.uniform(-1.8, 5.8, size=(12, 2))
        pts = pts + 0.25 * (np.abs(pts - np.round(pts)) < 0.05)
        f = jax.jit(lambda a, p: bilinear_sample(a, p, boundary=boundary, layout=layout))
        check_grads(f, (feat, jnp.asarray(pts)), order=1, modes=["rev", "fwd"], eps=1e-6)


def test_gradient_of_feat_is_transpose():
    """d/dfeat is the scatter-add of the corner weights (linear map adjoint)."""
    rng = np.random.default_rng(3)
    feat = jnp.asarray(rng.normal(size=(5, 6, 4)), jnp.float32)
    pts = jnp.asarray(rng.uniform(-1.5, 6.5, size=(30, 2)), jnp.float32)
    f = lambda a: bilinear_sample(a, pts)
    g = jnp.asarray(rng.normal(size=(30, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=feat.shape), jnp.float32)
    vjp = jax.jit(lambda a, g: jax.vjp(f, a)[1](g)[0])(feat, g)
    np.testing.assert_allclose(
        float(jnp.vdot(vjp, t)), float(jnp.vdot(g, jax.jit(f)(t))), rtol=1e-5
    )


def test_jit_vmap():
    rng = np.random.default_rng(4)
    feat = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
    pts = jnp.asarray(rng.uniform(-1, 6, size=(2, 7, 2)), jnp.float32)
    out = jax.jit(jax.vmap(bilinear_sample))(feat, pts)
    ref = jnp.stack([bilinear_sample(feat[i], pts[i]) for i in range(2)])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_bf16_map_f32_accumulation():
    rng = np.random.default_rng(5)
    feat = rng.normal(size=(6, 6, 8)).astype(np.float32)
    fb = jnp.asarray(feat, jnp.bfloat16)
    pts = jnp.asarray(rng.uniform(-1, 6, size=(20, 2)), jnp.float32)
    out = jax.jit(bilinear_sample)(fb, pts)
    assert out.dtype == jnp.bfloat16
    ref = jax.jit(bilinear_sample)(fb.astype(jnp.float32), pts)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=1e-2, atol=1e-2)


def test_bad_shapes():
    with pytest.raises(ValueError):
        bilinear_sample(jnp.zeros((4, 4)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError):
        bilinear_sample(jnp.zeros((4, 4, 1)), jnp.zeros((3, 3)))
    with pytest.raises(ValueError):
        bilinear_sample(jnp.zeros((4, 4, 1)), jnp.zeros((3, 2)), boundary="reflect")
