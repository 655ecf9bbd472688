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

Speed (`method='blocks'`): the [M, N] distance matrix is never built. Each
level's priors are cut into contiguous blocks of `block` priors; for each GT
the blocks are ranked by their nearest prior, the `k` best blocks are kept and
the exact top-k is taken among their priors. This is exact: the k nearest
priors lie in at most k blocks and each of those blocks has a minimum no
farther than the k-th nearest prior, so the k blocks with the smallest minima
(ties: lower block index, which is lower prior index) contain them all. IoUs are
computed for the [M, k * levels] candidates only. `method='dense'` is the
plain version (full distances, one top-k per level), kept for tests.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxdet.assign import common
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


def assign(
    priors: Priors,
    gt: GroundTruth,
    *,
    topk: int = 9,
    ignore_iof_thr: float = 0.5,
    method: str = "blocks",
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
      method: 'blocks' (fast, exact) or 'dense' (reference).
      block: priors per block for 'blocks'; levels of at most `block * topk`
        priors are searched densely.
      chunk: GT rows per loop step of the ignore-region fold (speed only).
    Returns:
      Assignment: gt_index [N] int32, quality [N] float32 (IoU with the matched GT).
    """
    if method not in ("blocks", "dense"):
        raise ValueError(f"unknown method {method!r}; expected 'blocks' or 'dense'")
    pb = common.as_f32(priors.boxes)
    n = pb.shape[0]
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    m = boxes.shape[0]
    ignored = common.ignored_by_iof(pb, boxes, ignore_rows, ignore_iof_thr, chunk)

    # Centres as mmdetection computes them (from the boxes, in float32).
    cx = (pb[:, 0] + pb[:, 2]) / 2.0
    cy = (pb[:, 1] + pb[:, 3]) / 2.0
    gx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    gy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    # Ignored priors are infinitely far from every GT.
    far_x = jnp.where(ignored, jnp.inf, cx)
    far_y = jnp.where(ignored, jnp.inf, cy)

    candidates = []
    for start, size in zip(priors.level_starts, priors.level_sizes):
        k = min(topk, size)
        lx = lax.slice_in_dim(far_x, start, start + size)
        ly = lax.slice_in_dim(far_y, start, start + size)
        if method == "dense" or size <= block * k:
            idx = _level_topk_dense(lx, ly, gx, gy, k)
        else:
            idx = _level_topk_blocks(lx, ly, gx, gy, k, block)
        candidates.append(idx + start)
    cand = jnp.concatenate(candidates, axis=1)  # [M, K]

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

    gt_index = jnp.where(winner < m, winner, common.unmatched(ignored))
    return common.finish(gt_index, best)
