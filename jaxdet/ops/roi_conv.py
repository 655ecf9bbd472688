"""RoIConv offsets: the sampling grid of a k x k deformable conv laid over a box.

AlignDet's RoIConv (Chen et al., "Revisiting Feature Alignment for One-stage Object
Detection", arXiv 1908.01570) is a deformable conv whose k x k sampling points are not
learned but computed from a box predicted at the location, so that the conv reads the
features of that box, as RoIAlign would. `box_offsets` turns the boxes of one lattice
into the offsets `jaxdet.ops.deform_conv.deform_conv2d` takes.

Geometry (a location (i, j) of a level of stride s, box (x1, y1, x2, y2) in input
pixels, kernel k, tap (a, b) with a, b in 0..k-1, row-major tap index a * k + b):

- Feature units: input pixel x is x / s on the feature map, so location (i, j) is the
  point (x, y) = (j * s, i * s) of the input, the centre of the anchors of
  `jaxdet.core.priors.make_anchors` (mmdetection's `AnchorGenerator`, centre offset 0),
  and of Cascade RPN's `StageCascadeRPNHead.anchor_offset` (`_ctr_offset`).
- `grid='bins'` (default): the tap samples the centre of bin (a, b) when the box is
  divided into k x k equal bins, y = (y1 + (a + 0.5) * h / k) / s and the same in x,
  i.e. RoIAlign's k x k bins with one sample per bin (aligned=False). This is the
  reading of the paper's equivalence of RoIConv with RoIAlign followed by a k x k conv.
- `grid='corners'`: the taps span the box from edge to edge, y = (cy + (a - (k-1)/2) *
  h / (k - 1)) / s: the geometry of Cascade RPN's `anchor_offset(_shape_offset +
  _ctr_offset)` (mmdetection's `AdaptiveConv(type='offset')`), which places the outer
  taps on the box's edges.

The offset of a tap is its sampling point minus the point the regular (dilation 1,
padding (k-1)/2) conv samples there, (i + a - (k-1)/2, j + b - (k-1)/2). A box equal
to the regular window of the location (k x k cells of side s centred on it for 'bins',
(k-1) x (k-1) cells for 'corners') gives zero offsets.

Layout: [..., H, W, 2 k^2], channel 2 * (a * k + b) + {0: dy, 1: dx}, the channel
layout of `jaxdet.models.layers_deform.DeformConv` (torchvision / mmcv order, one
offset group) and of RepPoints' `dcn_base_offset`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GRIDS = ("bins", "corners")


def tap_fractions(kernel: int, grid: str) -> jax.Array:
    """[k] the taps' positions along a box side, as fractions of the side from its
    start: (a + 0.5) / k for 'bins', a / (k - 1) for 'corners'."""
    if grid not in GRIDS:
        raise ValueError(f"grid={grid!r}; one of {GRIDS}")
    a = jnp.arange(kernel, dtype=jnp.float32)
    if grid == "bins":
        return (a + 0.5) / kernel
    if kernel < 2:
        raise ValueError("grid='corners' needs a kernel of at least 2")
    return a / (kernel - 1)


def box_offsets(boxes: jax.Array, stride: float, kernel: int = 3, grid: str = "bins"
                ) -> jax.Array:
    """Deformable-conv offsets that lay the k x k sampling grid over each box.

    Args:
      boxes: [..., H, W, 4] float xyxy in input pixels, the box of each location of an
        H x W lattice of stride `stride` (location (i, j) at input point (j s, i s)).
      stride: the lattice's stride s in pixels.
      kernel: k, odd (3).
      grid: 'bins' (RoIAlign bin centres) or 'corners' (Cascade RPN: edge to edge).
    Returns:
      [..., H, W, 2 k^2] float32 offsets in feature units, channel 2 (a k + b) +
      {0: dy, 1: dx} for tap (a, b).
    """
    if kernel % 2 != 1:
        raise ValueError(f"kernel={kernel} must be odd (the conv's 'same' padding)")
    h, w = boxes.shape[-3], boxes.shape[-2]
    frac = tap_fractions(kernel, grid)  # [k]
    base = jnp.arange(kernel, dtype=jnp.float32) - (kernel - 1) / 2  # regular taps
    b = boxes.astype(jnp.float32) / stride
    x1, y1, x2, y2 = (b[..., c:c + 1] for c in range(4))  # [..., H, W, 1]
    ys = y1 + frac * (y2 - y1)  # [..., H, W, k] sampling rows
    xs = x1 + frac * (x2 - x1)
    ii = jnp.arange(h, dtype=jnp.float32)[:, None, None]
    jj = jnp.arange(w, dtype=jnp.float32)[None, :, None]
    dy = ys - (ii + base)  # [..., H, W, k] over a
    dx = xs - (jj + base)  # over b
    shape = jnp.broadcast_shapes(dy.shape, dx.shape)[:-1]
    dy = jnp.broadcast_to(dy[..., :, None], (*shape, kernel, kernel))
    dx = jnp.broadcast_to(dx[..., None, :], (*shape, kernel, kernel))
    return jnp.stack([dy, dx], axis=-1).reshape(*shape, 2 * kernel * kernel)


def regular_window(hw: tuple[int, int], stride: float, kernel: int = 3, grid: str = "bins"
                   ) -> jax.Array:
    """[H, W, 4] the boxes whose offsets are zero: the regular conv window of each
    location (k s wide for 'bins', (k - 1) s for 'corners'), centred on it."""
    half = (kernel if grid == "bins" else kernel - 1) * stride / 2
    ys, xs = jnp.meshgrid(jnp.arange(hw[0], dtype=jnp.float32) * stride,
                          jnp.arange(hw[1], dtype=jnp.float32) * stride, indexing="ij")
    return jnp.stack([xs - half, ys - half, xs + half, ys + half], axis=-1)
