"""FSAF centre-region assignment, online feature selection, size heuristic and TBLR coder.

Hand-computed cases on a 64 px image with P3-P5 stride-sized priors, a NumPy port of
mmdetection's `CenterRegionAssigner` (level-agnostic mode) on random boxes, invariants
and jax.jit(jax.vmap(...)) runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import center_region as cr
from jaxdet.assign import fsaf_select as fs
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth

C = 3
STRIDES = (8, 16, 32)


def _priors(size=64, strides=STRIDES):
    shapes = priors_lib.feature_shapes((size, size), strides)
    return priors_lib.make_anchors(
        shapes, strides, octave_base_scale=1.0, scales_per_octave=1, ratios=(1.0,)
    )


def _gt(boxes, labels, valid=None, ignore=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = boxes.shape[0]
    return GroundTruth(
        boxes=jnp.asarray(boxes),
        labels=jnp.asarray(labels, jnp.int32),
        valid=jnp.asarray(np.ones(m, bool) if valid is None else valid),
        ignore=jnp.asarray(np.zeros(m, bool) if ignore is None else ignore),
    )


def _pos(a):
    return set(np.nonzero(np.asarray(a.gt_index) >= 0)[0].tolist())


def _ignored(il, label):
    return set(np.nonzero(np.asarray(il)[:, label])[0].tolist())


# P3 (8x8) priors 0..63, P4 (4x4) 64..79, P5 (2x2) 80..83; index = start + y * w + x.
BOX = [10, 10, 50, 50]  # core [26, 34]^2, ignoring box [20, 40]^2
P3_POS = {27, 28, 35, 36}  # centres (24|32, 24|32)
P3_RING = {29, 37, 43, 44, 45}  # centres at 40 overlap the ignoring box only
P4_IGNORING = {69, 70, 73, 74}  # centres (16|32, 16|32)
P5_EFFECTIVE = {83}  # centre (32, 32)


def test_single_gt_level_agnostic_hand_computed():
    a, il = cr.assign(_priors(), _gt([BOX], [1]), num_classes=C)
    # Level-agnostic (mmdetection): positive on every level's effective region.
    assert _pos(a) == P3_POS | {74} | P5_EFFECTIVE
    assert set(np.asarray(a.gt_index)[sorted(_pos(a))].tolist()) == {0}
    assert _ignored(il, 1) == P3_RING | (P4_IGNORING - {74})
    assert not np.asarray(il)[:, [0, 2]].any()
    np.testing.assert_array_equal(np.asarray(a.quality)[sorted(_pos(a))], 1.0)


def test_selected_level_adjacent_and_far_levels():
    gt = _gt([BOX], [1])
    a, il = cr.assign(_priors(), gt, num_classes=C, selected_level=jnp.array([0]))
    assert _pos(a) == P3_POS
    # Ring on P3, the whole ignoring box on the adjacent P4, the effective region on P5.
    assert _ignored(il, 1) == P3_RING | P4_IGNORING | P5_EFFECTIVE
    a, il = cr.assign(_priors(), gt, num_classes=C, selected_level=jnp.array([2]))
    assert _pos(a) == P5_EFFECTIVE
    assert _ignored(il, 1) == P4_IGNORING | P3_POS  # P3 is not adjacent: effective only
    # Everything that is neither positive nor ignored is background.
    gi = np.asarray(a.gt_index)
    assert set(np.nonzero(gi == -1)[0].tolist()) == set(range(84)) - P5_EFFECTIVE


def test_ignore_level_range_none_is_every_level():
    a, il = cr.assign(
        _priors(),
        _gt([BOX], [1]),
        num_classes=C,
        selected_level=jnp.array([0]),
        ignore_level_range=None,
    )
    assert _pos(a) == P3_POS
    assert _ignored(il, 1) == P3_RING | P4_IGNORING | P5_EFFECTIVE
    a, il = cr.assign(
        _priors(),
        _gt([BOX], [1]),
        num_classes=C,
        selected_level=jnp.array([2]),
        ignore_level_range=0,
    )
    assert _ignored(il, 1) == (P4_IGNORING & {74}) | P3_POS  # effective off the level


def test_smaller_gt_wins_and_ties_go_to_later_row():
    big, small = [0, 0, 64, 64], BOX
    a, il = cr.assign(_priors(), _gt([big, small], [0, 2]), num_classes=C)
    gi = np.asarray(a.gt_index)
    assert all(gi[n] == 1 for n in P3_POS)
    assert all(np.asarray(il)[n, 0] for n in P3_POS)  # the big GT's class is shadowed there
    a, _ = cr.assign(_priors(), _gt([BOX, BOX], [0, 2]), num_classes=C)
    assert set(np.asarray(a.gt_index)[sorted(P3_POS)].tolist()) == {1}
    # Same class: the loser shadows the winner's class, which (foreground_dominate=False,
    # mmdetection) turns the contested priors into ignored background.
    a, il = cr.assign(_priors(), _gt([BOX, BOX], [0, 0]), num_classes=C)
    assert set(np.asarray(a.gt_index)[sorted(P3_POS)].tolist()) == {-1}
    assert np.asarray(il)[sorted(P3_POS), 0].all()


def test_selection_never_removes_another_gts_positive():
    # Same class; the small GT trains P3, the big one P5. The big GT's effective region
    # on P3 covers the small one's positives: it is ignored there, but only where the
    # small GT is not positive.
    big, small = [0, 0, 64, 64], BOX
    gt = _gt([big, small], [1, 1])
    a, il = cr.assign(_priors(), gt, num_classes=C, selected_level=jnp.array([2, 0]))
    gi = np.asarray(a.gt_index)
    assert _pos(a) == P3_POS | {83}
    assert gi[83] == 0 and all(gi[n] == 1 for n in P3_POS)
    big_p3_effective = {27, 28, 29, 35, 36, 37, 43, 44, 45}  # centres 24..40
    assert _ignored(il, 1) >= big_p3_effective - P3_POS
    assert not (_ignored(il, 1) & _pos(a))


@pytest.mark.parametrize("dominate", [False, True])
def test_foreground_dominate(dominate):
    # Level-agnostic mode, two GTs of class 1. The small GT (core [40.4, 43.6]^2) owns
    # P3 prior 45 (centre (40, 40)), which is also in the big GT's effective region (a
    # contested prior it loses), and P4 prior 79 (centre (48, 48)), which lies in the big
    # GT's ignoring box [16, 48]^2.
    big, small = [0, 0, 64, 64], [34, 34, 50, 50]
    a_alone, _ = cr.assign(_priors(), _gt([small], [1]), num_classes=C)
    assert _pos(a_alone) == {45, 79}
    a, il = cr.assign(
        _priors(), _gt([big, small], [1, 1]), num_classes=C, foreground_dominate=dominate
    )
    gi, il = np.asarray(a.gt_index), np.asarray(il)
    if dominate:
        assert gi[45] == gi[79] == 1 and not il[45, 1] and not il[79, 1]
    else:  # shadowed for its own class: background with class 1 ignored
        assert gi[45] == gi[79] == -1 and il[45, 1] and il[79, 1]
    # A different class for the big GT: no conflict either way.
    a, il = cr.assign(
        _priors(), _gt([big, small], [0, 1]), num_classes=C, foreground_dominate=dominate
    )
    assert np.asarray(a.gt_index)[45] == 1 and np.asarray(il)[45, 0]


def test_crowd_padding_and_empty_image():
    pr = _priors()
    crowd = _gt([[0, 0, 64, 64]], [0], ignore=[True])
    a, il = cr.assign(pr, crowd, num_classes=C)
    gi = np.asarray(a.gt_index)
    # Centres strictly inside the crowd box scaled by 0.5, [16, 48]^2: P3 at 24, 32, 40;
    # P4 and P5 at 32.
    expect = {y * 8 + x for y in (3, 4, 5) for x in (3, 4, 5)} | {64 + 2 * 4 + 2, 83}
    assert set(np.nonzero(gi == -2)[0].tolist()) == expect
    assert set(np.nonzero(gi == -1)[0].tolist()) == set(range(84)) - expect
    assert not np.asarray(il).any()
    # Padding rows (garbage values) never take part; no GT: all background.
    pad = _gt([[np.nan, 0, 1e9, -5], BOX], [99, 1], valid=[False, True])
    a_pad, il_pad = cr.assign(pr, pad, num_classes=C)
    a_ref, il_ref = cr.assign(pr, _gt([BOX], [1]), num_classes=C)
    gi_pad = np.asarray(a_pad.gt_index)
    np.testing.assert_array_equal(np.where(gi_pad >= 0, gi_pad - 1, gi_pad), a_ref.gt_index)
    np.testing.assert_array_equal(il_pad, il_ref)
    empty = _gt(np.zeros((2, 4)), [0, 0], valid=[False, False])
    a, il = cr.assign(pr, empty, num_classes=C, selected_level=jnp.zeros(2, jnp.int32))
    assert np.all(np.asarray(a.gt_index) == -1) and not np.asarray(il).any()


# -- NumPy port of mmdetection's CenterRegionAssigner (level-agnostic) ------------------


def _np_scale(b, s):
    c = (b[:, :2] + b[:, 2:]) / 2
    h = (b[:, 2:] - b[:, :2]) / 2 * s
    return np.concatenate([c - h, c + h], 1)


def _np_iof(p, b):  # [N, K]
    lt = np.maximum(p[:, None, :2], b[None, :, :2])
    rb = np.minimum(p[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    area = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    return wh[..., 0] * wh[..., 1] / np.maximum(area, 1e-6)[:, None]


def _np_inside(c, b):
    return (
        (c[:, None, 0] > b[None, :, 0])
        & (c[:, None, 0] < b[None, :, 2])
        & (c[:, None, 1] > b[None, :, 1])
        & (c[:, None, 1] < b[None, :, 3])
    )


def mmdet_center_region(
    priors,
    gt,
    labels,
    crowd,
    pos_scale,
    neg_scale,
    min_pos_iof,
    ignore_gt_scale,
    foreground_dominate,
):
    """(gt_inds 1-based with -1 ignore, set of shadowed (prior, label)) as mmdetection."""
    n = priors.shape[0]
    centers = (priors[:, :2] + priors[:, 2:]) / 2
    core = _np_inside(centers, gt) & (_np_iof(priors, _np_scale(gt, pos_scale)) > min_pos_iof)
    shadow = (_np_iof(priors, _np_scale(gt, neg_scale)) > min_pos_iof) & ~core
    areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    priority = np.argsort(np.argsort(-areas, kind="stable"), kind="stable")
    assigned = np.zeros(n, np.int64)
    pairs = [tuple(p) for p in np.argwhere(shadow)]
    for i in range(n):
        ks = np.nonzero(core[i])[0]
        if len(ks):
            best = ks[np.argmax(priority[ks])]
            assigned[i] = best + 1
            pairs += [(i, k) for k in ks if k != best]
    if len(crowd):
        inside = _np_inside(centers, _np_scale(crowd, ignore_gt_scale)).any(1)
        assigned[inside] = -1
    lab = np.where(assigned > 0, labels[np.maximum(assigned - 1, 0)], -1)
    shadowed = set()
    for i, k in pairs:
        if lab[i] == labels[k]:
            if foreground_dominate:
                continue
            assigned[i] = 0
        shadowed.add((i, int(labels[k])))
    return assigned, shadowed


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dominate", [False, True])
def test_matches_mmdetection_reference_on_random_boxes(seed, dominate):
    rng = np.random.default_rng(seed)
    pr = _priors(96, STRIDES)
    m = 8
    wh = rng.uniform(4, 70, (m, 2))
    xy = rng.uniform(0, 96, (m, 2)) - wh / 2
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[3] = boxes[2]  # an exact duplicate: tie on area
    labels = rng.integers(0, 2, m)
    valid = np.ones(m, bool)
    valid[-1] = False
    ignore = np.zeros(m, bool)
    ignore[0] = seed % 2 == 0
    gt = _gt(boxes, labels, valid, ignore)
    a, il = cr.assign(pr, gt, num_classes=C, foreground_dominate=dominate)
    keep = valid & ~ignore
    rows = np.nonzero(keep)[0]
    ref, shadowed = mmdet_center_region(
        np.asarray(pr.boxes, np.float64),
        boxes[rows].astype(np.float64),
        labels[rows],
        boxes[valid & ignore].astype(np.float64),
        0.2,
        0.5,
        0.01,
        0.5,
        dominate,
    )
    expect = np.where(ref > 0, rows[np.maximum(ref - 1, 0)], np.where(ref < 0, -2, -1))
    np.testing.assert_array_equal(a.gt_index, expect)
    assert set(map(tuple, np.argwhere(np.asarray(il)).tolist())) == shadowed


def test_jit_vmap_batch():
    pr = _priors()
    gts = [_gt([BOX, [0, 0, 64, 64]], [1, 2]), _gt([[4, 4, 20, 30], BOX], [0, 1], [True, False])]
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *gts)
    sel = jnp.array([[0, 2], [1, 0]], jnp.int32)
    fn = jax.jit(jax.vmap(lambda g, s: cr.assign(pr, g, num_classes=C, selected_level=s)))
    a, il = fn(batch, sel)
    assert a.gt_index.shape == (2, 84) and il.shape == (2, 84, C)
    for i, g in enumerate(gts):
        a1, il1 = cr.assign(pr, g, num_classes=C, selected_level=sel[i])
        np.testing.assert_array_equal(a.gt_index[i], a1.gt_index)
        np.testing.assert_array_equal(il[i], il1)
    # Invariants: padding rows never positive, ignore never positive, labels consistent.
    assert not np.any(np.asarray(a.gt_index)[1] == 1)
    gi = np.asarray(a.gt_index)
    lab = np.take_along_axis(np.asarray(batch.labels), np.maximum(gi, 0), 1)
    pos = gi >= 0
    assert not np.any(np.take_along_axis(np.asarray(il), lab[..., None], 2)[..., 0] & pos)


# -- online feature selection and the size heuristic -----------------------------------


def test_level_losses_and_selection_hand_computed():
    loss = jnp.array([1.0, 3.0, 5.0, 7.0, 100.0, 2.0])
    gt_index = jnp.array([0, 0, 0, 1, -1, 1])
    levels = jnp.array([0, 0, 1, 1, 2, 2])
    mean, count = fs.level_losses(loss, gt_index, levels, 3, 3)
    np.testing.assert_allclose(mean, [[2.0, 5.0, 1e6], [1e6, 7.0, 2.0], [1e6, 1e6, 1e6]])
    np.testing.assert_array_equal(count, [[2, 1, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(fs.select_levels(mean), [0, 2, 0])
    sel, has = fs.online_select(loss, gt_index, levels, 3, 3)
    np.testing.assert_array_equal(sel, [0, 2, 0])
    np.testing.assert_array_equal(has, [True, True, False])
    # Ties go to the lower level; jit + vmap over a batch.
    tie = fs.select_levels(jnp.array([[3.0, 3.0, 3.0]]))
    assert int(tie[0]) == 0
    batched = jax.jit(jax.vmap(lambda l_, g: fs.online_select(l_, g, levels, 3, 3)))(
        jnp.stack([loss, loss[::-1]]), jnp.stack([gt_index, gt_index])
    )
    np.testing.assert_array_equal(batched[0][0], [0, 2, 0])


def test_heuristic_levels():
    strides = (8, 16, 32, 64, 128)
    sizes = np.array([10.0, 120.0, 224.0, 300.0, 500.0, 5000.0, 223.0])
    boxes = jnp.asarray(np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], 1))
    # floor(5 + log2(s / 224)) clipped to P3-P7, as indices from P3.
    np.testing.assert_array_equal(fs.heuristic_levels(boxes, strides), [0, 1, 2, 2, 3, 4, 1])
    # Three levels, canonical size scaled to 128 px images: < 17.92 P3, < 35.84 P4, else P5.
    tiny = jnp.asarray([[0, 0, 12, 12], [0, 0, 20, 30], [0, 0, 40, 40], [0, 0, 77, 77]], float)
    np.testing.assert_array_equal(fs.heuristic_levels(tiny, STRIDES, 224 * 0.16), [0, 1, 2, 2])
    # Aspect ratio: sqrt(w h) decides.
    np.testing.assert_array_equal(
        fs.heuristic_levels(jnp.asarray([[0, 0, 448, 112.0]]), strides), [2]
    )


# -- TBLR coder ---------------------------------------------------------------------------


def test_tblr_coder():
    prior = jnp.asarray([[0.0, 0.0, 8.0, 8.0]])
    gt = jnp.asarray([[2.0, 1.0, 10.0, 12.0]])
    # centre (4, 4): t = 3, b = 8, l = 2, r = 6, / side 8 / normaliser 4.
    np.testing.assert_allclose(cr.tblr_encode(prior, gt), [[3 / 32, 8 / 32, 2 / 32, 6 / 32]])
    np.testing.assert_allclose(cr.tblr_decode(prior, cr.tblr_encode(prior, gt)), gt, atol=1e-6)
    # 0.25 x normaliser 4 = one prior side on every side of the centre.
    np.testing.assert_allclose(cr.tblr_decode(prior, jnp.full((1, 4), 0.25)), [[-4, -4, 12, 12]])
