"""YOLO anchors by k-means of the train boxes' (w, h) with the 1 - IoU distance.

The IoU of two shapes is that of the boxes centred at the same point (as YOLOv2 /
darknet's `calc_anchors`). Boxes are read in input pixels: each image is resized as
the pipeline does (`data.min_size` / `data.max_size`, keeping the ratio). The k
centres are printed sorted by area, grouped per level (levels of `--per_level`
anchors, smallest first, i.e. the `anchor.base_sizes` of a config in stride order).

  python tools/yolo_anchors.py --config=configs/yolov3/yolov3_tiny_shapes.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shape_iou(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[n, 2] x [k, 2] (w, h) -> [n, k] IoU of boxes sharing a centre."""
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(
        wh[:, None, 1], centres[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centres[:, 0] * centres[:, 1])[None] - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_iou(wh: np.ndarray, k: int = 9, seed: int = 0, iters: int = 300) -> np.ndarray:
    """k (w, h) centres [k, 2] minimising sum(1 - IoU(box, nearest centre)), sorted by area.

    Lloyd iterations from k boxes drawn at random (seeded); a centre is the median of
    its boxes (robust, as darknet's and YOLOv5's variants); an empty cluster keeps its
    centre."""
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)].astype(np.float64)
    nearest = None
    for _ in range(iters):
        new = np.argmax(shape_iou(wh, centres), axis=1)
        if nearest is not None and np.array_equal(new, nearest):
            break
        nearest = new
        for j in range(k):
            if np.any(nearest == j):
                centres[j] = np.median(wh[nearest == j], axis=0)
    return centres[np.argsort(centres[:, 0] * centres[:, 1])]


def train_box_sizes(data, limit: int = 0) -> np.ndarray:
    """(w, h) [n, 2] of every train box, in input pixels after the pipeline's resize."""
    from jaxdet.data import pipeline

    source = pipeline._source(data, data.train_split, with_masks=False)
    n = len(source) if limit <= 0 else min(limit, len(source))
    out = []
    for i in range(n):
        rec = source[i]
        boxes = np.asarray(rec["boxes"], np.float64).reshape(-1, 4)
        if "height" in rec and "width" in rec:
            h, w = float(rec["height"]), float(rec["width"])
        else:  # shapes: square images of data.image_size
            h, w = (float(v) for v in data.image_size)
        scale = min(data.min_size / min(h, w), data.max_size / max(h, w))
        wh = (boxes[:, 2:] - boxes[:, :2]) * scale
        out.append(wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)])
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--per_level", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="first N train images (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("cfg", args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = mod.get_config().data
    from jaxdet.data import pipeline

    pipeline.prepare(data)
    wh = train_box_sizes(data, args.limit)
    centres = kmeans_iou(wh, args.k, args.seed)
    mean_iou = float(np.mean(np.max(shape_iou(wh, centres), axis=1)))
    rounded = [tuple(int(round(v)) for v in c) for c in centres]
    levels = tuple(tuple(rounded[i:i + args.per_level])
                   for i in range(0, len(rounded), args.per_level))
    print(f"{len(wh)} boxes, mean best IoU {mean_iou:.3f}")
    print(f"base_sizes={levels}")


if __name__ == "__main__":
    main()
