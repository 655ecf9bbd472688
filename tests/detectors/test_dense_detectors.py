"""Per-detector end-to-end: a few training steps on `shapes/tiny` (loss falls),
checkpoint, restore + COCO eval, prediction shapes, and the empty-image case."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config

DETECTORS = ("atss", "retinanet", "fcos")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


# RetinaNet's training path also runs in the end-to-end tests of the five detectors
# built on it (noisy anchors, MAL, FSAF AB+AF, sampling-free, HAMBox): slow here.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "retinanet" else n
             for n in DETECTORS]
)
def test_train_save_restore_eval(name, data_dir, tmp_path):
    config = tiny_config(name, data_dir, num_steps=12, checkpoint_every=6, lr=0.01)
    workdir = str(tmp_path / name)
    state, parts = loop.train(config, workdir)
    assert int(state.step) == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["train/loss"] for line in f if "train/loss" in line]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    # Restore the last checkpoint and evaluate it with pycocotools.
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    assert os.path.exists(os.path.join(workdir, "eval", "coco_stats_12.json"))
    assert os.path.exists(os.path.join(workdir, "predictions_12.png"))
    # The restored parameters predict exactly like the trained ones.
    det = parts.detector
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(det.predict)(state.params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)
    assert dets.scores.shape == dets.classes.shape == dets.valid.shape == (2, config.test.max_det)


@pytest.mark.parametrize("name", DETECTORS)
def test_image_without_boxes_gives_finite_loss(name, data_dir):
    config = tiny_config(name, data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 5
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]  # image 0 has one box, image 1 none
    valid = np.zeros((2, m), bool)
    valid[0, 0] = True
    for v in (valid, np.zeros_like(valid)):  # also: a batch with no box at all
        batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v)
        grad_fn = jax.jit(jax.value_and_grad(
            lambda p, b=batch: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0)[0]
        ))
        loss, grads = grad_fn(params)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_unknown_detector_is_a_clear_error(data_dir):
    config = tiny_config("atss", data_dir)
    config.detector = "no_such_method"
    with pytest.raises(ValueError, match="unknown detector"):
        detectors.build(config)
