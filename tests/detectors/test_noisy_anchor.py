"""Noisy-anchor RetinaNet end to end: a few training steps on `shapes/tiny` (loss
falls), checkpoint, restore + COCO eval, prediction; the empty-image case; and the
loss's use of stop_gradient-ed predictions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.noisy_anchor import noisy_anchor_r50_fpn_1x_coco
from jaxdet import detectors
from jaxdet.core.types import ground_truth_from_batch
from jaxdet.detectors.dense import total_loss
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config, train_tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _two_box_batch(config):
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    boxes[0, 1] = [20, 24, 60, 62]
    boxes[1, 0] = [8, 30, 24, 46]
    valid = np.zeros((2, 4), bool)
    valid[0, :2] = valid[1, 0] = True
    labels = np.array([[0, 2, 0, 0], [1, 0, 0, 0]], np.int32)
    return synthetic_batch(config, boxes, labels, valid)


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "noisy_anchor")
    config, state, parts, rows = train_tiny("noisy_anchor", data_dir, workdir)
    soft = [r["train/soft_label"] for r in rows if "train/soft_label" in r]
    assert all(0 <= s <= 1 for s in soft)
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    det = parts.detector
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(det.predict)(state.params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)
    assert dets.scores.shape == dets.classes.shape == dets.valid.shape == (2, config.test.max_det)


@pytest.fixture(scope="module")
def tiny(data_dir):
    """(config, detector, params, jitted value-and-grad of the loss) shared by the tests."""
    config = tiny_config("noisy_anchor", data_dir)
    config.assigner.topk = 20
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0), has_aux=True
    ))
    return config, det, params, loss_and_grad


def test_image_without_boxes_gives_finite_loss(tiny):
    config, _, params, loss_and_grad = tiny
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]  # image 0 has one box, image 1 none
    valid = np.zeros((2, m), bool)
    valid[0, 0] = True
    for v in (valid, np.zeros_like(valid)):  # also: a batch with no box at all
        batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v)
        (loss, (metrics, _)), grads = loss_and_grad(params, batch)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        assert float(metrics["num_pos"]) == (20 / 2 if v.any() else 0)


def test_assignment_and_weights(tiny):
    config, det, params, loss_and_grad = tiny
    batch = _two_box_batch(config)
    out = jax.jit(det.apply)(params, batch["image"])
    priors = det.priors(batch["image"].shape[1:3])
    gt = ground_truth_from_batch(batch)
    assignment, loc, cls = jax.jit(det.assign)(out, priors, gt)
    g = np.asarray(assignment.gt_index)
    # Bags of at most topk = 20 anchors for each real GT (the lone GT of image 1 keeps
    # all 20); padding rows none.
    counts = [np.sum(g[0] == 0), np.sum(g[0] == 1), np.sum(g[1] == 0)]
    assert 0 < counts[0] <= 20 and 0 < counts[1] <= 20 and counts[2] == 20, counts
    assert not np.any(g[0] >= 2) and not np.any(g[1] >= 1) and not np.any(g == -2)
    q = np.asarray(assignment.quality)
    np.testing.assert_allclose(q, np.where(g >= 0, 0.75 * loc + 0.25 * cls, 0), atol=1e-6)
    assert np.all((q >= 0) & (q <= 1))
    # Class probability of the GT class; the initial prior is 0.01 everywhere.
    np.testing.assert_allclose(np.asarray(cls)[g >= 0], 0.01, atol=5e-3)
    (loss, (metrics, _)), _ = loss_and_grad(params, batch)
    assert np.isfinite(float(loss))
    assert float(metrics["num_pos"]) == np.sum(g >= 0) / 2
    assert 0 < float(metrics["soft_label"]) <= 1 and np.isfinite(float(metrics["r_max"]))


def test_soft_labels_and_weights_carry_no_gradient(tiny):
    """The loss's gradient w.r.t. the head outputs equals the gradient with the
    assignment, soft labels and weights computed once from a frozen copy."""
    config, det, params, _ = tiny
    batch = _two_box_batch(config)
    out = jax.jit(det.apply)(params, batch["image"])
    priors = det.priors(batch["image"].shape[1:3])
    gt = ground_truth_from_batch(batch)
    frozen = jax.jit(det.assign)(out, priors, gt)

    def live(o):
        return total_loss(det.losses(o, priors, gt, det.assign(o, priors, gt)))

    def fixed(o, frozen):
        return total_loss(det.losses(o, priors, gt, frozen))

    (l_live, g_live), (l_fixed, g_fixed) = jax.jit(
        lambda o, f: (jax.value_and_grad(live)(o), jax.value_and_grad(fixed)(o, f))
    )(out, frozen)
    np.testing.assert_allclose(float(l_live), float(l_fixed), rtol=1e-6)
    for k in out:
        np.testing.assert_allclose(g_live[k], g_fixed[k], rtol=1e-5, atol=1e-8)
        assert np.any(np.asarray(g_live[k]) != 0)


def test_full_size_config_builds():
    config = noisy_anchor_r50_fpn_1x_coco.get_config()
    assert config.detector == "noisy_anchor"
    assert config.assigner.topk == 50 and config.assigner.alpha == 0.75
    assert config.loss.reweight_gamma == 1.0
    det = detectors.build(config)
    assert det.priors((64, 64)).boxes.shape[1] == 4


def test_rescaled_soft_labels_option(data_dir):
    """loss.soft_label='rescaled': the port's labels, on [mean IoU, 1] over the batch's
    positives (the best positive has target 1); anything else is a clear error."""
    config = tiny_config("noisy_anchor", data_dir)
    config.loss.soft_label = "rescaled"
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    batch = _two_box_batch(config)
    out = det.apply(params, batch["image"])
    priors = det.priors(batch["image"].shape[1:3])
    assignment, loc, _ = jax.jit(det.assign)(out, priors, ground_truth_from_batch(batch))
    pos = np.asarray(assignment.gt_index) >= 0
    q = np.asarray(assignment.quality)[pos]
    assert q.max() == pytest.approx(1.0) and q.min() >= np.asarray(loc)[pos].mean() - 1e-6
    config.loss.soft_label = "other"
    with pytest.raises(ValueError, match="soft_label"):
        detectors.build(config)
