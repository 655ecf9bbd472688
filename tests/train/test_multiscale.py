"""Multi-scale training: the per-step size draw and the batch rescale; a short YOLOv3
run over two sizes."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdet.train import loop, multiscale
from tests.tiny import tiny_config


def test_pick_size_is_a_function_of_seed_and_step():
    sizes = (32, 48, 64)
    a = [multiscale.pick_size(sizes, 0, s) for s in range(50)]
    assert a == [multiscale.pick_size(sizes, 0, s) for s in range(50)]
    assert set(a) == set(sizes)
    assert a != [multiscale.pick_size(sizes, 1, s) for s in range(50)]


def test_rescale_batch_scales_image_boxes_and_sizes():
    img = np.zeros((1, 8, 8, 3), np.float32)
    img[0, :4, :4] = 1.0  # the top-left quarter
    batch = dict(image=jnp.asarray(img), boxes=jnp.asarray([[[0.0, 0.0, 4.0, 4.0]]]),
                 image_hw=jnp.asarray([[8, 6]], jnp.int32), valid=jnp.asarray([[True]]))
    out = multiscale.rescale_batch(batch, 4)
    assert out["image"].shape == (1, 4, 4, 3)
    np.testing.assert_allclose(np.asarray(out["image"][0, :2, :2]), 1.0)
    np.testing.assert_allclose(np.asarray(out["image"][0, 2:, 2:]), 0.0)
    np.testing.assert_allclose(np.asarray(out["boxes"]), [[[0, 0, 2, 2]]])
    np.testing.assert_array_equal(np.asarray(out["image_hw"]), [[4, 3]])
    np.testing.assert_array_equal(np.asarray(out["valid"]), [[True]])
    # uint8 pipeline images stay uint8 (rounded), so the step still normalises them
    img8 = np.zeros((1, 8, 8, 3), np.uint8)
    img8[0, :4, :4] = 200
    out8 = multiscale.rescale_batch(dict(batch, image=jnp.asarray(img8)), 4)
    assert out8["image"].dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out8["image"][0, :2, :2]), 200)
    np.testing.assert_array_equal(np.asarray(out8["image"][0, 2:, 2:]), 0)


def test_train_sizes_validation():
    data = ml_collections.ConfigDict(dict(image_size=(64, 64), train_sizes=(32, 64),
                                          with_masks=False))
    assert multiscale.train_sizes(data) == (32, 64)
    data.train_sizes = (96,)
    with pytest.raises(ValueError, match="train_sizes"):
        multiscale.train_sizes(data)
    assert multiscale.train_sizes(ml_collections.ConfigDict(dict(image_size=(64, 80)))) == ()


@pytest.mark.slow
def test_yolov3_trains_over_two_sizes(tmp_path):
    config = tiny_config("yolov3", str(tmp_path / "tfds"), num_steps=4, checkpoint_every=4)
    config.data.train_sizes = (32, 64)
    config.seed = 1  # sizes 32, 64, 64, 32
    assert [multiscale.pick_size((32, 64), 1, s) for s in range(4)] == [32, 64, 64, 32]
    workdir = tmp_path / "run"
    state, _ = loop.train(config, str(workdir))
    assert int(state.step) == 4
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "train/loss" in line]
    assert len(rows) == 4 and all(np.isfinite(r["train/loss"]) for r in rows)
