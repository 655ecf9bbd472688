"""Records mmdetection 3.x's RepPoints loss on random cases as .npz fixtures.

For `tests/detectors/test_reppoints_mmdet.py` (which needs no torch): per case, random
head outputs (classification maps, init and refined point offsets, the moment
transform's 2-vector), the GT of 2 images (the second of case 0 has none), and what
`RepPointsHead.loss_by_feat` makes of them with the reppoints-moment training config
(init PointAssigner(scale 4, pos_num 1); refine MaxIoUAssigner(0.5, 0.4, min_pos_iou 0);
focal 0.25 / 2; SmoothL1 beta 0.11, weights 0.5 init / 1.0 refine; point_base_scale 4):
  - the three loss values per level (`loss_cls`, `loss_pts_init`, `loss_pts_refine`);
  - each assigner's `gt_inds` per image and the refine stage's proposals (the
    pseudo-boxes of the detached init points, in pixels);
  - the gradients of the summed loss with respect to every input.
Cases: strides 8, 16, 32; the three pseudo-box transforms; and the box representation
(`use_grid_points=True`, min-max, init MaxIoUAssigner(0.5, 0.4, min_pos_iou 0) on the
base squares: mmdetection's reppoints-bbox grid config), whose point sets are made by
the head's `gen_grid_from_reg` from random box deltas (recorded too: the deltas, the
grids and boxes it returns).

Runs in a separate venv with torch (CPU) and mmdetection 3.3.0 (see
`record_mmdet_yolov3.py` for the install). mmcv's compiled ops are absent, so
`mmcv.ops` is a stub module; `loss_by_feat` does not run the head's layers, and its
`DeformConv2d` is a plain module that only lets the head be built:

  /work/torchvenv/bin/python benchmarks/record_mmdet_reppoints.py \
      --out tests/fixtures/mmdet_reppoints
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from record_mmdet_yolov3 import stub_mmcv_ops  # noqa: E402

STRIDES = (8, 16, 32)
NUM_CLASSES = 3
NUM_POINTS = 9


def random_gt(rng: np.random.Generator, hw: tuple[int, int], n: int) -> np.ndarray:
    """n boxes [n, 4] with centres inside the image, sides 6-100 px (levels 3-5)."""
    h, w = hw
    wh = np.exp(rng.uniform(np.log(6), np.log(100), (n, 2)))
    ctr = rng.uniform(0.05, 0.95, (n, 2)) * np.array([w, h])
    return np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)


def random_points(rng: np.random.Generator, batch: int, size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Init offsets [B, 2K, h, w] (y, x per point, in strides) of spread 0.3-3 strides
    around a random shift, and refined ones = init + N(0, 0.4)."""
    fh, fw = size
    spread = rng.uniform(0.3, 3.0, (batch, 1, fh, fw))
    shift = rng.normal(0, 0.5, (batch, 2, fh, fw)).repeat(NUM_POINTS, axis=1)
    init = shift + spread * rng.normal(0, 1, (batch, 2 * NUM_POINTS, fh, fw))
    refine = init + rng.normal(0, 0.4, init.shape)
    return init.astype(np.float32), refine.astype(np.float32)


def build_head(transform: str, grid: bool = False):
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    stage = lambda assigner: dict(assigner=assigner, allowed_border=-1, pos_weight=-1,
                                  debug=False)
    return MODELS.build(dict(
        type="RepPointsHead", num_classes=NUM_CLASSES, in_channels=8, feat_channels=8,
        point_feat_channels=8, stacked_convs=1, num_points=NUM_POINTS, gradient_mul=0.1,
        point_strides=list(STRIDES), point_base_scale=4,
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox_init=dict(type="SmoothL1Loss", beta=0.11, loss_weight=0.5),
        loss_bbox_refine=dict(type="SmoothL1Loss", beta=0.11, loss_weight=1.0),
        transform_method=transform, use_grid_points=grid,
        train_cfg=ConfigDict(
            init=stage(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                            min_pos_iou=0, ignore_iof_thr=-1) if grid
                       else dict(type="PointAssigner", scale=4, pos_num=1)),
            refine=stage(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                              min_pos_iou=0, ignore_iof_thr=-1)))))


def _recorded(assigner, store: list):
    """Wraps assigner.assign to append (priors, gt_inds) of every call to `store`."""
    inner = assigner.assign

    def assign(pred_instances, gt_instances, *args, **kwargs):
        res = inner(pred_instances, gt_instances, *args, **kwargs)
        store.append((pred_instances.priors.detach().numpy().copy(), res.gt_inds.numpy().copy()))
        return res

    assigner.assign = assign


def grid_points(head, rng: np.random.Generator, batch: int, size: tuple[int, int]) -> dict:
    """Box deltas [B, 4, h, w] (init and refine) and the head's `gen_grid_from_reg` of
    them: init grids on the base square (-2, -2, 2, 2) strides, refined grids on the init
    boxes, as numpy."""
    import torch

    d_init = rng.normal(0, 0.4, (batch, 4) + size).astype(np.float32)
    d_refine = rng.normal(0, 0.25, (batch, 4) + size).astype(np.float32)
    base = torch.tensor([-2.0, -2.0, 2.0, 2.0]).view(1, 4, 1, 1)
    p_init, b_init = head.gen_grid_from_reg(torch.tensor(d_init), base)
    p_refine, b_refine = head.gen_grid_from_reg(torch.tensor(d_refine), b_init)
    return dict(d_init=d_init, d_refine=d_refine, p_init=p_init.numpy(),
                b_init=b_init.numpy(), p_refine=p_refine.numpy(), b_refine=b_refine.numpy())


def record_case(seed: int, hw: tuple[int, int], num_gts: tuple[int, int], transform: str,
                grid: bool = False) -> dict:
    import torch
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    head = build_head(transform, grid)
    moment = np.asarray([0.2, -0.15], np.float32)
    if transform == "moment":
        head.moment_transfer.data = torch.tensor(moment)
    h, w = hw
    sizes = [(-(-h // s), -(-w // s)) for s in STRIDES]
    batch = len(num_gts)
    cls = [rng.normal(-2.0, 1.5, (batch, NUM_CLASSES, fh, fw)).astype(np.float32)
           for fh, fw in sizes]
    if grid:
        grids = [grid_points(head, rng, batch, s) for s in sizes]
        pts = [(g["p_init"], g["p_refine"]) for g in grids]
    else:
        pts = [random_points(rng, batch, s) for s in sizes]
    gts = [random_gt(rng, hw, n) for n in num_gts]
    labels = [rng.integers(0, NUM_CLASSES, n) for n in num_gts]
    instances = [InstanceData(bboxes=torch.tensor(g).reshape(-1, 4), labels=torch.tensor(lab))
                 for g, lab in zip(gts, labels)]
    metas = [dict(img_shape=hw, pad_shape=hw, batch_input_shape=hw)] * batch
    t_cls = [torch.tensor(c, requires_grad=True) for c in cls]
    t_init = [torch.tensor(p[0], requires_grad=True) for p in pts]
    t_refine = [torch.tensor(p[1], requires_grad=True) for p in pts]
    init_calls, refine_calls = [], []
    _recorded(head.init_assigner, init_calls)
    _recorded(head.refine_assigner, refine_calls)
    losses = head.loss_by_feat(t_cls, t_init, t_refine, instances, metas)
    total = sum(sum(v) for v in losses.values())
    total.backward()

    out = {"image_hw": np.asarray(hw), "strides": np.asarray(STRIDES),
           "transform": np.asarray(transform), "moment_transfer": moment,
           "use_grid_points": np.asarray(grid)}
    for k, v in losses.items():
        out[k] = np.asarray([float(x.detach()) for x in v])  # per level
    for lvl, s in enumerate(STRIDES):
        out[f"cls_s{s}"] = cls[lvl]  # NCHW
        out[f"pts_init_s{s}"], out[f"pts_refine_s{s}"] = pts[lvl]  # [B, 2K, h, w]
        out[f"grad_cls_s{s}"] = t_cls[lvl].grad.numpy()
        out[f"grad_pts_init_s{s}"] = t_init[lvl].grad.numpy()
        out[f"grad_pts_refine_s{s}"] = t_refine[lvl].grad.numpy()
        if grid:
            for k, v in grids[lvl].items():
                out[f"grid_{k}_s{s}"] = v
    if transform == "moment":
        out["grad_moment_transfer"] = head.moment_transfer.grad.numpy()
    for b in range(batch):
        out[f"gt_boxes_{b}"] = gts[b].reshape(-1, 4)
        out[f"gt_labels_{b}"] = labels[b].astype(np.int32)
        out[f"init_gt_inds_{b}"] = init_calls[b][1]
        out[f"refine_proposals_{b}"] = refine_calls[b][0]
        out[f"refine_gt_inds_{b}"] = refine_calls[b][1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/mmdet_reppoints")
    args = ap.parse_args()
    stub_mmcv_ops()
    import mmcv.ops
    import torch

    class DeformConv2d(torch.nn.Conv2d):  # builds the head; loss_by_feat never calls it
        pass

    mmcv.ops.DeformConv2d = DeformConv2d
    import mmdet
    from mmdet.utils import register_all_modules

    register_all_modules()
    os.makedirs(args.out, exist_ok=True)
    cases = [(0, (64, 96), (6, 0), "moment", False), (1, (64, 64), (4, 3), "minmax", False),
             (2, (96, 64), (7, 2), "partial_minmax", False),
             (3, (96, 96), (9, 5), "moment", False), (4, (96, 64), (6, 3), "minmax", True)]
    for seed, hw, num_gts, transform, grid in cases:
        rec = record_case(seed, hw, num_gts, transform, grid)
        rec["mmdet_version"] = np.asarray(mmdet.__version__)
        path = os.path.join(args.out, f"case{seed}.npz")
        np.savez_compressed(path, **rec)
        pos = [int((rec[f"refine_gt_inds_{b}"] > 0).sum()) for b in range(len(num_gts))]
        print(path, transform, "refine positives", pos,
              {k: rec[k].sum() for k in ("loss_cls", "loss_pts_init", "loss_pts_refine")})


if __name__ == "__main__":
    main()
