"""Targets every dense detector derives from an `Assignment` (per image or batched).

All functions broadcast over leading batch dims: `assign.gt_index` [..., N] with
GT leaves [..., M, ...]. They never index with -1/-2: indices are clipped and
the values at non-positives are zeros (finite), so losses can be masked by
multiplication without NaNs.

    a = atss.assign(priors, gt)
    boxes, labels = targets.gather_gt(a, gt)                  # [N, 4], [N]
    cls_t = targets.classification_targets(a, gt.labels, C)   # [N, C]
    w = targets.sample_weights(a)                             # cls_weight, pos_mask
    num_pos = targets.num_positives(a)                        # sum over the batch
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdet.core.types import Assignment, GroundTruth

Array = jnp.ndarray


def _gather_rows(values: Array, gt_index: Array) -> Array:
    """values [..., M, ...] gathered at gt_index [..., N] (clipped) -> [..., N, ...]."""
    m = values.shape[gt_index.ndim - 1]
    idx = jnp.clip(gt_index, 0, m - 1)
    idx = idx.reshape(idx.shape + (1,) * (values.ndim - gt_index.ndim))
    return jnp.take_along_axis(values, idx, axis=gt_index.ndim - 1)


def gather_gt(assign: Assignment, gt: GroundTruth) -> tuple[Array, Array]:
    """Matched GT box [..., N, 4] float32 and label [..., N] int32 of every prior.

    Zeros where the prior is not positive.
    """
    pos = assign.gt_index >= 0
    boxes = _gather_rows(jnp.asarray(gt.boxes, jnp.float32), assign.gt_index)
    labels = _gather_rows(jnp.asarray(gt.labels, jnp.int32), assign.gt_index)
    return jnp.where(pos[..., None], boxes, 0.0), jnp.where(pos, labels, 0)


def classification_targets(
    assign: Assignment,
    gt_labels: Array,
    num_classes: int,
    soft: bool = False,
) -> Array:
    """One-hot targets [..., N, C] float32 of the matched labels; zeros for background
    and ignored priors (mask those with `sample_weights`).

    `soft=True` scales the one-hot by `assign.quality` (IoU-aware targets, e.g.
    VarifocalNet / quality focal loss).
    """
    pos = assign.gt_index >= 0
    labels = _gather_rows(jnp.asarray(gt_labels, jnp.int32), assign.gt_index)
    onehot = (labels[..., None] == jnp.arange(num_classes)) & pos[..., None]
    onehot = onehot.astype(jnp.float32)
    if soft:
        if assign.quality is None:
            raise ValueError("soft targets need assign.quality")
        onehot = onehot * jnp.asarray(assign.quality, jnp.float32)[..., None]
    return onehot


def sample_weights(assign: Assignment) -> dict[str, Array]:
    """`cls_weight` [..., N] float32: 0 for ignored priors, 1 otherwise;
    `pos_mask` [..., N] bool: positives (box / quality losses)."""
    return {
        "cls_weight": (assign.gt_index != -2).astype(jnp.float32),
        "pos_mask": assign.gt_index >= 0,
    }


def num_positives(assign: Assignment) -> Array:
    """Number of positive priors, summed over all dims (float32 scalar).

    For normalising a batch loss (take max(., 1) or add the batch size, as the
    detector's reference does).
    """
    return jnp.sum(assign.gt_index >= 0, dtype=jnp.float32)
