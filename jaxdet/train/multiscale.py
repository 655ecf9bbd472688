"""Multi-scale training with static shapes: a fixed set of square input sizes.

With `config.data.train_sizes` = (s_1, ..., s_k) (empty: off), the pipeline still
yields batches padded to `data.image_size` (the largest size); before each step the
whole padded batch is resized to one size s, drawn from the set by (seed, step) alone,
so a resumed run sees the same sizes. Each image was resized keeping its ratio and padded
at the bottom / right, so scaling the padded canvas by s / H is the same as resizing
each image by s / H and padding it to s: the boxes and `image_hw` scale by s / H. The
train step is compiled once per size (jax.jit caches one program per input shape).

This stands in for mmdetection's YOLOv3 `RandomResize(scale=[(320, 320), (608, 608)])`,
which draws a size per image from a continuous range.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def train_sizes(data_cfg: Any) -> tuple[int, ...]:
    """The configured sizes (data.train_sizes, () if absent), checked against image_size."""
    sizes = tuple(int(s) for s in data_cfg.get("train_sizes", ()) or ())
    if not sizes:
        return ()
    h, w = (int(v) for v in data_cfg.image_size)
    if h != w or max(sizes) > h:
        raise ValueError(f"data.train_sizes {sizes} needs a square data.image_size of at least "
                         f"max(train_sizes); got {(h, w)}")
    if data_cfg.get("with_masks", False):
        raise ValueError("data.train_sizes does not rescale instance masks (with_masks=True)")
    return sizes


def pick_size(sizes: tuple[int, ...], seed: int, step: int) -> int:
    """The size of training step `step` (0-based), a function of (seed, step) only."""
    rng = np.random.default_rng([int(seed), int(step)])
    return int(sizes[int(rng.integers(len(sizes)))])


@functools.partial(jax.jit, static_argnums=1)
def rescale_batch(batch: dict, size: int) -> dict:
    """Resizes a padded batch ('image' [B, H, H, 3], 'boxes' [B, M, 4], 'image_hw' [B, 2])
    to size x size (bilinear, no antialiasing, as cv2's resize); other fields unchanged.
    The image keeps its dtype: uint8 pipeline images are rounded back to uint8 (as cv2
    does), so the train step still normalises them on the device."""
    image = batch["image"]
    b, h, _, c = image.shape
    scale = size / h
    out = dict(batch)
    resized = jax.image.resize(image, (b, size, size, c), "linear", antialias=False)
    if jnp.issubdtype(image.dtype, jnp.integer):
        info = jnp.iinfo(image.dtype)
        resized = jnp.clip(jnp.round(resized), info.min, info.max)
    out["image"] = resized.astype(image.dtype)
    out["boxes"] = batch["boxes"] * jnp.float32(scale)
    hw = jnp.round(batch["image_hw"].astype(jnp.float32) * scale)
    out["image_hw"] = jnp.clip(hw, 1, size).astype(batch["image_hw"].dtype)
    return out
