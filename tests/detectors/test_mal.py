"""MAL detector: FreeAnchor-like loss against a NumPy version of mmdetection's
FreeAnchorRetinaHead, selection-depression on/off, a few-step end-to-end run
(loss falls, checkpoint, restore + COCO eval), and the empty-image case."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.assign import anchor_bags
from jaxdet.core.types import GroundTruth
from jaxdet.detectors.dense import StepContext, total_loss
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config, train_tiny

from ..assign import numpy_ref as ref

STDS = np.array([0.1, 0.1, 0.2, 0.2])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _np_encode(a, g):
    pw, ph = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    px, py = (a[..., 0] + a[..., 2]) / 2, (a[..., 1] + a[..., 3]) / 2
    gw, gh = g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]
    gx, gy = (g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2
    d = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], -1)
    return d / STDS


def _np_decode(a, d):
    d = d * STDS
    pw, ph = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    px, py = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    clip = math.log(1000.0 / 16.0)
    gw, gh = pw * np.exp(np.clip(d[:, 2], -clip, clip)), ph * np.exp(np.clip(d[:, 3], -clip, clip))
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    return np.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], -1)


def _np_free_anchor(cls_logits, deltas, anchors, gts, k, alpha=0.5, gamma=2.0, thr=0.6,
                    beta=0.11, weight=0.75):
    """mmdetection FreeAnchorRetinaHead.loss_by_feat over a batch, float64.
    gts: per image (boxes [G, 4], labels [G]) of the real (non-padding, non-crowd) GTs."""
    pos_losses, box_probs, num_pos = [], [], 0
    for x, d, (boxes, labels) in zip(cls_logits, deltas, gts):
        cls_prob = 1 / (1 + np.exp(-x))
        image_box_prob = np.zeros_like(cls_prob)
        if len(boxes):
            iou = ref.bbox_overlaps(boxes, _np_decode(anchors, d)).astype(np.float64)
            t2 = np.maximum(iou.max(1, keepdims=True), thr + 1e-12)
            obp = np.clip((iou - thr) / (t2 - thr), 0, 1)
            for j, c in enumerate(labels):
                image_box_prob[:, c] = np.maximum(image_box_prob[:, c], obp[j])
            matched = np.argsort(-ref.bbox_overlaps(boxes, anchors), axis=1, kind="stable")[:, :k]
            mcp = cls_prob[matched, labels[:, None]]
            tgt = _np_encode(anchors[matched], boxes[:, None, :])
            diff = np.abs(d[matched] - tgt)
            sl1 = np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
            p = mcp * np.exp(-weight * sl1.sum(-1))
            w = 1 / np.clip(1 - p, 1e-12, None)
            w /= w.sum(1, keepdims=True)
            pos_losses.append(alpha * -np.log((w * p).sum(1)))
        box_probs.append(image_box_prob)
        num_pos += len(boxes)
    positive = np.concatenate(pos_losses).sum() / max(1, num_pos)
    prob = np.clip(1 / (1 + np.exp(-cls_logits)) * (1 - np.stack(box_probs)), 1e-12, 1 - 1e-12)
    negative = ((1 - alpha) * prob**gamma * -np.log(1 - prob)).sum() / max(1, num_pos * k)
    return positive, negative


def _gt_batch():
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, :3] = [[4, 6, 40, 30], [20, 24, 60, 62], [0, 0, 30, 30]]
    boxes[1, :2] = [[10, 12, 26, 50], [33, 3, 63, 20]]
    labels = np.array([[0, 2, 1, 0], [1, 1, 0, 0]], np.int32)
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    ignore = np.array([[0, 0, 1, 0], [0, 0, 0, 0]], bool)  # image 0 row 2: a crowd box
    return GroundTruth(boxes=boxes, labels=labels, valid=valid, ignore=ignore)


def test_free_anchor_like_loss_matches_mmdetection(data_dir):
    config = tiny_config("mal", data_dir)
    config.mal.selection = False
    config.mal.depression = "none"
    config.bags.ignore_iof_thr = -1.0  # mmdetection ignores crowd boxes altogether
    det = detectors.build(config)
    priors = det.priors((64, 64))
    n, c = priors.num_priors, det.num_classes
    rng = np.random.default_rng(0)
    out = dict(cls_logits=rng.normal(-3, 1.5, (2, n, c)).astype(np.float32),
               box_deltas=rng.normal(0, 0.5, (2, n, 4)).astype(np.float32))
    gt = _gt_batch()
    # The dense bags: the reference's stable sort keeps the lower anchor index among
    # equal IoUs at the K-th place, as the dense path does (the grid path may not).
    dense = lambda g: jax.vmap(
        lambda g1: anchor_bags.build(priors, g1, bag_size=det.bag_size, method="dense"))(g)
    ctx = StepContext(rng=None, step=jnp.int32(0), det_state={})
    fn = jax.jit(lambda o, g: det.losses(o, priors, g, dense(g), ctx))
    metrics = fn(out, gt)
    loss = total_loss(metrics)
    gts = [(gt.boxes[0, :2], gt.labels[0, :2]), (gt.boxes[1, :2], gt.labels[1, :2])]
    pos, neg = _np_free_anchor(out["cls_logits"].astype(np.float64),
                               out["box_deltas"].astype(np.float64),
                               np.asarray(priors.boxes, np.float64), gts, det.bag_size)
    np.testing.assert_allclose(metrics["loss_pos"], pos, rtol=1e-4)
    np.testing.assert_allclose(metrics["loss_neg"], neg, rtol=1e-4)
    np.testing.assert_allclose(loss, pos + neg, rtol=1e-4)
    assert float(metrics["num_gt"]) == 2.0
    # With the default ignore IoF 0.5, anchors on the crowd box drop out of the negative loss.
    config.bags.ignore_iof_thr = 0.5
    det2 = detectors.build(config)
    m2 = jax.jit(lambda o, g: det2.losses(o, priors, g, dense(g), ctx))(out, gt)
    assert float(m2["loss_neg"]) < float(metrics["loss_neg"])
    np.testing.assert_allclose(m2["loss_pos"], metrics["loss_pos"], rtol=1e-6)


def test_config_errors(data_dir):
    config = tiny_config("mal", data_dir)
    config.mal.depression = "everywhere"
    with pytest.raises(ValueError, match="depression"):
        detectors.build(config)
    config = tiny_config("mal", data_dir)
    config.train.num_steps = 0
    with pytest.raises(ValueError, match="schedule_steps"):
        detectors.build(config)
    config.mal.selection, config.mal.depression = False, "none"  # FreeAnchor-like: no schedule
    detectors.build(config)


def test_depression_modes_empty_images_and_schedules(data_dir):
    """Finite loss and gradients with and without GT; no depression at step 0 (ratio 0),
    so 'selected' gives the loss of 'none' there; at the peak ratio 'selected' depresses
    some positions, fewer than the whole-map variant (floor(0.5 * HW) per level)."""
    m = 5
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    boxes[0, 1] = [30, 20, 62, 60]
    valid = np.zeros((2, m), bool)
    valid[0, :2] = True
    labels = np.zeros((2, m), np.int32)
    total = 12
    results = {}
    for mode in ("selected", "none"):
        config = tiny_config("mal", data_dir, num_steps=total)
        config.mal.depression = mode
        det = detectors.build(config)
        params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
        grad_fn = jax.jit(jax.value_and_grad(
            lambda p, b, t, det=det, st=det_state: det.loss_fn(p, b, None, st, t), has_aux=True))
        for name, v in (("gt", valid), ("empty", np.zeros_like(valid))):
            batch = synthetic_batch(config, boxes, labels, v)
            for step in (0, 5):  # ratio(0) = 0; ratio(5) = 0.5 * min(5, 6) / 5 = 0.5
                (loss, (metrics, _)), grads = grad_fn(params, batch, jnp.int32(step))
                assert np.isfinite(float(loss))
                assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
                results[mode, name, step] = (float(loss), jax.device_get(metrics))
    for name in ("gt", "empty"):
        np.testing.assert_allclose(results["selected", name, 0][0], results["none", name, 0][0],
                                   rtol=1e-6)
    sel = results["selected", "gt", 5][1]
    assert float(sel["depression_ratio"]) == pytest.approx(0.5)
    whole_map = 32 + 8 + 2  # floor(0.5 * HW) of the 8x8, 4x4, 2x2 levels of a 64 px image
    # metric = depressed positions per image; image 1 has no GT, so no selected anchor
    assert 0 < 2 * float(sel["depressed_positions"]) < whole_map
    assert float(results["selected", "empty", 5][1]["depressed_positions"]) == 0.0
    assert float(results["selected", "gt", 5][0]) != results["none", "gt", 5][0]
    # all-to-top-1: s(5) = 40 - floor(39 * 5 / 12) = 24
    assert float(sel["num_selected"]) == 24.0


def _np_ia_feat(feat, ratio):
    """DeLightCMU/MAL RetinaNet.IA_feat + MASK_TYPE 0 on one NHWC level."""
    b, h, w, c = feat.shape
    gap = feat.reshape(b, -1, c).mean(1)
    cam = (feat * gap[:, None, None, :]).sum(-1)
    thr = np.sort(cam.reshape(b, -1), axis=1)[:, ::-1][:, int(h * w * ratio)]
    mask = np.where(cam > thr[:, None, None], 0.0, 1.0)[..., None]
    return (3 * feat * mask + feat) / 4


def test_whole_map_depression_is_the_released_code(data_dir):
    config = tiny_config("mal", data_dir, num_steps=12)
    config.mal.depression = "image"
    det = detectors.build(config)
    priors = det.priors((64, 64))
    rng = np.random.default_rng(1)
    feats = tuple(rng.normal(size=(2, s, s, 16)).astype(np.float32) for s in (8, 4, 2))
    gt = _gt_batch()
    bags = det.assign(None, priors, gt)
    for step, ratio in ((0, 0.0), (2, 0.2), (5, 0.5), (8, 0.3)):
        out, r, n = jax.jit(lambda f, t: det.depress_features(None, f, priors, gt, bags, t, 40))(
            feats, jnp.int32(step))
        assert float(r) == pytest.approx(ratio)
        for f, o in zip(feats, out):
            np.testing.assert_allclose(o, _np_ia_feat(f, ratio), rtol=1e-6)
        assert float(n) == sum(int(s * s * ratio + 1e-4) for s in (8, 4, 2))


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "mal")
    config, state, parts, rows = train_tiny("mal", data_dir, workdir)
    selected = [r["train/num_selected"] for r in rows if "train/num_selected" in r]
    assert selected[0] == 40 and selected[-1] < selected[0]
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    det = parts.detector
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(det.predict)(state.params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)
    assert dets.scores.shape == dets.valid.shape == (2, config.test.max_det)
