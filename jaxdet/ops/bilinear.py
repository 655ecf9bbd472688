"""Bilinear sampling geometry: corners, weights and boundary rules of points.

Shared by the XLA path (`jaxdet.ops.sampling`), the Pallas kernel
(`jaxdet.ops.pallas.sampling`), deformable convolution and RoIAlign; imports
nothing of jaxdet.

Points are ``(y, x)`` in pixels of the feature map; the boundary rules
("zero", "clamp") are described in `jaxdet.ops.sampling`. Corner indices refer to
the map zero-padded by one pixel on each side (`pad_map`), so every corner read is
in bounds and out-of-map corners read real zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray

BOUNDARIES = ("zero", "clamp")


class Corners(NamedTuple):
    """Where and how much each of the 4 corners of a point contributes.

    y0, x0: int32 row / column of the top-left corner in the *padded* map
      (original index + 1), always in [0, H] x [0, W].
    ly, lx: fractional parts (NaN for NaN points).
    inside: float factor of the boundary rule: 1 inside, 0 outside, NaN for NaN
      points.
    Corner weights are w00 = hy*hx, w01 = hy*lx, w10 = ly*hx, w11 = ly*lx, each
    times `inside`, with hy = 1 - ly, hx = 1 - lx.
    """

    y0: Array
    x0: Array
    ly: Array
    lx: Array
    inside: Array

    def weights(self) -> tuple[Array, Array, Array, Array]:
        hy = 1.0 - self.ly
        hx = 1.0 - self.lx
        m = self.inside
        return hy * hx * m, hy * self.lx * m, self.ly * hx * m, self.ly * self.lx * m


def corners(y: Array, x: Array, height: int, width: int, boundary: str = "zero") -> Corners:
    """Top-left corner (padded coordinates), fractions and boundary factor of points."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; expected one of {BOUNDARIES}")
    nan = jnp.isnan(y) | jnp.isnan(x)
    if boundary == "zero":
        inside = (y > -1.0) & (y < height) & (x > -1.0) & (x < width)
    else:
        inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    keep = inside | nan
    # Outside (incl. +-inf) points are moved to 0 so that their weights are finite
    # and vanish exactly; NaN points keep NaN so that the output is NaN.
    ys = jnp.where(keep, y, 0.0)
    xs = jnp.where(keep, x, 0.0)
    if boundary == "clamp":
        ys = jnp.clip(ys, 0.0, height - 1.0)
        xs = jnp.clip(xs, 0.0, width - 1.0)
    fy = jnp.floor(ys)
    fx = jnp.floor(xs)
    ly = ys - fy
    lx = xs - fx
    y0 = jnp.clip(jnp.nan_to_num(lax.stop_gradient(fy)), -1.0, height - 1.0).astype(jnp.int32) + 1
    x0 = jnp.clip(jnp.nan_to_num(lax.stop_gradient(fx)), -1.0, width - 1.0).astype(jnp.int32) + 1
    # The factor is NaN for NaN points: XLA rewrites `w * float(pred)` into a
    # select, which would silently turn NaN weights into 0.
    factor = jnp.where(nan, jnp.asarray(jnp.nan, y.dtype), inside.astype(y.dtype))
    return Corners(y0, x0, ly, lx, factor)


def clamp_grad_scale(
    y: Array, x: Array, height, width, boundary: str
) -> tuple[Array | float, Array | float]:
    """d(clamped coordinate)/d(coordinate) of the boundary rule, for hand-written
    point gradients: 1 for "zero"; for "clamp", 0 where the coordinate was clamped."""
    if boundary == "zero":
        return 1.0, 1.0
    sy = ((y > 0.0) & (y < height - 1.0)).astype(y.dtype)
    sx = ((x > 0.0) & (x < width - 1.0)).astype(x.dtype)
    return sy, sx


def pad_map(feat: Array) -> Array:
    """Zero-pads the two spatial axes (-3, -2) of a [..., H, W, C] map by one pixel."""
    pad = [(0, 0)] * (feat.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    return jnp.pad(feat, pad)
