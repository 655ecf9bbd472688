"""Image normalisation on the device: the pipeline's uint8 batch -> the network input.

The input pipeline (`jaxdet.data.transforms`) yields images as uint8 `[B, H, W, 3]`,
padded with zeros at the bottom and right to the static size, with `image_hw [B, 2]`
the size before padding: a quarter of the host-to-device bytes of float32. The jitted
train / eval / predict steps (`jaxdet.train.step`) call `normalize_images`, which
computes what the host used to (`transforms.Normalize`, then `transforms.Pad`): in
float32 `(x - mean) / std` per channel, zero in the padding, then the model's dtype.
The same IEEE float32 operations in the same order (the uint8 -> float32
conversion is exact; one subtraction and one division, each correctly rounded; std is
broadcast to the image's shape behind an optimisation barrier, so that XLA does not turn
the division into a multiplication by 1 / std), so the float32 result is bit-identical to
the host's on CPU (`tests/ops/test_normalize.py`); a backend whose float32 division is
not correctly rounded would differ by at most an ulp. A float image is taken as already
normalised and returned unchanged (tests and tools that build float batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normalize_images(images: jax.Array, image_hw: jax.Array, mean: Sequence[float],
                     std: Sequence[float], dtype: jnp.dtype | str = jnp.float32) -> jax.Array:
    """uint8 images [B, H, W, C], image_hw [B, 2] int32 -> [B, H, W, C] of `dtype`:
    float32 (image - mean) / std, 0 where row >= h or column >= w, cast to `dtype`.
    Floating-point images are returned unchanged."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    _, h, w, c = images.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"images have {c} channels, mean/std have {len(mean)}/{len(std)}")
    x = images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)
    # XLA:CPU divides by a broadcast divisor as a multiplication by its reciprocal (1 ulp
    # off the division at times); behind the barrier std is a full-size array it divides by.
    x = x / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(std, jnp.float32), x.shape))
    hw = jnp.asarray(image_hw, jnp.int32)
    inside = ((jnp.arange(h)[None, :, None] < hw[:, 0, None, None])
              & (jnp.arange(w)[None, None, :] < hw[:, 1, None, None]))
    return jnp.where(inside[..., None], x, 0.0).astype(dtype)
