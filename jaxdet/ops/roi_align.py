"""RoIAlign on channels-last maps, with torchvision's exact semantics.

`roi_align(feat [B, H, W, C], rois [R, 4], batch_index [R], ...)` equals
``torchvision.ops.roi_align(feat_nchw, cat([batch_index, rois], 1), ...)``
transposed to [R, oh, ow, C], for the same ``output_size``, ``spatial_scale``,
``sampling_ratio`` and ``aligned`` -- including RoIs with x2 < x1 (with
``aligned=True`` their adaptive grid is empty and they give 0; with
``aligned=False`` their size is forced to 1, as torchvision does), samples
outside ``[-1, H] x [-1, W]`` (0) and samples near the border (clamped).

Static shapes and the adaptive sampling ratio
---------------------------------------------
``sampling_ratio=k > 0`` samples k x k points per bin. ``sampling_ratio <= 0``
(adaptive) samples ``ceil(roi_h / oh) x ceil(roi_w / ow)`` points, which depends
on the data; under jit the grid has a static size ``max_sampling_ratio`` per
axis (default `DEFAULT_MAX_SAMPLING_RATIO` = 4) and the samples beyond each RoI's
own count get weight 0. Results are exactly torchvision's for every RoI with
``ceil(roi_h / oh) <= max_sampling_ratio`` and likewise for w (with 7x7 output:
RoIs up to 28 feature pixels, i.e. every RoI that mmdetection's FPN level
mapping with ``finest_scale=56`` sends to levels P2-P4 unless very elongated).
Larger RoIs are averaged over ``max_sampling_ratio`` points per axis spread
evenly over the bin (an approximation of the same bin average). Cost grows
with ``max_sampling_ratio ** 2``.

Methods
-------
- ``method="gather"`` (default on CPU/GPU): row gathers (channels last) weighted
  with separable (y, x) weights and summed in one fused loop. When the samples of
  every bin are at most a pixel apart (bins of at most S pixels, S the static
  samples per axis: always the case within ``max_sampling_ratio``), the weights
  are first summed onto the S + 1 map indices each bin touches per axis, so an
  output reads (S + 1)^2 rows instead of the 4 S^2 corners of S x S samples
  (2.6x fewer at S = 4); otherwise (one `lax.cond` for the whole call) each
  sample's four corners are read.
- ``method="einsum"`` (default on TPU): the same separable weights as dense
  interpolation matrices Wy [R, oh, H], Wx [R, ow, W] and
  ``out = Wy . feat[b] . Wx^T`` as two einsums (MXU-friendly; no gathers).
Both give the same values (see tests).

Bad input
---------
NaN RoI coordinates give NaN in that RoI's output only (torchvision gives 0
there). ``valid [R]`` (padded RoI sets) zeroes the outputs of invalid rows and
keeps their garbage out of the computation; R = 0 returns an empty
[0, oh, ow, C] array.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.ops import sampling

Array = jnp.ndarray

DEFAULT_MAX_SAMPLING_RATIO = 4
METHODS = ("auto", "gather", "einsum")
# The tap form of `_gather_core` (False: always the per-sample form; for tests and
# benchmarks: both give the same values).
TAPS = True
# Static sample grids up to this size per axis (taps: one more) are unrolled into one
# fused loop.
UNROLL_MAX_SAMPLES = 4


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"output_size must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def _resolve_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "auto":
        return "einsum" if jax.default_backend() == "tpu" else "gather"
    return method


def _axis_samples(
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


def _roi_geometry(rois: Array, spatial_scale: Array, aligned: bool):
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


def _axis_taps(i0: Array, w0: Array, w1: Array, num_taps: int) -> tuple[Array, Array, Array]:
    """The samples of one axis as taps: consecutive map indices per bin.

    i0, w0, w1: [R, P, S] from `_axis_samples`. Returns base [R, P] int32 (the lowest
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


def _gather_core(
    flat: Array,
    base: Array,
    batch: Array,
    height: Array,
    width: Array,
    ysmp,
    xsmp,
    out_dtype,
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
    the same sum.
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
        return _weighted_rows(flat, base, ycols, xcols, s, s <= UNROLL_MAX_SAMPLES, out_dtype)

    if s < 2 or not TAPS:
        return per_sample(None)

    t = s + 1
    ybase, ytaps, yfits = _axis_taps(*ysmp, t)
    xbase, xtaps, xfits = _axis_taps(*xsmp, t)

    def per_tap(_):
        k = jnp.arange(t, dtype=jnp.int32)
        # indices past the map read the zero padding (their weight is 0)
        yidx = jnp.minimum(ybase[..., None] + k, hp - 2) + 1  # [R, oh, T] padded
        xidx = jnp.minimum(xbase[..., None] + k, wp - 2) + 1
        ycols = [((rbase + yidx) * wp, ytaps)]
        xcols = [(xidx, xtaps)]
        return _weighted_rows(flat, base, ycols, xcols, t, t <= UNROLL_MAX_SAMPLES + 1,
                              out_dtype)

    return lax.cond(yfits & xfits, per_tap, per_sample, None)


def _weighted_rows(
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


def _einsum_core(feat: Array, batch: Array, ysmp, xsmp, out_dtype) -> Array:
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


def _prepare_rois(rois: Array, batch_index: Array, valid: Array | None):
    if rois.ndim != 2 or rois.shape[-1] != 4:
        raise ValueError(f"rois must be [R, 4] (x1, y1, x2, y2), got shape {rois.shape}")
    r = rois.shape[0]
    batch = jnp.broadcast_to(jnp.asarray(batch_index, jnp.int32), (r,))
    dtype = jnp.promote_types(rois.dtype, jnp.float32)
    rois = rois.astype(dtype)
    if valid is not None:
        valid = jnp.broadcast_to(jnp.asarray(valid, bool), (r,))
        rois = jnp.where(valid[:, None], rois, 0.0)
        batch = jnp.where(valid, batch, 0)
    return rois, batch, valid


def roi_align(
    feat: Array,
    rois: Array,
    batch_index: Array,
    *,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    valid: Array | None = None,
    max_sampling_ratio: int = DEFAULT_MAX_SAMPLING_RATIO,
    method: str = "auto",
) -> Array:
    """RoIAlign: feat [B, H, W, C], rois [R, 4] (x1, y1, x2, y2) in input pixels,
    batch_index [R] -> [R, oh, ow, C] (feat's dtype, f32 accumulation).

    See the module docstring for `sampling_ratio` / `max_sampling_ratio`,
    `method` and `valid`.
    """
    if feat.ndim != 4:
        raise ValueError(f"feat must be [B, H, W, C], got shape {feat.shape}")
    oh, ow = _pair(output_size)
    rois, batch, valid = _prepare_rois(rois, batch_index, valid)
    r = rois.shape[0]
    nb, h, w, c = feat.shape
    if r == 0:
        return jnp.zeros((0, oh, ow, c), feat.dtype)
    batch = jnp.clip(batch, 0, nb - 1)
    y1, x1, rh, rw = _roi_geometry(rois, spatial_scale, aligned)
    hs = jnp.full((r,), float(h), rois.dtype)
    ws = jnp.full((r,), float(w), rois.dtype)
    ysmp = _axis_samples(y1, rh, oh, sampling_ratio, max_sampling_ratio, hs)
    xsmp = _axis_samples(x1, rw, ow, sampling_ratio, max_sampling_ratio, ws)
    if _resolve_method(method) == "einsum":
        out = _einsum_core(feat, batch, ysmp, xsmp, feat.dtype)
    else:
        flat = sampling.pad_map(feat).reshape(nb * (h + 2) * (w + 2), c)
        zeros = jnp.zeros((r,), jnp.int32)
        out = _gather_core(flat, zeros, batch, zeros + h, zeros + w, ysmp, xsmp, feat.dtype)
    if valid is not None:
        out = jnp.where(valid[:, None, None, None], out, jnp.zeros((), out.dtype))
    return out


def map_roi_levels(rois: Array, num_levels: int, finest_scale: float = 56.0) -> Array:
    """FPN level of each RoI [R, 4] -> [R] int32, as mmdetection's
    `SingleRoIExtractor.map_roi_levels`:
    floor(log2(sqrt(w * h) / finest_scale + 1e-6)) clamped to [0, num_levels - 1]
    (level 0 = the finest map: scale < 112 with finest_scale 56).
    """
    scale = jnp.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
    lvl = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
    lvl = jnp.clip(jnp.nan_to_num(lvl, nan=0.0, neginf=0.0), 0, num_levels - 1)
    return lvl.astype(jnp.int32)


def multilevel_roi_align(
    feats: Sequence[Array],
    rois: Array,
    batch_index: Array,
    *,
    strides: Sequence[int],
    output_size: int | Sequence[int] = 7,
    sampling_ratio: int = 0,
    aligned: bool = True,
    finest_scale: float = 56.0,
    valid: Array | None = None,
    max_sampling_ratio: int = DEFAULT_MAX_SAMPLING_RATIO,
    method: str = "auto",
) -> Array:
    """RoIAlign over FPN maps: each RoI is pooled from the level given by
    `map_roi_levels` (mmdetection's `SingleRoIExtractor` with `finest_scale`),
    with spatial_scale = 1 / stride of that level.

    feats: per level [B, H_l, W_l, C] (finest first); strides: per level.
    Returns [R, oh, ow, C]. The gather method samples every RoI once, from a
    single buffer holding all levels (no per-level recomputation); the einsum
    method computes every level and selects.
    """
    if len(feats) != len(strides):
        raise ValueError(f"{len(feats)} feature maps but {len(strides)} strides")
    if not feats:
        raise ValueError("need at least one feature map")
    nb, c = feats[0].shape[0], feats[0].shape[-1]
    for f in feats:
        if f.ndim != 4 or f.shape[0] != nb or f.shape[-1] != c:
            raise ValueError(
                f"all maps must be [B, H_l, W_l, C] with the same B and C, got "
                f"{[tuple(f.shape) for f in feats]}"
            )
    oh, ow = _pair(output_size)
    rois, batch, valid = _prepare_rois(rois, batch_index, valid)
    r = rois.shape[0]
    dtype = feats[0].dtype
    if r == 0:
        return jnp.zeros((0, oh, ow, c), dtype)
    batch = jnp.clip(batch, 0, nb - 1)
    num_levels = len(feats)
    level = map_roi_levels(rois, num_levels, finest_scale)
    kw = dict(
        output_size=(oh, ow),
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        max_sampling_ratio=max_sampling_ratio,
    )
    if _resolve_method(method) == "einsum" or num_levels == 1:
        out = None
        for lvl, (f, s) in enumerate(zip(feats, strides)):
            o = roi_align(f, rois, batch, spatial_scale=1.0 / s, method=method, **kw)
            sel = (level == lvl)[:, None, None, None]
            out = jnp.where(sel, o, 0.0) if out is None else jnp.where(sel, o, out)
    else:
        shapes = [f.shape[1:3] for f in feats]
        sizes = [nb * (hh + 2) * (ww + 2) for hh, ww in shapes]
        bases = [0] + list(_cumsum(sizes))[:-1]
        flat = jnp.concatenate(
            [sampling.pad_map(f).reshape(-1, c).astype(dtype) for f in feats], axis=0
        )
        take = lambda vals, dt: jnp.asarray(vals, dt)[level]
        base = take(bases, jnp.int32)
        height = take([hh for hh, _ in shapes], jnp.int32)
        width = take([ww for _, ww in shapes], jnp.int32)
        scale = take([1.0 / s for s in strides], rois.dtype)
        y1, x1, rh, rw = _roi_geometry(rois, scale, aligned)
        ysmp = _axis_samples(
            y1, rh, oh, sampling_ratio, max_sampling_ratio, height.astype(rois.dtype)
        )
        xsmp = _axis_samples(
            x1, rw, ow, sampling_ratio, max_sampling_ratio, width.astype(rois.dtype)
        )
        out = _gather_core(flat, base, batch, height, width, ysmp, xsmp, dtype)
    if valid is not None:
        out = jnp.where(valid[:, None, None, None], out, jnp.zeros((), out.dtype))
    return out


def _cumsum(xs: Sequence[int]) -> list[int]:
    out, s = [], 0
    for v in xs:
        s += v
        out.append(s)
    return out


def num_samples(rois: Array, output_size, spatial_scale: float = 1.0, aligned: bool = True):
    """Adaptive per-axis sample counts (gy, gx) [R] torchvision would use (for
    checking `max_sampling_ratio` on real data)."""
    oh, ow = _pair(output_size)
    _, _, rh, rw = _roi_geometry(jnp.asarray(rois, jnp.float32), spatial_scale, aligned)
    return jnp.ceil(rh / oh).astype(jnp.int32), jnp.ceil(rw / ow).astype(jnp.int32)


__all__ = [
    "DEFAULT_MAX_SAMPLING_RATIO",
    "map_roi_levels",
    "multilevel_roi_align",
    "num_samples",
    "roi_align",
]
