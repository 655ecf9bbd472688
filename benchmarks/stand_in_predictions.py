"""Stand-in predictions for `assign_bench.py`'s prediction-aware assigners (MAL, noisy
anchors, HAMBox): NumPy constants computed outside the timed function, as the network's
outputs are inputs of the assigners in training."""

from __future__ import annotations

import numpy as np


def stand_in_boxes(boxes):
    """Predicted boxes for the prediction-aware assigners: each prior grown 1.2x."""
    boxes = np.asarray(boxes, np.float32)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.6)
    return np.concatenate([c - half, c + half], -1)


def jittered_boxes(boxes, grow=1.0, jitter=0.2):
    """Predicted boxes nearer to training's: each prior grown by `grow`, its width and
    height scaled by exp(U(-jitter, jitter)) and its centre moved by U(-jitter, jitter)
    of its size (seeded)."""
    boxes = np.asarray(boxes, np.float32)
    rng = np.random.default_rng(7)
    scale = np.exp(rng.uniform(-jitter, jitter, (len(boxes), 2)))
    wh = (boxes[:, 2:] - boxes[:, :2]) * grow * scale
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    c = c + rng.uniform(-jitter, jitter, (len(boxes), 2)) * (boxes[:, 2:] - boxes[:, :2])
    return np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)


def stand_in_scores(n, num_classes):
    x = np.sin(np.arange(n * num_classes, dtype=np.float32)).reshape(n, num_classes)
    return (1 / (1 + np.exp(-x))).astype(np.float32)
