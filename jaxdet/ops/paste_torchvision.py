"""torchvision's mask paste (`paste_masks_in_image`, padding 1) with static shapes.

torchvision pads each S x S mask with one zero cell per side, grows the box by the
same factor (S + 2) / S about its centre, truncates the grown box's corners to
integers (x0, y0, x1, y1), resizes the padded mask to (y1 - y0 + 1) x (x1 - x0 + 1)
pixels (bilinear, align_corners=False, no antialiasing) and writes it at (x0, y0).
`jaxdet.ops.rcnn_postprocess.paste_masks` (mmdetection's) instead samples the mask
over the exact box; the two differ by up to a pixel at the mask's edges (binarised
at 0.5: IoU ~0.89 for 16 px boxes, ~0.97 for 64 px, ~0.99 for 256 px, smooth masks).

The resize is separable: per axis a [K, n_out, S] weight matrix (the zero padding
cells dropped), then Wy . mask . Wx^T (two batched matmuls, no loop over K).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def _axis_weights(lo: Array, hi: Array, n_out: int, s: int) -> Array:
    """Weights [K, n_out, s] of mask cell t for output pixel i along one axis.

    lo, hi: [K] the grown box's integer corners (inclusive). torch's bilinear resize
    of n = s + 2 cells to m = hi - lo + 1 pixels: source (j + 0.5) * n / m - 0.5
    (clamped at 0) for pixel j = i - lo; cells 0 and s + 1 are the zero padding.
    """
    n = s + 2
    count = (hi - lo + 1).astype(jnp.float32)  # pixels written (none if hi < lo)
    m = jnp.maximum(count, 1.0)  # the resize's output size
    j = jnp.arange(n_out, dtype=jnp.float32)[None, :] - lo[:, None].astype(jnp.float32)
    inside = (j >= 0) & (j < count[:, None])
    src = jnp.maximum((j + 0.5) * (n / m)[:, None] - 0.5, 0.0)
    i0 = jnp.floor(src)
    lam = src - i0
    i1 = jnp.minimum(i0 + 1, n - 1)
    cells = jnp.arange(1, s + 1, dtype=jnp.float32)  # padded index of mask cell t
    w = (jnp.where(cells == i0[..., None], 1.0 - lam[..., None], 0.0)
         + jnp.where(cells == i1[..., None], lam[..., None], 0.0))
    return jnp.where(inside[..., None], w, 0.0)


@functools.partial(jax.jit, static_argnames=("out_hw", "stride"))
def paste_masks_torchvision(mask_probs: Array, boxes: Array, *, out_hw: tuple[int, int],
                            stride: int = 1) -> Array:
    """Pastes K RoI masks into the image frame as torchvision does.

    mask_probs: [K, S, S] probabilities; boxes: [K, 4] xyxy in input pixels (divided by
    `stride`, static, for a frame at 1/stride resolution); out_hw: static (H, W).
    Returns [K, H, W] float32 in [0, 1], 0 outside each grown box. Non-finite boxes
    give all-zero masks.
    """
    masks = jnp.asarray(mask_probs, jnp.float32)
    _, sh, sw = masks.shape
    b = jnp.asarray(boxes, jnp.float32) / stride
    ok = jnp.all(jnp.isfinite(b), axis=-1)
    b = jnp.where(ok[:, None], b, 0.0)
    half = (b[:, 2:] - b[:, :2]) * 0.5 * jnp.array([(sw + 2) / sw, (sh + 2) / sh], jnp.float32)
    ctr = (b[:, 2:] + b[:, :2]) * 0.5
    x0, y0 = jnp.trunc(ctr - half).T
    x1, y1 = jnp.trunc(ctr + half).T
    wy = _axis_weights(y0, y1, out_hw[0], sh)
    wx = _axis_weights(x0, x1, out_hw[1], sw)
    wy = jnp.where(ok[:, None, None], wy, 0.0)
    masks = jnp.where(jnp.isnan(masks), 0.0, masks)
    hi = lax.Precision.HIGHEST
    out = jnp.einsum("khs,kst->kht", wy, masks, precision=hi)
    out = jnp.einsum("kht,kwt->khw", out, wx, precision=hi)
    return jnp.clip(out, 0.0, 1.0)
