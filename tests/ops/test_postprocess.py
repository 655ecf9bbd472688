import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.postprocess import dense_postprocess

from .numpy_nms import clustered_boxes, greedy_nms


def _np_dense_postprocess(
    boxes,
    scores,
    level_sizes,
    image_hw,
    *,
    score_thr,
    pre_nms_topk,
    iou_threshold,
    max_det,
    min_bbox_size=0.0,
    score_factors=None,
):
    """mmdet 3.x `_predict_by_feat_single` + `_bbox_post_process`, data-dependent shapes."""
    num_classes = scores.shape[1]
    priors, classes, cand = [], [], []
    start = 0
    for size in level_sizes:
        flat = scores[start : start + size].reshape(-1)
        idx = np.nonzero(flat > score_thr)[0]  # filter_scores_and_topk
        idx = idx[np.argsort(-flat[idx], kind="stable")][:pre_nms_topk]
        priors.append(idx // num_classes + start)
        classes.append(idx % num_classes)
        cand.append(flat[idx])
        start += size
    prior, cls, s = np.concatenate(priors), np.concatenate(classes), np.concatenate(cand)
    h, w = image_hw
    b = boxes[prior].copy()
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    if score_factors is not None:
        s = s * score_factors[prior]
    keep = np.all(b[:, 2:] - b[:, :2] > min_bbox_size, axis=1)
    b, s, cls = b[keep], s[keep], cls[keep]
    kept = greedy_nms(b, s, iou_threshold, classes=cls)[:max_det]
    return b[kept], s[kept], cls[kept]


def _random_image(seed, level_sizes=(96, 24, 6), num_classes=5):
    rng = np.random.default_rng(seed)
    n = sum(level_sizes)
    boxes, obj = clustered_boxes(rng, n, num_objects=12, size=300)
    scores = rng.uniform(size=(n, num_classes)) ** 3
    scores[np.arange(n), obj % num_classes] += 0.5 * rng.uniform(size=n)  # a dominant class
    return rng, boxes, np.clip(scores, 0, 1).astype(np.float32)


def _check_against_numpy(dets, ref):
    ref_boxes, ref_scores, ref_cls = ref
    k = len(ref_scores)
    assert int(np.asarray(dets.valid).sum()) == k
    assert np.asarray(dets.valid)[:k].all()
    np.testing.assert_allclose(dets.boxes[:k], ref_boxes, rtol=1e-6)
    np.testing.assert_allclose(dets.scores[:k], ref_scores, rtol=1e-6)
    np.testing.assert_array_equal(dets.classes[:k], ref_cls)
    # padding rows are zero
    assert not np.asarray(dets.boxes)[k:].any() and not np.asarray(dets.scores)[k:].any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_factors", [False, True])
def test_matches_numpy_mmdet_pipeline(seed, with_factors):
    rng, boxes, scores = _random_image(seed)
    factors = rng.uniform(size=len(boxes)).astype(np.float32) if with_factors else None
    kw = dict(score_thr=0.05, pre_nms_topk=40, iou_threshold=0.6, max_det=30)
    image_hw = np.array([250.0, 280.0], np.float32)
    dets = dense_postprocess(boxes, scores, (96, 24, 6), image_hw, score_factors=factors, **kw)
    ref = _np_dense_postprocess(boxes, scores, (96, 24, 6), image_hw, score_factors=factors, **kw)
    assert 5 < len(ref[1]) <= 30
    _check_against_numpy(dets, ref)
    assert dets.classes.dtype == jnp.int32 and dets.valid.dtype == jnp.bool_


def _two_boxes(classes):
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [0, 0, 1, 1]], np.float32)
    scores = np.zeros((3, 3), np.float32)
    scores[0, classes[0]] = 0.9
    scores[1, classes[1]] = 0.8
    return boxes, scores


def test_hand_made_overlap_same_and_different_class():
    hw = np.array([100.0, 100.0])
    boxes, scores = _two_boxes((1, 1))
    dets = dense_postprocess(boxes, scores, (3,), hw, max_det=5)
    np.testing.assert_array_equal(dets.valid, [True, False, False, False, False])
    np.testing.assert_allclose(dets.boxes[0], boxes[0])
    np.testing.assert_allclose(dets.scores[0], 0.9)
    assert int(dets.classes[0]) == 1
    boxes, scores = _two_boxes((1, 2))
    dets = dense_postprocess(boxes, scores, (3,), hw, max_det=5)
    np.testing.assert_array_equal(dets.valid, [True, True, False, False, False])
    np.testing.assert_array_equal(dets.classes[:2], [1, 2])
    np.testing.assert_allclose(dets.scores[:2], [0.9, 0.8])
    np.testing.assert_allclose(dets.boxes[1], boxes[1])


def test_score_threshold_is_strict():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores = np.array([[0.05], [0.0500001], [0.3]], np.float32)
    dets = dense_postprocess(boxes, scores, (3,), np.array([100, 100]), max_det=3)
    np.testing.assert_allclose(dets.scores, [0.3, 0.0500001, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(dets.valid, [True, True, False])


def test_level_topk_is_per_level():
    # level 0: 6 disjoint boxes with high scores, level 1: 2 boxes with low scores
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(8)], np.float32)
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4], [0.2], [0.1]], np.float32)
    dets = dense_postprocess(boxes, scores, (6, 2), np.array([100, 200]), pre_nms_topk=2, max_det=8)
    # top-2 of level 0, top-2 of level 1
    np.testing.assert_allclose(dets.scores[:4], [0.9, 0.8, 0.2, 0.1])
    np.testing.assert_array_equal(dets.valid, [True] * 4 + [False] * 4)


def test_multi_label_and_best_class_only():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.6, 0.7], [0.3, 0.1]], np.float32)
    hw = np.array([100, 100])
    dets = dense_postprocess(boxes, scores, (2,), hw, max_det=4)
    np.testing.assert_allclose(dets.scores, [0.7, 0.6, 0.3, 0.1])
    np.testing.assert_array_equal(dets.classes, [1, 0, 0, 1])
    dets = dense_postprocess(boxes, scores, (2,), hw, max_det=4, multi_label=False)
    np.testing.assert_allclose(dets.scores, [0.7, 0.3, 0, 0])
    np.testing.assert_array_equal(dets.classes[:2], [1, 0])
    np.testing.assert_array_equal(dets.valid, [True, True, False, False])


def test_clip_min_size_and_score_factors():
    boxes = np.array([[-5, -5, 20, 30], [120, 0, 150, 10], [60, 60, 70, 70]], np.float32)
    scores = np.array([[0.5], [0.9], [0.4]], np.float32)
    factors = np.array([0.5, 1.0, 1.0], np.float32)
    hw = np.array([100.0, 110.0])  # h, w
    dets = dense_postprocess(boxes, scores, (3,), hw, score_factors=factors, max_det=3)
    # box 1 lies right of the image: zero width after clipping -> dropped (min_bbox_size=0)
    # centerness 0.5 re-ranks box 0 (0.25) below box 2 (0.4)
    np.testing.assert_allclose(dets.scores, [0.4, 0.25, 0.0])
    np.testing.assert_allclose(dets.boxes[1], [0, 0, 20, 30])
    np.testing.assert_array_equal(dets.valid, [True, True, False])
    dets = dense_postprocess(boxes, scores, (3,), hw, min_bbox_size=None, max_det=3)
    np.testing.assert_allclose(dets.boxes[0], [110, 0, 110, 10])


def test_extra_is_gathered():
    boxes, scores = _two_boxes((1, 2))
    std = np.arange(12, dtype=np.float32).reshape(3, 4)
    dets, extra = dense_postprocess(
        boxes,
        scores,
        (3,),
        np.array([100, 100]),
        max_det=3,
        extra={"box_std": std, "id": np.arange(3)},
    )
    np.testing.assert_allclose(extra["box_std"], [std[0], std[1], np.zeros(4)])
    np.testing.assert_array_equal(extra["id"], [0, 1, 0])


def test_all_below_threshold_gives_all_invalid():
    _, boxes, scores = _random_image(0)
    dets = dense_postprocess(boxes, scores * 0.01, (96, 24, 6), np.array([300, 300]), max_det=10)
    assert not np.asarray(dets.valid).any() and not np.asarray(dets.scores).any()


def test_jit_vmap_over_batch():
    imgs = [_random_image(s) for s in range(3)]
    boxes = np.stack([b for _, b, _ in imgs])
    scores = np.stack([s for _, _, s in imgs])
    hw = np.array([[300.0, 300.0], [200.0, 250.0], [280.0, 150.0]], np.float32)
    kw = dict(score_thr=0.05, pre_nms_topk=50, iou_threshold=0.5, max_det=20)
    f = jax.jit(jax.vmap(lambda b, s, h: dense_postprocess(b, s, (96, 24, 6), h, **kw)))
    dets = f(boxes, scores, hw)
    assert dets.boxes.shape == (3, 20, 4) and dets.valid.shape == (3, 20)
    for i in range(3):
        one = jax.tree_util.tree_map(lambda x, i=i: x[i], dets)
        _check_against_numpy(
            one, _np_dense_postprocess(boxes[i], scores[i], (96, 24, 6), hw[i], **kw)
        )
