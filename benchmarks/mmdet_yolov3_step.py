"""The reference figure of train_step_bench's YOLOv3 setting: mmdetection 3.x's YOLOv3
Darknet-53 train step.

    python benchmarks/mmdet_yolov3_step.py [--steps 5] [--threads 2] [--size 416]

Runs with a Python that has torch, mmengine, mmcv-lite and mmdetection 3.3 (see
`record_mmdet_yolov3.py` for the install; `mmcv.ops` is stubbed, YOLOv3 does not call
it); `train_step_bench.py --detectors yolov3 --torch-python PYTHON` runs it after its
own setting and prints the ratios. Setting: `YOLOV3` of yolov3_d53_8xb8 (Darknet-53
with random weights and train-mode BN, YOLOV3Neck, YOLOV3Head, 80 classes, GridAssigner,
the config's losses), 2 images of size x size with the random boxes of
train_step_bench's `random_batch` (same seed and formulas), SGD momentum 0.9. Prints the
median step time (forward + backward + update) `step_s=...` and the process's peak
resident memory `peak_rss_mb=...`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from record_mmdet_yolov3 import stub_mmcv_ops  # noqa: E402
from torchvision_rcnn_step import peak_rss_mb  # noqa: E402

MODEL = dict(
    type="YOLOV3",
    backbone=dict(type="Darknet", depth=53, out_indices=(3, 4, 5)),
    neck=dict(type="YOLOV3Neck", num_scales=3, in_channels=[1024, 512, 256],
              out_channels=[512, 256, 128]),
    bbox_head=dict(
        type="YOLOV3Head", num_classes=80, in_channels=[512, 256, 128],
        out_channels=[1024, 512, 256],
        anchor_generator=dict(type="YOLOAnchorGenerator",
                              base_sizes=[[(116, 90), (156, 198), (373, 326)],
                                          [(30, 61), (62, 45), (59, 119)],
                                          [(10, 13), (16, 30), (33, 23)]],
                              strides=[32, 16, 8]),
        bbox_coder=dict(type="YOLOBBoxCoder"), featmap_strides=[32, 16, 8],
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0,
                      reduction="sum"),
        loss_conf=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0,
                       reduction="sum"),
        loss_xy=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=2.0,
                     reduction="sum"),
        loss_wh=dict(type="MSELoss", loss_weight=2.0, reduction="sum")),
    train_cfg=dict(assigner=dict(type="GridAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5,
                                 min_pos_iou=0)),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, conf_thr=0.005,
                  nms=dict(type="nms", iou_threshold=0.45), max_per_img=100))


def random_boxes(batch: int, size: int, max_boxes: int = 100, seed: int = 0):
    """The boxes and labels of train_step_bench.random_batch (same draws)."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, max_boxes + 1, size=batch)
    xy = rng.uniform(0, 0.7, size=(batch, max_boxes, 2)) * [size, size]
    wh = rng.uniform(0.08, 0.3, size=(batch, max_boxes, 2)) * [size, size]
    boxes = np.concatenate([xy, np.minimum(xy + wh, [size, size])], -1).astype(np.float32)
    rng.normal(size=(batch, size, size, 3))  # the images' draw
    labels = rng.integers(0, 80, size=(batch, max_boxes))
    return [(boxes[b, : n[b]], labels[b, : n[b]]) for b in range(batch)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--size", type=int, default=416)
    args = ap.parse_args()
    stub_mmcv_ops()
    import torch
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData

    if args.threads:
        torch.set_num_threads(args.threads)
    register_all_modules()
    model = MODELS.build(MODEL)
    model.train()
    s = args.size
    images = torch.randn(2, 3, s, s)
    samples = []
    for boxes, labels in random_boxes(2, s):
        d = DetDataSample(metainfo=dict(img_shape=(s, s), pad_shape=(s, s),
                                        batch_input_shape=(s, s)))
        d.gt_instances = InstanceData(bboxes=torch.tensor(boxes), labels=torch.tensor(labels))
        samples.append(d)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    times = []
    for i in range(args.steps + 1):
        t = time.perf_counter()
        losses = model.loss(images, samples)
        loss = sum(v if torch.is_tensor(v) else sum(v) for v in losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    print(f"mmdet {__import__('mmdet').__version__} torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"step_s={statistics.median(times):.4f}")
    print(f"peak_rss_mb={peak_rss_mb():.0f}")


if __name__ == "__main__":
    main()
