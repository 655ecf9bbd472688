"""HAMBox end to end: a few training steps on `shapes/tiny` (loss falls), checkpoint,
restore + COCO eval, prediction; the online compensation inside the loss; the empty
image; and no gradient through the assignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.hambox import hambox_r50_fpn_1x_coco, hambox_tiny_shapes
from jaxdet import detectors
from jaxdet.core import coders
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
    boxes[0, 1] = [44, 40, 60, 62]
    boxes[1, 0] = [8, 30, 14, 36]  # 6 px: below T1 with every anchor
    valid = np.zeros((2, 4), bool)
    valid[0, :2] = valid[1, 0] = True
    labels = np.array([[0, 2, 0, 0], [1, 0, 0, 0]], np.int32)
    return synthetic_batch(config, boxes, labels, valid)


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "hambox")
    config, state, parts, rows = train_tiny("hambox", data_dir, workdir)
    assert all(r["train/num_compensated"] >= 0 for r in rows if "train/loss" in r)
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(parts.detector.predict)(state.params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)


@pytest.fixture(scope="module")
def tiny(data_dir):
    """(config, detector, params, jitted value-and-grad of the loss)."""
    config = tiny_config("hambox", data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0), has_aux=True
    ))
    return config, det, params, loss_and_grad


def test_image_without_boxes_gives_finite_loss(tiny):
    config, _, params, loss_and_grad = tiny
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    valid = np.zeros((2, 4), bool)
    valid[0, 0] = True
    for v in (valid, np.zeros_like(valid)):
        batch = synthetic_batch(config, boxes, np.zeros((2, 4), np.int32), v)
        (loss, (metrics, _)), grads = loss_and_grad(params, batch)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        assert (float(metrics["num_pos"]) > 0) == bool(v.any())


def test_compensation_from_regressed_boxes(tiny):
    """Head outputs whose every regression lands on GT 0 of its image: GT 0 ends with
    max(K, n_matched) anchors, the compensated ones at regressed IoU 1; GT 1 of image 0
    keeps its stage-1 anchors; the 6 px GT of image 1 has only its best anchors (below
    T1) and gains the rest up to K."""
    config, det, params, _ = tiny
    batch = _two_box_batch(config)
    out = dict(jax.jit(det.apply)(params, batch["image"]))
    priors = det.priors(batch["image"].shape[1:3])
    gt = ground_truth_from_batch(batch)
    target = jnp.broadcast_to(batch["boxes"][:, :1], out["box_deltas"].shape)
    anchors = jnp.broadcast_to(priors.boxes, target.shape)
    out["box_deltas"] = coders.delta_xywh_encode(anchors, target, stds=det.box_stds)
    matched = jax.jit(det.match)(priors, gt)
    final, comp = jax.jit(det.assign)(out, priors, gt)
    g1, g, c, q = (np.asarray(x) for x in (matched.gt_index, final.gt_index, comp,
                                            final.quality))
    n0 = np.sum(g1[0] == 0)
    assert n0 >= 1 and np.sum(g[0] == 0) == max(5, n0)
    assert np.sum(c[0] & (g[0] == 0)) == max(5 - n0, 0)
    np.testing.assert_allclose(q[0][c[0]], 1.0, atol=1e-4)
    assert np.sum(g[0] == 1) == np.sum(g1[0] == 1) >= 1 and not np.any(c[0] & (g[0] == 1))
    n1 = np.sum(g1[1] == 0)  # its best anchors: the 6 px box lies inside several, tied
    assert n1 >= 1 and np.sum(g[1] == 0) == max(5, n1) and c[1].sum() == max(5 - n1, 0)
    assert np.all(g[c] >= 0) and np.all(g1[c] == -1)  # compensated = stage-1 negatives
    assert not np.any(g[0] >= 2) and not np.any(g[1] >= 1)  # padding rows never match
    metrics = det.losses(out, priors, gt, (final, comp))
    assert np.isfinite(float(total_loss(metrics)))
    assert float(metrics["num_compensated"]) == c.sum() / 2


def test_assignment_carries_no_gradient(tiny):
    """The loss's gradient w.r.t. the head outputs equals the gradient with the
    assignment computed once from a frozen copy of them."""
    config, det, params, _ = tiny
    batch = _two_box_batch(config)
    out = jax.jit(det.apply)(params, batch["image"])
    priors = det.priors(batch["image"].shape[1:3])
    gt = ground_truth_from_batch(batch)
    frozen = jax.jit(det.assign)(out, priors, gt)

    def live(o):
        return total_loss(det.losses(o, priors, gt, det.assign(o, priors, gt)))

    def fixed(o):
        return total_loss(det.losses(o, priors, gt, frozen))

    (l1, g1), (l2, g2) = jax.jit(
        lambda o: (jax.value_and_grad(live)(o), jax.value_and_grad(fixed)(o))
    )(out)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    for k in out:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5, atol=1e-8)


def test_configs_build():
    config = hambox_r50_fpn_1x_coco.get_config()
    assert config.detector == "hambox"
    a = config.assigner
    assert (a.pos_iou_thr, a.k, a.comp_iou_thr) == (0.35, 5, 0.5)
    det = detectors.build(config)
    p = det.priors((64, 64))
    # One square anchor per location, 0.68 x 4 x stride: 21.76 px at stride 8.
    np.testing.assert_allclose(np.asarray(p.boxes[0, 2] - p.boxes[0, 0]), 21.76, rtol=1e-5)
    tiny_cfg = hambox_tiny_shapes.get_config()
    assert tiny_cfg.data.builder_config == "small_objects"
