"""jaxdet.assign.targets: gathers, one-hot targets and weights from an Assignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import targets
from jaxdet.core.types import Assignment, GroundTruth

# Priors: positive to row 1, background, ignored, positive to row 0.
_A = Assignment(
    gt_index=np.array([1, -1, -2, 0], np.int32),
    quality=np.array([0.7, 0.0, 0.0, 0.4], np.float32),
)
_GT = GroundTruth(
    boxes=np.array([[0, 0, 10, 10], [5, 5, 20, 30], [np.nan] * 4], np.float32),
    labels=np.array([2, 0, -7], np.int32),
    valid=np.array([True, True, False]),
    ignore=np.zeros(3, bool),
)


def test_gather_gt():
    boxes, labels = targets.gather_gt(_A, _GT)
    np.testing.assert_array_equal(boxes, [[5, 5, 20, 30], [0] * 4, [0] * 4, [0, 0, 10, 10]])
    np.testing.assert_array_equal(labels, [0, 0, 0, 2])
    assert boxes.dtype == jnp.float32 and labels.dtype == jnp.int32


@pytest.mark.parametrize("soft", [False, True])
def test_classification_targets(soft):
    t = targets.classification_targets(_A, _GT.labels, 3, soft=soft)
    want = np.zeros((4, 3), np.float32)
    want[0, 0] = 0.7 if soft else 1.0
    want[3, 2] = 0.4 if soft else 1.0
    np.testing.assert_allclose(t, want)
    assert t.dtype == jnp.float32


def test_weights_and_num_positives():
    w = targets.sample_weights(_A)
    np.testing.assert_array_equal(w["cls_weight"], [1, 1, 0, 1])
    np.testing.assert_array_equal(w["pos_mask"], [True, False, False, True])
    assert float(targets.num_positives(_A)) == 2.0


def test_batched_and_jit():
    # Leading batch dims broadcast; all finite even with NaN padding rows.
    a = jax.tree_util.tree_map(lambda x: np.stack([x, x[::-1]]), _A)
    gt = jax.tree_util.tree_map(lambda x: np.stack([x, x]), _GT)

    @jax.jit
    def f(a, gt):
        boxes, labels = targets.gather_gt(a, gt)
        cls_t = targets.classification_targets(a, gt.labels, 3, soft=True)
        return boxes, labels, cls_t, targets.sample_weights(a), targets.num_positives(a)

    boxes, labels, cls_t, w, n = f(a, gt)
    assert boxes.shape == (2, 4, 4) and labels.shape == (2, 4) and cls_t.shape == (2, 4, 3)
    np.testing.assert_array_equal(boxes[1], np.asarray(boxes[0])[::-1])
    np.testing.assert_array_equal(labels[1], [2, 0, 0, 0])
    np.testing.assert_array_equal(w["cls_weight"][1], [1, 0, 1, 1])
    assert float(n) == 4.0
    assert np.all(np.isfinite(np.asarray(boxes))) and np.all(np.isfinite(np.asarray(cls_t)))
