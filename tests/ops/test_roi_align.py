"""roi_align / multilevel_roi_align against a NumPy transcription of
torchvision's CPU kernel (roi_align_kernel.cpp + roi_align_common.h)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.roi_align import map_roi_levels, multilevel_roi_align, num_samples, roi_align


def roi_align_ref(feat, rois, batch_index, output_size, spatial_scale, sampling_ratio, aligned):
    """torchvision.ops.roi_align, NHWC in / [R, oh, ow, C] out, float64 loops."""
    feat = np.asarray(feat, np.float64)
    rois = np.asarray(rois, np.float64)
    _, height, width, channels = feat.shape
    ph_n, pw_n = output_size
    out = np.zeros((len(rois), ph_n, pw_n, channels))
    for n, roi in enumerate(rois):
        img = feat[int(batch_index[n])]
        offset = 0.5 if aligned else 0.0
        sw, sh = roi[0] * spatial_scale - offset, roi[1] * spatial_scale - offset
        ew, eh = roi[2] * spatial_scale - offset, roi[3] * spatial_scale - offset
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_n, rw / pw_n
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / ph_n))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / pw_n))
        count = max(gh * gw, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = np.zeros(channels)
                for iy in range(gh):
                    yy = sh + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = sw + pw * bw + (ix + 0.5) * bw / gw
                        y, x = yy, xx
                        if not (-1.0 <= y <= height and -1.0 <= x <= width):
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        y_low, x_low = int(y), int(x)
                        if y_low >= height - 1:
                            y_high = y_low = height - 1
                            y = float(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_high = x_low = width - 1
                            x = float(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = y - y_low, x - x_low
                        hy, hx = 1 - ly, 1 - lx
                        acc += (
                            hy * hx * img[y_low, x_low]
                            + hy * lx * img[y_low, x_high]
                            + ly * hx * img[y_high, x_low]
                            + ly * lx * img[y_high, x_high]
                        )
                out[n, ph, pw] = acc / count
    return out


def _random_rois(rng, n, h_img, w_img, min_size=1.0, max_size=None):
    max_size = max_size or max(h_img, w_img)
    x1 = rng.uniform(-4, w_img, n)
    y1 = rng.uniform(-4, h_img, n)
    ws = rng.uniform(min_size, max_size, n)
    hs = rng.uniform(min_size, max_size, n)
    return np.stack([x1, y1, x1 + ws, y1 + hs], 1).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2, 9, 11, 5)).astype(np.float32)
    rois = _random_rois(rng, 12, 9 * 4, 11 * 4, max_size=30)  # image = 4x the map
    rois[0] = [-10, -10, 60, 50]  # covers more than the map
    rois[1] = [30, 20, 10, 5]  # x2 < x1, y2 < y1
    rois[2] = [100, 100, 120, 130]  # fully outside
    rois[3] = [0, 0, 0.5, 0.5]  # tiny
    bidx = rng.integers(0, 2, 12).astype(np.int32)
    return feat, rois, bidx


REF_PARAMS = [
    ("gather", True, 0),
    ("gather", True, 2),
    ("gather", False, 0),
    ("gather", False, 1),
    ("einsum", True, 0),
    ("einsum", False, 2),
] + [
    pytest.param(m, a, s, marks=pytest.mark.slow)
    for m, a, s in (
        ("gather", True, 1),
        ("gather", False, 2),
        ("einsum", True, 1),
        ("einsum", True, 2),
        ("einsum", False, 0),
        ("einsum", False, 1),
    )
]


@pytest.mark.parametrize("method,aligned,sampling_ratio", REF_PARAMS)
def test_matches_torchvision_reference(case, method, aligned, sampling_ratio):
    feat, rois, bidx = case
    ref = roi_align_ref(feat, rois, bidx, (3, 4), 0.25, sampling_ratio, aligned)
    gy, gx = num_samples(rois, (3, 4), 0.25, aligned)
    assert int(jnp.max(gy)) <= 8 and int(jnp.max(gx)) <= 8
    out = jax.jit(
        lambda f, r, b: roi_align(
            f,
            r,
            b,
            output_size=(3, 4),
            spatial_scale=0.25,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            max_sampling_ratio=8,
            method=method,
        )
    )(feat, rois, bidx)
    assert out.shape == (12, 3, 4, 5)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_methods_agree_and_jit(case):
    feat, rois, bidx = case
    f = jax.jit(
        lambda f, r, b, m: roi_align(f, r, b, output_size=7, spatial_scale=0.25, method=m),
        static_argnums=3,
    )
    a = f(feat, rois, bidx, "gather")
    b = f(feat, rois, bidx, "einsum")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_default_bound_exact_within_and_approx_beyond():
    rng = np.random.default_rng(1)
    feat = rng.normal(size=(1, 40, 40, 3)).astype(np.float32)
    small = np.array([[2, 3, 2 + 27, 3 + 20]], np.float32)  # ceil(27/7) = 4 samples
    big = np.array([[0, 0, 39, 39]], np.float32)  # ceil(39/7) = 6 > 4
    for rois, exact in ((small, True), (big, False)):
        ref = roi_align_ref(feat, rois, [0], (7, 7), 1.0, 0, True)
        out = np.asarray(
            jax.jit(lambda f, r: roi_align(f, r, jnp.zeros(1, jnp.int32), output_size=7))(
                feat, rois
            )
        )
        if exact:
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        else:  # 4x4 instead of 6x6 points per bin: close, not equal
            assert np.abs(out - ref).max() < 0.5
            assert np.abs(out - ref).max() > 1e-6


def test_nan_roi_only_affects_its_output(case):
    feat, rois, bidx = case
    rois = rois.copy()
    rois[5, 2] = np.nan
    out = np.asarray(
        jax.jit(
            lambda f, r, b: roi_align(
                f, r, b, output_size=3, spatial_scale=0.25, max_sampling_ratio=8
            )
        )(feat, rois, bidx)
    )
    assert np.isnan(out[5]).all()
    others = np.delete(out, 5, axis=0)
    assert np.isfinite(others).all()
    ref = roi_align_ref(feat, np.delete(rois, 5, 0), np.delete(bidx, 5), (3, 3), 0.25, 0, True)
    np.testing.assert_allclose(others, ref, rtol=1e-5, atol=1e-5)


def test_valid_mask_and_empty_under_jit(case):
    feat, rois, bidx = case
    valid = np.arange(12) % 3 != 0
    bad = rois.copy()
    bad[~valid] = np.nan  # padding garbage must not leak
    f = jax.jit(
        lambda f, r, b, v: roi_align(
            f, r, b, output_size=2, spatial_scale=0.25, valid=v, max_sampling_ratio=8
        )
    )
    out = np.asarray(f(feat, bad, bidx, valid))
    assert (out[~valid] == 0).all()
    ref = roi_align_ref(feat, rois[valid], bidx[valid], (2, 2), 0.25, 0, True)
    np.testing.assert_allclose(out[valid], ref, rtol=1e-5, atol=1e-5)
    # all-invalid and R = 0
    out = f(feat, bad, bidx, np.zeros(12, bool))
    assert float(jnp.abs(out).max()) == 0.0
    empty = jax.jit(lambda f, r, b: roi_align(f, r, b, output_size=2))(
        feat, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
    )
    assert empty.shape == (0, 2, 2, 5)


def test_grad_wrt_features_matches_transpose():
    rng = np.random.default_rng(3)
    feat = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    rois = _random_rois(rng, 5, 6, 7, max_size=5)
    bidx = np.array([0, 1, 1, 0, 1], np.int32)
    for method in ("gather", "einsum"):
        f = lambda x, m=method: roi_align(x, rois, bidx, output_size=2, sampling_ratio=2, method=m)
        # linear in feat: check the VJP against the dense Jacobian via jvp
        g = rng.normal(size=(5, 2, 2, 3)).astype(np.float32)
        (vjp,) = jax.vjp(f, jnp.asarray(feat))[1](jnp.asarray(g))
        t = rng.normal(size=feat.shape).astype(np.float32)
        jvp = jax.jvp(f, (jnp.asarray(feat),), (jnp.asarray(t),))[1]
        np.testing.assert_allclose(float(jnp.vdot(vjp, t)), float(jnp.vdot(g, jvp)), rtol=1e-4)


def test_bf16_features():
    rng = np.random.default_rng(4)
    feat = rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
    rois = _random_rois(rng, 6, 8, 8, max_size=6)
    ref = roi_align_ref(
        feat.astype(jnp.bfloat16).astype(np.float32), rois, [0] * 6, (2, 2), 1, 0, True
    )
    out = jax.jit(lambda f, r: roi_align(f, r, jnp.zeros(6, jnp.int32), output_size=2))(
        jnp.asarray(feat, jnp.bfloat16), rois
    )
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_map_roi_levels_mmdet_rule():
    rois = np.array(
        [
            [0, 0, 50, 50],
            [0, 0, 111, 112],
            [0, 0, 112, 112],
            [0, 0, 224, 224],
            [0, 0, 448, 448],
            [0, 0, 2000, 2000],
            [0, 0, 0, 0],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(np.asarray(map_roi_levels(rois, 4)), [0, 0, 1, 2, 3, 3, 0])


@pytest.mark.parametrize("method", ["gather", pytest.param("einsum", marks=pytest.mark.slow)])
def test_multilevel_matches_per_level_reference(method):
    rng = np.random.default_rng(5)
    strides = (4, 8, 16, 32)
    img = 256
    feats = [rng.normal(size=(2, img // s, img // s, 3)).astype(np.float32) for s in strides]
    # square-ish RoIs of all scales (elongated ones would exceed the sample bound)
    size = np.exp(rng.uniform(np.log(8), np.log(300), 16))
    aspect = rng.uniform(0.6, 1.6, 16)
    x1, y1 = rng.uniform(-8, img - 8, 16), rng.uniform(-8, img - 8, 16)
    rois = np.stack([x1, y1, x1 + size * aspect, y1 + size / aspect], 1).astype(np.float32)
    bidx = rng.integers(0, 2, 16).astype(np.int32)
    lvls = np.asarray(map_roi_levels(rois, 4))
    gy, gx = (np.asarray(g) for g in num_samples(rois, 3, 1.0 / np.asarray(strides)[lvls]))
    bound = int(max(gy.max(), gx.max()))
    assert bound <= 12
    out = jax.jit(
        lambda fs, r, b: multilevel_roi_align(
            fs,
            r,
            b,
            strides=strides,
            output_size=3,
            sampling_ratio=0,
            max_sampling_ratio=12,
            method=method,
        )
    )(feats, rois, bidx)
    for i in range(16):
        ref = roi_align_ref(
            feats[lvls[i]],
            rois[i : i + 1],
            bidx[i : i + 1],
            (3, 3),
            1.0 / strides[lvls[i]],
            0,
            True,
        )
        np.testing.assert_allclose(np.asarray(out[i]), ref[0], rtol=1e-5, atol=1e-5)


def test_vmap_over_maps_and_rois(case):
    """roi_align under jit(vmap): a leading axis over (maps, RoIs) equals per-item calls."""
    feat, rois, bidx = case
    feats = np.stack([feat, 2.0 * feat[::-1]])
    roiss = np.stack([rois, rois[::-1] + 1.5])
    bidxs = np.stack([bidx, bidx[::-1]])
    f = lambda f, r, b: roi_align(
        f, r, b, output_size=3, spatial_scale=0.25, sampling_ratio=2, max_sampling_ratio=8
    )
    out = jax.jit(jax.vmap(f))(feats, roiss, bidxs)
    assert out.shape == (2, 12, 3, 3, 5)
    for i in range(2):
        ref = roi_align_ref(feats[i], roiss[i], bidxs[i], (3, 3), 0.25, 2, True)
        np.testing.assert_allclose(np.asarray(out[i]), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["gather", "einsum"])
def test_multilevel_bad_input_under_jit(method):
    """multilevel_roi_align: a NaN RoI gives NaN in its own output only; padded
    (invalid) rows give 0 and keep their garbage out; R = 0 works under jit."""
    rng = np.random.default_rng(6)
    strides = (4, 8)
    feats = [rng.normal(size=(2, 64 // s, 64 // s, 3)).astype(np.float32) for s in strides]
    rois = _random_rois(rng, 8, 64, 64, min_size=4, max_size=40)
    bidx = rng.integers(0, 2, 8).astype(np.int32)
    valid = np.arange(8) != 6
    bad = rois.copy()
    bad[2, 3] = np.nan  # a valid RoI with a NaN coordinate
    bad[6] = np.nan  # an invalid (padding) row full of garbage
    f = jax.jit(
        lambda fs, r, b, v: multilevel_roi_align(
            fs, r, b, strides=strides, output_size=2, valid=v, max_sampling_ratio=12, method=method
        )
    )
    out = np.asarray(f(feats, bad, bidx, valid))
    assert out.shape == (8, 2, 2, 3)
    assert np.isnan(out[2]).all()
    assert (out[6] == 0).all()
    good = np.array([i not in (2, 6) for i in range(8)])
    assert np.isfinite(out[good]).all()
    clean = np.asarray(f(feats, rois, bidx, valid))
    np.testing.assert_allclose(out[good], clean[good], rtol=1e-6, atol=1e-6)
    empty = f(feats, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), np.zeros(0, bool))
    assert empty.shape == (0, 2, 2, 3)


def _fitting_case(seed=3):
    """RoIs whose bins are at most 4 map pixels (7x7 output): the tap form applies.
    Includes RoIs on and across the map border, a tiny one and one with x2 < x1."""
    rng = np.random.default_rng(seed)
    feat = rng.normal(size=(2, 23, 31, 6)).astype(np.float32)
    rois = _random_rois(rng, 20, 23, 31, min_size=0.2, max_size=27.5)
    rois[0] = [-3.1, -2.3, 20.2, 18.4]  # starts outside
    rois[1] = [25.3, 15.2, 33.1, 25.4]  # ends past the map (no sample exactly on W)
    rois[2] = [5, 5, 5.3, 5.2]  # tiny
    rois[3] = [12, 9, 8, 4]  # x2 < x1
    rois[4] = [0, 0, 31, 23]  # bins of 31 / 7 < 5 px wide: 5 x samples, not 4
    bidx = rng.integers(0, 2, 20).astype(np.int32)
    return feat, rois, bidx


@pytest.mark.parametrize("aligned,sampling_ratio,max_sr", [
    (True, 0, 5), (False, 0, 5), (True, 2, 4), (True, 3, 4), (False, 4, 4),
])
def test_tap_form_matches_reference_and_per_sample_form(aligned, sampling_ratio, max_sr):
    from jaxdet.ops import roi_bins

    feat, rois, bidx = _fitting_case()
    if sampling_ratio > 0:  # bins of at most k pixels for the tap form with k samples
        rois = rois.copy()
        rois[:, 2:] = rois[:, :2] + np.clip(rois[:, 2:] - rois[:, :2], None, 7 * sampling_ratio)
    kw = dict(output_size=7, sampling_ratio=sampling_ratio, aligned=aligned,
              max_sampling_ratio=max_sr)
    s = sampling_ratio or max_sr
    y1, x1, rh, rw = roi_bins.roi_geometry(jnp.asarray(rois), 1.0, aligned)
    fits = [roi_bins.axis_taps(*roi_bins.axis_samples(
        a, n, 7, sampling_ratio, max_sr, jnp.full(20, float(size))), s + 1)[2]
        for a, n, size in ((y1, rh, 23), (x1, rw, 31))]
    assert all(bool(f) for f in fits), "the case must exercise the tap form"
    f = jax.jit(lambda f, r, b: roi_align(f, r, b, **kw))
    taps = np.asarray(f(feat, rois, bidx))
    ref = roi_align_ref(feat, rois, bidx, (7, 7), 1.0, sampling_ratio, aligned)
    np.testing.assert_allclose(taps, ref, rtol=1e-5, atol=1e-5)
    per_sample = np.asarray(
        jax.jit(lambda f, r, b: roi_align(f, r, b, taps=False, **kw))(feat, rois, bidx))
    np.testing.assert_allclose(taps, per_sample, rtol=1e-5, atol=1e-5)


def test_tap_form_gradients_and_nan():
    """The tap form against the per-sample form (taps=False): NaN only in the NaN RoI,
    equal values and feature gradients."""
    feat, rois, bidx = _fitting_case(4)
    rois = rois.copy()
    rois[6, 1] = np.nan
    ref_out = np.asarray(roi_align(feat, rois, bidx, output_size=7, taps=False))
    out = np.asarray(jax.jit(lambda f: roi_align(f, rois, bidx, output_size=7))(feat))
    assert np.isnan(out[6]).all() and np.isfinite(np.delete(out, 6, 0)).all()
    np.testing.assert_allclose(np.delete(out, 6, 0), np.delete(ref_out, 6, 0), atol=1e-5)
    # The NaN RoI's gradient is NaN in both forms; compare the other RoIs' only.
    keep = np.arange(20) != 6
    grad = lambda f, taps: jax.grad(lambda f: jnp.sum(jnp.sin(
        roi_align(f, rois[keep], bidx[keep], output_size=7, taps=taps))))(f)
    g_taps = np.asarray(jax.jit(lambda f: grad(f, True))(feat))
    g_samples = np.asarray(jax.jit(lambda f: grad(f, False))(feat))
    np.testing.assert_allclose(g_taps, g_samples, rtol=1e-5, atol=1e-5)


def test_multilevel_tap_form_matches_per_sample_form():
    rng = np.random.default_rng(5)
    feats = [rng.normal(size=(2, 64 // s, 96 // s, 4)).astype(np.float32) for s in (4, 8, 16)]
    rois = _random_rois(rng, 30, 256, 384, min_size=4, max_size=200)
    bidx = rng.integers(0, 2, 30).astype(np.int32)
    f = lambda taps: np.asarray(jax.jit(lambda fs, r, b: multilevel_roi_align(
        fs, r, b, strides=(4, 8, 16), output_size=7, taps=taps))(feats, rois, bidx))
    taps = f(True)
    per_sample = f(False)
    np.testing.assert_allclose(taps, per_sample, rtol=1e-5, atol=1e-5)
