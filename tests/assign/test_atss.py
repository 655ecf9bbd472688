"""jaxdet.assign.atss against hand-computed cases, mmdetection's semantics and itself
(block search == dense search)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.assign import atss
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors

from . import numpy_ref as ref

STRIDES = (8, 16, 32, 64, 128)


def _make_row_priors(n=5) -> Priors:
    # One level of n anchors 8 x 8 in a row, centres x = 4, 12, 20, ..., y = 4.
    x = 4.0 + 8.0 * np.arange(n, dtype=np.float32)
    boxes = np.stack([x - 4, np.zeros(n), x + 4, np.full(n, 8.0)], -1).astype(np.float32)
    return Priors(
        boxes=boxes,
        centers=np.stack([x, np.full(n, 4.0)], -1).astype(np.float32),
        strides=np.full((n,), 8.0, np.float32),
        levels=np.zeros((n,), np.int32),
        level_sizes=(n,),
    )


_ROW = _make_row_priors()


def _row_priors() -> Priors:
    return _ROW


def _gt(boxes, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = len(boxes)
    return GroundTruth(
        boxes=boxes,
        labels=np.zeros((m,), np.int32),
        valid=np.ones((m,), bool) if valid is None else np.asarray(valid),
        ignore=np.zeros((m,), bool) if ignore is None else np.asarray(ignore),
    )


_JITTED = {}


def _assign(p, g, **kw):
    # One jitted function per (priors, options): compiles only once per shape.
    key = (id(p), tuple(sorted(kw.items())))
    if key not in _JITTED:
        _JITTED[key] = (p, jax.jit(lambda g: atss.assign(p, g, **kw)))
    return _JITTED[key][1](g)


def test_hand_computed_row():
    p = _row_priors()
    # gt0 = prior 1's box, centre 12: distances 8, 0, 8, 16, 24 -> top-3 {1, 0, 2}
    #   (tie at 8: lower index 0 first). IoUs 1, 0, 0: mean 1/3, std (ddof=1)
    #   sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = 0.577 -> thr 0.911: prior 1 positive.
    # gt1 = [7,0,17,8], centre 12, same candidates. IoUs: prior 1 64/80 = 0.8,
    #   priors 0, 2: 8/136 = 0.0588: mean 0.306, std 0.428, thr 0.734 -> prior 1
    #   positive for gt1 too, but gt0's IoU 1.0 is higher: prior 1 -> gt0.
    # gt2 = prior 3's box: prior 3 positive (IoU 1), no competitor.
    g = _gt([[8, 0, 16, 8], [7, 0, 17, 8], [24, 0, 32, 8]])
    a = _assign(p, g, topk=3)
    np.testing.assert_array_equal(a.gt_index, [-1, 0, -1, 2, -1])
    np.testing.assert_allclose(a.quality, [0, 1, 0, 1, 0])
    # Without gt0, prior 1 goes to gt1 with quality 0.8.
    g = _gt(g.boxes, valid=[False, True, True])
    a = _assign(p, g, topk=3)
    np.testing.assert_array_equal(a.gt_index, [-1, 1, -1, 2, -1])
    np.testing.assert_allclose(a.quality, [0, 0.8, 0, 1, 0], rtol=1e-6)


def test_equal_iou_goes_to_lower_gt_and_ignore_rows():
    p = _row_priors()
    # Rows 1 and 2 are identical GTs on prior 1; row 0 is an ignore box on prior 1
    # too (IoF 1): prior 1 is ignored, hence infinitely far. Candidates of rows 1
    # and 2: priors 0, 2 (distance 8, tie) and 3 (16), all with IoU 0: thr = 0 and
    # none has its centre inside the GT: no positive.
    g = _gt([[8, 0, 16, 8], [8, 0, 16, 8], [8, 0, 16, 8]], ignore=[True, False, False])
    a = _assign(p, g, topk=3)
    np.testing.assert_array_equal(a.gt_index, [-1, -2, -1, -1, -1])
    # Ignore regions off: candidates 1, 0, 2 with IoUs 1, 0, 0 (thr 0.911): prior 1
    # is positive for rows 1 and 2 with the same IoU: the lower row wins. Row 0
    # (an ignore row) is never matched either way.
    a = _assign(p, g, topk=3, ignore_iof_thr=-1)
    np.testing.assert_array_equal(a.gt_index, [-1, 1, -1, -1, -1])


def test_no_valid_gt():
    p = _row_priors()
    g = _gt([[0, 0, 8, 8], [8, 0, 16, 8]], valid=[False, True], ignore=[False, True])
    np.testing.assert_array_equal(_assign(p, g, topk=3).gt_index, [-1, -2, -1, -1, -1])


def _random_points(rng, n, integer):
    if integer:  # many exact distance ties
        return rng.integers(0, 6, n).astype(np.float32), rng.integers(0, 6, n).astype(np.float32)
    return rng.uniform(0, 50, n).astype(np.float32), rng.uniform(0, 50, n).astype(np.float32)


def test_block_topk_equals_dense_topk():
    rng = np.random.default_rng(0)
    for n, k, block in [(301, 9, 4), (301, 5, 2), (37, 3, 8)]:
        dense_fn = jax.jit(lambda *a, k=k: atss._level_topk_dense(*a, k))
        block_fn = jax.jit(lambda *a, k=k, block=block: atss._level_topk_blocks(*a, k, block))
        for integer in (False, True):  # integer coordinates: many exact distance ties
            px, py = _random_points(rng, n, integer)
            px[rng.uniform(size=n) < 0.1] = np.inf  # ignored priors
            gx, gy = _random_points(rng, 7, integer)
            dense = dense_fn(px, py, gx, gy)
            np.testing.assert_array_equal(block_fn(px, py, gx, gy), dense, err_msg=f"{n} {k}")
            # Dense = stable sort order (ties: lower index).
            d = np.sqrt((px[None] - gx[:, None]) ** 2 + (py[None] - gy[:, None]) ** 2)
            np.testing.assert_array_equal(dense, np.argsort(d, axis=1, kind="stable")[:, :k])


def _check_against_reference(p, gt_np, outs, topk=9):
    boxes, labels, valid, ignore = gt_np
    for a in outs:
        assert a.gt_index.dtype == jnp.int32 and a.quality.dtype == jnp.float32
    for b in range(boxes.shape[0]):
        want_idx, want_q = ref.atss(
            p.boxes, p.level_sizes, boxes[b], valid[b], ignore[b], topk=topk
        )
        for a in outs:
            np.testing.assert_array_equal(np.asarray(a.gt_index[b]), want_idx, err_msg=f"{b}")
            np.testing.assert_array_equal(np.asarray(a.quality[b]), want_q, err_msg=f"{b}")
        matched = want_idx[want_idx >= 0]
        assert np.all(valid[b][matched] & ~ignore[b][matched])


# 128 x 160 input: levels of 320, 80, 20, 6, 2 anchors, the last two smaller than
# topk. block=3 makes the 320-anchor level search three levels of blocks.
_P = priors_lib.make_anchors(
    priors_lib.feature_shapes((128, 160), STRIDES),
    STRIDES,
    octave_base_scale=8,
    scales_per_octave=1,
    ratios=(1.0,),
)
_FNS = [
    jax.jit(jax.vmap(lambda g, kw=kw: atss.assign(_P, g, **kw)))
    for kw in (dict(block=3), dict(method="dense"))
]


def test_matches_numpy_reference_random_boxes():
    for seed in range(3):
        gt_np = ref.random_gt(np.random.default_rng(seed), 6, 12)
        gt = GroundTruth(*gt_np)
        _check_against_reference(_P, gt_np, [f(gt) for f in _FNS])


def test_matches_numpy_reference_grid_ties():
    # GT boxes with integer corners on a 4-pixel lattice: centres sit on anchor
    # centres or half-way between them, so candidate distances tie often.
    rng = np.random.default_rng(7)
    b, m = 6, 12
    x1 = rng.integers(0, 36, (b, m)) * 4
    y1 = rng.integers(0, 28, (b, m)) * 4
    w = rng.integers(1, 16, (b, m)) * 4
    h = rng.integers(1, 16, (b, m)) * 4
    boxes = np.stack([x1, y1, x1 + w, y1 + h], -1).astype(np.float32)
    valid = rng.uniform(size=(b, m)) < 0.9
    ignore = rng.uniform(size=(b, m)) < 0.1
    gt_np = (boxes, np.zeros((b, m), np.int32), valid, ignore)
    gt = GroundTruth(*gt_np)
    _check_against_reference(_P, gt_np, [f(gt) for f in _FNS])


def test_user_snippet_shapes():
    p = _P
    gt_batch = GroundTruth(*ref.random_gt(np.random.default_rng(3), 3, 12))
    a = jax.jit(jax.vmap(lambda g: atss.assign(p, g, topk=9)))(gt_batch)
    assert a.gt_index.shape == (3, p.num_priors) and a.gt_index.dtype == jnp.int32
    assert a.quality.shape == (3, p.num_priors) and a.quality.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(a.quality)))
    # Priors passed as an unbatched argument (the train step's form) give the same.
    b = jax.jit(jax.vmap(atss.assign, in_axes=(None, 0)))(p, gt_batch)
    np.testing.assert_array_equal(a.gt_index, b.gt_index)
    np.testing.assert_array_equal(a.quality, b.quality)


_GRID_FNS = [
    jax.jit(lambda g: atss.assign_batch(_P, g, block=3)),
    jax.jit(lambda g: atss.assign_batch(_P, g, block=3, grid_radius=1)),  # more fallbacks
    jax.jit(lambda g: atss.assign_batch(_P.replace(feature_shapes=None), g, block=3)),  # blocks
    jax.jit(lambda g: atss.assign_batch(_P, g, method="dense")),
]


def test_grid_search_matches_numpy_reference():
    """The batched lattice-window search (with its fallback; also off the lattice and
    dense) gives mmdetection's result, on random boxes (with ignore regions) and
    lattice ties."""
    for seed in range(3):
        gt_np = ref.random_gt(np.random.default_rng(seed), 6, 12)
        _check_against_reference(_P, gt_np, [f(GroundTruth(*gt_np)) for f in _GRID_FNS])
    rng = np.random.default_rng(7)
    b, m = 6, 12
    x1, y1 = rng.integers(0, 36, (b, m)) * 4, rng.integers(0, 28, (b, m)) * 4
    w, h = rng.integers(1, 16, (b, m)) * 4, rng.integers(1, 16, (b, m)) * 4
    boxes = np.stack([x1, y1, x1 + w, y1 + h], -1).astype(np.float32)
    gt_np = (boxes, np.zeros((b, m), np.int32), rng.uniform(size=(b, m)) < 0.9,
             np.zeros((b, m), bool))
    _check_against_reference(_P, gt_np, [f(GroundTruth(*gt_np)) for f in _GRID_FNS])


def test_grid_window_is_exact_without_ignore_and_falls_back_with_it():
    # Boxes inside the 160 x 128 image (as the input pipeline clips them). GT centres
    # far outside the lattice may need the fallback (their nearest priors spread along
    # the border): the random cases above cover that.
    rng = np.random.default_rng(1)
    wh = rng.uniform(2, 100, (4, 12, 2))
    xy = rng.uniform(0, 1, (4, 12, 2)) * (np.array([160, 128]) - wh)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    labels = np.zeros((4, 12), np.int32)
    valid = np.ones((4, 12), bool)
    gt = GroundTruth(boxes, labels, valid, np.zeros_like(valid))
    exact = jax.jit(jax.vmap(lambda g: atss._candidates(
        _P, atss._prepare(_P, g, 0.5, 8), 9, "grid", 3)[1]))(gt)
    assert np.all(np.asarray(exact))
    # A crowd region covering the whole image ignores every prior: the window cannot
    # hold 9 non-ignored priors, the check fails, and the block search decides.
    big = boxes.copy()
    big[:, -1] = [0, 0, 160, 128]
    ign = np.zeros_like(valid)
    ign[:, -1] = True
    valid2 = valid.copy()
    valid2[:, -1] = True
    gt2 = GroundTruth(big, labels, valid2, ign)
    exact = jax.jit(jax.vmap(lambda g: atss._candidates(
        _P, atss._prepare(_P, g, 0.5, 8), 9, "grid", 3)[1]))(gt2)
    assert not np.any(np.asarray(exact))
    _check_against_reference(_P, (big, labels, valid2, ign), [f(gt2) for f in _GRID_FNS])


def test_grid_search_with_nine_anchors_per_location():
    shapes = priors_lib.feature_shapes((96, 128), STRIDES[:3])
    p = priors_lib.make_anchors(shapes, STRIDES[:3])  # 3 scales x 3 ratios
    gt_np = ref.random_gt(np.random.default_rng(5), 4, 10, image_hw=(96, 128))
    gt = GroundTruth(*gt_np)
    for k in (9, 20):
        want = jax.jit(jax.vmap(lambda g, k=k: atss.assign(p, g, topk=k, method="dense")))(gt)
        got = jax.jit(lambda g, k=k: atss.assign_batch(p, g, topk=k, block=2))(gt)
        np.testing.assert_array_equal(got.gt_index, want.gt_index)
        np.testing.assert_array_equal(got.quality, want.quality)


def test_method_errors_and_priors_off_the_lattice():
    import pytest

    with pytest.raises(ValueError, match="unknown method"):
        atss.assign(_P, _gt([[0, 0, 8, 8]]), method="grid")
    with pytest.raises(ValueError, match="unknown method"):
        atss.assign_batch(_P, jax.tree_util.tree_map(lambda x: x[None], _gt([[0, 0, 8, 8]])),
                          method="blocks")
    # Row priors are no lattice: assign_batch is the vmapped block search there.
    p = _row_priors()
    gt = jax.tree_util.tree_map(lambda x: x[None], _gt([[0, 0, 20, 8], [10, 0, 30, 8]]))
    a = atss.assign_batch(p, gt, topk=2)
    b = jax.vmap(lambda g: atss.assign(p, g, topk=2, method="dense"))(gt)
    np.testing.assert_array_equal(a.gt_index, b.gt_index)
    np.testing.assert_array_equal(a.quality, b.quality)
