"""GA-Faster R-CNN: Faster R-CNN with the GA-RPN first stage, end to end on `shapes/tiny`
(train, checkpoint, restore, COCO eval, prediction shapes) and an image without boxes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.core.types import ground_truth_from_batch
from jaxdet.detectors.ga_faster_rcnn import GAFasterRCNN
from tests.tiny import check_restore_and_predict, synthetic_batch, tiny_config, train_tiny

CONFIG = "configs.guided_anchoring.ga_faster_rcnn_tiny_shapes"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "ga_faster")
    config, state, parts, rows = train_tiny(CONFIG, data_dir, workdir)
    assert isinstance(parts.detector, GAFasterRCNN)
    first = next(r for r in rows if "train/loss" in r)
    for key in ("loss_rpn_cls", "loss_rpn_box", "loss_loc", "loss_shape", "loss_cls",
                "loss_box"):
        assert f"train/{key}" in first, sorted(first)
    check_restore_and_predict(config, state, parts, workdir)


def test_image_without_boxes_gives_finite_loss_and_grads(data_dir):
    config = tiny_config(CONFIG, data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = int(config.data.max_boxes)
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]  # a padding row: valid is False everywhere
    batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), np.zeros((2, m), bool))
    assert not np.any(ground_truth_from_batch(batch).valid)

    def loss(p):
        return det.loss_fn(p, batch, jax.random.PRNGKey(1), det_state, jax.numpy.zeros(()))

    (value, (terms, _)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert np.isfinite(float(value)), terms
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
