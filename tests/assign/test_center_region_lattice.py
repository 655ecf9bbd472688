"""The lattice path of the FSAF centre-region assignment against the dense reference.

`center_region`'s 'auto' method (`center_region_lattice` on tiling priors) must give
exactly the outputs of its 'dense' method: random boxes of all
sizes (tiny, huge, partly outside, degenerate, snapped to the lattice), padding and
crowd rows, several classes, equal-area ties, M not a multiple of 32, images without
GT, every mode of the level-aware pass, several feature-map sizes, jit + vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import center_region as cr
from jaxdet.assign import center_region_lattice as cl
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth

C = 4


def _priors(hw, strides):
    shapes = priors_lib.feature_shapes(hw, strides)
    return priors_lib.make_anchors(
        shapes, strides, octave_base_scale=1.0, scales_per_octave=1, ratios=(1.0,)
    )


def _random_gt(rng, m, hw, images):
    """A batch of `images` GroundTruths [B, M] mixing every kind of box."""
    h, w = hw
    kind = rng.integers(0, 6, (images, m))
    size = np.exp(rng.uniform(np.log(0.3), np.log(3 * max(h, w)), (images, m, 2)))
    size = np.where((kind == 0)[..., None], rng.uniform(0.1, 8, (images, m, 2)), size)  # tiny
    centre = rng.uniform(-0.3, 1.3, (images, m, 2)) * [w, h]  # some outside the image
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
    boxes = np.where((kind == 1)[..., None], np.round(boxes / 4) * 4, boxes)  # on the lattice
    boxes[kind == 2, 2] = boxes[kind == 2, 0]  # zero width
    boxes[kind == 3, 3] = boxes[kind == 3, 1] - 3  # inverted height
    if m > 3:
        boxes[:, 1] = boxes[:, 0]  # equal areas: ties go to the later row
        boxes[:, 3, :2] = boxes[:, 2, :2] + 5.0  # same area, other place
        boxes[:, 3, 2:] = boxes[:, 3, :2] + (boxes[:, 2, 2:] - boxes[:, 2, :2])
    valid = rng.random((images, m)) < 0.85
    boxes = np.where(valid[..., None], boxes, np.nan)  # garbage in padding rows
    ignore = rng.random((images, m)) < 0.15
    valid[-1] = False  # the last image has no GT at all
    return GroundTruth(
        boxes=jnp.asarray(boxes, jnp.float32),
        labels=jnp.asarray(rng.integers(0, C, (images, m)), jnp.int32),
        valid=jnp.asarray(valid),
        ignore=jnp.asarray(ignore),
    )


def _unpack(bits, order, m):
    """[N, words] bit sets over the sorted GTs -> [M, N] bool by GT row."""
    bits = np.asarray(bits).astype(np.uint64)
    by_pos = np.stack([(bits[:, p // 32] >> np.uint64(p % 32)) & np.uint64(1) for p in range(m)])
    out = np.zeros_like(by_pos, bool)
    out[np.asarray(order)] = by_pos.astype(bool)
    return out


def _check(priors, gt, sel, **kw):
    num_levels = len(priors.level_sizes)
    assert isinstance(cr.regions(priors, jax.tree_util.tree_map(lambda x: x[0], gt)),
                      cl.LatticeRegions)
    dense = jax.jit(jax.vmap(lambda g, s: cr.assign(priors, g, num_classes=C, selected_level=s,
                                                    method="dense", **kw)))
    grid = jax.jit(jax.vmap(lambda g, s: cr.assign(priors, g, num_classes=C,
                                                   selected_level=s, **kw)))
    if sel is None:
        dense = jax.jit(jax.vmap(lambda g: cr.assign(priors, g, num_classes=C, method="dense",
                                                     **kw)))
        grid = jax.jit(jax.vmap(lambda g: cr.assign(priors, g, num_classes=C, **kw)))
        args = (gt,)
    else:
        args = (gt, jnp.asarray(sel % num_levels, jnp.int32))
    (a, il), (b, jl) = dense(*args), grid(*args)
    np.testing.assert_array_equal(b.gt_index, a.gt_index)
    np.testing.assert_array_equal(b.quality, a.quality)
    np.testing.assert_array_equal(jl, il)
    return a


MODES = [dict(ignore_level_range=r, foreground_dominate=d) for r in (None, 0, 1) for d in (0, 1)]
SHAPES = [((64, 64), (8, 16, 32)), ((72, 40), (8, 16, 32, 64)), ((100, 132), (16, 32))]


# Every M (1, < 32, > 32) and every map setting at least once; every mode twice.
CASES = [(0, 1), (1, 5), (2, 33), (0, 70), (1, 33), (2, 70)]


@pytest.mark.parametrize("k", range(len(CASES)))
def test_grid_equals_dense_on_random_cases(k):
    case, m = CASES[k]
    hw, strides = SHAPES[case]
    rng = np.random.default_rng(m * 10 + case)
    priors = _priors(hw, strides)
    gt = _random_gt(rng, m, hw, images=4)
    sel = rng.integers(0, 8, (4, m))
    a = _check(priors, gt, None, foreground_dominate=bool(m % 2))
    assert np.any(np.asarray(a.gt_index) >= 0) or m < 33  # the cases are not all empty
    for mode in (MODES[k % 6], MODES[(k + 3) % 6]):
        _check(priors, gt, sel, **mode)


# Defaults; other scales; an ignoring box smaller than the effective one; IoF > 0;
# every prior passing the IoF test.
SCALES = [{}, dict(pos_scale=0.3, neg_scale=0.7, min_pos_iof=0.05),
          dict(pos_scale=0.5, neg_scale=0.2, min_pos_iof=0.0, ignore_gt_scale=1.0),
          dict(min_pos_iof=-1.0)]


@pytest.mark.parametrize("scales", SCALES)
def test_grid_equals_dense_with_other_scales(scales):
    rng = np.random.default_rng(7)
    priors = _priors((64, 96), (8, 16, 32))
    gt = _random_gt(rng, 40, (64, 96), images=3)
    _check(priors, gt, None, **scales)
    _check(priors, gt, rng.integers(0, 3, (3, 40)), **scales)


@pytest.mark.parametrize("seed", range(2))
def test_lattice_regions_equal_dense_regions(seed):
    rng = np.random.default_rng(seed)
    priors = _priors((96, 80), (8, 16, 32))
    m = 37
    gt = _random_gt(rng, m, (96, 80), images=2)
    for i in range(2):
        g = jax.tree_util.tree_map(lambda x, i=i: x[i], gt)
        for scales in SCALES:
            eff, ign, crowd = cr.regions(priors, g, method="dense", **scales)
            geo = cr.regions(priors, g, **scales)
            np.testing.assert_array_equal(_unpack(geo.effective, geo.order, m), eff)
            np.testing.assert_array_equal(_unpack(geo.ignoring, geo.order, m), ign)
            np.testing.assert_array_equal(geo.crowd, crowd)


def test_failing_corner_cells_are_removed():
    # The ignoring box [3.3, 28.7]^2 enters P3's first and last column / row by 0.7 px:
    # edge cells pass (IoF 8 * 0.7 / 64 > 0.01), corner cells do not (0.49 / 64).
    priors = _priors((64, 64), (8, 16, 32))
    box = [16 - 25.4, 16 - 25.4, 16 + 25.4, 16 + 25.4]
    gt = GroundTruth(boxes=jnp.asarray([box], jnp.float32), labels=jnp.asarray([1]),
                     valid=jnp.asarray([True]), ignore=jnp.asarray([False]))
    _, ign, _ = cr.regions(priors, gt, method="dense")
    cell = lambda y, x: y * 8 + x  # noqa: E731
    ign = np.asarray(ign[0])
    assert not ign[[cell(0, 0), cell(0, 4), cell(4, 0), cell(4, 4)]].any()
    assert ign[[cell(0, 1), cell(1, 0), cell(4, 3), cell(2, 2)]].all()
    geo = cr.regions(priors, gt)
    np.testing.assert_array_equal(_unpack(geo.ignoring, geo.order, 1)[0], ign)
    for kw in ({}, dict(selected_level=jnp.asarray([0]))):
        a, il = cr.assign(priors, gt, num_classes=C, method="dense", **kw)
        b, jl = cr.assign(priors, gt, num_classes=C, **kw)
        np.testing.assert_array_equal(b.gt_index, a.gt_index)
        np.testing.assert_array_equal(jl, il)


def test_hand_computed_cases_of_the_dense_tests():
    # The 64 px cases of test_center_region, as one batch (M = 2, padded): one box, two
    # nested boxes, a duplicate, a big box and a small one of the same class.
    priors = _priors((64, 64), (8, 16, 32))
    box, big = [10, 10, 50, 50], [0, 0, 64, 64]
    boxes = [[box, [0, 0, 0, 0]], [big, box], [box, box], [big, [34, 34, 50, 50]]]
    gt = GroundTruth(boxes=jnp.asarray(boxes, jnp.float32),
                     labels=jnp.asarray([[1, 0], [0, 2], [0, 0], [1, 1]]),
                     valid=jnp.asarray([[True, False]] + [[True, True]] * 3),
                     ignore=jnp.zeros((4, 2), bool))
    for sel in (None, np.zeros((4, 2)), np.tile([[2, 0]], (4, 1))):
        _check(priors, gt, sel)
        _check(priors, gt, sel, foreground_dominate=True)


def test_auto_takes_the_dense_path_on_other_priors():
    shapes = priors_lib.feature_shapes((64, 96), (8, 16, 32))
    atss = priors_lib.make_anchors(shapes, (8, 16, 32), octave_base_scale=8,
                                   scales_per_octave=1, ratios=(1.0,))  # overlapping
    gt = _random_gt(np.random.default_rng(2), 9, (64, 96), images=1)
    g = jax.tree_util.tree_map(lambda x: x[0], gt)
    assert isinstance(cr.regions(atss, g), cr.Regions)
    a, il = cr.assign(atss, g, num_classes=C)
    b, jl = cr.assign(atss, g, num_classes=C, method="dense")
    np.testing.assert_array_equal(a.gt_index, b.gt_index)
    np.testing.assert_array_equal(il, jl)
    with pytest.raises(ValueError, match="do not tile"):
        cl.regions(atss, g, pos_scale=0.2, neg_scale=0.5, min_pos_iof=0.01,
                   ignore_gt_scale=0.5)
    with pytest.raises(ValueError, match="unknown method"):
        cr.regions(atss, g, method="grid")


def test_pack_and_lowest_bit():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 70)) < 0.1
    mask[3] = False
    bits = np.asarray(cl.pack(jnp.asarray(mask)))
    assert bits.shape == (7, 3) and bits.dtype == np.uint32
    np.testing.assert_array_equal(_unpack(bits, np.arange(70), 70).T, mask)
    first = np.asarray(cl._lowest_bit(jnp.asarray(bits)))
    expect = np.where(mask.any(1), np.argmax(mask, 1), 96)
    np.testing.assert_array_equal(first, expect)


def test_packed_ignore_labels_expand_to_the_dense_ones():
    # resolve_bits under jit(vmap): its IgnoreBits expand (batched) to the dense
    # path's ignore_labels; M = 40 spans two words; a kept positive never ignores its
    # own class, and padding rows are in no class mask.
    rng = np.random.default_rng(3)
    priors = _priors((64, 96), (8, 16, 32))
    gt = _random_gt(rng, 40, (64, 96), images=3)
    sel = jnp.asarray(rng.integers(0, 3, (3, 40)), jnp.int32)
    dense = jax.jit(jax.vmap(lambda g, s: cr.assign(priors, g, num_classes=C, selected_level=s,
                                                    method="dense")))
    packed = jax.jit(jax.vmap(lambda g, s: cl.resolve_bits(
        cr.regions(priors, g), g, priors.level_sizes, num_classes=C, selected_level=s)))
    (a, il), (b, bits) = dense(gt, sel), packed(gt, sel)
    n = priors.boxes.shape[0]
    assert bits.shadow.shape == (3, n, 2) and bits.shadow.dtype == np.uint32
    assert bits.classmask.shape == (3, C, 2) and bits.kept_label.shape == (3, n)
    np.testing.assert_array_equal(b.gt_index, a.gt_index)
    expanded = np.asarray(cl.expand_ignore(bits))
    np.testing.assert_array_equal(expanded, il)
    assert np.asarray(il).any()  # the case ignores something
    kept = np.asarray(bits.kept_label)
    pos = np.asarray(b.gt_index) >= 0
    assert np.all((kept >= 0) <= pos)
    img, prior = np.nonzero(kept >= 0)
    assert not expanded[img, prior, kept[img, prior]].any()
    labels = np.asarray(gt.labels)
    member = (np.asarray(cl.expand_ignore(cl.IgnoreBits(
        jnp.full((3, 1, 2), 0xFFFFFFFF, jnp.uint32), bits.classmask,
        jnp.full((3, 1), -1, jnp.int32))))[:, 0])  # [B, C]: some match GT of class c
    match = np.asarray(gt.valid) & ~np.asarray(gt.ignore)
    for i in range(3):
        np.testing.assert_array_equal(member[i], np.isin(np.arange(C), labels[i][match[i]]))
