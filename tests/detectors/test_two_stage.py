"""Two-stage detectors (RPN, Faster R-CNN, Mask R-CNN) end to end on `shapes/tiny`:
a few training steps (the loss falls), checkpoint, restore + evaluation (bbox, segm,
proposal recall), prediction shapes (also in bf16), the empty-image case, the RoI
sampling's GT boxes, and the start-up errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.core.types import GroundTruth
from jaxdet.detectors import faster_rcnn
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config

NAMES = ("rpn", "faster_rcnn", "mask_rcnn")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(name, data_dir, **train):
    config = tiny_config(name, data_dir, **train)
    config.roi.fc_channels = 32
    config.roi.mask_channels = 8
    config.roi.mask_convs = 2
    config.roi.num_samples = 32
    r = config.rpn
    r.train_pre_nms_topk, r.train_post_nms_topk = 200, 50
    r.test_pre_nms_topk = 200
    r.test_post_nms_topk = 300 if name == "rpn" else 50
    config.test.pre_nms_topk = 200
    return config


def _masks_for(boxes, valid, hw):
    """Box-shaped instance masks [B, M, H, W] uint8 for synthetic batches."""
    b, m = valid.shape
    masks = np.zeros((b, m, *hw), np.uint8)
    for i in range(b):
        for j in range(m):
            if valid[i, j]:
                x1, y1, x2, y2 = np.round(boxes[i, j]).astype(int)
                masks[i, j, y1:y2, x1:x2] = 1
    return jnp.asarray(masks)


@pytest.mark.parametrize("name", NAMES)
def test_train_save_restore_eval(name, data_dir, tmp_path):
    """12 steps: every loss finite and the RPN's classification loss falls (the RoI
    terms grow while the proposals improve, so the total is not monotone this early)."""
    workdir = str(tmp_path / name)
    config = _config(name, data_dir, num_steps=12, checkpoint_every=6, lr=0.01)
    state, parts = loop.train(config, workdir)
    assert int(state.step) == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    assert len(rows) == 12 and all(np.isfinite(r["train/loss"]) for r in rows)
    rpn = [r["train/loss_rpn_cls"] for r in rows]
    assert np.mean(rpn[-3:]) < np.mean(rpn[:3]), rpn
    stats = loop.evaluate_checkpoint(config, workdir)
    keys = {"rpn": ("AR@100", "AR@300"), "faster_rcnn": ("AP", "AP50"),
            "mask_rcnn": ("AP", "segm_AP", "segm_AP50")}[name]
    for key in keys:
        assert key in stats and np.isfinite(stats[key]), (key, sorted(stats))
    det = parts.detector
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(det.predict)(state.params, images, hw)
    k = config.rpn.test_post_nms_topk if name == "rpn" else config.test.max_det
    assert dets.boxes.shape == (2, k, 4) and dets.valid.shape == (2, k)
    if name == "mask_rcnn":
        assert dets.masks.shape == (2, k, *config.data.image_size)


@pytest.mark.parametrize("name", NAMES)
def test_image_without_boxes_gives_finite_loss(name, data_dir):
    config = _config(name, data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    valid = np.zeros((2, m), bool)
    valid[0, 0] = True
    for v in (valid, np.zeros_like(valid)):  # one image without boxes; no box at all
        batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v)
        if name == "mask_rcnn":
            batch["masks"] = _masks_for(boxes, v, config.data.image_size)
        fn = jax.jit(jax.value_and_grad(
            lambda p, b=batch: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0),
            has_aux=True))
        (loss, (metrics, _)), grads = fn(params)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        if name != "rpn" and not v.any():
            assert float(metrics["roi_num_pos"]) == 0.0  # every sampled RoI is background


def test_sampled_rois_hold_the_gt_boxes_and_skip_crowd():
    """With add_gt, each GT box is a proposal (IoU 1: positive); a crowd box is neither
    added nor matched, and RoIs on it are ignored (never sampled)."""
    from configs.faster_rcnn import faster_rcnn_tiny_shapes

    hp = faster_rcnn_tiny_shapes.get_config().roi
    hp.num_samples = 8
    gt = GroundTruth(
        boxes=jnp.asarray([[10, 10, 40, 40], [60, 60, 100, 90], [0, 0, 0, 0]], jnp.float32),
        labels=jnp.asarray([2, 1, 0], jnp.int32),
        valid=jnp.asarray([True, True, False]),
        ignore=jnp.asarray([False, True, False]),
    )
    props = jnp.asarray([[61, 61, 99, 89], [0, 100, 20, 120], [11, 11, 40, 41]], jnp.float32)
    out = jax.jit(jax.vmap(
        lambda k, p: faster_rcnn.sample_rois(k, p, jnp.ones((3,), bool), gt, hp, 3),
        in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(0), 2), props)
    for i in range(2):
        pos = np.asarray(out["positive"][i])
        valid = np.asarray(out["valid"][i])
        rois = np.asarray(out["rois"][i])[valid]
        # positives: the GT box itself and the proposal near it; both of class 2
        assert pos.sum() == 2 and pos[:2].all()
        np.testing.assert_array_equal(np.asarray(out["labels"][i])[pos], [2, 2])
        # negatives: only the background proposal (the crowd-covering one is ignored)
        assert valid.sum() == 3
        assert not any(np.allclose(r, [61, 61, 99, 89]) for r in rois)
        assert not any(np.allclose(r, [60, 60, 100, 90]) for r in rois)
        np.testing.assert_array_equal(np.asarray(out["labels"][i])[valid & ~pos], [3])


def test_mask_config_without_masks_is_a_clear_error(data_dir):
    config = _config("mask_rcnn", data_dir)
    config.data.with_masks = False
    with pytest.raises(ValueError, match="masks"):
        detectors.build(config)


def test_heads_in_bfloat16(data_dir):
    config = _config("mask_rcnn", data_dir)
    config.model.dtype = "bfloat16"
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    images = jnp.zeros((1, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size], jnp.int32)
    dets = jax.jit(det.predict)(params, images, hw)
    assert dets.boxes.dtype == jnp.float32 and dets.masks.dtype == jnp.float32
    feats = det.features(params, images)
    assert feats[0].dtype == jnp.bfloat16
    x = jnp.zeros((3, 7, 7, feats[0].shape[-1]), jnp.bfloat16)
    out = det._call(params, faster_rcnn.TwoStageNetwork.box, x)
    assert out["cls_logits"].shape == (3, config.data.num_classes + 1)
    assert out["box_deltas"].shape == (3, config.data.num_classes, 4)
    m = det._call(params, faster_rcnn.TwoStageNetwork.mask,
                  jnp.zeros((3, 14, 14, feats[0].shape[-1]), jnp.bfloat16))
    assert m.shape == (3, 28, 28, config.data.num_classes) and m.dtype == jnp.float32


def test_all_proposals_suppressed_keeps_shapes_and_finite_values(data_dir):
    """rpn.min_size above the image: every proposal is dropped. Training still samples
    the GT boxes (added as RoIs) and background nothing else; prediction gives no
    detection; shapes are fixed and nothing is NaN."""
    config = _config("mask_rcnn", data_dir)
    config.rpn.min_size = 1e4
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[:, 0] = [4, 4, 40, 30]
    valid = np.zeros((2, 4), bool)
    valid[:, 0] = True
    batch = synthetic_batch(config, boxes, np.ones((2, 4), np.int32), valid)
    batch["masks"] = _masks_for(boxes, valid, config.data.image_size)
    fn = jax.jit(jax.value_and_grad(
        lambda p: det.loss_fn(p, batch, jax.random.PRNGKey(1), det_state, 0), has_aux=True))
    (loss, (metrics, _)), grads = fn(params)
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics["loss_mask"]))
    assert float(metrics["roi_num_pos"]) == 1.0  # the GT box itself
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    dets = jax.jit(det.predict)(params, batch["image"], batch["image_hw"])
    assert not np.asarray(dets.valid).any()
    assert dets.boxes.shape == (2, config.test.max_det, 4)
    for leaf in (dets.boxes, dets.scores, dets.masks):
        assert np.isfinite(np.asarray(leaf)).all()


def test_mask_rcnn_on_a_coco_directory(tmp_path):
    """The tiny Mask R-CNN on a COCO-format directory (polygon and RLE masks, crowd,
    invalid boxes): K read from the annotations, a few steps, bbox and segm evaluation."""
    from tests.data.coco_fixture import write_coco_dir

    root = write_coco_dir(str(tmp_path / "coco"))
    config = _config("mask_rcnn", str(tmp_path / "tfds"), num_steps=2, checkpoint_every=2)
    config.data.update(dict(name="coco_dir", coco_dir=root, builder_config="default",
                            num_classes=0, max_boxes=8))
    stats = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert config.data.num_classes == 3
    assert np.isfinite(stats["AP"]) and np.isfinite(stats["segm_AP"])


def test_pack_positives_hand_case():
    from jaxdet.detectors.mask_rcnn import pack_positives

    positive = jnp.asarray([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], bool)
    image, slot, valid = jax.jit(jax.vmap(lambda q: pack_positives(q, 2)))(positive[None])
    np.testing.assert_array_equal(image[0], [0, 0, 0, 2, 2, 0])
    np.testing.assert_array_equal(slot[0], [1, 2, 4, 0, 1, 0])
    np.testing.assert_array_equal(valid[0], [1, 1, 1, 1, 1, 0])
    image, slot, valid = pack_positives(positive, 1)  # 5 positives, 3 rows: the first 3
    np.testing.assert_array_equal(image, [0, 0, 0])
    np.testing.assert_array_equal(slot, [1, 2, 4])
    assert bool(valid.all())
    image, slot, valid = pack_positives(jnp.zeros((2, 4), bool), 2)  # none: all invalid
    assert not bool(valid.any()) and not np.any(image) and not np.any(slot)


def test_mask_slot_buckets_leave_the_loss_unchanged(data_dir):
    """The mask loss on the positives packed into b x p rows is the same for every p whose
    rows hold them all (loss and gradients), and `roi_losses` picks the smallest such
    bucket: the average positives per image decide, not the most of one image."""
    config = _config("mask_rcnn", data_dir)
    config.roi.mask_slot_buckets = (2, 4)
    det = detectors.build(config)
    assert det.mask_slots == (2, 4, 8)
    params, _ = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    hw = tuple(config.data.image_size)
    rng = np.random.RandomState(0)
    feats = det.features(params, jnp.asarray(rng.randn(2, *hw, 3), jnp.float32))
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[:, :3] = [[4, 4, 40, 30], [30, 20, 60, 60], [8, 34, 28, 60]]
    valid = np.zeros((2, 4), bool)
    valid[:, :3] = True
    gt = GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.ones((2, 4), jnp.int32),
                     valid=jnp.asarray(valid), ignore=jnp.zeros((2, 4), bool),
                     masks=_masks_for(boxes, valid, hw))
    s = 32
    for num_pos in ((1, 2), (3, 1), (3, 3)):  # 2 x 2 rows hold the first two, 2 x 4 all
        positive = np.arange(s)[None] < np.asarray(num_pos)[:, None]
        gt_index = np.where(positive, np.arange(s)[None] % 3, -1)
        rois = boxes[np.arange(2)[:, None], np.maximum(gt_index, 0)] + rng.uniform(-3, 3, (2, s, 4))
        sampled = dict(rois=jnp.asarray(rois, jnp.float32), positive=jnp.asarray(positive),
                       valid=jnp.ones((2, s), bool), gt_index=jnp.asarray(gt_index),
                       box_targets=jnp.zeros((2, s, 4)),
                       labels=jnp.asarray(np.where(positive, 1, config.data.num_classes)))
        losses = {}
        for p in (-(-sum(num_pos) // 2) + (sum(num_pos) == 6), 8):
            loss = lambda q, p=p, sd=sampled: det.mask_loss(q, feats, sd, gt.masks, p)  # noqa: E731
            f = jax.jit(jax.value_and_grad(loss))
            losses[p] = f(params)
        (a, ga), (b, gb) = losses.values()
        assert float(a) > 0
        np.testing.assert_allclose(a, b, rtol=1e-5)
        for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
        terms = jax.jit(lambda q, sd=sampled: det.roi_losses(q, feats, sd, gt, None))(params)
        np.testing.assert_allclose(terms["loss_mask"], a * config.roi.mask_weight, rtol=1e-5)
    with pytest.raises(ValueError, match="mask_slot_buckets"):
        config.roi.mask_slot_buckets = (0, 4)
        detectors.build(config)
