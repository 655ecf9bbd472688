"""Records mmdetection 3.x's YOLOv3 head on random cases as .npz fixtures.

For `tests/models/test_yolov3_mmdet.py` (which needs no torch): per case, the anchors
of `YOLOAnchorGenerator`, the responsible flags, `GridAssigner`'s assignment, the target
and negative maps of `YOLOV3Head.get_targets`, `YOLOBBoxCoder` encode / decode on
random boxes, and the four loss values of `YOLOV3Head.loss_by_feat` (the loss config
of yolov3_d53_8xb8: reduction 'sum', weights cls 1, conf 1, xy 2, wh 2) on random
prediction maps. Levels are stored under their stride (mmdetection lists them from
stride 32 down).

Runs in a separate venv with torch (CPU) and mmdetection 3.3.0; mmcv's compiled ops
are absent (mmcv-lite), so `mmcv.ops` is replaced by a stub module before mmdet is
imported (YOLOv3's training path does not call them):

  /work/torchvenv/bin/pip install "mmengine==0.10.*"
  /work/torchvenv/bin/pip install mmcv-lite==2.1.0 --no-deps
  /work/torchvenv/bin/pip install mmdet==3.3.0 --no-deps
  /work/torchvenv/bin/pip install terminaltables pycocotools shapely scipy six tqdm
  /work/torchvenv/bin/python benchmarks/record_mmdet_yolov3.py --out tests/fixtures/mmdet_yolov3
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import sys
import types

import numpy as np

ANCHORS = [[(40, 36), (52, 60), (90, 80)], [(18, 24), (30, 20), (24, 40)],
           [(6, 8), (10, 14), (16, 12)]]  # strides 32, 16, 8 (mmdetection's order)
STRIDES = [32, 16, 8]
NUM_CLASSES = 3


def _stub_module(name: str) -> types.ModuleType:
    """A module whose every public attribute is a placeholder class."""
    mod = types.ModuleType(name)

    def missing(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def fn(*args, **kwargs):
            raise RuntimeError(f"{name}.{attr} is a stub")
        return type(attr, (), {"__init__": fn, "__call__": fn})

    mod.__getattr__ = missing
    mod.__path__ = []
    mod.__file__ = "<stub>"
    return mod


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `mmcv.ops` and every `mmcv.ops.*` to stub modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _stub_module(spec.name)

    def exec_module(self, module):
        pass


def stub_mmcv_ops() -> None:
    """Makes `import mmcv.ops[...]` succeed without mmcv's compiled extension."""
    sys.meta_path.insert(0, _StubFinder())


def random_gt(rng: np.random.Generator, hw: tuple[int, int], n: int,
              near_anchors: bool = False) -> np.ndarray:
    """n boxes [n, 4] inside the image, sizes 2-60 px (or, near_anchors, an anchor's size
    x 0.8-1.25 with the centre near a stride-8 cell edge: anchors of neighbouring cells
    then overlap it by more than 0.5, the ignored ones), one below a pixel; centres never
    on the right / bottom border (mmdetection's flat cell index would leave the grid)."""
    h, w = hw
    wh = rng.uniform(2, 60, (n, 2))
    ctr = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - 1e-3)
    if near_anchors:
        sizes = np.asarray([wh for lvl in ANCHORS for wh in lvl], np.float64)
        wh = sizes[rng.integers(0, len(sizes), n)] * rng.uniform(0.8, 1.25, (n, 2))
        ctr = np.clip(np.round(ctr / 8) * 8 + rng.uniform(-1, 1, (n, 2)), 1,
                      np.array([w, h]) - 1)
    wh[0] = rng.uniform(0.3, 0.9, 2)
    boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1)
    return boxes.astype(np.float32)


def record_case(seed: int, hw: tuple[int, int], num_gt: int, batch: int = 2,
                near_anchors: bool = False) -> dict:
    import torch
    from mmdet.registry import MODELS, TASK_UTILS
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    head = MODELS.build(dict(
        type="YOLOV3Head", num_classes=NUM_CLASSES, in_channels=[8, 8, 8],
        out_channels=[8, 8, 8],
        anchor_generator=dict(type="YOLOAnchorGenerator", base_sizes=ANCHORS, strides=STRIDES),
        bbox_coder=dict(type="YOLOBBoxCoder"), featmap_strides=STRIDES,
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0,
                      reduction="sum"),
        loss_conf=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0,
                       reduction="sum"),
        loss_xy=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=2.0,
                     reduction="sum"),
        loss_wh=dict(type="MSELoss", loss_weight=2.0, reduction="sum"),
        train_cfg=ConfigDict(assigner=dict(type="GridAssigner", pos_iou_thr=0.5,
                                           neg_iou_thr=0.5, min_pos_iou=0))))
    h, w = hw
    sizes = [(h // s, w // s) for s in STRIDES]
    attrib = 5 + NUM_CLASSES
    pred_maps = [torch.tensor(rng.normal(0, 1.5, (batch, 3 * attrib, fh, fw)), dtype=torch.float32)
                 for fh, fw in sizes]
    gts, labels = [], []
    for b in range(batch):
        n = num_gt if b == 0 else max(num_gt - 2, 1)
        gts.append(random_gt(rng, hw, n, near_anchors))
        labels.append(rng.integers(0, NUM_CLASSES, n))
    instances = [InstanceData(bboxes=torch.tensor(g), labels=torch.tensor(lab))
                 for g, lab in zip(gts, labels)]
    metas = [dict(img_shape=hw, pad_shape=hw, batch_input_shape=hw)] * batch
    out = {"image_hw": np.asarray(hw), "batch": np.asarray(batch)}
    with torch.no_grad():
        losses = head.loss_by_feat(pred_maps, instances, metas)
        anchors = head.prior_generator.grid_priors(sizes, device="cpu")
        flags = [head.responsible_flags(sizes, inst.bboxes, "cpu")
                 for inst in instances]
        target_maps, neg_maps = head.get_targets([anchors] * batch, flags, instances)
        assigner = TASK_UTILS.build(head.train_cfg.assigner)
        for b, inst in enumerate(instances):
            pred = InstanceData(priors=torch.cat(anchors), responsible_flags=torch.cat(flags[b]))
            res = assigner.assign(pred, inst)
            out[f"gt_inds_{b}"] = res.gt_inds.numpy()  # mmdet order (stride 32 first)
            out[f"gt_boxes_{b}"] = gts[b]
            out[f"gt_labels_{b}"] = labels[b].astype(np.int32)
            out[f"responsible_{b}"] = torch.cat(flags[b]).numpy().astype(bool)
        for lvl, s in enumerate(STRIDES):
            out[f"anchors_s{s}"] = anchors[lvl].numpy()
            out[f"pred_map_s{s}"] = pred_maps[lvl].numpy()  # NCHW
            out[f"target_map_s{s}"] = target_maps[lvl].numpy()  # [B, h*w*A, 5 + C]
            out[f"neg_map_s{s}"] = neg_maps[lvl].numpy().astype(bool)
        for k, v in losses.items():
            out[k] = np.asarray([float(x) for x in v])  # per level, stride 32 first
        # The coder on random anchors / boxes / strides.
        a = torch.tensor(random_gt(rng, hw, 16) + np.float32(1.0))
        g = torch.tensor(random_gt(rng, hw, 16))
        st = torch.tensor(rng.choice(STRIDES, 16).astype(np.float32))
        out["coder_anchors"], out["coder_gt"] = a.numpy(), g.numpy()
        out["coder_stride"] = st.numpy()
        out["coder_encoded"] = head.bbox_coder.encode(a, g, st).numpy()
        p = torch.tensor(np.concatenate([rng.uniform(0, 1, (16, 2)), rng.normal(0, 1, (16, 2))],
                                        1).astype(np.float32))
        out["coder_pred"] = p.numpy()
        out["coder_decoded"] = head.bbox_coder.decode(a, p, st[:, None]).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/mmdet_yolov3")
    args = ap.parse_args()
    stub_mmcv_ops()
    import mmdet
    from mmdet.utils import register_all_modules

    register_all_modules()
    os.makedirs(args.out, exist_ok=True)
    cases = [(0, (64, 96), 5, False), (1, (96, 64), 6, False), (2, (64, 64), 4, False),
             (3, (96, 128), 12, True)]
    for seed, hw, n, near in cases:
        rec = record_case(seed, hw, n, near_anchors=near)
        rec["mmdet_version"] = np.asarray(mmdet.__version__)
        path = os.path.join(args.out, f"case{seed}.npz")
        np.savez_compressed(path, **rec)
        print(path, {k: rec[k] for k in ("loss_cls", "loss_conf", "loss_xy", "loss_wh")})


if __name__ == "__main__":
    main()
