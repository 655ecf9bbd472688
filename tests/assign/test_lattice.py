"""The prior lattice (`jaxdet.assign.lattice`): the tiling check, the reach bounds,
the closed-form nearest-first ranking and the top-k by IoU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import common, lattice
from jaxdet.core import priors as priors_lib

STRIDES = (8, 16, 32)


def _anchors(hw=(64, 96), **kw):
    return priors_lib.make_anchors(priors_lib.feature_shapes(hw, STRIDES), STRIDES, **kw)


def test_check_tiling():
    fsaf = _anchors(octave_base_scale=1.0, scales_per_octave=1, ratios=(1.0,))
    atss = _anchors(octave_base_scale=8, scales_per_octave=1, ratios=(1.0,))  # overlapping
    retina = _anchors()  # 9 per location
    points = priors_lib.make_points(fsaf.feature_shapes, STRIDES)  # zero size
    for p in (fsaf, atss, retina):
        lattice.check_tiling(p)
        assert lattice.is_tiling(p)
    lattice.check_tiling(fsaf, disjoint=True)
    for p in (atss, retina, points):
        assert not lattice.is_tiling(p, disjoint=True)
    with pytest.raises(ValueError, match="do not tile"):
        lattice.check_tiling(atss, disjoint=True)
    with pytest.raises(ValueError, match="one prior per location"):
        lattice.check_tiling(retina, disjoint=True)
    with pytest.raises(ValueError, match="level sizes"):
        lattice.check_tiling(fsaf.replace(feature_shapes=((8, 12), (4, 6), (2, 2))))
    with pytest.raises(ValueError, match="feature_shapes"):
        lattice.check_tiling(fsaf.replace(feature_shapes=None))
    # Traced boxes: the level sizes decide, except for a disjoint tiling.
    assert jax.jit(lambda b: jnp.float32(lattice.is_tiling(atss.replace(boxes=b))))(atss.boxes)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda b: lattice.check_tiling(fsaf.replace(boxes=b), disjoint=True))(fsaf.boxes)
    # A lattice of the right sizes whose columns are not evenly spaced is refused: the
    # closed-form nearest-first ranking would be wrong there.
    boxes = np.asarray(retina.boxes).copy()
    n0 = retina.level_sizes[0]
    h, w = retina.feature_shapes[0]
    lvl = boxes[:n0].reshape(h, w, retina.num_base, 4)
    lvl[:, -1, :, [0, 2]] += 3.0  # shift the last column of level 0
    bad = retina.replace(boxes=np.concatenate([lvl.reshape(-1, 4), boxes[n0:]]))
    with pytest.raises(ValueError, match="evenly spaced"):
        lattice.check_tiling(bad)


def test_check_method():
    assert lattice.check_method("auto") == "auto" and lattice.check_method("dense") == "dense"
    for bad in ("grid", "levels", "blocks", None):
        with pytest.raises(ValueError, match="unknown method"):
            lattice.check_method(bad)


def test_overlap():
    got = lattice.overlap(jnp.asarray([0.0, 5.0, 20.0]), jnp.asarray([10.0, 8.0, 30.0]),
                          jnp.float32(4.0), jnp.float32(12.0))
    np.testing.assert_array_equal(got, [6.0, 3.0, 0.0])


@pytest.mark.parametrize("num_base,k", [(9, 40), (1, 9), (1, 300)])
def test_top_k_iou_lattice_and_dense_agree(num_base, k):
    """Same IoUs both ways (ties at the K-th place may keep other anchors); rows left out
    get iou -1 and index 0."""
    p = _anchors(octave_base_scale=8, scales_per_octave=1, ratios=(1.0,)) if num_base == 1 \
        else _anchors()
    rng = np.random.default_rng(num_base + k)
    xy = rng.uniform(-8, 80, (11, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(2, 90, (11, 2))], 1), jnp.float32)
    rows = jnp.asarray(rng.random(11) < 0.8)
    val_l, idx_l = jax.jit(lambda b, r: lattice.top_k_iou(p, b, r, k))(boxes, rows)
    val_d, idx_d = jax.jit(lambda b, r: lattice.top_k_iou(p, b, r, k, method="dense"))(boxes,
                                                                                      rows)
    assert val_l.shape == val_d.shape == (11, min(k, p.boxes.shape[0]))
    np.testing.assert_allclose(val_l, val_d, atol=1e-6)
    cols = common.columns(jnp.asarray(p.boxes))
    iou = np.asarray(common.iou_with_box(cols, (cols[2] - cols[0]) * (cols[3] - cols[1]), boxes))
    r = np.asarray(rows)
    np.testing.assert_allclose(np.take_along_axis(iou, np.asarray(idx_l), 1)[r], val_l[r],
                               atol=1e-6)
    assert np.all(np.asarray(val_l)[~r] == -1) and np.all(np.asarray(idx_l)[~r] == 0)
    assert np.all(np.asarray(val_d)[~r] == -1) and np.all(np.asarray(idx_d)[~r] == 0)
    # Priors off the lattice: 'auto' is the dense fold.
    off = p.replace(feature_shapes=None)
    val_o, idx_o = jax.jit(lambda b, r: lattice.top_k_iou(off, b, r, k))(boxes, rows)
    np.testing.assert_array_equal(val_o, val_d)
    np.testing.assert_array_equal(idx_o, idx_d)


def test_reaching_pieces_keep_every_reaching_row():
    p = _anchors((96, 128), octave_base_scale=8, scales_per_octave=1, ratios=(1.0,))
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 100, (20, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(4, 80, (20, 2))], 1), jnp.float32)
    cols = common.columns(jnp.asarray(p.boxes))
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])
    rows = jnp.ones((20,), bool)
    for bands in (True, False):
        pieces = lattice.reaching_pieces(p, cols, area, boxes, rows, 0.5, bands=bands)
        assert sum(q.size for q in pieces) == p.boxes.shape[0]
        for q in pieces:
            iou = np.asarray(common.iou_with_box(q.cols, q.area, boxes))
            assert np.all(np.asarray(q.reach)[iou.max(1) >= 0.5])
    assert len(lattice.reaching_pieces(p, cols, area, boxes, rows, 0.5, bands=False)) == 3


def test_level_bounds_bound_the_max_iou():
    p = _anchors((96, 128))
    rng = np.random.default_rng(6)
    xy = rng.uniform(0, 100, (16, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(2, 90, (16, 2))], 1), jnp.float32)
    cols = common.columns(jnp.asarray(p.boxes))
    ub, lb = lattice.level_bounds(p, cols, boxes)
    iou = np.asarray(common.iou_with_box(cols, (cols[2] - cols[0]) * (cols[3] - cols[1]),
                                         boxes))
    for lvl, (start, size) in enumerate(zip(p.level_starts, p.level_sizes)):
        assert np.all(iou[:, start:start + size].max(1) <= np.asarray(ub[:, lvl]) * (1 + 1e-5))
    np.testing.assert_array_less(np.asarray(lb), iou.max(1) + 1e-6)


def test_may_reach_never_misses_a_box_that_reaches_the_threshold():
    # Random sets of boxes (varied sizes, one degenerate, one NaN) and GTs (tiny, huge,
    # inverted, near the set and far from it): wherever some box has IoU >= t with a
    # GT, may_reach is True; it prunes some GTs by place (the envelope test).
    rng = np.random.default_rng(1)
    pruned = 0
    for case in range(20):
        n, m = 50, 80
        c = rng.uniform(100, 300, (n, 2)) + rng.uniform(0, 400) * (case % 2)
        wh = np.exp(rng.uniform(np.log(4), np.log(200), (n, 2)))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)
        boxes[0, 2:] = boxes[0, :2]  # zero area: left out
        boxes[1] = np.nan  # non-finite: left out
        gc = rng.uniform(-100, 900, (m, 2))
        gwh = np.exp(rng.uniform(np.log(1), np.log(500), (m, 2)))
        gt = np.concatenate([gc - gwh / 2, gc + gwh / 2], -1).astype(np.float32)
        gt[:5] = boxes[2:7] * np.float32(1.01)  # some GTs on boxes of the set
        gt[5, 2:] = gt[5, :2] - 3  # inverted
        cols = common.columns(jnp.asarray(boxes))
        area = (cols[2] - cols[0]) * (cols[3] - cols[1])
        for t in (0.35, 0.5, 0.6):
            reach = np.asarray(lattice.may_reach(cols, area, jnp.asarray(gt), t))
            iou = np.asarray(common.iou_with_box(cols, area, jnp.asarray(gt)))  # [M, n]
            hit = np.nan_to_num(iou, nan=0.0).max(1) >= t
            assert np.all(reach[hit]), (case, t)
            pruned += int((~reach & ~hit).sum())
            assert reach[:5].all()
    assert pruned > 0


def test_row_bands_cut_each_level_into_whole_rows():
    shapes = priors_lib.feature_shapes((800, 1333), (8, 16, 32, 64, 128))
    p = priors_lib.make_anchors(shapes, (8, 16, 32, 64, 128), octave_base_scale=8,
                                scales_per_octave=1, ratios=(1.0,))
    bands = lattice.row_bands(p, 2048)
    assert bands[0][0] == 0 and sum(s for _, s in bands) == p.boxes.shape[0]
    assert all(a + s == b for (a, s), (b, _) in zip(bands, bands[1:]))  # contiguous
    for start, size, (_, w) in zip(p.level_starts, p.level_sizes, shapes):
        mine = [(a, s) for a, s in bands if start <= a < start + size]
        assert sum(s for _, s in mine) == size and all(s % w == 0 for _, s in mine)
    assert len(bands) > len(shapes)  # the big levels are cut
    no_grid = p.replace(feature_shapes=None)
    assert lattice.row_bands(no_grid) == list(zip(p.level_starts, p.level_sizes))


@pytest.mark.parametrize("n,c0,step", [(1, 0.0, 8.0), (2, 4.0, 8.0), (7, 0.0, 16.0),
                                       (100, 0.0, 8.0), (13, 64.0, 128.0)])
def test_nearest_first_orders_by_distance(n, c0, step):
    """The closed-form ranking: k distinct indices whose distances are the k smallest,
    in increasing order, for centres inside, between, on and beyond the grid."""
    rng = np.random.default_rng(n)
    c = (c0 + step * np.arange(n)).astype(np.float32)
    t = np.concatenate([rng.uniform(-3 * step, (n + 2) * step, 100), c[:3], c[:3] + step / 2])
    t = jnp.asarray(t, jnp.float32)
    for k in sorted({1, min(5, n), n}):
        got = np.asarray(jax.jit(lattice.nearest_first, static_argnums=2)(jnp.asarray(c), t, k))
        assert got.shape == (t.shape[0], k) and got.min() >= 0 and got.max() < n
        for row, tr in zip(got, np.asarray(t)):
            d = np.abs(c - tr)
            assert len(set(row.tolist())) == k
            np.testing.assert_allclose(d[row], np.sort(d)[:k], atol=1e-3 * step)
