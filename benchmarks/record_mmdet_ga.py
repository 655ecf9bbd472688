"""Records mmdetection 3.x's Guided Anchoring target pieces on random cases as an .npz.

For `tests/assign/test_ga_mmdet.py` (which needs no torch), on a 128 x 160 input with
strides 8 / 16 / 32: `ApproxMaxIoUAssigner` (0.5 / 0.4 / min_pos 0.4, approximate
anchors 4 x 2^(i/3) x stride with ratios 0.5 / 1 / 2, squares 4 x stride) of six random
GT sets, `GuidedAnchorHead.ga_loc_targets` of the same six images (centre 0.2, ignore
0.5), and `bounded_iou_loss` (beta 0.2, eps 1e-3, unreduced) on random box pairs.
Runs in the torch venv of benchmarks/record_mmdet_yolov3.py (its `mmcv.ops` stub):

  /work/torchvenv/bin/python benchmarks/record_mmdet_ga.py --out tests/fixtures/mmdet_ga
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.record_mmdet_yolov3 import stub_mmcv_ops  # noqa: E402

IMAGE_HW = (128, 160)
STRIDES = [8, 16, 32]


def random_boxes(rng: np.random.Generator, m: int) -> np.ndarray:
    """m boxes [m, 4] float32 inside the image, sides 4-110 px (clipped at the border)."""
    h, w = IMAGE_HW
    xy = rng.uniform(0, 1, (m, 2)) * np.array([w, h])
    wh = rng.uniform(4, 110, (m, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)


def record(out_dir: str, seed: int = 0) -> None:
    stub_mmcv_ops()
    import torch
    from mmdet.models.dense_heads.guided_anchor_head import GuidedAnchorHead
    from mmdet.models.losses.iou_loss import bounded_iou_loss
    from mmdet.models.task_modules.assigners import ApproxMaxIoUAssigner
    from mmdet.models.task_modules.prior_generators import AnchorGenerator
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    out = {}
    shapes = [(-(-IMAGE_HW[0] // s), -(-IMAGE_HW[1] // s)) for s in STRIDES]
    approx_gen = AnchorGenerator(strides=STRIDES, ratios=[0.5, 1.0, 2.0], octave_base_scale=4,
                                 scales_per_octave=3)
    square_gen = AnchorGenerator(strides=STRIDES, ratios=[1.0], scales=[4])
    approxs = torch.cat(approx_gen.grid_priors(shapes, device="cpu"))
    squares = torch.cat(square_gen.grid_priors(shapes, device="cpu"))
    assigner = ApproxMaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.4,
                                    ignore_iof_thr=-1)
    gts = []
    for k in range(6):
        boxes = random_boxes(rng, int(rng.integers(1, 9)))
        gts.append(boxes)
        result = assigner.assign(
            InstanceData(priors=squares, approxs=approxs.view(-1, 9, 4)),
            InstanceData(bboxes=torch.tensor(boxes),
                         labels=torch.zeros(len(boxes), dtype=torch.long)))
        out[f"gt{k}"], out[f"gt_inds{k}"] = boxes, result.gt_inds.numpy()
    # ga_loc_targets reads only these attributes of the head.
    head = SimpleNamespace(
        approx_anchor_generator=SimpleNamespace(octave_base_scale=4,
                                                strides=[(s, s) for s in STRIDES]),
        train_cfg=dict(center_ratio=0.2, ignore_ratio=0.5))
    targets, weights, avg = GuidedAnchorHead.ga_loc_targets(
        head, [InstanceData(bboxes=torch.tensor(b)) for b in gts], shapes)
    for lvl, (t, w) in enumerate(zip(targets, weights)):
        out[f"loc_targets{lvl}"], out[f"loc_weights{lvl}"] = t.numpy()[:, 0], w.numpy()[:, 0]
    out["loc_avg_factor"] = np.float32(avg)
    pred, target = random_boxes(rng, 64), random_boxes(rng, 64)
    out["biou_pred"], out["biou_target"] = pred, target
    out["biou"] = bounded_iou_loss(torch.tensor(pred), torch.tensor(target), beta=0.2,
                                   eps=1e-3, reduction="none").numpy()
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, "ga.npz"), **out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/mmdet_ga")
    record(ap.parse_args().out)
