"""The detector contract: every method builds into a `Detector`, the one-stage template
sums the 'loss*' terms, and a new method needs only its hooks."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet import detectors
from jaxdet.core.types import Assignment, Priors
from jaxdet.detectors import dense, fcos, retinanet
from jaxdet.train import step as step_lib
from tests.tiny import synthetic_batch, tiny_config

METHODS = ["atss", "retinanet", "fcos", "fsaf", "hambox", "mal", "noisy_anchor",
           "sampling_free"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_a_detector(method):
    config = importlib.import_module(f"configs.{method}.{method}_tiny_shapes").get_config()
    det = detectors.build(config)
    assert isinstance(det, detectors.Detector)
    assert isinstance(det, dense.DenseDetector)


def test_total_loss_sums_the_loss_terms_in_order():
    terms = dict(loss_b=jnp.float32(2.0), num_pos=jnp.float32(7.0), loss_a=jnp.float32(0.5))
    assert float(dense.total_loss(terms)) == 2.5
    with pytest.raises(ValueError, match="no loss term"):
        dense.total_loss(dict(num_pos=jnp.float32(1.0)))


def test_assigner_name_has_one_meaning():
    config = importlib.import_module("configs.atss.atss_tiny_shapes").get_config()
    config.assigner.name = "max_iou"  # ATSS runs only the ATSS assigner
    with pytest.raises(ValueError, match="assigner.name='max_iou'"):
        detectors.build(config)


def test_priors_from_boxes():
    boxes = jnp.asarray([[0, 0, 8, 8], [4, 4, 12, 20], [0, 0, 32, 16]], jnp.float32)
    p = Priors.from_boxes(jnp.stack([boxes, boxes + 1]), strides=(8, 16), level_sizes=(2, 1))
    assert p.boxes.shape == (2, 3, 4) and p.level_sizes == (2, 1) and p.feature_shapes is None
    np.testing.assert_array_equal(p.levels, [0, 0, 1])
    np.testing.assert_array_equal(p.strides, [8, 8, 16])
    np.testing.assert_allclose(p.centers[1, 1], [9, 13])
    with pytest.raises(ValueError, match="level_sizes"):
        Priors.from_boxes(boxes, strides=(8,), level_sizes=(2,))


class CenterPointRetinaNet(dense.DenseDetector):
    """A method written only with the hooks: RetinaNet's network and losses on
    FCOS's points, each point owning the GT whose centre lies in its cell."""

    def __init__(self, config):
        super().__init__(config, retinanet.retina_head(config, num_anchors=1))

    def priors(self, image_hw, outputs=None):
        p = fcos.points(self.strides, image_hw)
        half = p.strides[:, None] * 2.0  # a square of 4 strides around each point
        return Priors.from_boxes(jnp.concatenate([p.centers - half, p.centers + half], -1),
                                 self.strides, p.level_sizes)

    def assign(self, outputs, priors, gt):
        def one(g):
            c = (g.boxes[:, :2] + g.boxes[:, 2:]) / 2  # [M, 2]
            half = priors.strides[:, None, None] / 2
            inside = jnp.all(jnp.abs(priors.centers[:, None] - c[None]) <= half, -1)  # [N, M]
            inside &= g.positive_valid[None]
            idx = jnp.where(jnp.any(inside, 1), jnp.argmax(inside, 1), -1).astype(jnp.int32)
            return Assignment(gt_index=idx, quality=(idx >= 0).astype(jnp.float32))

        return jax.vmap(one)(gt)

    def losses(self, outputs, priors, gt, assignment, ctx):
        return retinanet.retina_losses(outputs, priors, gt, assignment, self.num_classes,
                                       self.config.loss, (1.0, 1.0, 1.0, 1.0))

    def decode(self, outputs, priors):
        boxes = retinanet.decode_boxes(outputs["box_deltas"], priors, (1.0, 1.0, 1.0, 1.0))
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]), None


def test_a_method_is_its_hooks(tmp_path):
    config = tiny_config("retinanet", str(tmp_path))
    det = CenterPointRetinaNet(config)
    params, det_state = det.init(jax.random.PRNGKey(0), (64, 64))
    boxes = np.array([[[4, 6, 30, 40], [0, 0, 0, 0]], [[10, 10, 50, 60], [0, 0, 0, 0]]])
    batch = synthetic_batch(config, boxes, [[0, 0], [2, 0]], [[1, 0], [1, 0]])
    loss, (metrics, _) = jax.jit(det.loss_fn)(params, batch, jax.random.PRNGKey(1), det_state,
                                              jnp.int32(0))
    assert float(metrics["num_pos"]) == 3.0  # per image: one cell holds the centre per level
    assert float(loss) == pytest.approx(float(metrics["loss_cls"] + metrics["loss_box"]))
    tx = optax.sgd(0.01)
    state = step_lib.create_train_state(params, det_state, tx)
    state, m = jax.jit(lambda s, b: step_lib.train_step(s, b, jax.random.PRNGKey(0),
                                                        detector=det, tx=tx))(state, batch)
    assert bool(m["finite"]) and int(state.step) == 1
    dets = jax.jit(det.predict)(state.params, batch["image"], batch["image_hw"])
    assert dets.boxes.shape == (2, config.test.max_det, 4)
