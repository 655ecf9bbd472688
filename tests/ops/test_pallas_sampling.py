"""The Pallas sampling kernels (TPU and Triton forms, run by the Pallas interpreter on
CPU) equal the XLA path: values and gradients in the map and the points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops import pallas as pallas_cfg
from jaxdet.ops import sampling
from jaxdet.ops.pallas import sampling as pallas_sampling

KERNELS = ("tpu", "triton")
# (B, H, W, C, points): a single tile; more points than a tile and channels past 128
# lanes over a map of several TPU row windows (2 * 22 * 32 = 1408 rows > 512); points
# sorted by y (as a conv's are), so that each TPU point tile touches a few of the map's
# windows, and more point tiles than one SMEM block of window bounds holds (9 > 8).
SHAPES = ((2, 6, 7, 5, 37), (2, 20, 30, 130, 300), (1, 30, 40, 3, 1100))


def _case(shape, dtype, seed=0):
    b, h, w, c, n = shape
    rng = np.random.default_rng(seed)
    feat = jnp.asarray(rng.normal(size=(b, h, w, c)), dtype)
    # Points from 2.5 pixels before the map to 1.5 after it: outside, partly and fully inside.
    lo, hi = np.array([-2.5, -2.5]), np.array([h + 1.5, w + 1.5])
    pts = rng.uniform(lo, hi, size=(n, 2))
    if n > 1000:
        pts = pts[np.argsort(pts[:, 0])]
    pts = jnp.asarray(pts, jnp.float32)
    bidx = jnp.asarray(rng.integers(0, b, n), jnp.int32)
    g = jnp.asarray(rng.normal(size=(n, c)), dtype)
    return feat, pts, bidx, g


def _value_and_grads(sample, feat, pts, g):
    def f(feat, pts):
        out = sample(feat, pts)
        return jnp.vdot(out.astype(jnp.float32), g.astype(jnp.float32)), out

    (_, out), (dfeat, dpts) = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(feat, pts)
    return out, dfeat, dpts


def _close(a, b, tol):
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a32, b32, rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("boundary", ["zero", "clamp"])
def test_values_and_gradients_match_xla_f32(kernel, shape, boundary):
    feat, pts, bidx, g = _case(shape, jnp.float32)

    def run(impl, **kw):
        return lambda f, p: sampling.bilinear_sample_batched(
            f, bidx, p, boundary=boundary, impl=impl, **kw
        )

    ref = _value_and_grads(run("xla"), feat, pts, g)
    got = _value_and_grads(
        lambda f, p: pallas_sampling.bilinear_sample_batched(
            f, bidx, p, boundary=boundary, kernel=kernel
        ),
        feat, pts, g,
    )
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(a, b, 1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("boundary", ["zero", "clamp"])
def test_values_and_gradients_match_xla_bf16(kernel, boundary):
    feat, pts, bidx, g = _case(SHAPES[1], jnp.bfloat16, seed=3)
    kw = dict(boundary=boundary)
    ref = _value_and_grads(
        lambda f, p: sampling.bilinear_sample_batched(f, bidx, p, impl="xla", **kw), feat, pts, g
    )
    got = _value_and_grads(
        lambda f, p: pallas_sampling.bilinear_sample_batched(f, bidx, p, kernel=kernel, **kw),
        feat, pts, g,
    )
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
    out, dfeat, dpts = got
    # Same f32 arithmetic, rounded once to bf16 (the XLA path's map gradient is summed
    # in bf16 by its scatter, the kernels' in f32).
    _close(out, ref[0], 1e-2)
    _close(dfeat, ref[1], 3e-2)
    _close(dpts, ref[2], 1e-3 * float(np.abs(np.asarray(ref[2])).max()) + 1e-3)


def test_impl_pallas_through_the_op():
    # impl="pallas" for a CPU target: the TPU kernel, interpreted.
    feat, pts, bidx, g = _case(SHAPES[0], jnp.float32, seed=5)
    ref = _value_and_grads(
        lambda f, p: sampling.bilinear_sample_batched(f, bidx, p, impl="xla"), feat, pts, g
    )
    got = _value_and_grads(
        lambda f, p: sampling.bilinear_sample_batched(f, bidx, p, impl="pallas"), feat, pts, g
    )
    for a, b in zip(got, ref):
        _close(a, b, 1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbatched_leading_dims(kernel):
    feat, _, _, _ = _case((1, 6, 7, 3, 1), jnp.float32, seed=1)
    pts = jnp.asarray(np.random.default_rng(2).uniform(-2, 8, size=(3, 5, 2)), jnp.float32)
    ref = jax.jit(lambda f, p: sampling.bilinear_sample(f, p, impl="xla"))(feat[0], pts)
    out = jax.jit(lambda f, p: pallas_sampling.bilinear_sample(f, p, kernel=kernel))(feat[0], pts)
    assert out.shape == (3, 5, 3)
    _close(out, ref, 1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_and_far_points(kernel):
    feat = jnp.ones((1, 4, 4, 2))
    pts = jnp.array([[1.5, 1.5], [np.nan, 1.0], [20.0, 1.0], [-np.inf, 2.0]])
    out = np.asarray(
        jax.jit(lambda f, p: pallas_sampling.bilinear_sample_batched(f, 0, p, kernel=kernel))(
            feat, pts
        )
    )
    np.testing.assert_allclose(out[0], 1.0)
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[2:], 0.0)
    # A tile of points that are all outside reads no row at all: 0, and 0 gradients.
    far = jnp.array([[20.0, 1.0], [-3.0, 2.0]])
    f = lambda f, p: jnp.sum(pallas_sampling.bilinear_sample_batched(f, 0, p, kernel=kernel))
    val, (dfeat, dpts) = jax.jit(jax.value_and_grad(f, (0, 1)))(feat, far)
    assert float(val) == 0.0
    np.testing.assert_array_equal(np.asarray(dfeat), 0.0)
    np.testing.assert_array_equal(np.asarray(dpts), 0.0)


def test_backend_choice():
    assert pallas_cfg.needs_interpret("cpu") and not pallas_cfg.needs_interpret("tpu")
    for target in ("cpu", "gpu", "tpu"):
        assert not pallas_cfg.use_pallas(target)  # 'auto' is XLA everywhere
        assert not pallas_cfg.use_pallas(target, "xla")
        assert pallas_cfg.use_pallas(target, "pallas")
    with pytest.raises(ValueError, match="sampling backend"):
        pallas_cfg.use_pallas("gpu", "triton")
    assert pallas_sampling.resolve_kernel(None, "gpu") == "triton"
    assert pallas_sampling.resolve_kernel(None, "tpu") == "tpu"
    assert not hasattr(pallas_cfg, "set_enabled")


@pytest.mark.parametrize("name", ["dcnv2", "stride2", "far"])
def test_deform_conv_with_pallas_sampling_matches_xla(name):
    from jaxdet.ops.deform_conv import deform_conv2d
    from tests.ops.test_deform_conv import _make

    x, off, wt, mask, kw = _make(name)
    mask = jnp.ones(off.shape[:-1], jnp.float32) if mask is None else mask
    cot = jnp.asarray(np.random.default_rng(7).normal(size=(x.shape[0], *off.shape[1:3], 1)))

    def run(backend):
        def f(*a):
            out = deform_conv2d(*a, sampling_backend=backend, **kw)
            return jnp.vdot(out, jnp.broadcast_to(cot, out.shape)), out

        return jax.jit(jax.value_and_grad(f, (0, 1, 2, 3), has_aux=True))(x, off, wt, mask)

    (_, out_x), grads_x = run("xla")
    (_, out_p), grads_p = run("pallas")
    _close(out_p, out_x, 1e-4)
    for a, b in zip(grads_p, grads_x):
        _close(a, b, 1e-4)


def test_config_field_and_module_pass_through():
    from configs.atss import atss_tiny_shapes
    from jaxdet.models.layers_deform import ModulatedDeformConv

    assert atss_tiny_shapes.get_config().model.sampling_backend == "auto"
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 5, 4)), jnp.float32)
    outs = []
    for backend in ("xla", "pallas"):
        net = ModulatedDeformConv(3, sampling_backend=backend)
        params = net.init(jax.random.PRNGKey(0), x)
        outs.append(jax.jit(net.apply)(params, x))
    _close(outs[1], outs[0], 1e-5)
