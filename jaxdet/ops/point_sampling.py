"""Sampling feature maps at per-location point sets (groundwork for point heads).

RepPoints predicts, at every location of a level, a set of N (= 9) points as
(dy, dx) offsets in feature pixels from that location; TSD predicts pixel-wise
offsets for the RoI features; Guided Anchoring / AlignDet feed offsets to a
deformable conv. These helpers turn such predictions into samples with
`jaxdet.ops.sampling.bilinear_sample_batched` (torchvision / mmcv boundary
rule: 0 outside (-1, H) x (-1, W)), and convert point sets to deformable-conv
offsets.

Coordinates are (y, x) in feature pixels unless the name says image pixels;
`image_to_feature` / `feature_to_image` convert with a level's stride
(pixel (i, j) of a stride-s map covers image pixels [s*i, s*(i+1)); its
sample position is image (s*i, s*j), mmdetection's convention for RepPoints).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxdet.ops.sampling import bilinear_sample_batched

Array = jnp.ndarray


def location_grid(height: int, width: int, stride: int = 1, dtype=jnp.float32) -> Array:
    """(y, x) of every location of an output grid [H, W, 2]: (i * stride, j * stride)."""
    ys = jnp.arange(height, dtype=dtype) * stride
    xs = jnp.arange(width, dtype=dtype) * stride
    return jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), axis=-1)


def sample_points(
    feat: Array,
    points: Array,
    *,
    boundary: str = "zero",
    layout: str = "auto",
    impl: str = "auto",
    target: str = "cpu",
) -> Array:
    """feat [B, H, W, C], points [B, ..., 2] (y, x) absolute feature pixels -> [B, ..., C].

    `boundary`, `layout`, `impl`, `target`: as `sampling.bilinear_sample_batched`.
    """
    if feat.ndim != 4:
        raise ValueError(f"feat must be [B, H, W, C], got shape {feat.shape}")
    if points.ndim < 2 or points.shape[0] != feat.shape[0] or points.shape[-1] != 2:
        raise ValueError(
            f"points must be [B, ..., 2] with B = {feat.shape[0]}, got shape {points.shape}"
        )
    b = feat.shape[0]
    batch = jnp.arange(b, dtype=jnp.int32).reshape((b,) + (1,) * (points.ndim - 2))
    return bilinear_sample_batched(
        feat, batch, points, boundary=boundary, layout=layout, impl=impl, target=target
    )


def sample_at_offsets(
    feat: Array,
    offsets: Array,
    *,
    stride: int = 1,
    reduce: str | None = None,
    boundary: str = "zero",
    layout: str = "auto",
    impl: str = "auto",
    target: str = "cpu",
) -> Array:
    """Samples per-location point sets given as offsets from each location.

    feat: [B, H, W, C]; offsets: [B, Ho, Wo, N, 2] (dy, dx) in feature pixels
    from location (i * stride, j * stride) (stride > 1 when the point grid is
    coarser than the map). Returns [B, Ho, Wo, N, C], or [B, Ho, Wo, C] with
    `reduce` = "mean" | "max" | "sum" over the N points.
    """
    if offsets.ndim != 5 or offsets.shape[-1] != 2:
        raise ValueError(f"offsets must be [B, Ho, Wo, N, 2], got shape {offsets.shape}")
    _, ho, wo, _, _ = offsets.shape
    pdtype = jnp.promote_types(offsets.dtype, jnp.float32)
    base = location_grid(ho, wo, stride, pdtype)[None, :, :, None, :]
    out = sample_points(
        feat, base + offsets.astype(pdtype), boundary=boundary, layout=layout, impl=impl,
        target=target,
    )
    if reduce is None:
        return out
    if reduce == "mean":
        return jnp.mean(out, axis=-2)
    if reduce == "max":
        return jnp.max(out, axis=-2)
    if reduce == "sum":
        return jnp.sum(out, axis=-2)
    raise ValueError(f"unknown reduce {reduce!r}; expected None, 'mean', 'max' or 'sum'")


def kernel_offsets(kernel: Sequence[int] = (3, 3), dilation: int = 1, dtype=jnp.float32) -> Array:
    """(dy, dx) of the taps of a centred kh x kw kernel [kh*kw, 2], row-major
    (k = i*kw + j): ((i - (kh-1)/2) * dilation, (j - (kw-1)/2) * dilation)."""
    kh, kw = kernel
    ys = (jnp.arange(kh, dtype=dtype) - (kh - 1) / 2) * dilation
    xs = (jnp.arange(kw, dtype=dtype) - (kw - 1) / 2) * dilation
    return jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(kh * kw, 2)


def points_to_dcn_offsets(
    points: Array, kernel: Sequence[int] = (3, 3), dilation: int = 1
) -> Array:
    """Point sets [B, H, W, kh*kw, 2] (dy, dx from each location) -> deformable
    conv offsets [B, H, W, 1, kh*kw, 2] for a centred kernel with 'same' padding
    (padding = dilation * (k - 1) / 2): tap k then samples exactly point k.

    This is RepPoints' `dcn_offset = pts - dcn_base_offset`.
    """
    k = points.shape[-2]
    if k != kernel[0] * kernel[1]:
        raise ValueError(
            f"{k} points per location but a {kernel} kernel has {kernel[0] * kernel[1]}"
        )
    base = kernel_offsets(kernel, dilation, jnp.promote_types(points.dtype, jnp.float32))
    return (points - base)[..., None, :, :]


def image_to_feature(points_yx: Array, stride: float) -> Array:
    """(y, x) image pixels -> (y, x) pixels of a stride-`stride` map."""
    return points_yx / stride


def feature_to_image(points_yx: Array, stride: float) -> Array:
    """(y, x) pixels of a stride-`stride` map -> (y, x) image pixels."""
    return points_yx * stride
