"""Pieces shared by the assigners: GT clean-up, the GT fold, ignore regions.

The fold (`fold_gts`) is how the assigners touch all N priors x M GT pairs
without building an [M, N] matrix: a `lax.while_loop` walks the GT rows that
are actually present (valid rows, compacted in their original order), a few at
a time, and each step updates [N] accumulators with element-wise ops. On CPU
this is several times faster than XLA's column reductions over an [M, N]
array, and its cost follows the number of real GTs in the batch rather than
`max_boxes`.

Conventions (docs/DESIGN.md, "Conventions"): padding rows (valid=False) never take part;
ignore rows (valid & ignore, e.g. COCO crowd) are never matched, and priors they
cover become `-2` (ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Assignment, GroundTruth

Array = jnp.ndarray
BACKGROUND = -1
IGNORE = -2
# GT rows per loop step of the per-level folds (max-IoU, HAMBox, P{a in A+} on a
# lattice): few GTs reach a level, so small steps waste least; speed only.
LEVEL_CHUNK = 2


def split_gt(gt: GroundTruth) -> tuple[Array, Array, Array]:
    """Returns (boxes [M, 4] with padding rows zeroed, match rows [M], ignore rows [M]).

    Zeroing the padding keeps NaN or garbage in padding rows out of every sum.
    """
    valid = jnp.asarray(gt.valid, bool)
    ignore = jnp.asarray(gt.ignore, bool)
    boxes = jnp.where(valid[:, None], jnp.asarray(gt.boxes, jnp.float32), 0.0)
    return boxes, valid & ~ignore, valid & ignore


def compact(mask: Array) -> tuple[Array, Array]:
    """Indices of the True entries of `mask` [M], in order, padded with 0; and their count."""
    (idx,) = jnp.nonzero(mask, size=mask.shape[0], fill_value=0)
    return idx.astype(jnp.int32), jnp.sum(mask, dtype=jnp.int32)


def fold_gt_chunks(
    body: Callable[[Any, Array, Array, Array], Any],
    init: Any,
    boxes: Array,
    mask: Array,
    chunk: int = 8,
) -> Any:
    """Folds `carry = body(carry, rows, ids, live)` over the GT rows where `mask` [M] is True,
    `chunk` rows at a time.

    `ids` [chunk] int32 are the row indices, in increasing order across the whole
    fold (so later rows can overwrite earlier ones, as in mmdetection's per-GT
    loops); `rows` = `boxes[ids]` [chunk, 4]; `live` [chunk] bool is False for the
    filler entries after the last row, which `body` must not let change `carry`.
    The loop stops after the last chunk holding a row.
    """
    idx, count = compact(mask)
    m = idx.shape[0]
    chunk = max(min(chunk, m), 1)
    n_chunks = max(-(-m // chunk), 1)
    idx = jnp.pad(idx, (0, n_chunks * chunk - m))
    rows = boxes[idx]

    def cond(state):
        return state[0] * chunk < count

    def step(state):
        i, carry = state
        ids = lax.dynamic_slice_in_dim(idx, i * chunk, chunk)
        chunk_rows = lax.dynamic_slice_in_dim(rows, i * chunk, chunk)
        live = i * chunk + jnp.arange(chunk) < count
        return i + 1, body(carry, chunk_rows, ids, live)

    return lax.while_loop(cond, step, (jnp.int32(0), init))[1]


def fold_gts(
    body: Callable[[Any, Array, Array, Array], Any],
    init: Any,
    boxes: Array,
    mask: Array,
    chunk: int = 8,
) -> Any:
    """`fold_gt_chunks` one row at a time: `carry = body(carry, box [4], k, live)`."""

    def chunk_body(carry, rows, ids, live):
        for j in range(rows.shape[0]):
            carry = body(carry, rows[j], ids[j], live[j])
        return carry

    return fold_gt_chunks(chunk_body, init, boxes, mask, chunk)


def columns(boxes: Array) -> tuple[Array, Array, Array, Array]:
    """[N, 4] -> (x1, y1, x2, y2), each [N]: the loop bodies run fastest on separate columns."""
    boxes = as_f32(boxes)
    return boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]


def iou_with_box(cols: tuple[Array, ...], area: Array, box: Array, mode: str = "iou") -> Array:
    """Overlap of N priors (columns, areas [N]) with boxes [..., 4] -> [..., N].

    The formula and rounding of `boxes.aligned_iou` / mmdetection's `bbox_overlaps`,
    on columns instead of an [N, 4] array (several times faster inside the fold).
    """
    x1, y1, x2, y2 = cols
    bx1, by1, bx2, by2 = (box[..., i, None] for i in range(4))
    w = jnp.maximum(jnp.minimum(x2, bx2) - jnp.maximum(x1, bx1), 0.0)
    h = jnp.maximum(jnp.minimum(y2, by2) - jnp.maximum(y1, by1), 0.0)
    inter = w * h
    if mode == "iof":
        return inter / jnp.maximum(area, box_ops.EPS)
    union = area + box_ops.areas(box)[..., None] - inter
    return inter / jnp.maximum(union, box_ops.EPS)


def ignored_by_iof(
    prior_boxes: Array, boxes: Array, ignore_rows: Array, iof_thr: float, chunk: int = 8
) -> Array:
    """[N] bool: anchors whose IoF (intersection over the anchor's area) with some
    ignore box exceeds `iof_thr`, as mmdetection's `ignore_iof_thr`.

    `iof_thr <= 0` disables it (mmdetection's "-1 = off"); then nothing is computed.
    """
    n = prior_boxes.shape[0]
    if iof_thr <= 0:
        return jnp.zeros((n,), bool)
    cols = columns(prior_boxes)
    area = box_ops.areas(as_f32(prior_boxes))

    def body(acc, box, k, live):
        return acc | (live & (iou_with_box(cols, area, box, "iof") > iof_thr))

    return fold_gts(body, jnp.zeros((n,), bool), boxes, ignore_rows, chunk)


def ignored_by_point(points: Array, boxes: Array, ignore_rows: Array, chunk: int = 8) -> Array:
    """[N] bool: points [N, 2] strictly inside some ignore box (for point priors)."""
    px, py = as_f32(points[:, 0]), as_f32(points[:, 1])

    def body(acc, box, k, live):
        inside = jnp.minimum(
            jnp.minimum(px - box[0], py - box[1]), jnp.minimum(box[2] - px, box[3] - py)
        )
        return acc | (live & (inside > 0))

    return fold_gts(body, jnp.zeros(px.shape, bool), boxes, ignore_rows, chunk)


def max_nonneg(x: Array, axis: int = -1) -> Array:
    """`jnp.max(x, axis)` of float32 values >= 0 (IoUs), computed on their int32 bit
    patterns, which order as the floats do for non-negative values: XLA:CPU vectorises
    an integer max-reduction, not a float one (NaN propagation), faster inside the
    folds. Equal to the float max (a NaN of positive sign still wins)."""
    bits = lax.bitcast_convert_type(as_f32(x), jnp.int32)
    return lax.bitcast_convert_type(jnp.max(bits, axis=axis), jnp.float32)


def unmatched(ignored: Array) -> Array:
    """gt_index of priors that no GT claims: -2 where ignored, -1 elsewhere."""
    return jnp.where(ignored, IGNORE, BACKGROUND).astype(jnp.int32)


def finish(gt_index: Array, quality: Array) -> Assignment:
    """Assignment with the dtypes of the contract and quality 0 off the positives."""
    gt_index = gt_index.astype(jnp.int32)
    quality = jnp.where(gt_index >= 0, quality, 0.0).astype(jnp.float32)
    return Assignment(gt_index=gt_index, quality=quality)


def as_f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)
