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
``method="auto"`` picks by ``target`` ('cpu' | 'gpu' | 'tpu', `jaxdet.platform`):

- ``method="gather"`` (auto for CPU/GPU): row gathers (channels last) weighted
  with separable (y, x) weights and summed in one fused loop. When the samples of
  every bin are at most a pixel apart (bins of at most S pixels, S the static
  samples per axis: always the case within ``max_sampling_ratio``), the weights
  are first summed onto the S + 1 map indices each bin touches per axis, so an
  output reads (S + 1)^2 rows instead of the 4 S^2 corners of S x S samples
  (2.6x fewer at S = 4); otherwise (one `lax.cond` for the whole call) each
  sample's four corners are read. ``taps=False`` always reads the four corners of
  every sample (same values; the baseline of `benchmarks/roi_align_bench.py`).
- ``method="einsum"`` (auto for TPU): the same separable weights as dense
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

import jax.numpy as jnp

from jaxdet.ops.bilinear import pad_map
from jaxdet.ops.roi_bins import axis_samples, einsum_core, gather_core, roi_geometry

Array = jnp.ndarray

DEFAULT_MAX_SAMPLING_RATIO = 4
METHODS = ("auto", "gather", "einsum")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"output_size must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def _resolve_method(method: str, target: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "auto":
        return "einsum" if target == "tpu" else "gather"
    return method


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
    taps: bool = True,
    target: str = "cpu",
) -> Array:
    """RoIAlign: feat [B, H, W, C], rois [R, 4] (x1, y1, x2, y2) in input pixels,
    batch_index [R] -> [R, oh, ow, C] (feat's dtype, f32 accumulation).

    See the module docstring for `sampling_ratio` / `max_sampling_ratio`,
    `method`, `taps`, `target` and `valid`.
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
    y1, x1, rh, rw = roi_geometry(rois, spatial_scale, aligned)
    hs = jnp.full((r,), float(h), rois.dtype)
    ws = jnp.full((r,), float(w), rois.dtype)
    ysmp = axis_samples(y1, rh, oh, sampling_ratio, max_sampling_ratio, hs)
    xsmp = axis_samples(x1, rw, ow, sampling_ratio, max_sampling_ratio, ws)
    if _resolve_method(method, target) == "einsum":
        out = einsum_core(feat, batch, ysmp, xsmp, feat.dtype)
    else:
        flat = pad_map(feat).reshape(nb * (h + 2) * (w + 2), c)
        zeros = jnp.zeros((r,), jnp.int32)
        out = gather_core(
            flat, zeros, batch, zeros + h, zeros + w, ysmp, xsmp, feat.dtype, taps
        )
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
    taps: bool = True,
    target: str = "cpu",
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
        taps=taps,
    )
    if _resolve_method(method, target) == "einsum" or num_levels == 1:
        out = None
        for lvl, (f, s) in enumerate(zip(feats, strides)):
            o = roi_align(
                f, rois, batch, spatial_scale=1.0 / s, method=method, target=target, **kw
            )
            sel = (level == lvl)[:, None, None, None]
            out = jnp.where(sel, o, 0.0) if out is None else jnp.where(sel, o, out)
    else:
        out = _multilevel_gather(feats, strides, rois, batch, level, **kw)
    if valid is not None:
        out = jnp.where(valid[:, None, None, None], out, jnp.zeros((), out.dtype))
    return out


def _multilevel_gather(feats, strides, rois, batch, level, *, output_size, sampling_ratio,
                       aligned, max_sampling_ratio, taps):
    """The gather method of `multilevel_roi_align`: every RoI sampled once, from one
    flat buffer of all the padded levels."""
    (oh, ow), nb, c, dtype = output_size, feats[0].shape[0], feats[0].shape[-1], feats[0].dtype
    shapes = [f.shape[1:3] for f in feats]
    sizes = [nb * (hh + 2) * (ww + 2) for hh, ww in shapes]
    bases = [0] + list(_cumsum(sizes))[:-1]
    flat = jnp.concatenate([pad_map(f).reshape(-1, c).astype(dtype) for f in feats], axis=0)
    take = lambda vals, dt: jnp.asarray(vals, dt)[level]
    base = take(bases, jnp.int32)
    height = take([hh for hh, _ in shapes], jnp.int32)
    width = take([ww for _, ww in shapes], jnp.int32)
    scale = take([1.0 / s for s in strides], rois.dtype)
    y1, x1, rh, rw = roi_geometry(rois, scale, aligned)
    ysmp = axis_samples(y1, rh, oh, sampling_ratio, max_sampling_ratio, height.astype(rois.dtype))
    xsmp = axis_samples(x1, rw, ow, sampling_ratio, max_sampling_ratio, width.astype(rois.dtype))
    return gather_core(flat, base, batch, height, width, ysmp, xsmp, dtype, taps)


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
    _, _, rh, rw = roi_geometry(jnp.asarray(rois, jnp.float32), spatial_scale, aligned)
    return jnp.ceil(rh / oh).astype(jnp.int32), jnp.ceil(rw / ow).astype(jnp.int32)


__all__ = [
    "DEFAULT_MAX_SAMPLING_RATIO",
    "map_roi_levels",
    "multilevel_roi_align",
    "num_samples",
    "roi_align",
]
