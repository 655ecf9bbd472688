import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.nms import batched_nms, nms

from .numpy_nms import clustered_boxes, greedy_nms, per_class_nms


def _kept(indices, keep_valid):
    return np.asarray(indices)[np.asarray(keep_valid)]


def _random_case(seed, n=300, num_classes=None):
    rng = np.random.default_rng(seed)
    boxes, obj = clustered_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)  # continuous: no exact ties
    classes = None
    if num_classes is not None:
        classes = ((obj + rng.integers(0, 3, n)) % num_classes).astype(np.int32)
    return rng, boxes, scores, classes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_numpy_greedy(seed, thr):
    _, boxes, scores, _ = _random_case(seed)
    ref = greedy_nms(boxes, scores, thr)
    assert 5 < len(ref) < len(scores)  # the case really suppresses
    idx, kv = nms(boxes, scores, np.ones(len(scores), bool), iou_threshold=thr, max_output=300)
    np.testing.assert_array_equal(_kept(idx, kv), ref)


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_matches_per_class_loop(seed):
    _, boxes, scores, classes = _random_case(seed, num_classes=7)
    ref = per_class_nms(boxes, scores, classes, 0.5)
    np.testing.assert_array_equal(ref, greedy_nms(boxes, scores, 0.5, classes=classes))
    f = jax.jit(batched_nms, static_argnames=("iou_threshold", "max_output"))
    idx, kv = f(
        boxes, scores, classes, np.ones(len(scores), bool), iou_threshold=0.5, max_output=300
    )
    np.testing.assert_array_equal(_kept(idx, kv), ref)
    # class-aware keeps at least as much as class-agnostic
    assert len(ref) > len(greedy_nms(boxes, scores, 0.5))


@pytest.mark.parametrize("seed", range(3))
def test_invalid_never_kept_and_never_suppress(seed):
    rng, boxes, scores, classes = _random_case(seed, num_classes=5)
    valid = rng.uniform(size=len(scores)) < 0.6
    # invalid rows get the best scores: they must not be kept nor suppress others
    scores = np.where(valid, scores, scores + 1.0).astype(np.float32)
    idx, kv = batched_nms(boxes, scores, classes, valid, iou_threshold=0.5, max_output=300)
    kept = _kept(idx, kv)
    assert valid[kept].all()
    np.testing.assert_array_equal(kept, per_class_nms(boxes, scores, classes, 0.5, valid=valid))


def test_all_invalid():
    _, boxes, scores, _ = _random_case(0, n=50)
    idx, kv = nms(boxes, scores, np.zeros(50, bool), iou_threshold=0.5, max_output=10)
    assert not np.asarray(kv).any()
    np.testing.assert_array_equal(np.asarray(idx), 0)
    assert idx.dtype == jnp.int32 and idx.shape == (10,)


def test_empty_input():
    idx, kv = nms(
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros(0, bool),
        iou_threshold=0.5,
        max_output=4,
    )
    assert idx.shape == (4,) and not np.asarray(kv).any()


@pytest.mark.parametrize("max_output", [1, 7, 20])
def test_max_output_truncates_in_score_order(max_output):
    _, boxes, scores, classes = _random_case(1, num_classes=4)
    ref = per_class_nms(boxes, scores, classes, 0.5)
    assert len(ref) > max_output
    idx, kv = batched_nms(
        boxes, scores, classes, np.ones(len(scores), bool), iou_threshold=0.5, max_output=max_output
    )
    assert np.asarray(kv).all()
    np.testing.assert_array_equal(np.asarray(idx), ref[:max_output])
    assert np.all(np.diff(scores[np.asarray(idx)]) <= 0)


def test_hand_made_threshold_is_strict():
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6]], np.float32)  # IoU(0,1) = 0.5
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    valid = np.ones(3, bool)
    idx, kv = nms(boxes, scores, valid, iou_threshold=0.5, max_output=3)
    np.testing.assert_array_equal(_kept(idx, kv), [0, 1, 2])
    idx, kv = nms(boxes, scores, valid, iou_threshold=0.49, max_output=3)
    np.testing.assert_array_equal(_kept(idx, kv), [0, 2])
    np.testing.assert_array_equal(np.asarray(kv), [True, True, False])


def test_exact_ties_lower_index_first():
    box = [10, 10, 20, 20]
    boxes = np.array([[50, 50, 60, 60], box, box, [100, 0, 110, 10], box], np.float32)
    scores = np.array([0.5, 0.9, 0.9, 0.9, 0.9], np.float32)
    idx, kv = nms(boxes, scores, np.ones(5, bool), iou_threshold=0.5, max_output=5)
    # among the tied 0.9s, index 1 wins its cluster and comes before index 3
    np.testing.assert_array_equal(_kept(idx, kv), [1, 3, 0])
    np.testing.assert_array_equal(_kept(idx, kv), greedy_nms(boxes, scores, 0.5))
    # the same with the duplicates put in different classes: all three survive, in index order
    classes = np.array([0, 0, 1, 0, 2], np.int32)
    idx, kv = batched_nms(boxes, scores, classes, np.ones(5, bool), iou_threshold=0.5, max_output=5)
    np.testing.assert_array_equal(_kept(idx, kv), [1, 2, 3, 4, 0])


def test_jit_vmap_over_batch():
    cases = [_random_case(s, n=200, num_classes=6) for s in range(4)]
    boxes = np.stack([c[1] for c in cases])
    scores = np.stack([c[2] for c in cases])
    classes = np.stack([c[3] for c in cases])
    valid = np.stack([c[0].uniform(size=200) < 0.8 for c in cases])
    f = jax.jit(
        jax.vmap(lambda b, s, c, v: batched_nms(b, s, c, v, iou_threshold=0.6, max_output=50))
    )
    idx, kv = f(boxes, scores, classes, valid)
    assert idx.shape == (4, 50) and kv.shape == (4, 50)
    for i in range(4):
        ref = per_class_nms(boxes[i], scores[i], classes[i], 0.6, valid=valid[i])[:50]
        np.testing.assert_array_equal(_kept(idx[i], kv[i]), ref)


def test_traced_threshold_and_bf16_scores():
    _, boxes, scores, _ = _random_case(2)
    f = jax.jit(
        lambda t: nms(boxes, scores, np.ones(len(scores), bool), iou_threshold=t, max_output=300)
    )
    idx, kv = f(0.4)
    np.testing.assert_array_equal(_kept(idx, kv), greedy_nms(boxes, scores, 0.4))
    s16 = jnp.asarray(scores, jnp.bfloat16)
    idx, kv = nms(
        jnp.asarray(boxes, jnp.bfloat16),
        s16,
        np.ones(len(scores), bool),
        iou_threshold=0.5,
        max_output=300,
    )
    ref = greedy_nms(
        np.asarray(jnp.asarray(boxes, jnp.bfloat16), np.float32), np.asarray(s16, np.float32), 0.5
    )
    np.testing.assert_array_equal(_kept(idx, kv), ref)
