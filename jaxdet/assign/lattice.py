"""Prior lattices: what the fast assigners know about priors laid out as
`core.priors.make_anchors` lays them out.

- `check_tiling` / `is_tiling`: the layout test every fast path is gated on
  (`method='auto'` of the assigners takes the lattice path where it passes);
  `check_method` checks the `method` argument they share ('auto' | 'dense').
- `overlap`: the 1-D interval overlap the separable (row x column) forms multiply out.
- `nearest_first`: a lattice's rows or columns ranked by distance, in closed form.
- Reach bounds, which (GT, piece of the priors) pairs can reach an IoU threshold:
  `may_reach` (any set of boxes: by size and place), `row_bands` (the pieces: levels,
  cut into bands of feature rows), `reaching_pieces` (both, per piece), `level_bounds`
  (per level of an anchor lattice, from the anchor shapes).
- Each GT's top-k anchors by IoU: `top_k_iou` (the staircase `top_iou` where the
  priors tile, the dense fold elsewhere).

The staircase. On one level the anchors of one shape form a separable grid: the anchor
at (row r, col c) is x-interval(c) x y-interval(r), so its intersection with a GT is
ix(c) * iy(r) and, with the anchor area fixed, its IoU grows with that product. ix(c)
falls with the distance of column c's centre from the GT centre (the overlap of two
intervals is a trapezoid symmetric about the GT centre), iy(r) likewise. Rank the rows
and the columns by that distance (`nearest_first`); then any anchor of rank (a, b) is
dominated by the (a + 1)(b + 1) anchors of ranks <= (a, b), so the top-k of the level
and shape lie in the static staircase {(a, b): (a + 1)(b + 1) <= k} (207 cells for
k = 50). The result is the top-k of these candidates over all levels and shapes
(`lax.top_k`; ~1k candidates per GT for k = 50 and one anchor per location, ~9k with 9,
against the 22k / 200k anchors of an 800 x 1333 input). Exact up to float rounding;
among equal IoUs the lower level comes first; then, with one anchor per location, the
cell of lower rank sum a + b, then lower row rank a (`staircase_order`); with several,
the row nearer the GT centre (`staircase`'s row-major order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.assign import common
from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Priors

Array = jnp.ndarray
METHODS = ("auto", "dense")
# Priors per row band of the per-piece folds (`row_bands`), and at most MAX_BANDS bands
# per level (each band is a loop of its own: compile time); speed only.
BAND_SIZE = 2048
MAX_BANDS = 8


def check_method(method: str) -> str:
    """Returns `method` if it is 'auto' (the lattice path where the priors tile, see
    `is_tiling`; the dense reference elsewhere) or 'dense' (the reference); else raises."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected 'auto' or 'dense'")
    return method


def check_tiling(priors: Priors, *, disjoint: bool = False) -> None:
    """Raises ValueError unless the priors are laid out as `make_anchors` lays them out:
    each level of `priors.feature_shapes` an (h, w, num_base) grid, row-major, whose row
    and column centres are evenly spaced.

    disjoint: also one prior per location, all priors of a level of one width and height,
    prior (i, j) = x-interval(j) x y-interval(i), neighbours not overlapping (FSAF's
    stride-sized squares). The boxes are tested where they are concrete; traced boxes
    pass on the level sizes alone, except with `disjoint` (they are refused).
    """
    shapes = priors.feature_shapes
    if shapes is None:
        raise ValueError("priors carry no feature_shapes (make_anchors sets them)")
    shapes = tuple((int(h), int(w)) for h, w in shapes)
    a = priors.num_base
    sizes = tuple(h * w * a for h, w in shapes)
    if sizes != tuple(priors.level_sizes):
        raise ValueError(f"priors are not an anchor grid of {shapes} x {a}: level sizes "
                         f"{tuple(priors.level_sizes)} != {sizes}")
    if disjoint and a != 1:
        raise ValueError(f"disjoint tiling needs one prior per location, not {a}")
    try:
        pb = np.asarray(priors.boxes, np.float32)
    except jax.errors.TracerArrayConversionError:
        if disjoint:
            raise ValueError("traced prior boxes: cannot check the tiling") from None
        return
    start = 0
    for level, ((h, w), size) in enumerate(zip(shapes, sizes)):
        lvl = pb[start : start + size].reshape(h, w, a, 4)
        start += size
        _check_spacing(level, lvl.astype(np.float64))
        if disjoint and not _disjoint(lvl[:, :, 0]):
            raise ValueError(f"level {level}: priors do not tile a {h} x {w} grid")


def _check_spacing(level: int, lvl: np.ndarray) -> None:
    cx = (lvl[0, :, 0, 0] + lvl[0, :, 0, 2]) / 2.0
    cy = (lvl[:, 0, 0, 1] + lvl[:, 0, 0, 3]) / 2.0
    for name, c in (("column", cx), ("row", cy)):
        d = np.diff(c)
        if len(d) and not np.allclose(d, d[0], rtol=1e-5, atol=1e-3 * max(abs(d[0]), 1.0)):
            raise ValueError(f"level {level}: anchor {name} centres are not evenly spaced")


def _disjoint(lvl: np.ndarray) -> bool:
    """[h, w, 4] float32 boxes: separable, one size, increasing and not overlapping."""
    x1, y1, x2, y2 = (lvl[..., i] for i in range(4))
    separable = (
        np.array_equal(x1, np.broadcast_to(x1[:1], x1.shape))
        and np.array_equal(x2, np.broadcast_to(x2[:1], x2.shape))
        and np.array_equal(y1, np.broadcast_to(y1[:, :1], y1.shape))
        and np.array_equal(y2, np.broadcast_to(y2[:, :1], y2.shape))
    )
    same_size = np.unique(x2 - x1).size == 1 and np.unique(y2 - y1).size == 1
    ordered = np.all(x2[0, :-1] <= x1[0, 1:]) and np.all(y2[:-1, 0] <= y1[1:, 0])
    return bool(separable and same_size and ordered and np.all(x2 > x1) and np.all(y2 > y1))


def is_tiling(priors: Priors, *, disjoint: bool = False) -> bool:
    """True when `check_tiling` passes: the lattice paths apply."""
    try:
        check_tiling(priors, disjoint=disjoint)
    except ValueError:
        return False
    return True


def overlap(lo: Array, hi: Array, glo: Array, ghi: Array) -> Array:
    """Length of the overlap of intervals [lo, hi] and [glo, ghi] (broadcast), >= 0: the
    formula and rounding of `boxes.aligned_iou`'s width and height."""
    return jnp.maximum(jnp.minimum(hi, ghi) - jnp.maximum(lo, glo), 0.0)


def nearest_first(centers: Array, t: Array, k: int) -> Array:
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


def may_reach(cols: tuple[Array, ...], area: Array, boxes: Array, t: float) -> Array:
    """[M] bool: GT boxes [M, 4] that may have an IoU >= t with one of the boxes given by
    `cols` (x1, y1, x2, y2 each [n]) and `area` [n]; False only where none can.

    For any box p of the set: IoU <= A_p / A_g and IoU <= A_g / A_p, so IoU >= t needs
    t * min A_p <= A_g <= max A_p / t; and IoU <= inter / union with inter <=
    min(max w_p, w_g) * min(max h_p, h_g) and union >= max(min A_p, A_g). And by place:
    IoU >= t needs inter >= t A_g, so the x-overlap of p and g is >= t w_g (and the
    y-overlap >= t h_g), and p lies inside the set's envelope (min x1, min y1, max x2,
    max y2): the envelope's x- and y-overlaps with g must reach t w_g and t h_g. Boxes
    of non-finite or zero area (IoU 0 or NaN) are left out; a margin covers the
    rounding of the IoU formula."""
    ok = jnp.isfinite(area) & (area > 0)
    a_min = jnp.min(jnp.where(ok, area, jnp.inf))
    a_max = jnp.max(jnp.where(ok, area, 0.0))
    w_max = jnp.max(jnp.where(ok, cols[2] - cols[0], 0.0))
    h_max = jnp.max(jnp.where(ok, cols[3] - cols[1], 0.0))
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    g_area = gw * gh
    by_area = (g_area >= a_min * t * (1 - 1e-4)) & (g_area <= a_max / t * (1 + 1e-4))
    inter = jnp.minimum(w_max, gw) * jnp.minimum(h_max, gh)
    by_shape = inter * (1 + 1e-4) >= t * jnp.maximum(a_min, g_area)
    ex1, ey1 = (jnp.min(jnp.where(ok, c, jnp.inf)) for c in cols[:2])
    ex2, ey2 = (jnp.max(jnp.where(ok, c, -jnp.inf)) for c in cols[2:])
    ox = jnp.minimum(ex2, boxes[:, 2]) - jnp.maximum(ex1, boxes[:, 0])
    oy = jnp.minimum(ey2, boxes[:, 3]) - jnp.maximum(ey1, boxes[:, 1])
    slack = 1e-4 * (jnp.abs(boxes[:, 2]) + jnp.abs(boxes[:, 0]) + 1.0)
    slack_y = 1e-4 * (jnp.abs(boxes[:, 3]) + jnp.abs(boxes[:, 1]) + 1.0)
    by_place = (ox + slack >= t * gw * (1 - 1e-4)) & (oy + slack_y >= t * gh * (1 - 1e-4))
    return by_area & by_shape & by_place


def row_bands(priors: Priors, size: int = BAND_SIZE) -> list[tuple[int, int]]:
    """Static (start, length) pieces of the priors: each level, and on a grid
    (`priors.feature_shapes`) each level cut into bands of whole feature-map rows of
    about `size` priors (at most `MAX_BANDS` per level), in order. `may_reach`'s
    envelope test then prunes by place within a level."""
    starts, sizes = priors.level_starts, priors.level_sizes
    shapes = priors.feature_shapes
    if shapes is None:
        return list(zip(starts, sizes))
    out = []
    for start, n, (h, _) in zip(starts, sizes, shapes):
        row = n // max(int(h), 1)
        bands = max(1, min(int(h), MAX_BANDS, round(n / max(size, 1))))
        cuts = np.linspace(0, int(h), bands + 1).round().astype(int)
        out += [(start + int(a) * row, int(b - a) * row) for a, b in zip(cuts[:-1], cuts[1:])]
    return out


class Piece(NamedTuple):
    """A static slice [start, start + size) of N boxes: their columns and areas [size],
    and `reach` [M], the GT rows that may have an IoU >= t with one of them."""

    start: int
    size: int
    cols: tuple[Array, ...]
    area: Array
    reach: Array


def reaching_pieces(priors: Priors, cols: tuple[Array, ...], area: Array, boxes: Array,
                    rows: Array, t: float, *, bands: bool = True,
                    counted: Array | None = None) -> list[Piece]:
    """The N boxes (`cols`, `area` [N], e.g. regressed from `priors`) cut as `priors`:
    into `row_bands` (or whole levels without `bands`), each with the rows [M] of GT
    `boxes` that `may_reach` IoU t on it. counted [N] bool: only these boxes enter the
    bound (the others may then be reached below t)."""
    pieces = row_bands(priors) if bands else list(zip(priors.level_starts, priors.level_sizes))
    out = []
    for start, size in pieces:
        pc = tuple(lax.slice_in_dim(c, start, start + size) for c in cols)
        pa = lax.slice_in_dim(area, start, start + size)
        bound = pa if counted is None else jnp.where(
            lax.slice_in_dim(counted, start, start + size), pa, 0.0)  # area 0: left out
        out.append(Piece(start, size, pc, pa, rows & may_reach(pc, bound, boxes, t)))
    return out


def level_bounds(priors: Priors, cols: tuple[Array, ...], boxes: Array) -> tuple[Array, Array]:
    """(ub [M, L], lb [M]) for GT boxes [M, 4] on an anchor lattice (`check_tiling`).

    ub[j, l]: the largest IoU any anchor of level l can have with GT j, from the
    sizes alone (the anchor centred on the GT; max over the level's base shapes).
    lb[j]: the IoU of an actual box of `cols` (the priors, some of them possibly
    moved away) with GT j, the nearest anchor of each level and base shape: a lower
    bound of the GT's max IoU over those boxes."""
    gx, gy = (boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    a = priors.num_base
    ubs, lb = [], jnp.zeros(boxes.shape[:1], jnp.float32)
    for start, (h, w) in zip(priors.level_starts, priors.feature_shapes):
        lvl = [lax.slice_in_dim(c, start, start + h * w * a).reshape(h, w, a) for c in cols]
        real = lax.slice_in_dim(priors.boxes, start, start + h * w * a).reshape(h, w, a, 4)
        real = common.as_f32(real)
        aw = real[0, 0, :, 2] - real[0, 0, :, 0]  # [A]
        ah = real[0, 0, :, 3] - real[0, 0, :, 1]
        iw = jnp.minimum(aw, gw[:, None])
        ih = jnp.minimum(ah, gh[:, None])
        ub = iw * ih / jnp.maximum(aw * ah + (gw * gh)[:, None] - iw * ih, box_ops.EPS)
        ubs.append(jnp.max(ub, axis=1))
        cx = (real[0, :, 0, 0] + real[0, :, 0, 2]) / 2.0  # [W]
        cy = (real[:, 0, 0, 1] + real[:, 0, 0, 3]) / 2.0  # [H]
        c = nearest_first(cx, gx, 1)[:, 0]
        r = nearest_first(cy, gy, 1)[:, 0]
        near = tuple(v[r, c] for v in lvl)  # [M, A]: the nearest anchors' columns
        near_area = (near[2] - near[0]) * (near[3] - near[1])
        ov = common.iou_with_box(tuple(v[..., None] for v in near), near_area[..., None],
                                 boxes[:, None, :])[..., 0]
        lb = jnp.maximum(lb, jnp.max(ov, axis=1))
    return jnp.stack(ubs, axis=1), lb


def top_k_iou(priors: Priors, boxes: Array, rows: Array, k: int, *, method: str = "auto",
              chunk: int = 8) -> tuple[Array, Array]:
    """(iou [M, K], anchor index [M, K]) of each GT row's K = min(k, N) anchors of highest
    IoU, sorted by decreasing IoU; boxes [M, 4] (padding rows zeroed), rows [M] bool:
    the rows computed (the others get iou -1 and index 0).

    method 'auto': on a tiling lattice (`is_tiling`) the staircase candidates of
    `top_iou` (no IoU with all N anchors); elsewhere, and with 'dense',
    the IoU of each row with every anchor and `lax.top_k` (ties: the lower anchor),
    folded over the rows `chunk` at a time. Same IoUs; among equal IoUs at the K-th
    place the two may keep different anchors (the lattice prefers the lower level,
    then the cell nearer the GT centre: see the module docstring).
    """
    pb = common.as_f32(priors.boxes)
    m = boxes.shape[0]
    k = min(int(k), pb.shape[0])
    if check_method(method) == "auto" and is_tiling(priors):
        iou, index = top_iou(pb, priors.level_sizes, priors.feature_shapes,
                                          priors.num_base, jnp.where(rows[:, None], boxes, 0.0),
                                          k)
        return jnp.where(rows[:, None], iou, -1.0), jnp.where(rows[:, None], index, 0)
    cols = common.columns(pb)
    area = box_ops.areas(pb)

    def body(carry, chunk_rows, ids, live):
        val, idx = carry
        v, i = lax.top_k(common.iou_with_box(cols, area, chunk_rows), k)  # [chunk, K]
        at = jnp.where(live, ids, m)  # filler entries: dropped (out of bounds)
        return val.at[at].set(v, mode="drop"), idx.at[at].set(i, mode="drop")

    init = (jnp.full((m, k), -1.0, jnp.float32), jnp.zeros((m, k), jnp.int32))
    return common.fold_gt_chunks(body, init, boxes, rows, chunk)


def staircase(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Static rank pairs (a, b), a < rows, b < cols, (a + 1) * (b + 1) <= k."""
    a, b = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    keep = (a + 1) * (b + 1) <= k
    return a[keep].astype(np.int32), b[keep].astype(np.int32)


def staircase_order(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`staircase(rows, cols, k)` ordered by a + b, then a: nearest cells first.

    The order only speeds `lax.top_k` up (XLA:CPU's top-k does less work when the
    largest entries come early). `top_iou` uses it with one anchor per location only:
    with several it gives no speed-up, and the row-major order fixes which anchor wins
    an exact IoU tie at a bag's last place in the 9-anchor configs
    (experiments/noisy_anchor/README.md)."""
    a, b = staircase(rows, cols, k)
    order = np.lexsort((a, a + b))
    return a[order], b[order]


def _take_ranks(v: Array, ranks: np.ndarray) -> Array:
    """v [M, K, A] at the static ranks [P] -> [M, P, A]; with A > 1 as a gather of
    scalars from [M, K * A] (faster than gathering A-vectors)."""
    m, _, a = v.shape
    if a == 1:
        return v[:, ranks]
    flat = (ranks[:, None] * a + np.arange(a)).reshape(-1)
    return v.reshape(m, -1)[:, flat].reshape(m, len(ranks), a)


def top_iou(pb: Array, level_sizes: Sequence[int], grid_shapes: Sequence[tuple[int, int]],
            num_base: int, boxes: Array, k: int) -> tuple[Array, Array]:
    """(iou [M, K], anchor index [M, K]) of each GT's top-K anchors, K = min(k, #candidates),
    sorted by decreasing IoU; pb [N, 4] anchors, boxes [M, 4] (all rows computed).

    The staircase of the module docstring. The overlaps are computed per GT for its
    nearest rows and columns ([M, kr, A] and [M, kc, A]) and multiplied out on the
    staircase: gathers of M * (kr + kc) anchor coordinates, not 4 per candidate.
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
        kr, kc = min(k, h), min(k, w)
        rows = nearest_first((y1[:, 0] + y2[:, 0]) / 2.0, gy, kr)  # [M, kr] nearest first
        cols = nearest_first((x1[:, 0] + x2[:, 0]) / 2.0, gx, kc)  # [M, kc]
        ix = overlap(x1[cols], x2[cols], bx[..., 0:1], bx[..., 2:3])  # [M, kc, A]
        iy = overlap(y1[rows], y2[rows], bx[..., 1:2], bx[..., 3:4])  # [M, kr, A]
        aw, ah = (x2 - x1)[cols], (y2 - y1)[rows]  # anchor widths [M, kc, A], heights
        pa, pc = staircase_order(kr, kc, k) if a_ == 1 else staircase(kr, kc, k)
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
