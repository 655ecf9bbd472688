"""Prior generators: anchors (mmdetection `AnchorGenerator`) and points.

Order of the concatenated priors (docs/DESIGN.md, "Conventions"): level (P3..P7), then row-major
(y, x), then anchor index. All functions run in NumPy at trace time: priors
depend only on static shapes and are built once per input shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxdet.core.types import Priors


def feature_shapes(image_hw: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map (h, w) of each level for a padded input of size `image_hw`.

    Matches stride-2 'SAME' convolutions: ceil(H / stride).
    """
    h, w = image_hw
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


def base_anchors(
    base_size: float,
    scales: Sequence[float],
    ratios: Sequence[float],
    center_offset: float = 0.0,
) -> np.ndarray:
    """Anchors of one location, [len(ratios) * len(scales), 4], ratio-major.

    Same as mmdetection's `gen_single_level_base_anchors` with scale_major=True:
    ratio r = h / w, h_ratio = sqrt(r), w_ratio = 1 / h_ratio.
    """
    scales = np.asarray(scales, np.float64)
    ratios = np.asarray(ratios, np.float64)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    cx = center_offset * base_size
    cy = center_offset * base_size
    return np.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], axis=-1)


def _grid(shape: tuple[int, int], stride: float | tuple[float, float], offset: float
          ) -> np.ndarray:
    h, w = shape
    sy, sx = stride if isinstance(stride, tuple) else (stride, stride)
    xs = (np.arange(w, dtype=np.float64) + offset) * sx
    ys = (np.arange(h, dtype=np.float64) + offset) * sy
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.reshape(-1), yy.reshape(-1)], axis=-1)  # [h*w, 2] (x, y)


def _anchor_priors(level_boxes: list, strides, num_base: int, feature_shapes) -> Priors:
    """`Priors` of per-level anchor boxes [K_l * A, 4] (location-major), as NumPy."""
    boxes = np.concatenate(level_boxes).astype(np.float32)
    sizes = [int(b.shape[0]) for b in level_boxes]
    ctr = np.stack([(boxes[:, 0] + boxes[:, 2]) * 0.5, (boxes[:, 1] + boxes[:, 3]) * 0.5], -1)
    return Priors(
        boxes=boxes,
        centers=ctr.astype(np.float32),
        strides=np.concatenate([np.full((n,), s, np.float32) for n, s in zip(sizes, strides)]),
        levels=np.concatenate([np.full((n,), lvl, np.int32) for lvl, n in enumerate(sizes)]),
        level_sizes=tuple(sizes),
        num_base=num_base,
        feature_shapes=tuple((int(h), int(w)) for h, w in feature_shapes),
    )


def make_anchors(
    feature_shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    *,
    octave_base_scale: float = 4.0,
    scales_per_octave: int = 3,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    base_sizes: Sequence[float] | None = None,
    center_offset: float = 0.0,
    round_base: bool = False,
    grid_steps: Sequence[tuple[int, int]] | None = None,
) -> Priors:
    """Anchors of all levels, identical to mmdetection's `AnchorGenerator`.

    Args:
      feature_shapes: (h, w) per level.
      strides: stride per level (also the base size unless `base_sizes`).
      octave_base_scale, scales_per_octave: scales = octave_base_scale *
        2 ** (i / scales_per_octave), i < scales_per_octave (RetinaNet: 4, 3;
        ATSS: 8, 1).
      ratios: h / w aspect ratios (RetinaNet: 0.5, 1, 2).
      center_offset: 0 as in mmdetection's RetinaNet/ATSS configs.
      round_base: round the corners of each level's base anchors to integers (half to
        even), as torchvision's `AnchorGenerator` (with center_offset 0).
      grid_steps: per level the (y, x) distance between anchor centres (default: the
        level's stride). torchvision uses (padded H // h_l, padded W // w_l), which is
        not the stride when a level's size was rounded up (e.g. P6 of an 800 px input:
        13 rows, 800 // 13 = 61 px apart).
    Returns:
      Priors with N = sum_l h_l * w_l * A anchors, A = len(ratios) * scales_per_octave.
    """
    if len(feature_shapes) != len(strides):
        raise ValueError(f"{len(feature_shapes)} feature shapes but {len(strides)} strides")
    scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
    base_sizes = strides if base_sizes is None else base_sizes
    all_boxes = []
    num_base = len(ratios) * len(scales)
    steps = strides if grid_steps is None else [tuple(s) for s in grid_steps]
    for lvl, (shape, base) in enumerate(zip(feature_shapes, base_sizes)):
        base_a = base_anchors(base, scales, ratios, center_offset)  # [A, 4]
        if round_base:
            base_a = np.round(base_a)
        shifts = _grid(shape, steps[lvl], 0.0)  # [K, 2]
        shifts4 = np.concatenate([shifts, shifts], axis=-1)  # [K, 4]
        boxes = (shifts4[:, None, :] + base_a[None, :, :]).reshape(-1, 4)
        all_boxes.append(boxes)
    return _anchor_priors(all_boxes, strides, num_base, feature_shapes)


def make_points(
    feature_shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    offset: float = 0.5,
) -> Priors:
    """Points at ((x + offset) * stride, (y + offset) * stride) of every level.

    `boxes` are zero-size boxes at the points. FCOS/FSAF use offset 0.5.
    """
    if len(feature_shapes) != len(strides):
        raise ValueError(f"{len(feature_shapes)} feature shapes but {len(strides)} strides")
    pts, st, lv, sizes = [], [], [], []
    for lvl, (shape, stride) in enumerate(zip(feature_shapes, strides)):
        p = _grid(shape, stride, offset)
        pts.append(p)
        st.append(np.full((p.shape[0],), stride, np.float32))
        lv.append(np.full((p.shape[0],), lvl, np.int32))
        sizes.append(int(p.shape[0]))
    points = np.concatenate(pts).astype(np.float32)
    return Priors(
        boxes=np.concatenate([points, points], axis=-1),
        centers=points,
        strides=np.concatenate(st),
        levels=np.concatenate(lv),
        level_sizes=tuple(sizes),
        num_base=1,
        feature_shapes=tuple((int(h), int(w)) for h, w in feature_shapes),
    )


def make_yolo_anchors(
    feature_shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    base_sizes: Sequence[Sequence[tuple[float, float]]],
) -> Priors:
    """YOLO anchors, identical to mmdetection's `YOLOAnchorGenerator` (one level at a time).

    Level l has the anchors `base_sizes[l]` ((w, h) pairs, in pixels) centred at every
    cell centre ((x + 0.5) * stride, (y + 0.5) * stride). mmdetection lists the levels
    from stride 32 down to 8; here they follow `strides` (ascending in the configs).
    """
    if not len(feature_shapes) == len(strides) == len(base_sizes):
        raise ValueError(f"{len(feature_shapes)} feature shapes, {len(strides)} strides, "
                         f"{len(base_sizes)} base-size levels")
    num_base = {len(b) for b in base_sizes}
    if len(num_base) != 1:
        raise ValueError(f"every level needs the same number of anchors: {base_sizes}")
    all_boxes = []
    for shape, stride, wh in zip(feature_shapes, strides, base_sizes):
        half = np.asarray(wh, np.float64) * 0.5  # [A, 2]
        ctr = _grid(shape, stride, 0.5)  # [K, 2]
        boxes = np.concatenate([ctr[:, None] - half[None], ctr[:, None] + half[None]], -1)
        boxes = boxes.reshape(-1, 4)
        all_boxes.append(boxes)
    return _anchor_priors(all_boxes, strides, num_base.pop(), feature_shapes)
