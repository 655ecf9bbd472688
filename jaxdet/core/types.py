"""Array containers shared by every package (see docs/DESIGN.md, "Conventions").

All are `flax.struct` dataclasses, i.e. pytrees: they pass through `jit`, `vmap`
and `tree_map`. Shapes are given per image; batched versions add a leading `B`.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

Array = Any  # jax.Array or np.ndarray


@flax.struct.dataclass
class GroundTruth:
    """Padded ground truth of one image (or a batch with a leading `B`).

    boxes:  [M, 4] float32 (x1, y1, x2, y2) in input pixels.
    labels: [M] int32 in [0, C).
    valid:  [M] bool, False = padding row (its values are meaningless).
    ignore: [M] bool, crowd / ignore region: never positive; priors covering it
            (IoF > ignore_iof_thr) are ignored.
    masks:  optional [M, Hm, Wm] uint8 instance masks.
    """

    boxes: Array
    labels: Array
    valid: Array
    ignore: Array
    masks: Array | None = None

    @property
    def positive_valid(self) -> Array:
        """[M] bool: rows that may be matched as positives (valid and not ignore)."""
        return jnp.logical_and(self.valid, jnp.logical_not(self.ignore))

    @property
    def ignore_valid(self) -> Array:
        """[M] bool: real ignore regions (valid and ignore)."""
        return jnp.logical_and(self.valid, self.ignore)


@flax.struct.dataclass
class Priors:
    """Anchors or points of all FPN levels, concatenated.

    boxes:   [N, 4] anchors (x1, y1, x2, y2); zero-size boxes at the point for
             point-based methods.
    centers: [N, 2] (x, y).
    strides: [N] float32 stride of the prior's level.
    levels:  [N] int32 level index (0 = first level, e.g. P3).
    level_sizes: static tuple, number of priors per level (sum = N).
    num_base: static int, priors per location (anchors per position).
    feature_shapes: static ((h, w), ...) of every level when the priors form a grid
             of `num_base` priors per location, row-major (make_anchors /
             make_points); None otherwise. Lets assigners search the lattice.
    """

    boxes: Array
    centers: Array
    strides: Array
    levels: Array
    level_sizes: tuple[int, ...] = flax.struct.field(pytree_node=False)
    num_base: int = flax.struct.field(pytree_node=False, default=1)
    feature_shapes: tuple[tuple[int, int], ...] | None = flax.struct.field(
        pytree_node=False, default=None
    )

    @classmethod
    def from_boxes(
        cls, boxes: Array, strides: tuple[int, ...], level_sizes: tuple[int, ...],
        num_base: int = 1,
    ) -> Priors:
        """Priors from boxes made elsewhere (e.g. anchors predicted per location).

        boxes [..., N, 4] (a leading batch axis is kept), concatenated level by level
        with `level_sizes[l]` boxes on level l of stride `strides[l]`. Centres are the
        boxes' centres; `feature_shapes` is None (no lattice search).
        """
        if len(strides) != len(level_sizes) or sum(level_sizes) != boxes.shape[-2]:
            raise ValueError(
                f"from_boxes: {boxes.shape[-2]} boxes, level_sizes {tuple(level_sizes)}, "
                f"strides {tuple(strides)}"
            )
        levels = jnp.concatenate(
            [jnp.full((n,), i, jnp.int32) for i, n in enumerate(level_sizes)]
        )
        stride_of = jnp.asarray(strides, jnp.float32)[levels]
        centers = (boxes[..., :2] + boxes[..., 2:]) / 2
        return cls(boxes=boxes, centers=centers, strides=stride_of, levels=levels,
                   level_sizes=tuple(int(n) for n in level_sizes), num_base=num_base)

    @property
    def num_priors(self) -> int:
        return int(sum(self.level_sizes))

    @property
    def level_starts(self) -> tuple[int, ...]:
        starts, s = [], 0
        for n in self.level_sizes:
            starts.append(s)
            s += n
        return tuple(starts)


@flax.struct.dataclass
class Assignment:
    """Result of an assigner for one image.

    gt_index: [N] int32: -1 background, -2 ignore, k >= 0 matched to GT row k.
      (mmdetection's AssignResult.gt_inds is `gt_index + 1` with ignore -1.)
    quality:  [N] float32 soft label / weight in [0, 1] (e.g. IoU with the
      matched GT); methods that do not produce one set it to 1 for positives.
    """

    gt_index: Array
    quality: Array | None = None

    @property
    def positive(self) -> Array:
        return self.gt_index >= 0

    @property
    def negative(self) -> Array:
        return self.gt_index == -1

    @property
    def ignored(self) -> Array:
        return self.gt_index == -2


@flax.struct.dataclass
class Detections:
    """Post-processed detections (per image [K, ...] or batched [B, K, ...]).

    boxes [K, 4], scores [K], classes [K] int32, valid [K] bool;
    optional box_std [K, 4] (uncertainty methods) and masks [K, Hm, Wm].
    """

    boxes: Array
    scores: Array
    classes: Array
    valid: Array
    box_std: Array | None = None
    masks: Array | None = None


def ground_truth_from_batch(batch: dict) -> GroundTruth:
    """Builds a batched GroundTruth from the data pipeline's batch dict."""
    return GroundTruth(
        boxes=jnp.asarray(batch["boxes"], jnp.float32),
        labels=jnp.asarray(batch["labels"], jnp.int32),
        valid=jnp.asarray(batch["valid"], bool),
        ignore=jnp.asarray(batch["ignore"], bool),
        masks=batch.get("masks"),
    )


def stop_gradient(tree: Any) -> Any:
    """`jax.lax.stop_gradient` over a pytree (for prediction-aware assigners)."""
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)
