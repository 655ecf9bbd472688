"""YOLO grid assignment: hand-computed cases of mmdetection's GridAssigner rule and of
darknet's, invariants, bad input, jit(vmap). (mmdetection's own outputs on random cases
are compared in tests/detectors/test_yolov3_mmdet.py.)

The lattice below: a 32 x 32 input, strides 8 and 16 (4 x 4 and 2 x 2 cells), two
anchors per cell: (8, 8), (4, 16) at stride 8 and (16, 16), (32, 8) at stride 16.
Anchor a of cell (y, x) on level 0 is prior (y * 4 + x) * 2 + a; level 1 starts at 32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.assign import yolo_grid
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth

BASE = (((8, 8), (4, 16)), ((16, 16), (32, 8)))
PRIORS = jax.tree_util.tree_map(
    jnp.asarray, priors_lib.make_yolo_anchors([(4, 4), (2, 2)], (8, 16), BASE))
N = 40


def gt_of(boxes, m=4, ignore=()):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    b = np.full((m, 4), 7e3, np.float32)  # garbage in the padding rows
    b[: len(boxes)] = boxes
    valid = np.arange(m) < len(boxes)
    ign = np.zeros(m, bool)
    ign[list(ignore)] = True
    return GroundTruth(boxes=jnp.asarray(b), labels=jnp.zeros(m, jnp.int32),
                       valid=jnp.asarray(valid), ignore=jnp.asarray(ign))


def l0(y, x, a):
    return (y * 4 + x) * 2 + a


def expected(pos=None, ignored=()):
    e = np.full(N, -1, np.int32)
    e[list(ignored)] = -2
    for i, k in (pos or {}).items():
        e[i] = k
    return e


def run(gt, **kw):
    return np.asarray(yolo_grid.assign(PRIORS, gt, **kw).gt_index)


def test_one_gt_goes_to_its_best_anchor_in_its_cell():
    # 8 x 8 at (12, 12): cell (1, 1) of level 0, anchor (8, 8) fits exactly (IoU 1).
    np.testing.assert_array_equal(run(gt_of([[8, 8, 16, 16]])), expected({l0(1, 1, 0): 0}))


def test_anchor_outside_the_cell_with_iou_above_half_is_ignored():
    # 32 x 8 at (16.5, 8): level-1 cell (0, 1). Anchor (32, 8) of that cell, centred at
    # (24, 8): IoU 24.5 x 8 / (512 - 196) = 0.62 -> positive. The same anchor of cell
    # (0, 0), centred at (8, 8): IoU 23.5 x 8 / (512 - 188) = 0.58 > 0.5, not responsible
    # -> ignored. Every other anchor overlaps it by <= 1/3 -> negative.
    a = run(gt_of([[0.5, 4, 32.5, 12]]))
    np.testing.assert_array_equal(a, expected({32 + 3: 0}, ignored=[32 + 1]))


def test_positive_above_threshold_and_best_of_each_gt():
    # Two GTs in different cells: each gets its own best anchor.
    a = run(gt_of([[8, 8, 16, 16], [0, 16, 8, 24]]))
    np.testing.assert_array_equal(a, expected({l0(1, 1, 0): 0, l0(2, 0, 0): 1}))


def test_two_gts_on_one_cell_and_anchor_the_later_wins():
    # Both centred at (12, 12); anchor (8, 8) of cell (1, 1) has IoU 1 with GT 0 and
    # 36 / 64 with GT 1, and is GT 1's best: step 4 runs GT by GT, GT 1 last.
    a = run(gt_of([[8, 8, 16, 16], [9, 9, 15, 15]]))
    np.testing.assert_array_equal(a, expected({l0(1, 1, 0): 1}))
    a = run(gt_of([[9, 9, 15, 15], [8, 8, 16, 16]]))  # swapped: GT 1 (the 8 x 8) wins
    np.testing.assert_array_equal(a, expected({l0(1, 1, 0): 1}))


def test_gt_smaller_than_a_pixel_takes_every_anchor_of_equal_best_iou():
    # 0.5 x 0.5 inside both anchors of cell (1, 1): IoU 0.25 / 64 with each (a tie):
    # both positive (gt_max_assign_all), nothing ignored.
    a = run(gt_of([[12.2, 12.1, 12.7, 12.6]]))
    np.testing.assert_array_equal(a, expected({l0(1, 1, 0): 0, l0(1, 1, 1): 0}))


def test_zero_area_gt_gets_no_anchor():
    np.testing.assert_array_equal(run(gt_of([[12, 12, 12, 20]])), expected())


def test_gt_centre_on_the_image_border_is_clamped_to_the_last_cell():
    # centre (32, 32): floor(32 / 8) = 4 -> cell 3 (level 0), floor(32 / 16) = 2 -> cell 1.
    gt = gt_of([[28, 28, 36, 36]])
    flags = np.asarray(yolo_grid.responsible_flags(PRIORS, gt))
    assert set(np.nonzero(flags)[0]) == {l0(3, 3, 0), l0(3, 3, 1), 32 + 6, 32 + 7}
    # Both level-0 anchors of cell (3, 3) overlap it by 16 / 112: a tie, both positive.
    np.testing.assert_array_equal(run(gt), expected({l0(3, 3, 0): 0, l0(3, 3, 1): 0}))


def test_padding_ignore_rows_and_no_gt():
    np.testing.assert_array_equal(run(gt_of([])), expected())
    # An ignore (crowd) row is never matched; with ignore_iof_thr its anchors are ignored.
    a = run(gt_of([[8, 8, 16, 16]], ignore=[0]))
    np.testing.assert_array_equal(a, expected())
    a = run(gt_of([[8, 8, 16, 16]], ignore=[0]), ignore_iof_thr=0.5)
    assert a[l0(1, 1, 0)] == -2 and (a >= 0).sum() == 0


def test_darknet_rule_best_shape_anchor_and_prediction_ignore():
    # 14 x 30 centred at (12, 12): shape IoUs 0.15, 0.15, 0.50, 0.20 with (8, 8), (4, 16),
    # (16, 16), (32, 8) -> (16, 16): level 1, cell (0, 0), anchor 0 = prior 32.
    pred = np.zeros((N, 4), np.float32)
    pred[5] = [5, -3, 19, 27]  # a prediction on the GT (IoU 1): ignored
    pred[6] = [5, -3, 19, 10]  # IoU 13 / 30 < 0.5: negative
    gt = gt_of([[5, -3, 19, 27]])
    a = np.asarray(yolo_grid.assign_darknet(PRIORS, gt, jnp.asarray(pred)).gt_index)
    np.testing.assert_array_equal(a, expected({32: 0}, ignored=[5]))


def test_darknet_rule_later_gt_wins():
    pred = jnp.zeros((N, 4))
    gt = gt_of([[8, 8, 16, 16], [9, 9, 15, 15]])  # both: (8, 8) anchor of cell (1, 1)
    a = np.asarray(yolo_grid.assign_darknet(PRIORS, gt, pred).gt_index)
    np.testing.assert_array_equal(a, expected({l0(1, 1, 0): 1}))


def test_jit_vmap_equals_per_image():
    gts = [gt_of([[8, 8, 16, 16], [0.5, 4, 32.5, 12]]), gt_of([[28, 28, 36, 36]]), gt_of([])]
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *gts)
    pred = jnp.asarray(np.random.default_rng(0).uniform(0, 32, (3, N, 4)), jnp.float32)
    pred = jnp.concatenate([pred[..., :2], pred[..., :2] + 8], -1)
    out = jax.jit(jax.vmap(lambda g: yolo_grid.assign(PRIORS, g)))(batch)
    dk = jax.jit(jax.vmap(lambda g, p: yolo_grid.assign_darknet(PRIORS, g, p)))(batch, pred)
    for i, g in enumerate(gts):
        np.testing.assert_array_equal(np.asarray(out.gt_index[i]), run(g))
        np.testing.assert_array_equal(
            np.asarray(dk.gt_index[i]),
            np.asarray(yolo_grid.assign_darknet(PRIORS, g, pred[i]).gt_index))
        assert out.quality.dtype == jnp.float32


def test_random_cases_equal_the_numpy_reference():
    from tests.assign import numpy_ref

    shapes = [(8, 10), (4, 5), (2, 3)]
    base = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
            ((116, 90), (156, 198), (373, 326)))
    p = priors_lib.make_yolo_anchors(shapes, (8, 16, 32), base)
    pj = jax.tree_util.tree_map(jnp.asarray, p)
    rng = np.random.default_rng(0)
    boxes, labels, valid, ignore = numpy_ref.random_gt(rng, 6, 12, image_hw=(64, 80),
                                                       max_wh=70)
    gt = GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels),
                     valid=jnp.asarray(valid), ignore=jnp.asarray(ignore))
    out = jax.jit(jax.vmap(lambda g: yolo_grid.assign(pj, g)))(gt)
    for b in range(6):
        want, _ = numpy_ref.yolo_grid(p.boxes, shapes, (8, 16, 32), 3, boxes[b], valid[b],
                                      ignore[b])
        np.testing.assert_array_equal(np.asarray(out.gt_index[b]), want)
