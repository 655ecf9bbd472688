"""NumPy greedy NMS: the classical reference (Detectron `py_cpu_nms`) for tests."""

from __future__ import annotations

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """IoU of box [4] with boxes [M, 4], float32, union clamped to eps (as jaxdet.core.boxes)."""
    box = box.astype(np.float32)
    boxes = boxes.astype(np.float32)
    w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = w * h
    area = np.maximum(box[2] - box[0], 0) * np.maximum(box[3] - box[1], 0)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    return inter / np.maximum(area + areas - inter, np.float32(eps))


def greedy_nms(boxes, scores, iou_threshold, valid=None, classes=None) -> np.ndarray:
    """Kept indices in visit order: by score descending, ties by lower index.

    A box is dropped when its IoU with an already kept box (of the same class,
    when `classes` is given) is > iou_threshold. Invalid boxes are skipped.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores)
    n = len(scores)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    order = np.argsort(-scores, kind="stable")
    order = order[valid[order]]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        drop = iou_one_to_many(boxes[i], boxes[rest]) > iou_threshold
        if classes is not None:
            drop &= np.asarray(classes)[rest] == np.asarray(classes)[i]
        order = rest[~drop]
    return np.asarray(keep, np.int64)


def per_class_nms(boxes, scores, classes, iou_threshold, valid=None) -> np.ndarray:
    """Greedy NMS run separately per class, merged by score (ties: lower index)."""
    n = len(scores)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    kept = []
    for c in np.unique(np.asarray(classes)):
        idx = np.nonzero((np.asarray(classes) == c) & valid)[0]
        kept.extend(idx[greedy_nms(np.asarray(boxes)[idx], np.asarray(scores)[idx], iou_threshold)])
    kept = np.asarray(kept, np.int64)
    return kept[np.lexsort((kept, -np.asarray(scores)[kept]))]


def clustered_boxes(rng: np.random.Generator, n: int, num_objects: int = 20, size: float = 400):
    """Detector-like boxes: jittered copies around `num_objects` objects (many overlaps)."""
    obj = rng.uniform(0, size, (num_objects, 2))
    wh = rng.uniform(10, size / 3, (num_objects, 2))
    j = rng.integers(0, num_objects, n)
    ctr = obj[j] + rng.normal(0, 0.1, (n, 2)) * wh[j]
    s = wh[j] * rng.uniform(0.7, 1.3, (n, 2))
    return np.concatenate([ctr - s / 2, ctr + s / 2], axis=1).astype(np.float32), j
