"""GA-RetinaNet: end to end (train, save, restore, eval), head outputs, the guided
anchors, an image without boxes (finite losses and gradients), padding never positive."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.core.types import ground_truth_from_batch
from jaxdet.detectors import ga_retinanet as gar
from tests.tiny import check_restore_and_predict, synthetic_batch, tiny_config, train_tiny

CONFIG = "configs.guided_anchoring.ga_retinanet_tiny_shapes"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "ga")
    config, state, parts, _ = train_tiny(CONFIG, data_dir, workdir)
    check_restore_and_predict(config, state, parts, workdir)


def _batch(config):
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    boxes[0, 1] = [30, 30, 62, 62]
    boxes[0, 2] = [0, 0, 64, 64]  # padding row (valid False) covering the whole image
    valid = np.zeros((2, m), bool)
    valid[0, :2] = True  # image 0 has two boxes, image 1 none
    return boxes, valid, synthetic_batch(config, boxes, np.zeros((2, m), np.int32), valid)


def test_outputs_assignment_and_empty_images(data_dir):
    config = tiny_config(CONFIG, data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    assert "conv_offset" in params["head"]["adaption_cls"]
    boxes, valid, batch = _batch(config)
    hw = tuple(config.data.image_size)

    @jax.jit
    def stages(p):
        out = det.apply(p, batch["image"])
        priors = det.priors(hw, out)
        gt = ground_truth_from_batch(batch)
        return out, priors["guided"].boxes, det.assign(out, priors, gt)

    out, guided, a = stages(params)
    n = 8 * 8 + 4 * 4 + 2 * 2  # one guided anchor per location of P3-P5 at 64 px
    assert out["cls_logits"].shape == (2, n, config.data.num_classes)
    assert out["box_deltas"].shape == (2, n, 4) and out["shape_pred"].shape == (2, n, 2)
    assert out["loc_logits"].shape == (2, n) and guided.shape == (2, n, 4)
    # The guided anchors are the squares (2 x stride) decoded by (dw, dh).
    sq = gar.square_anchors(config.ga, det.strides, hw).boxes
    want = gar.decode_shape(sq, out["shape_pred"], (1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(guided, want, rtol=1e-6)
    gi = np.asarray(a.gt_index)
    assert set(gi[0][gi[0] >= 0].tolist()) <= {0, 1} and np.all(gi[1] == -1)  # no padding

    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0), has_aux=True))
    for v in (valid, np.zeros_like(valid)):  # also: a batch with no box at all
        b = synthetic_batch(config, boxes, np.zeros((2, 4), np.int32), v)
        (loss, (terms, _)), grads = grad_fn(params, b)
        assert np.isfinite(float(loss))
        assert all(np.isfinite(float(t)) for t in terms.values())
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert float(terms["num_pos"]) == 0.0 and float(terms["shape_num_pos"]) == 0.0

    dets = jax.jit(det.predict)(params, batch["image"], batch["image_hw"])
    assert dets.boxes.shape == (2, config.test.max_det, 4)


def test_plain_conv_ablation(data_dir):
    config = tiny_config(CONFIG, data_dir)
    config.ga.feature_adaption = False
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    head = params["head"]
    assert "conv_offset" not in head["adaption_cls"]
    assert head["adaption_cls"]["conv_adaption"]["kernel"].shape == (3, 3, 16, 16)


def test_loc_filter_masks_scores(data_dir):
    config = tiny_config(CONFIG, data_dir)
    det = detectors.build(config)
    n = 84
    out = dict(cls_logits=jnp.zeros((n, 3)), box_deltas=jnp.zeros((n, 4)),
               loc_logits=jnp.where(jnp.arange(n) < 10, 0.0, -10.0), shape_pred=jnp.zeros((n, 2)))
    sq = gar.square_anchors(config.ga, det.strides, tuple(config.data.image_size))
    _, scores, _ = det.decode(out, sq)
    # sigmoid(-10) < 0.01: those locations score 0; sigmoid(0) = 0.5 keeps sigmoid(cls).
    np.testing.assert_allclose(scores[:10], 0.5)
    np.testing.assert_array_equal(scores[10:], 0.0)
