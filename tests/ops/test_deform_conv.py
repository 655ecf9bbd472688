"""deform_conv2d against a NumPy loop transcription of torchvision's
deform_conv2d (deformable_im2col + matmul), NHWC layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jaxdet.ops.deform_conv import deform_conv2d, output_size


def _bilinear(img, y, x):
    """torchvision deform_conv2d_kernel.cpp `bilinear_interpolate`, img [H, W, C]."""
    h, w, c = img.shape
    if y <= -1 or h <= y or x <= -1 or w <= x:
        return np.zeros(c)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y0, x - x0
    out = np.zeros(c)
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[yy, xx]
    return out


def deform_conv2d_ref(x, offsets, weight, mask, stride, padding, dilation, groups):
    """x [B,H,W,Cin], offsets [B,Ho,Wo,G,K,2], weight [kh,kw,Cin/groups,Cout]."""
    x = np.asarray(x, np.float64)
    offsets = np.asarray(offsets, np.float64)
    weight = np.asarray(weight, np.float64)
    b, h, w, cin = x.shape
    kh, kw, cin_g, cout = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = offsets.shape[1:3]
    g = offsets.shape[3]
    cpg = cin // g
    cols = np.zeros((b, ho, wo, kh * kw, cin))
    for bi in range(b):
        for oy in range(ho):
            for ox in range(wo):
                for gi in range(g):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy, dx = offsets[bi, oy, ox, gi, k]
                            m = 1.0 if mask is None else float(mask[bi, oy, ox, gi, k])
                            y = oy * sh - ph + i * dh + dy
                            xx = ox * sw - pw + j * dw + dx
                            sl = slice(gi * cpg, (gi + 1) * cpg)
                            cols[bi, oy, ox, k, sl] = m * _bilinear(x[bi, :, :, sl], y, xx)
    og = cout // groups
    out = np.zeros((b, ho, wo, cout))
    wk = weight.reshape(kh * kw, cin_g, cout)
    for q in range(groups):
        out[..., q * og : (q + 1) * og] = np.einsum(
            "bhwkc,kco->bhwo",
            cols[..., q * cin_g : (q + 1) * cin_g],
            wk[:, :, q * og : (q + 1) * og],
        )
    return out


CASES = {
    # name: (B, H, W, Cin, Cout, k, stride, pad, dil, G, groups, mask, offset scale)
    "basic": (2, 6, 7, 4, 3, (3, 3), 1, 1, 1, 1, 1, False, 1.5),
    "far": (1, 5, 5, 2, 3, (3, 3), 1, 1, 1, 1, 1, False, 8.0),
    "dil2": (1, 7, 8, 3, 2, (3, 3), 1, 2, 2, 1, 1, False, 1.0),
    "stride2": (2, 8, 7, 3, 4, (3, 3), 2, 1, 1, 1, 1, False, 1.0),
    "ogroups2": (1, 6, 6, 4, 3, (3, 3), 1, 1, 1, 2, 1, False, 2.0),
    "groups2": (1, 5, 6, 4, 6, (3, 3), 1, 1, 1, 1, 2, False, 1.0),
    "dcnv2": (2, 5, 6, 4, 4, (3, 3), 1, 1, 1, 2, 2, True, 1.5),
    "rect_kernel": (1, 6, 7, 2, 2, (2, 3), (1, 2), (0, 1), (2, 1), 1, 1, True, 1.0),
}


def _make(name, seed=0, dtype=np.float32):
    b, h, w, cin, cout, k, s, p, d, g, groups, use_mask, scale = CASES[name]
    pair = lambda v: (v, v) if isinstance(v, int) else v
    s, p, d = pair(s), pair(p), pair(d)
    ho, wo = output_size((h, w), k, s, p, d)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, h, w, cin)).astype(dtype)
    wt = rng.normal(size=(*k, cin // groups, cout)).astype(dtype)
    off = (rng.normal(size=(b, ho, wo, g, k[0] * k[1], 2)) * scale).astype(dtype)
    mask = rng.uniform(size=(b, ho, wo, g, k[0] * k[1])).astype(dtype) if use_mask else None
    kw = dict(stride=s, padding=p, dilation=d, groups=groups)
    return x, off, wt, mask, kw


PARAMS = [(n, "tiled", "rows") for n in CASES] + [
    ("dcnv2", "tiled", "packed"),
    ("far", "tiled", "packed"),
    ("dcnv2", "simple", "rows"),
    ("stride2", "simple", "packed"),
]


@pytest.mark.parametrize("name,impl,layout", PARAMS)
def test_matches_reference(name, impl, layout):
    x, off, wt, mask, kw = _make(name)
    ref = deform_conv2d_ref(
        x, off, wt, mask, kw["stride"], kw["padding"], kw["dilation"], kw["groups"]
    )
    f = lambda x, o, w, m: deform_conv2d(x, o, w, m, impl=impl, layout=layout, tile=16, **kw)
    out = jax.jit(f)(x, off, wt, mask)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_zero_offsets_equal_dense_conv():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 10, 6)).astype(np.float32)
    wt = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    for stride, pad, dil in ((1, 1, 1), (2, 1, 1), (1, 2, 2)):
        ho, wo = output_size((9, 10), (3, 3), stride, pad, dil)
        off = jnp.zeros((2, ho, wo, 1, 9, 2))
        out = jax.jit(
            lambda x, o, w, s=stride, p=pad, d=dil: deform_conv2d(
                x, o, w, stride=s, padding=p, dilation=d, groups=2
            )
        )(x, off, wt)
        ref = lax.conv_general_dilated(
            x,
            wt,
            (stride, stride),
            [(pad, pad)] * 2,
            rhs_dilation=(dil, dil),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=2,
        )
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name",
    [
        "dcnv2",
        pytest.param("basic", marks=pytest.mark.slow),
        pytest.param("stride2", marks=pytest.mark.slow),
    ],
)
def test_gradients_check_grads(name):
    """Custom VJP of the tiled implementation vs finite differences (float64)."""
    x, off, wt, mask, kw = _make(name, seed=3, dtype=np.float64)
    # keep sampling points away from the integer kinks of the interpolant
    off = off + 0.3 * (np.abs(off - np.round(off)) < 0.05)
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (x, off, wt)]
        if mask is None:
            f = jax.jit(lambda x, o, w: deform_conv2d(x, o, w, tile=8, **kw))
        else:
            args.append(jnp.asarray(mask))
            f = jax.jit(lambda x, o, w, m: deform_conv2d(x, o, w, m, tile=8, **kw))
        check_grads(f, tuple(args), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize("layout", ["rows", pytest.param("packed", marks=pytest.mark.slow)])
def test_custom_vjp_equals_autodiff(layout):
    x, off, wt, mask, kw = _make("dcnv2", seed=4)
    cot = np.random.default_rng(5).normal(size=(2, 5, 6, 4)).astype(np.float32)

    def grads(impl):
        f = lambda x, o, w, m: jnp.vdot(
            deform_conv2d(x, o, w, m, impl=impl, layout=layout, tile=7, **kw), cot
        )
        return jax.jit(jax.grad(f, (0, 1, 2, 3)))(x, off, wt, mask)

    for a, b in zip(grads("tiled"), grads("simple")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_jit_and_vmap():
    x, off, wt, mask, kw = _make("dcnv2", seed=6)
    f = lambda x, o, m: deform_conv2d(x, o, wt, m, **kw)
    direct = deform_conv2d_ref(
        x, off, wt, mask, kw["stride"], kw["padding"], kw["dilation"], kw["groups"]
    )
    jf = jax.jit(f)
    np.testing.assert_allclose(np.asarray(jf(x, off, mask)), direct, rtol=1e-4, atol=1e-4)
    # vmap over a leading "views" axis (each view a batch of 2)
    xs, offs, ms = (jnp.stack([a, a * 0.5]) for a in (x, off, mask))
    out = jax.jit(jax.vmap(f))(xs, offs, ms)
    np.testing.assert_allclose(np.asarray(out[0]), direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(out[1]), np.asarray(jf(x * 0.5, off * 0.5, mask * 0.5)), rtol=1e-5, atol=1e-5
    )
    g = jax.jit(jax.vmap(jax.grad(lambda x, o, m: jnp.sum(f(x, o, m) ** 2), (0, 1, 2))))(
        xs, offs, ms
    )
    g0 = jax.jit(jax.grad(lambda x, o, m: jnp.sum(f(x, o, m) ** 2), (0, 1, 2)))(x, off, mask)
    for a, b in zip(g, g0):
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_bf16_inputs_f32_accumulation():
    x, off, wt, mask, kw = _make("dcnv2", seed=7)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(wt, jnp.bfloat16)
    out = deform_conv2d(xb, off, wb, mask, **kw)
    assert out.dtype == jnp.bfloat16
    ref = deform_conv2d_ref(
        np.asarray(xb, np.float32),
        off,
        np.asarray(wb, np.float32),
        mask,
        kw["stride"],
        kw["padding"],
        kw["dilation"],
        kw["groups"],
    )
    np.testing.assert_allclose(
        np.asarray(out, np.float32), ref, rtol=3e-2, atol=3e-2 * np.abs(ref).max()
    )
    g = jax.grad(
        lambda x, o, w: jnp.sum(deform_conv2d(x, o, w, mask, **kw).astype(jnp.float32)), (0, 1, 2)
    )(xb, off, wb)
    assert g[0].dtype == jnp.bfloat16 and g[2].dtype == jnp.bfloat16 and g[1].dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))) for a in g)


def test_nan_offsets_only_affect_their_pixels():
    x, off, wt, mask, kw = _make("basic", seed=8)
    off = off.copy()
    off[1, 2, 3, 0, 4, 0] = np.nan
    for impl in ("tiled", "simple"):
        # under jit: XLA must not turn the NaN weights into zeros
        out = np.asarray(
            jax.jit(lambda x, o, w, i=impl: deform_conv2d(x, o, w, impl=i, **kw))(x, off, wt)
        )
        bad = np.zeros(out.shape[:3], bool)
        bad[1, 2, 3] = True
        assert np.isnan(out[bad]).all()
        assert np.isfinite(out[~bad]).all()


def test_nan_offsets_packed_layout_and_dcnv2():
    """The packed (TPU/GPU) gather layout and DCNv2 masks keep NaN local too."""
    x, off, wt, mask, kw = _make("dcnv2", seed=9)
    off = off.copy()
    off[0, 1, 2, 1, 3, 1] = np.nan  # offset group 1 of pixel (0, 1, 2)
    mask = mask.copy()
    mask[1, 4, 0, 0, 5] = np.nan
    f = jax.jit(lambda x, o, w, m: deform_conv2d(x, o, w, m, layout="packed", **kw))
    out = np.asarray(f(x, off, wt, mask))
    # Cin = Cout = 4, offset groups 2, groups 2: offset / mask group g feeds input
    # channels 2g:2g+2, read only by conv group g, which writes channels 2g:2g+2.
    bad = np.zeros(out.shape, bool)
    bad[0, 1, 2, 2:] = True
    bad[1, 4, 0, :2] = True
    assert np.isnan(out[bad]).all()
    assert np.isfinite(out[~bad]).all()


def test_shape_errors_at_trace_time():
    x = jnp.zeros((1, 2, 2, 4))
    wt = jnp.zeros((3, 3, 4, 4))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        jax.jit(lambda x: deform_conv2d(x, jnp.zeros((1, 0, 0, 1, 9, 2)), wt)).lower(x)
    with pytest.raises(ValueError, match="offsets must be"):
        deform_conv2d(jnp.zeros((1, 5, 5, 4)), jnp.zeros((1, 5, 5, 1, 9, 2)), wt)  # pad 0: 3x3 out
    with pytest.raises(ValueError, match="offset groups"):
        deform_conv2d(jnp.zeros((1, 5, 5, 4)), jnp.zeros((1, 5, 5, 3, 9, 2)), wt, padding=1)
    with pytest.raises(ValueError, match="groups"):
        deform_conv2d(
            jnp.zeros((1, 5, 5, 4)), jnp.zeros((1, 5, 5, 1, 9, 2)), wt, padding=1, groups=2
        )
    # padding makes a 2x2 map valid for a 3x3 kernel
    out = deform_conv2d(x, jnp.zeros((1, 2, 2, 1, 9, 2)), wt, padding=1)
    assert out.shape == (1, 2, 2, 4)


def test_backward_memory_does_not_scale_with_columns():
    """XLA's compiled temp memory of fwd+bwd grows with the map like a few
    input-sized buffers, not like the sampled-columns tensor [B*Ho*Wo, 9*C]."""

    def temp_and_cols(h, w, c=64):
        x = jnp.zeros((1, h, w, c))
        off = jnp.zeros((1, h, w, 1, 9, 2))
        wt = jnp.zeros((3, 3, c, c))
        f = jax.value_and_grad(
            lambda x, o, w: jnp.sum(deform_conv2d(x, o, w, padding=1, tile=64)), (0, 1, 2)
        )
        ma = jax.jit(f).lower(x, off, wt).compile().memory_analysis()
        if ma is None:
            pytest.skip("no memory analysis on this backend")
        return ma.temp_size_in_bytes, h * w * 9 * c * 4

    t1, c1 = temp_and_cols(16, 24)
    t2, c2 = temp_and_cols(48, 72)  # 9x the pixels
    assert t2 - t1 < 0.5 * (c2 - c1), (t1, t2, c1, c2)
    assert t2 < c2
