"""ATSS: adaptive training sample selection (Zhang et al., CVPR 2020, arXiv 1912.02424).

Same results as mmdetection's `ATSSAssigner(topk=9)`, per image, jittable and
vmappable: `jax.vmap(lambda g: atss.assign(priors, g, topk=9))(gt_batch)`.

For each GT j:
  1. candidates: on every level, the `min(topk, n_level)` priors whose centres
     are nearest (L2) to the GT centre; ties go to the lower prior index (the
     order of a stable sort; torch.topk does not document its order);
  2. threshold = mean + std of the candidates' IoUs, std unbiased (ddof=1) as
     torch's `.std()`;
  3. a candidate is positive for j iff IoU >= threshold and its centre lies
     inside the GT by more than 0.01 (min(l, t, r, b) > 0.01).
Only candidates can be positive. A prior positive for several GTs goes to the
one with the highest IoU (ties: the lower GT index, as torch's argmax).
Priors whose IoF with an ignore region exceeds `ignore_iof_thr` are ignored
(-2); as in mmdetection their distance is set to infinity so they are not
candidates while a level has `topk` other priors (if one still is, and passes,
it is positive, as in mmdetection). An image without valid GT gives -1 and -2
on ignored priors (mmdetection returns all negatives there).

Speed. The [M, N] distance matrix is never built. `method='auto'` (the default) searches
each level's priors in contiguous blocks of `block` priors: for each GT the blocks are
ranked by their nearest prior, the `k` best blocks are kept and the exact top-k is
taken among their priors. This is exact: the k nearest priors lie in at most k blocks
and each of those blocks has a minimum no farther than the k-th nearest prior, so the
k blocks with the smallest minima (ties: lower block index, which is lower prior
index) contain them all. IoUs are computed for the [M, k * levels] candidates only.
`method='dense'` is the plain version (full distances, one top-k per level), the
reference.

`assign_batch` with `method='auto'` on an anchor lattice (`lattice.is_tiling`, the
layout of `make_anchors`) uses the lattice: the centres of a level sit on a regular
lattice, so a GT's k nearest priors are among the (2r+1)^2 locations around its centre.
The window result is checked at run time (its k-th distance must be strictly below the
distance to any prior outside the window; ignored priors or a GT centre outside the
lattice can break that), and where the check fails for some GT of the batch the block
search decides the batch (one `lax.cond` on a batch-wide flag), so the result is exact.
Per image under `jax.vmap` that conditional would run both searches, so the per-image
`assign` keeps to the block search.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.assign import common, lattice
from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Assignment, GroundTruth, Priors

INSIDE_EPS = 0.01


def _distance(px: jnp.ndarray, py: jnp.ndarray, gx: jnp.ndarray, gy: jnp.ndarray) -> jnp.ndarray:
    """Euclidean distance with mmdetection's rounding: sqrt(dx**2 + dy**2) in float32."""
    dx = px - gx
    dy = py - gy
    return jnp.sqrt(dx * dx + dy * dy)


def _level_topk_dense(px, py, gx, gy, k):
    """[M, k] indices (into the level) of the k nearest priors, ties by lower index."""
    d = _distance(px[None, :], py[None, :], gx[:, None], gy[:, None])
    return lax.top_k(-d, k)[1]


def _group_min(values: jnp.ndarray, block: int) -> jnp.ndarray:
    """[M, n] -> [M, ceil(n / block)] minima of contiguous groups (padding: +inf)."""
    m, n = values.shape
    groups = -(-n // block)
    values = jnp.pad(values, ((0, 0), (0, groups * block - n)), constant_values=jnp.inf)
    return jnp.min(values.reshape(m, groups, block), axis=2)


def _children(parents: jnp.ndarray, block: int, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Indices [M, k * block] of the members of the chosen groups `parents` [M, k],
    in increasing order (parents sorted first), clipped to n - 1; and which are real."""
    parents = jnp.sort(parents, axis=1)
    idx = (parents[:, :, None] * block + jnp.arange(block)).reshape(parents.shape[0], -1)
    return jnp.minimum(idx, n - 1), idx < n


def _pick(values: jnp.ndarray, idx: jnp.ndarray, real: jnp.ndarray, k: int) -> jnp.ndarray:
    """The k smallest `values` [M, c] (ties: earlier column), as entries of `idx`."""
    _, pick = lax.top_k(-jnp.where(real, values, jnp.inf), k)
    return jnp.take_along_axis(idx, pick, axis=1)


def _level_topk_blocks(px, py, gx, gy, k, block):
    """Same as `_level_topk_dense` by a block search (see the module docstring).

    Blocks of `block` consecutive priors are ranked by their nearest prior; while
    there are more than `block * k` blocks, groups of `block` blocks are ranked
    the same way (the argument applies at every level). Top-k then walks down:
    the k best groups, the k best blocks among their members, the k nearest
    priors among the members of those blocks.
    """
    n = px.shape[0]
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    # [block, n_blocks]: column b holds priors b * block ... b * block + block - 1;
    # padding is infinitely far and comes after every real prior.
    bx = jnp.pad(px, (0, pad), constant_values=jnp.inf).reshape(n_blocks, block).T
    by = jnp.pad(py, (0, pad), constant_values=jnp.inf).reshape(n_blocks, block).T
    dx = bx[None] - gx[:, None, None]
    dy = by[None] - gy[:, None, None]
    # sqrt(min d^2) = min d, rounded as `_distance`, so ties rank as in the final pick.
    minima = [jnp.sqrt(jnp.min(dx * dx + dy * dy, axis=1))]  # [M, n_blocks]
    while minima[-1].shape[1] > block * k:
        minima.append(_group_min(minima[-1], block))
    top = minima.pop()
    chosen = lax.top_k(-top, k)[1]
    while minima:
        level = minima.pop()
        idx, real = _children(chosen, block, level.shape[1])
        chosen = _pick(jnp.take_along_axis(level, idx, axis=1), idx, real, k)
    idx, real = _children(chosen, block, n)
    d = _distance(px[idx], py[idx], gx[:, None], gy[:, None])
    return _pick(d, idx, real, k)


def _level_topk_grid(px, py, rx, ry, gx, gy, k, shape, num_base, radius):
    """The k nearest priors of a level laid out as make_anchors does ((i * w + j) * A + a,
    centres on a regular lattice), searched in a (2r+1)^2 window of locations around
    the GT centre. px, py: the level's centres with ignored priors at +inf; rx, ry: the
    real centres (lattice geometry). Returns ([M, k] indices, [M] exact): exact iff the
    k-th nearest prior in the window is strictly nearer than every prior outside it,
    i.e. the window result equals the full search."""
    h, w = shape
    a = num_base
    x0, y0 = rx[0], ry[0]
    sx = rx[a] - x0 if w > 1 else jnp.float32(1.0)
    sy = ry[w * a] - y0 if h > 1 else jnp.float32(1.0)
    wx, wy = min(2 * radius + 1, w), min(2 * radius + 1, h)
    j0 = jnp.clip(jnp.round((gx - x0) / sx).astype(jnp.int32) - radius, 0, w - wx)  # [M]
    i0 = jnp.clip(jnp.round((gy - y0) / sy).astype(jnp.int32) - radius, 0, h - wy)
    cols = j0[:, None] + jnp.arange(wx)  # [M, wx]
    rows = i0[:, None] + jnp.arange(wy)
    loc = rows[:, :, None] * w + cols[:, None, :]  # [M, wy, wx]: increasing prior index
    idx = (loc[..., None] * a + jnp.arange(a)).reshape(gx.shape[0], -1)
    d = _distance(px[idx], py[idx], gx[:, None], gy[:, None])
    _, pick = lax.top_k(-d, k)
    kth = jnp.max(jnp.take_along_axis(d, pick, axis=1), axis=1)
    # Nearest possible distance of a prior outside the window (per side; none: inf),
    # less a margin for the lattice formula's rounding.
    inf = jnp.float32(jnp.inf)
    left = jnp.where(j0 > 0, gx - (x0 + (j0 - 1) * sx), inf)
    right = jnp.where(j0 + wx < w, x0 + (j0 + wx) * sx - gx, inf)
    top = jnp.where(i0 > 0, gy - (y0 + (i0 - 1) * sy), inf)
    bottom = jnp.where(i0 + wy < h, y0 + (i0 + wy) * sy - gy, inf)
    outside = jnp.minimum(jnp.minimum(left, right), jnp.minimum(top, bottom))
    exact = kth < outside - 1e-3 * jnp.maximum(sx, sy)
    return jnp.take_along_axis(idx, pick, axis=1), exact


def _grid_radius(k: int, num_base: int) -> int:
    """Window half-size (in locations) that holds the k nearest priors of a GT (the
    ceil(sqrt(ceil(k / A)))^2 locations around its centre) when the centre lies up to
    one stride beyond the lattice: with center_offset 0 the last centres sit up to a
    stride inside the image border, so GT centres there are common."""
    side = math.ceil(math.sqrt(math.ceil(k / num_base)))
    return side // 2 + 2


def _prepare(priors: Priors, gt: GroundTruth, ignore_iof_thr: float, chunk: int) -> dict:
    pb = common.as_f32(priors.boxes)
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    ignored = common.ignored_by_iof(pb, boxes, ignore_rows, ignore_iof_thr, chunk)
    # Centres as mmdetection computes them (from the boxes, in float32).
    cx = (pb[:, 0] + pb[:, 2]) / 2.0
    cy = (pb[:, 1] + pb[:, 3]) / 2.0
    return dict(
        boxes=boxes, match_rows=match_rows, ignored=ignored, cx=cx, cy=cy,
        gx=(boxes[:, 0] + boxes[:, 2]) / 2.0, gy=(boxes[:, 1] + boxes[:, 3]) / 2.0,
        # Ignored priors are infinitely far from every GT.
        far_x=jnp.where(ignored, jnp.inf, cx), far_y=jnp.where(ignored, jnp.inf, cy),
    )


def _candidates(priors: Priors, prep: dict, topk: int, search: str, block: int,
                grid_radius: int | None = None):
    """([M, K] candidate indices of all levels, exact scalar bool); search: 'dense',
    'blocks' or 'grid' (the lattice window, `priors.feature_shapes`)."""
    gx, gy = prep["gx"], prep["gy"]
    candidates, exact = [], jnp.bool_(True)
    for lvl, (start, size) in enumerate(zip(priors.level_starts, priors.level_sizes)):
        k = min(topk, size)
        lx = lax.slice_in_dim(prep["far_x"], start, start + size)
        ly = lax.slice_in_dim(prep["far_y"], start, start + size)
        if search == "dense" or size <= block * k:
            idx = _level_topk_dense(lx, ly, gx, gy, k)
        elif search == "grid":
            rx = lax.slice_in_dim(prep["cx"], start, start + size)
            ry = lax.slice_in_dim(prep["cy"], start, start + size)
            r = grid_radius if grid_radius is not None else _grid_radius(k, priors.num_base)
            idx, ok = _level_topk_grid(lx, ly, rx, ry, gx, gy, k, priors.feature_shapes[lvl],
                                       priors.num_base, r)
            exact = exact & jnp.all(ok | ~prep["match_rows"])
        else:
            idx = _level_topk_blocks(lx, ly, gx, gy, k, block)
        candidates.append(idx + start)
    return jnp.concatenate(candidates, axis=1), exact


def _select(pb: jnp.ndarray, prep: dict, cand: jnp.ndarray) -> Assignment:
    """Adaptive threshold, centre test and collisions on the candidates [M, K]."""
    n = pb.shape[0]
    boxes, match_rows, cx, cy = prep["boxes"], prep["match_rows"], prep["cx"], prep["cy"]
    m = boxes.shape[0]
    iou = box_ops.aligned_iou(pb[cand], boxes[:, None, :])  # [M, K]
    thr = jnp.mean(iou, axis=1) + jnp.std(iou, axis=1, ddof=1)
    ccx, ccy = cx[cand], cy[cand]
    inside = jnp.minimum(
        jnp.minimum(ccx - boxes[:, 0:1], ccy - boxes[:, 1:2]),
        jnp.minimum(boxes[:, 2:3] - ccx, boxes[:, 3:4] - ccy),
    )
    pos = (iou >= thr[:, None]) & (inside > INSIDE_EPS) & match_rows[:, None]

    # A prior positive for several GTs: highest IoU, then lowest GT index.
    flat = cand.reshape(-1)
    val = jnp.where(pos, iou, -jnp.inf).reshape(-1)
    best = jnp.full((n,), -jnp.inf, jnp.float32).at[flat].max(val)
    rows = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[:, None], cand.shape).reshape(-1)
    wins = pos.reshape(-1) & (val == best[flat])
    winner = jnp.full((n,), m, jnp.int32).at[flat].min(jnp.where(wins, rows, m))

    gt_index = jnp.where(winner < m, winner, common.unmatched(prep["ignored"]))
    return common.finish(gt_index, best)


def assign(
    priors: Priors,
    gt: GroundTruth,
    *,
    topk: int = 9,
    ignore_iof_thr: float = 0.5,
    method: str = "auto",
    block: int = 16,
    chunk: int = 8,
) -> Assignment:
    """ATSS assignment of one image.

    Args:
      priors: anchors of all levels (`priors.boxes` [N, 4], `level_sizes`); ATSS
        uses one square anchor of 8 * stride per location.
      gt: one image's GroundTruth, leaves [M, ...].
      topk: candidates per level and GT (paper: 9).
      ignore_iof_thr: IoF with an ignore region above which a prior is ignored;
        jaxdet default 0.5 handles crowd boxes, <= 0 disables (mmdetection's -1).
      method: 'auto' (the block search, exact, any priors; for a batch on an anchor
        lattice `assign_batch` is faster) or 'dense' (the reference).
      block: priors per block of the block search; levels of at most `block * topk`
        priors are searched densely.
      chunk: GT rows per loop step of the ignore-region fold (speed only).
    Returns:
      Assignment: gt_index [N] int32, quality [N] float32 (IoU with the matched GT).
    """
    search = "blocks" if lattice.check_method(method) == "auto" else "dense"
    pb = common.as_f32(priors.boxes)
    prep = _prepare(priors, gt, ignore_iof_thr, chunk)
    cand, _ = _candidates(priors, prep, topk, search, block)
    return _select(pb, prep, cand)


def assign_batch(
    priors: Priors,
    gt: GroundTruth,
    *,
    topk: int = 9,
    ignore_iof_thr: float = 0.5,
    method: str = "auto",
    block: int = 16,
    grid_radius: int | None = None,
    chunk: int = 8,
) -> Assignment:
    """ATSS for a batch, gt leaves [B, M, ...] -> Assignment [B, N]; the same results
    as `jax.vmap(assign)`.

    method 'auto': where the priors tile an anchor lattice (`lattice.is_tiling`) the
    candidates come from the lattice window search and the exact block search runs
    only if some GT of the batch needs it (one `lax.cond` on a batch-wide flag, so only
    one branch executes); elsewhere `jax.vmap` of the block search. 'dense': the
    reference. grid_radius: window half-size in locations (default: enough for
    `topk`, see `_grid_radius`); the other arguments as `assign`.
    """
    search = "blocks" if lattice.check_method(method) == "auto" else "dense"
    pb = common.as_f32(priors.boxes)
    prep = jax.vmap(lambda g: _prepare(priors, g, ignore_iof_thr, chunk))(gt)
    fallback = lambda: jax.vmap(lambda p: _candidates(priors, p, topk, search, block)[0])(prep)
    if search == "dense" or not lattice.is_tiling(priors):
        cand = fallback()
    else:
        cand, exact = jax.vmap(
            lambda p: _candidates(priors, p, topk, "grid", block, grid_radius)
        )(prep)
        cand = lax.cond(jnp.all(exact), lambda: cand, fallback)
    return jax.vmap(lambda p, c: _select(pb, p, c))(prep, cand)
