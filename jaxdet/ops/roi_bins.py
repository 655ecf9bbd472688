"""The bin samples of RoIAlign and the two ways to sum them.

One axis at a time, `axis_samples` gives every bin's sample positions as a low
corner index and the two linear-interpolation weights (boundary rule, adaptive
sample count and 1 / count folded in), so the 2-D bin average is separable:
out[r, p, q] = sum over (y sample, x sample) of wy * wx * map[y, x].
`gather_core` sums it from row gathers of the padded, flattened map (channels
last); `einsum_core` as two einsums with dense interpolation matrices.
`jaxdet.ops.roi_align` documents the semantics (torchvision's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray

# Static sample grids up to this size per axis (taps: one more) are unrolled into one
# fused loop.
UNROLL_MAX_SAMPLES = 4


def axis_samples(
    start: Array,
    length: Array,
    pooled: int,
    sampling_ratio: int,
    max_sr: int,
    size: Array,
) -> tuple[Array, Array, Array]:
    """Sample corners and weights along one axis.

    start, length, size: [R] (size = map extent along the axis, float).
    Returns i0 [R, pooled, S] int32 (low corner, unpadded, in [0, size-1]),
    w0, w1 [R, pooled, S] (weights of i0 and i0 + 1, including the validity of
    the sample along this axis and 1/grid, so that products over the two axes
    give torchvision's w / count).
    """
    bin_size = length / pooled  # [R]
    if sampling_ratio > 0:
        s = sampling_ratio
        grid = jnp.full(length.shape, float(sampling_ratio), length.dtype)
    else:
        s = max_sr
        # torchvision: ceil(roi_size / pooled); <= 0 gives an empty grid.
        grid = jnp.clip(jnp.ceil(length / pooled), 0.0, float(max_sr))
    it = jnp.arange(s, dtype=length.dtype)
    ph = jnp.arange(pooled, dtype=length.dtype)
    safe_grid = jnp.maximum(grid, 1.0)
    c = (
        start[:, None, None]
        + ph[None, :, None] * bin_size[:, None, None]
        + (it[None, None, :] + 0.5) * bin_size[:, None, None] / safe_grid[:, None, None]
    )  # [R, pooled, S]
    active = (it[None, None, :] < grid[:, None, None]).astype(length.dtype)
    size = size[:, None, None]
    valid = (c >= -1.0) & (c <= size)
    nan = jnp.isnan(c)
    cs = jnp.where(valid | nan, c, 0.0)
    cs = jnp.clip(cs, 0.0, size - 1.0)
    f = jnp.floor(cs)
    frac = cs - f
    i0 = jnp.clip(jnp.nan_to_num(f), 0.0, size - 1.0).astype(jnp.int32)
    scale = valid.astype(length.dtype) * active / safe_grid[:, None, None]
    # NaN coordinates: keep NaN in the weights (valid is False there).
    scale = jnp.where(nan, jnp.nan, scale)
    return i0, (1.0 - frac) * scale, frac * scale


def roi_geometry(rois: Array, spatial_scale: Array, aligned: bool):
    offset = 0.5 if aligned else 0.0
    scale = spatial_scale
    x1 = rois[:, 0] * scale - offset
    y1 = rois[:, 1] * scale - offset
    x2 = rois[:, 2] * scale - offset
    y2 = rois[:, 3] * scale - offset
    rw = x2 - x1
    rh = y2 - y1
    if not aligned:
        rw = jnp.maximum(rw, 1.0)
        rh = jnp.maximum(rh, 1.0)
    return y1, x1, rh, rw


def axis_taps(i0: Array, w0: Array, w1: Array, num_taps: int) -> tuple[Array, Array, Array]:
    """The samples of one axis as taps: consecutive map indices per bin.

    i0, w0, w1: [R, P, S] from `axis_samples`. Returns base [R, P] int32 (the lowest
    index any weighted sample reads), taps [R, P, T] (tap t is the summed weight of
    index base + t) and fits [] bool: every weighted sample reads inside the T taps,
    i.e. the tap form equals the sample form (NaN weights stay NaN in every tap).
    """
    live = (w0 != 0) | (w1 != 0)  # NaN counts as live
    big = jnp.iinfo(jnp.int32).max
    base = jnp.min(jnp.where(live, i0, big), axis=-1)
    base = jnp.where(base == big, 0, base)
    d = i0 - base[..., None]  # [R, P, S]
    fits = jnp.all(~live | ((d >= 0) & (d <= num_taps - 2)))
    t = jnp.arange(num_taps, dtype=jnp.int32)
    taps = jnp.sum(
        w0[..., None] * (d[..., None] == t) + w1[..., None] * (d[..., None] + 1 == t), axis=2
    )  # [R, P, T]
    return base, taps, fits


def gather_core(
    flat: Array,
    base: Array,
    batch: Array,
    height: Array,
    width: Array,
    ysmp,
    xsmp,
    out_dtype,
    taps: bool = True,
) -> Array:
    """flat: padded maps flattened [N, C]; base/height/width/batch: [R] int32.

    out[r, p, q] = sum_{iy, ix, a, b} wy_a[r,p,iy] wx_b[r,q,ix] map[y_a, x_b].

    With S samples per axis the samples of one bin read 2 S indices per axis, but
    when they are at most one pixel apart (bins no larger than S pixels: adaptive
    sampling within `max_sampling_ratio`, or sampling_ratio k with bins <= k) they
    fall on S + 1 consecutive ones. The weights are then summed per index first
    ("taps") and each output reads (S + 1)^2 rows instead of 4 S^2 (25 vs 64 for
    S = 4). One `lax.cond` over all RoIs picks the tap form when every bin fits
    (checked on the actual samples) and the per-sample form otherwise; both give
    the same sum. `taps=False` always takes the per-sample form.
    """
    s = ysmp[0].shape[-1]
    hp = (height + 2)[:, None, None]
    wp = (width + 2)[:, None, None]
    # padded row offset of (batch, base) for every RoI
    rbase = batch[:, None, None] * hp

    def per_sample(_):
        yi, wy0, wy1 = ysmp  # [R, oh, S]
        xi, wx0, wx1 = xsmp  # [R, ow, S]
        ycols = [((rbase + yi + 1) * wp, wy0), ((rbase + yi + 2) * wp, wy1)]
        xcols = [(xi + 1, wx0), (xi + 2, wx1)]
        return weighted_rows(flat, base, ycols, xcols, s, s <= UNROLL_MAX_SAMPLES, out_dtype)

    if s < 2 or not taps:
        return per_sample(None)

    t = s + 1
    ybase, ytaps, yfits = axis_taps(*ysmp, t)
    xbase, xtaps, xfits = axis_taps(*xsmp, t)

    def per_tap(_):
        k = jnp.arange(t, dtype=jnp.int32)
        # indices past the map read the zero padding (their weight is 0)
        yidx = jnp.minimum(ybase[..., None] + k, hp - 2) + 1  # [R, oh, T] padded
        xidx = jnp.minimum(xbase[..., None] + k, wp - 2) + 1
        ycols = [((rbase + yidx) * wp, ytaps)]
        xcols = [(xidx, xtaps)]
        return weighted_rows(flat, base, ycols, xcols, t, t <= UNROLL_MAX_SAMPLES + 1,
                              out_dtype)

    return lax.cond(yfits & xfits, per_tap, per_sample, None)


def weighted_rows(
    flat: Array, base: Array, ycols, xcols, n: int, unroll: bool, out_dtype
) -> Array:
    """sum over (y term, x term) pairs and their n x n positions of
    wy[r, p, i] * wx[r, q, j] * flat[base[r] + yrow[r, p, i] + xcol[r, q, j]].

    ycols / xcols: lists of (row or column index [R, P, n], weight [R, P, n]).
    """
    def term(iy, ix, yrow, wy, xcol, wx):
        ry = lax.dynamic_index_in_dim(yrow, iy, axis=2, keepdims=True)  # [R, oh, 1]
        a = lax.dynamic_index_in_dim(wy, iy, axis=2, keepdims=True)
        cx = lax.dynamic_index_in_dim(xcol, ix, axis=2, keepdims=False)[:, None, :]  # [R, 1, ow]
        b = lax.dynamic_index_in_dim(wx, ix, axis=2, keepdims=False)[:, None, :]
        v = flat.at[base[:, None, None] + ry + cx].get(mode="promise_in_bounds")
        return (a * b)[..., None] * v.astype(jnp.float32)

    def position(iy, ix, acc):
        for yrow, wy in ycols:
            for xcol, wx in xcols:
                t = term(iy, ix, yrow, wy, xcol, wx)
                acc = t if acc is None else acc + t
        return acc

    if unroll:
        # Fully unrolled: one fused loop over all the gathers (fastest on CPU).
        acc = None
        for iy in range(n):
            for ix in range(n):
                acc = position(iy, ix, acc)
    else:
        # Large static grids: a loop keeps compile time flat.
        r, oh, ow = ycols[0][0].shape[0], ycols[0][0].shape[1], xcols[0][0].shape[1]
        acc0 = jnp.zeros((r, oh, ow, flat.shape[-1]), jnp.float32)
        acc = lax.fori_loop(0, n * n, lambda k, acc: position(k // n, k % n, acc), acc0)
    return acc.astype(out_dtype)


def einsum_core(feat: Array, batch: Array, ysmp, xsmp, out_dtype) -> Array:
    """Dense separable formulation for one map feat [B, H, W, C]."""
    nb, h, w, _ = feat.shape
    yi, wy0, wy1 = ysmp
    xi, wx0, wx1 = xsmp
    # Interpolation matrices (index h / w one past the end gives a zero row).
    wy = jnp.sum(
        wy0[..., None] * jax.nn.one_hot(yi, h, dtype=wy0.dtype)
        + wy1[..., None] * jax.nn.one_hot(yi + 1, h, dtype=wy1.dtype),
        axis=2,
    )  # [R, oh, H]
    wx = jnp.sum(
        wx0[..., None] * jax.nn.one_hot(xi, w, dtype=wx0.dtype)
        + wx1[..., None] * jax.nn.one_hot(xi + 1, w, dtype=wx1.dtype),
        axis=2,
    )  # [R, ow, W]
    onehot_b = jax.nn.one_hot(batch, nb, dtype=wy.dtype)  # [R, B]
    wyb = wy[:, :, None, :] * onehot_b[:, None, :, None]  # [R, oh, B, H]
    t = jnp.einsum(
        "rpbh,bhwc->rpwc", wyb, feat.astype(jnp.float32), preferred_element_type=jnp.float32
    )
    out = jnp.einsum("rpwc,rqw->rpqc", t, wx, preferred_element_type=jnp.float32)
    return out.astype(out_dtype)
