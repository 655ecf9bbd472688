"""Device normalisation of the pipeline's uint8 images: bit-identical to the host's
float32 `Normalize` followed by `Pad` (the pipeline before images stayed uint8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.data import transforms
from jaxdet.ops.normalize import normalize_images

H, W = 48, 64
SIZES = [(48, 64), (31, 64), (48, 17), (1, 1), (0, 0)]  # (0, 0): a padding example


def _examples(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES[:-1]]
    images[0][0, :3] = [[0, 0, 0], [255, 255, 255], [124, 116, 104]]  # extremes, ~mean
    return images


def _padded(images, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    pad, norm = transforms.Pad((H, W), max_boxes=2), transforms.Normalize()
    out, hws = [], []
    for image in images:
        el = dict(image=image, boxes=np.zeros((0, 4), np.float32),
                  labels=np.zeros((0,), np.int32), ignore=np.zeros((0,), bool), image_id=0,
                  scale=np.float32(1), num_invalid=np.int32(0))
        if normalize:
            el = norm.map(el)
        el = pad.map(el)
        out.append(el["image"])
        hws.append(el["image_hw"])
    out.append(transforms.padding_example({"image": out[0]})["image"])
    hws.append(np.zeros(2, np.int32))
    return np.stack(out), np.stack(hws)


def test_device_normalisation_is_bit_identical_to_the_host():
    host, hw = _padded(_examples(), normalize=True)
    raw, hw_raw = _padded(_examples(), normalize=False)
    assert raw.dtype == np.uint8 and host.dtype == np.float32
    np.testing.assert_array_equal(hw, hw_raw)
    fn = jax.jit(lambda x, s: normalize_images(x, s, transforms.IMAGENET_MEAN,
                                               transforms.IMAGENET_STD))
    device = np.asarray(fn(raw, hw))
    assert device.dtype == np.float32
    np.testing.assert_array_equal(device.view(np.uint32), host.view(np.uint32))
    eager = normalize_images(jnp.asarray(raw), jnp.asarray(hw), transforms.IMAGENET_MEAN,
                             transforms.IMAGENET_STD)
    np.testing.assert_array_equal(np.asarray(eager), host)


def test_model_dtype_and_float_passthrough():
    host, hw = _padded(_examples(1), normalize=True)
    raw, _ = _padded(_examples(1), normalize=False)
    bf16 = normalize_images(raw, hw, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD,
                            jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bf16), np.asarray(jnp.asarray(host, jnp.bfloat16)))
    same = jnp.asarray(host)
    assert normalize_images(same, hw, (0, 0, 0), (1, 1, 1)) is same
    with pytest.raises(ValueError, match="channels"):
        normalize_images(raw, hw, (0, 0), (1, 1))
