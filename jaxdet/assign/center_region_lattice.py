"""FSAF centre-region assignment on a tiling prior lattice, without any [M, N] array.

The lattice implementation behind `center_region.regions` / `resolve` / `assign`
(`method='auto'`; semantics: see that module): exactly the outputs of the dense
reference, for priors that tile each level: one prior per location, row-major, all
priors of a level of one width and height, x-interval(col) x y-interval(row),
neighbours not overlapping (FSAF's stride-sized squares;
`lattice.check_tiling(priors, disjoint=True)`).

Separable regions. On a level with prior side (w, h) and a GT's region box, the
overlaps are ox[j] (column j) and oy[i] (row i) and IoF(i, j) = ox[j] * oy[i] / (w h).
The columns with ox > 0 are contiguous and all but the first and the last lie fully
inside the box (ox = w, the largest value); likewise the rows. A column passes if its
cell in the best row (oy_max) does, a row if its cell in the best column does; a cell
in an interior row (column) has exactly the test of its column (row), so a region is
(passing rows) x (passing columns) minus those of the <= 4 corner cells (first / last
row x first / last column) whose own test fails. "Centre strictly inside" is a row
and a column condition too. Every test is the dense path's float formula on the same
numbers, so the outputs are identical, bit for bit (no rounding caveat at the IoF
threshold).

Bit sets. GTs are sorted by (area ascending, row descending) and each (GT, prior)
mask is a bit set over the sorted GTs, [N, ceil(M / 32)] uint32 (`LatticeRegions`): a
cell's set is rowbits[i] & colbits[j], minus the failing corners (scattered). The owner
of a prior is the lowest set bit of its candidates (smallest area, ties the later row,
as the dense `resolve`); the level-aware pass ANDs in per-level bit masks of the GTs
selected on (near) the level; `ignore_labels[n, c]` = `shadow[n] & classmask[c] != 0`
(`IgnoreBits`; `resolve_bits` returns them packed, `expand_ignore` expands).

Cost per image: O(M (H + W)) per level for the 1-D tests, O(N M / 32) word operations
for the sets and O(N C M / 32) for `ignore_labels`, against O(N M) floats and an
[N, M] x [M, C] product in the dense path. Inside a jitted loss XLA fuses
`expand_ignore` into the loss weights, so `ignore_labels` need not be written out as
[N, C] booleans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from jaxdet.assign import center_region, common, lattice
from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Assignment, GroundTruth, Priors

Array = jnp.ndarray
BITS = 32


class LatticeRegions(NamedTuple):
    """Level-agnostic geometry of one image, bit sets over the sorted GTs.

    Bit b of word w stands for GT row `order[32 w + b]`.
    effective: [N, words] uint32, E of `center_region` (match rows only).
    ignoring:  [N, words] uint32, I (match rows only).
    crowd:     [N] bool, centre inside a crowd box scaled by `ignore_gt_scale`.
    order:     [M] int32 GT rows by area ascending, ties by row descending.
    """

    effective: Array
    ignoring: Array
    crowd: Array
    order: Array


class IgnoreBits(NamedTuple):
    """`ignore_labels` of one image in packed form (`resolve_bits`); leaves may carry
    leading batch axes.

    shadow:     [N, words] uint32, bit set over the sorted GTs: the GTs whose class
                prior n ignores.
    classmask:  [C, words] uint32, the match GTs of each class.
    kept_label: [N] int32, the class a kept positive never ignores (its owner's), -1.
    `expand_ignore` gives ignore_labels[n, c] = (shadow[n] & classmask[c] != 0) and
    c != kept_label[n]: O(N M / 32) words instead of N C booleans.
    """

    shadow: Array
    classmask: Array
    kept_label: Array


def expand_ignore(bits: IgnoreBits) -> Array:
    """IgnoreBits [..., N, words] -> ignore_labels [..., N, C] bool (the dense form that
    `center_region.resolve` returns); inside a jitted loss XLA fuses it into its consumer."""
    shadow, classmask = bits.shadow, bits.classmask
    acc = shadow[..., :, None, 0] & classmask[..., None, :, 0]
    for w in range(1, shadow.shape[-1]):
        acc = acc | (shadow[..., :, None, w] & classmask[..., None, :, w])
    classes = jnp.arange(classmask.shape[-2], dtype=jnp.int32)
    return (acc != 0) & (bits.kept_label[..., None] != classes)


def pack(mask: Array) -> Array:
    """[..., M] bool -> [..., ceil(M / 32)] uint32; bit b of word w is mask[..., 32 w + b]."""
    m = mask.shape[-1]
    words = -(-m // BITS)
    mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, words * BITS - m)])
    mask = mask.reshape(*mask.shape[:-1], words, BITS).astype(jnp.uint32)
    return jnp.sum(mask << jnp.arange(BITS, dtype=jnp.uint32), -1, dtype=jnp.uint32)


def _levels(priors: Priors, shapes: tuple[tuple[int, int], ...]):
    """Per level: (x1, x2 [W], y1, y2 [H], max(prior area, eps)) of the prior grid."""
    pb = common.as_f32(priors.boxes)
    out, start = [], 0
    for h, w in shapes:
        lvl = lax.slice_in_dim(pb, start, start + h * w).reshape(h, w, 4)
        start += h * w
        den = jnp.maximum(box_ops.areas(lvl[0, 0]), box_ops.EPS)
        out.append((lvl[0, :, 0], lvl[0, :, 2], lvl[:, 0, 1], lvl[:, 0, 3], den))
    return out


def _region(level, rb: Array, thr: float, row_cond: Array, col_cond: Array):
    """IoF(prior, region box) > thr on one level, region boxes rb [M, 4] (sorted GTs), and
    the extra row [H, M] / column [W, M] conditions (centre inside, match row).

    Returns (rows [H, M], columns [W, M] bool, and for the <= 4 corner cells of each GT:
    row, column [4, M] int32 and whether the cell fails although its row and column
    pass [4, M] bool).
    """
    x1, x2, y1, y2, den = level
    ox = lattice.overlap(x1[:, None], x2[:, None], rb[:, 0], rb[:, 2])  # [W, M]
    oy = lattice.overlap(y1[:, None], y2[:, None], rb[:, 1], rb[:, 3])  # [H, M]
    ox_max, oy_max = jnp.max(ox, 0), jnp.max(oy, 0)
    col = ((ox * oy_max) / den > thr) & col_cond
    row = ((ox_max * oy) / den > thr) & row_cond

    def ends(o):  # first and last index with a positive overlap, [M]
        hit = o > 0
        return jnp.argmax(hit, 0), o.shape[0] - 1 - jnp.argmax(hit[::-1], 0)

    (i0, i1), (j0, j1) = ends(oy), ends(ox)
    ci, cj = jnp.stack([i0, i0, i1, i1]), jnp.stack([j0, j1, j0, j1])  # [4, M]
    distinct = jnp.stack([jnp.ones_like(i0, bool), j1 != j0, i1 != i0, (i1 != i0) & (j1 != j0)])
    cell_ok = (jnp.take_along_axis(ox, cj, 0) * jnp.take_along_axis(oy, ci, 0)) / den > thr
    fails = distinct & jnp.take_along_axis(row, ci, 0) & jnp.take_along_axis(col, cj, 0)
    return row, col, ci, cj, fails & ~cell_ok


def regions(
    priors: Priors,
    gt: GroundTruth,
    *,
    pos_scale: float,
    neg_scale: float,
    min_pos_iof: float,
    ignore_gt_scale: float,
) -> LatticeRegions:
    """`center_region.regions` of one image as bit sets; raises ValueError unless the
    priors tile each level (`lattice.check_tiling(priors, disjoint=True)`)."""
    lattice.check_tiling(priors, disjoint=True)
    shapes = tuple(tuple(int(v) for v in hw) for hw in priors.feature_shapes)
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    m = boxes.shape[0]
    rows = jnp.arange(m, dtype=jnp.int32)
    area = jnp.where(match_rows, box_ops.areas(boxes) + 0.0, jnp.inf)  # +0.0: no -0.0
    order = jnp.lexsort((-rows, area)).astype(jnp.int32)
    boxes, match, crowd_rows = boxes[order], match_rows[order], ignore_rows[order]
    scale_boxes = center_region.scale_boxes
    pos_box, neg_box = scale_boxes(boxes, pos_scale), scale_boxes(boxes, neg_scale)
    crowd_box = scale_boxes(boxes, ignore_gt_scale)

    def inside(c, lo, hi):  # [X] centres strictly inside [M] intervals -> [X, M]
        return (c[:, None] > lo) & (c[:, None] < hi)

    # Per level and region (effective, ignoring, crowd): row and column masks [X, M],
    # packed together at the end; failing corner cells of effective and ignoring.
    row_masks, col_masks, corners = [], [], {"eff": [], "ign": []}
    start = 0
    for level, (h, w) in zip(_levels(priors, shapes), shapes):
        x1, x2, y1, y2, _ = level
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        eff = _region(level, pos_box, min_pos_iof,
                      inside(cy, boxes[:, 1], boxes[:, 3]) & match,
                      inside(cx, boxes[:, 0], boxes[:, 2]))
        ign = _region(level, neg_box, min_pos_iof, jnp.broadcast_to(match, (h, m)), True)
        row_masks += [eff[0], ign[0], inside(cy, crowd_box[:, 1], crowd_box[:, 3]) & crowd_rows]
        col_masks += [eff[1], ign[1], inside(cx, crowd_box[:, 0], crowd_box[:, 2])]
        for name, (_, _, ci, cj, fails) in (("eff", eff), ("ign", ign)):
            corners[name].append((start + ci * w + cj, fails))
        start += h * w
    row_bits = pack(jnp.concatenate(row_masks))  # [3 * sum H, words]
    col_bits = pack(jnp.concatenate(col_masks))

    def cells(region):  # 0 effective, 1 ignoring, 2 crowd -> [N, words]
        out, r0, c0 = [], 0, 0
        for h, w in shapes:
            rb = row_bits[r0 + region * h : r0 + (region + 1) * h]
            cb = col_bits[c0 + region * w : c0 + (region + 1) * w]
            out.append((rb[:, None] & cb[None]).reshape(h * w, -1))
            r0, c0 = r0 + 3 * h, c0 + 3 * w
        return jnp.concatenate(out)

    gt_bit = jnp.uint32(1) << (jnp.arange(m, dtype=jnp.uint32) % BITS)
    gt_word = jnp.broadcast_to(jnp.arange(m) // BITS, (4 * len(shapes), m))

    def remove_corners(bits, name):
        at = jnp.concatenate([c for c, _ in corners[name]])  # [4 L, M]
        fails = jnp.concatenate([f for _, f in corners[name]])
        # A failing corner's bit is set in `bits` (its row and column pass) and each
        # (cell, GT) pair fails at most once, so subtracting the bit clears it: one
        # in-place scatter, no [N, words] buffer of the failed bits.
        return bits.at[at, gt_word].add(jnp.where(fails, -gt_bit, jnp.uint32(0)))

    return LatticeRegions(remove_corners(cells(0), "eff"), remove_corners(cells(1), "ign"),
                       jnp.any(cells(2) != 0, -1), order)


def _lowest_bit(bits: Array) -> Array:
    """[N, words] uint32 -> [N] int32 position of the lowest set bit (32 * words if none)."""
    words = bits.shape[-1]
    tz = lax.population_count(~bits & (bits - jnp.uint32(1))).astype(jnp.int32)  # ctz
    at = jnp.arange(words, dtype=jnp.int32) * BITS + tz
    return jnp.min(jnp.where(bits != 0, at, words * BITS), axis=-1)


def resolve(
    geo: LatticeRegions,
    gt: GroundTruth,
    level_sizes: Sequence[int],
    *,
    num_classes: int,
    selected_level: Array | None = None,
    ignore_level_range: int | None = 1,
    foreground_dominate: bool = False,
) -> tuple[Assignment, Array]:
    """`center_region.resolve` on the bit sets of `regions`: the same outputs, the priors'
    levels given by the static `level_sizes` (priors.level_sizes)."""
    assignment, bits = resolve_bits(
        geo, gt, level_sizes, num_classes=num_classes, selected_level=selected_level,
        ignore_level_range=ignore_level_range, foreground_dominate=foreground_dominate)
    return assignment, expand_ignore(bits)


def resolve_bits(
    geo: LatticeRegions,
    gt: GroundTruth,
    level_sizes: Sequence[int],
    *,
    num_classes: int,
    selected_level: Array | None = None,
    ignore_level_range: int | None = 1,
    foreground_dominate: bool = False,
) -> tuple[Assignment, IgnoreBits]:
    """`resolve` with `ignore_labels` as IgnoreBits (expand with `expand_ignore`)."""
    _, match_rows, _ = common.split_gt(gt)
    n, words = geo.effective.shape
    m = match_rows.shape[0]
    labels = jnp.asarray(gt.labels, jnp.int32)
    labels_s, match_s = labels[geo.order], match_rows[geo.order]
    eff, ign = geo.effective, geo.ignoring
    if selected_level is None:
        cand, near, at_sel = eff, None, None
    else:
        sel = jnp.asarray(selected_level, jnp.int32)[geo.order]
        dist = jnp.abs(jnp.arange(len(level_sizes), dtype=jnp.int32)[None] - sel[:, None])

        def per_prior(mask):  # [M, L] GTs per level -> [N, words] bit sets of each prior
            table = pack((mask & match_s[:, None]).T)  # [L, words]
            return jnp.concatenate([jnp.broadcast_to(table[lvl], (size, words))
                                    for lvl, size in enumerate(level_sizes)])

        at_sel = per_prior(dist == 0)
        near = None if ignore_level_range is None else per_prior(dist <= ignore_level_range)
        cand = eff & at_sel

    # Smallest area wins, ties the later row: the lowest bit of the sorted GTs.
    first = _lowest_bit(cand)
    pos = first < m
    q = jnp.minimum(first, m - 1)
    owner = jnp.where(pos, geo.order[q], -1)
    owner_label = jnp.where(pos, labels_s[q], -1)
    # The owner's own bit (word q // 32, bit q % 32), and the match GTs of its class.
    word = jnp.arange(words, dtype=jnp.int32)
    own_bit = jnp.where(pos[:, None] & (word == q[:, None] // BITS),
                        jnp.uint32(1) << (q[:, None] % BITS).astype(jnp.uint32), jnp.uint32(0))
    classmask = pack((labels_s[None, :] == jnp.arange(num_classes)[:, None]) & match_s)
    same_label = jnp.where(pos[:, None], classmask[jnp.maximum(owner_label, 0)], jnp.uint32(0))

    # Geometric shadow: the ignoring box near the selected level, minus the owner; and
    # the selection shadow: the effective region on the levels the GT does not train.
    ign_near = ign if near is None else ign & near
    shadow = ign_near if at_sel is None else ign_near | (eff & ~at_sel)
    geo_own = jnp.any((ign_near & ~own_bit & same_label) != 0, -1)
    if foreground_dominate:
        # the owner's class is never shadowed at its positives
        gt_index, kept = owner, pos
    else:
        # a positive shadowed in its own class becomes background (class ignored)
        gt_index, kept = jnp.where(geo_own, common.BACKGROUND, owner), pos & ~geo_own
    # A kept positive's class loses its owner's whole class. Other priors lose only the
    # owner's bit, which leaves `ignore_labels` as it is: without an owner there is none,
    # and a positive made background keeps a shadowing GT of the owner's class (geo_own).
    bits = IgnoreBits(shadow, classmask, jnp.where(kept, owner_label, -1))
    gt_index = jnp.where(geo.crowd, common.IGNORE, gt_index)
    return common.finish(gt_index, jnp.ones((n,), jnp.float32)), bits
