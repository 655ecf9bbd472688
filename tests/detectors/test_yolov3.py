"""YOLOv3 and Gaussian YOLOv3 end to end on `shapes/tiny`: a few training steps (loss
falls), checkpoint, restore + COCO eval, prediction shapes; an image without boxes and
bad boxes (under a pixel, centre on the border) give finite losses and gradients; the
Gaussian head's sigmas stay in (0, 1) and scale the scores."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.detectors import gaussian_yolov3
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config

DETECTORS = ("yolov3", "gaussian_yolov3")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name", DETECTORS)
def test_train_save_restore_eval(name, data_dir, tmp_path):
    workdir = str(tmp_path / name)
    config = tiny_config(name, data_dir, num_steps=12, checkpoint_every=6, lr=0.01)
    state, parts = loop.train(config, workdir)
    assert int(state.step) == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    # The losses are sums over the GTs (mmdetection's reduction 'sum'): they follow the
    # batch's GT count, so the loss per positive is what falls.
    per_pos = [r["train/loss"] / max(r["train/num_pos"], 1e-3) for r in rows]
    assert len(per_pos) == 12 and all(np.isfinite(per_pos))
    assert np.mean(per_pos[-3:]) < np.mean(per_pos[:3]), per_pos
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    assert os.path.exists(os.path.join(workdir, "eval", "coco_stats_12.json"))
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(parts.detector.predict)(state.params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)
    assert dets.scores.shape == dets.valid.shape == (2, config.test.max_det)
    if name == "gaussian_yolov3":
        assert dets.box_std.shape == (2, config.test.max_det, 4)


@pytest.mark.parametrize("name,assigner", [("yolov3", "grid"), ("gaussian_yolov3", "darknet")])
def test_no_boxes_and_bad_boxes_give_finite_loss(name, assigner, data_dir):
    config = tiny_config(name, data_dir)
    config.assigner.name = assigner
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 5
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    boxes[0, 1] = [20.2, 20.1, 20.7, 20.6]  # smaller than a pixel
    boxes[0, 2] = [48, 48, 80, 80]  # centre (64, 64): on the image's corner
    valid = np.zeros((2, m), bool)
    valid[0, :3] = True
    for v in (valid, np.zeros_like(valid)):  # also: a batch with no box at all
        batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v)
        grad_fn = jax.jit(jax.value_and_grad(
            lambda p, b=batch: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0),
            has_aux=True))
        (loss, (terms, _)), grads = grad_fn(params)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        # Darknet's rule: one anchor per GT (3 GTs over 2 images); the grid rule can
        # give a GT several anchors (ties).
        assert float(terms["num_pos"]) == (1.5 if v.any() else 0.0) or assigner == "grid"


def test_gaussian_sigmas_in_unit_interval_and_score_factor(data_dir):
    config = tiny_config("gaussian_yolov3", data_dir)
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
    out = det.apply(params, images)
    _, sigma = gaussian_yolov3.split_gaussian(out["box"])
    assert float(sigma.min()) > 0.0 and float(sigma.max()) < 1.0
    one = jax.tree_util.tree_map(lambda x: x[0], out)
    priors = det.priors((64, 64))
    _, _, with_u = det.decode(one, priors)
    config.test.use_uncertainty = False
    _, _, without = detectors.build(config).decode(one, priors)
    np.testing.assert_allclose(np.asarray(with_u),
                               np.asarray(without) * (1 - np.asarray(sigma[0]).mean(-1)),
                               rtol=1e-6)
