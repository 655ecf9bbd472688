"""Each GT's top-k anchors by IoU on an anchor grid, without the [M, N] IoU matrix.

Used by the bag assigners (learning from noisy anchors' candidate bags, FreeAnchor /
MAL anchor bags) when the priors are `make_anchors` anchors (`grid_shapes` known).

On one level the anchors of one shape form a separable grid: the anchor at (row r,
col c) is x-interval(c) x y-interval(r), so its intersection with a GT is
ix(c) * iy(r) and, with the anchor area fixed, its IoU grows with that product. ix(c)
falls with the distance of column c's centre from the GT centre (the overlap of two
intervals is a trapezoid symmetric about the GT centre), iy(r) likewise. Rank the rows
and the columns by that distance (`nearest_first`, in closed form: the centres are
evenly spaced); then any anchor of rank (a, b) is dominated by the (a + 1)(b + 1)
anchors of ranks <= (a, b), so the top-k of the level and shape lie in the static
staircase {(a, b): (a + 1)(b + 1) <= k} (207 cells for k = 50). The result is the
top-k of these candidates over all levels and shapes (`lax.top_k`; ~1k candidates
per GT for k = 50 and one anchor per location, ~9k with 9, against the 22k / 200k
anchors of an 800 x 1333 input). Exact up to float rounding; among equal IoUs the
lower level comes first; then, with one anchor per location, the cell of lower rank
sum a + b, then lower row rank a (`staircase_order`); with several, the row nearer the
GT centre (`staircase`'s row-major order).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Priors


def staircase(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Static rank pairs (a, b), a < rows, b < cols, (a + 1) * (b + 1) <= k."""
    a, b = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    keep = (a + 1) * (b + 1) <= k
    return a[keep].astype(np.int32), b[keep].astype(np.int32)


def _overlap(lo: jax.Array, hi: jax.Array, glo: jax.Array, ghi: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.minimum(hi, ghi) - jnp.maximum(lo, glo), 0.0)


def check_grid(priors: Priors, grid_shapes) -> None:
    """Raises ValueError unless every level is an (h, w, num_base) anchor grid; for
    concrete (untraced) boxes, also unless its row and column centres are evenly
    spaced (what `nearest_first` and ATSS's lattice window assume)."""
    if grid_shapes is None:
        raise ValueError("method='grid' needs grid_shapes (or priors.feature_shapes)")
    shapes = tuple(tuple(int(v) for v in hw) for hw in grid_shapes)
    sizes = tuple(h * w * priors.num_base for h, w in shapes)
    if sizes != tuple(priors.level_sizes):
        raise ValueError(
            f"priors are not an anchor grid of {shapes} x {priors.num_base}: level sizes "
            f"{tuple(priors.level_sizes)} != {sizes}"
        )
    try:
        pb = np.asarray(priors.boxes, np.float64)
    except jax.errors.TracerArrayConversionError:
        return  # traced boxes: checked where they were made
    start = 0
    for level, ((h, w), size) in enumerate(zip(shapes, sizes)):
        lvl = pb[start : start + size].reshape(h, w, priors.num_base, 4)
        start += size
        cx = (lvl[0, :, 0, 0] + lvl[0, :, 0, 2]) / 2.0
        cy = (lvl[:, 0, 0, 1] + lvl[:, 0, 0, 3]) / 2.0
        for name, c in (("column", cx), ("row", cy)):
            d = np.diff(c)
            if len(d) and not np.allclose(d, d[0], rtol=1e-5, atol=1e-3 * max(abs(d[0]), 1.0)):
                raise ValueError(f"level {level}: anchor {name} centres are not evenly spaced")


def nearest_first(centers: jax.Array, t: jax.Array, k: int) -> jax.Array:
    """Indices [M, k] of the k entries of evenly spaced `centers` [n] nearest to each
    of t [M], nearest first, without a sort.

    With u = (t - c0) / step clipped to [0, n - 1], f = floor(u), the entries left of
    u (f, f - 1, ...) are at distances frac + i and those right of it (f + 1, ...) at
    1 - frac + j: the two runs interleave, starting with the nearer side (left when
    frac <= 1/2), and once the shorter run ends (the map border) the longer one goes
    on alone. Equal distances may come in either order.
    """
    n = centers.shape[0]
    if n == 1:
        return jnp.zeros((t.shape[0], k), jnp.int32)
    step = centers[1] - centers[0]
    u = jnp.clip((t - centers[0]) / step, 0.0, n - 1.0)
    f = jnp.clip(jnp.floor(jnp.nan_to_num(u)), 0, n - 1).astype(jnp.int32)[:, None]
    frac = (u[:, None] - f)
    n_left, n_right = f + 1, n - 1 - f
    left_first = frac <= 0.5
    n_first = jnp.where(left_first, n_left, n_right)
    n_second = jnp.where(left_first, n_right, n_left)
    m = jnp.minimum(n_first, n_second)
    q = jnp.arange(k, dtype=jnp.int32)[None, :]
    inter = q < 2 * m
    # side of the q-th entry (True: the first side) and its index along that run
    first = jnp.where(inter, q % 2 == 0, n_first > m)
    along = jnp.where(inter, q // 2, m + q - 2 * m)
    left = first == left_first
    return jnp.where(left, f - along, f + 1 + along)


def staircase_order(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`staircase(rows, cols, k)` ordered by a + b, then a: nearest cells first.

    The order only speeds `lax.top_k` up: XLA:CPU's top-k does less work when the
    largest entries come early (on the 22,300 ATSS anchors of an 800 x 1333 input,
    top-50 of the ~780 candidates took 0.43 instead of 0.64 ms per image of 100 GT).
    `top_iou` uses it with one anchor per location only: with RetinaNet's 9 it made
    no difference (11.3 vs 11.5 ms), and the row-major order keeps the bags of the
    9-anchor configs, which the experiments were trained with, as they were (which
    anchor wins an exact tie at a bag's last place depends on the order)."""
    a, b = staircase(rows, cols, k)
    order = np.lexsort((a, a + b))
    return a[order], b[order]


def _take_ranks(v: jax.Array, ranks: np.ndarray) -> jax.Array:
    """v [M, K, A] at the static ranks [P] -> [M, P, A]. With A > 1 as a gather of
    scalars from [M, K * A] (gathering A-vectors was 9% slower for RetinaNet's 9)."""
    m, _, a = v.shape
    if a == 1:
        return v[:, ranks]
    flat = (ranks[:, None] * a + np.arange(a)).reshape(-1)
    return v.reshape(m, -1)[:, flat].reshape(m, len(ranks), a)


def top_iou(
    pb: jax.Array,
    level_sizes: Sequence[int],
    grid_shapes: Sequence[tuple[int, int]],
    num_base: int,
    boxes: jax.Array,
    k: int,
) -> tuple[jax.Array, jax.Array]:
    """(iou [M, K], anchor index [M, K]) of each GT's top-K anchors, K = min(k, #candidates),
    sorted by decreasing IoU; pb [N, 4] anchors, boxes [M, 4].

    See the module docstring; padding rows of `boxes` should be zeroed (all are computed).
    The overlaps are computed per GT for its nearest rows and columns ([M, kr, A] and
    [M, kc, A]) and multiplied out on the staircase: gathers of M * (kr + kc) anchor
    coordinates, not 4 per candidate (which took 60% of the time).
    """
    m = boxes.shape[0]
    gx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    gy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    g_area = box_ops.areas(boxes)[:, None, None]
    bx = boxes[:, None, :]
    ious, all_rows, all_cols = [], [], []
    # Static, per candidate (the flattened [P, A] of each level, levels in order): where
    # its row and column rank sit in the concatenated rank tables, and its level's start,
    # width and anchor. The anchor index is formed for the K picked candidates only.
    table = {key: [] for key in ("row", "col", "start", "width", "anchor")}
    start = row_off = col_off = 0
    for size, (h, w) in zip(level_sizes, grid_shapes):
        a_ = num_base
        lvl = lax.slice_in_dim(pb, start, start + size).reshape(h, w, a_, 4)
        x1, x2 = lvl[0, :, :, 0], lvl[0, :, :, 2]  # [W, A]
        y1, y2 = lvl[:, 0, :, 1], lvl[:, 0, :, 3]  # [H, A]
        cx = (x1[:, 0] + x2[:, 0]) / 2.0  # [W]
        cy = (y1[:, 0] + y2[:, 0]) / 2.0  # [H]
        kr, kc = min(k, h), min(k, w)
        rows = nearest_first(cy, gy, kr)  # [M, kr] nearest first
        cols = nearest_first(cx, gx, kc)  # [M, kc]
        ix = _overlap(x1[cols], x2[cols], bx[..., 0:1], bx[..., 2:3])  # [M, kc, A]
        iy = _overlap(y1[rows], y2[rows], bx[..., 1:2], bx[..., 3:4])  # [M, kr, A]
        aw, ah = (x2 - x1)[cols], (y2 - y1)[rows]  # anchor widths [M, kc, A], heights
        pa, pc = staircase_order(kr, kc, k) if a_ == 1 else staircase(kr, kc, k)  # see there
        inter = _take_ranks(ix, pc) * _take_ranks(iy, pa)  # [M, P, A]
        union = _take_ranks(aw, pc) * _take_ranks(ah, pa) + g_area - inter
        ious.append((inter / jnp.maximum(union, box_ops.EPS)).reshape(m, -1))
        all_rows.append(rows)
        all_cols.append(cols)
        n_cand = len(pa) * a_
        table["row"].append(np.repeat(row_off + pa, a_))
        table["col"].append(np.repeat(col_off + pc, a_))
        table["start"].append(np.full(n_cand, start))
        table["width"].append(np.full(n_cand, w * a_))
        table["anchor"].append(np.tile(np.arange(a_), len(pa)))
        start, row_off, col_off = start + size, row_off + kr, col_off + kc
    iou = jnp.concatenate(ious, 1)
    val, pick = lax.top_k(iou, min(k, iou.shape[1]))
    t = {key: jnp.asarray(np.concatenate(v).astype(np.int32))[pick] for key, v in table.items()}
    row = jnp.take_along_axis(jnp.concatenate(all_rows, 1), t["row"], axis=1)
    col = jnp.take_along_axis(jnp.concatenate(all_cols, 1), t["col"], axis=1)
    return val, t["start"] + row * t["width"] + col * num_base + t["anchor"]
