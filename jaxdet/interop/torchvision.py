"""torchvision Faster / Mask R-CNN (v1, ResNet-FPN) weights in jaxdet's two-stage detectors.

Export a state dict once where torch is installed (no torch needed here):

    import numpy as np, torchvision
    m = torchvision.models.detection.maskrcnn_resnet50_fpn(weights="DEFAULT")
    np.savez("maskrcnn_r50.npz", **{k: v.numpy() for k, v in m.state_dict().items()})

then `config, params = load("maskrcnn_resnet50_fpn", "maskrcnn_r50.npz")` and
`jaxdet.detectors.build(config).predict(params, images, image_hw)`, images normalised as
jaxdet's pipeline does (torchvision's [0, 1] mean / std are `configs.common.IMAGENET_*`
/ 255) and sized as torchvision's transform would (shorter side 800, longer <= 1333).

The config is `configs/{faster_rcnn,mask_rcnn}/*_r50_fpn_1x_coco.py` with torchvision's
choices where they differ from mmdetection's:
  anchors: base anchors rounded to integers, centres spaced by (H // h_l, W // w_l)
    (`anchor.round_base`, `anchor.torchvision_grid`);
  RPN: 2000 proposals after NMS in training (mmdetection 1000), min_size 1e-3;
  RoIAlign: aligned=False, sampling_ratio 2 (the level mapping, canonical 224 at level 4,
    is mmdetection's finest_scale 56 up to where the 1e-6 is added);
  test: boxes under 1e-2 px after clipping dropped (`test.min_box_size`), every (RoI,
    class) pair over 0.05 enters the NMS (`test.pre_nms_topk` 0, mmdetection's config
    here keeps 2000); masks pasted at the integer corners of the box grown by one mask
    cell (`test.mask_paste`).
The same: P6 by max-pool, box coder weights (10, 10, 5, 5) = stds (0.1, 0.1, 0.2, 0.2),
RPN NMS 0.7 and 1000 / 1000 test proposals, score > 0.05, NMS 0.5, 100 detections.
Left as they are: the box decoding clamps dw, dh to +-log(1000 / 16) (torchvision only
from above); anchor steps and P6 follow the padded input, which jaxdet pads to the fixed
`data.image_size` and torchvision to the batch's largest image rounded up to 32; the
input resize is the pipeline's, not torchvision's; training settings (losses, samplers)
stay mmdetection's.

Classes: torchvision's label 0 is the background and its classifier's first row;
jaxdet's background is the last logit, so jaxdet class k - 1 is torchvision label k
(91 labels -> config.data.num_classes = 90; for COCO the labels are the category ids:
`select_classes` keeps the 80 used ones, in the order of a dataset's label map).
Depth and widths (ResNet depth / base width, FPN channels, fc width, mask head) are read
from the state dict. Key names of torchvision >= 0.13 and the older ones are accepted.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from jaxdet import detectors
from jaxdet.models import torch_import
from jaxdet.models.backbones.resnet import STAGE_BLOCKS

MODELS = {
    "fasterrcnn_resnet50_fpn": ("configs.faster_rcnn.faster_rcnn_r50_fpn_1x_coco", False),
    "maskrcnn_resnet50_fpn": ("configs.mask_rcnn.mask_rcnn_r50_fpn_1x_coco", True),
}
BODY = "backbone.body."
CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"


def load(name: str, path: str, num_classes: int | None = None
         ) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, params) of torchvision model `name` from an .npz of its state dict.

    num_classes: torchvision's count with the background (91 for COCO); None = the
    state dict's. Raises ValueError on a mismatch, a missing / unexpected key or shape.
    """
    return load_state_dict(name, torch_import.load_npz(path), num_classes)


def load_state_dict(name: str, state_dict: Mapping[str, Any], num_classes: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict]:
    """`load` on a state dict (torch key -> numpy array)."""
    config = torchvision_config(name, state_dict, num_classes)
    detector = detectors.build(config)
    template = jax.eval_shape(lambda: detector.init(jax.random.PRNGKey(0), (64, 64))[0])
    params = params_from_state_dict(state_dict, template, box_size=int(config.roi.box_size))
    return config, jax.tree_util.tree_map(jnp.asarray, params)


def _get(state_dict: Mapping[str, Any], *keys: str) -> tuple[str, np.ndarray]:
    """The first of `keys` present (new, then pre-0.13 torchvision names)."""
    for k in keys:
        if k in state_dict:
            return k, np.asarray(state_dict[k])
    raise ValueError(f"state dict has none of {list(keys)}")


def resnet_depth_width(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """(depth, base width) of the state dict's ResNet body (blocks per stage, block kind
    and the stem's channels)."""
    blocks = []
    for i in range(1, 5):
        prefix = f"{BODY}layer{i}."
        idx = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
        blocks.append(max(idx) + 1 if idx else 0)
    kind = "bottleneck" if f"{BODY}layer1.0.conv3.weight" in state_dict else "basic"
    depths = [d for d, spec in STAGE_BLOCKS.items() if spec == (kind, tuple(blocks))]
    if not depths:
        raise ValueError(f"ResNet body with {kind} blocks {blocks} is none of {STAGE_BLOCKS}")
    return depths[0], int(np.shape(state_dict[f"{BODY}conv1.weight"])[0])


def torchvision_config(name: str, state_dict: Mapping[str, Any],
                       num_classes: int | None = None) -> ml_collections.ConfigDict:
    """The jaxdet config reproducing torchvision model `name` with the state dict's sizes."""
    if name not in MODELS:
        raise ValueError(f"unknown torchvision model {name!r}; expected one of {sorted(MODELS)}")
    module, mask = MODELS[name]
    config = importlib.import_module(module).get_config()
    n = int(np.shape(state_dict[CLS_SCORE])[0])
    if num_classes is not None and int(num_classes) != n:
        raise ValueError(f"num_classes={num_classes} but the state dict's {CLS_SCORE} has "
                         f"{n} rows (torchvision's classes, background included)")
    config.data.num_classes = n - 1
    m = config.model
    m.pretrained = ""
    m.backbone.depth, m.backbone.width = resnet_depth_width(state_dict)
    m.backbone.norm = "frozen_bn"
    _, lateral = _get(state_dict, "backbone.fpn.inner_blocks.0.0.weight",
                      "backbone.fpn.inner_blocks.0.weight")
    m.fpn.channels = int(lateral.shape[0])
    config.anchor.round_base = True
    config.anchor.torchvision_grid = True
    config.rpn.train_pre_nms_topk, config.rpn.train_post_nms_topk = 2000, 2000
    config.rpn.test_pre_nms_topk, config.rpn.test_post_nms_topk = 1000, 1000
    config.rpn.nms_iou, config.rpn.min_size = 0.7, 1e-3
    r = config.roi
    r.sampling_ratio, r.aligned, r.finest_scale = 2, False, 56.0
    r.box_stds, r.class_agnostic = (0.1, 0.1, 0.2, 0.2), False
    r.num_fcs = 2
    r.fc_channels = int(np.shape(state_dict["roi_heads.box_head.fc6.weight"])[0])
    if mask:
        convs = 0
        while any(k in state_dict for k in (f"roi_heads.mask_head.{convs}.0.weight",
                                              f"roi_heads.mask_head.mask_fcn{convs + 1}.weight")):
            convs += 1
        _, w = _get(state_dict, "roi_heads.mask_head.0.0.weight",
                    "roi_heads.mask_head.mask_fcn1.weight")
        up = np.shape(state_dict["roi_heads.mask_predictor.conv5_mask.weight"])[1]
        if up != w.shape[0]:
            raise ValueError(f"mask head convs of {w.shape[0]} channels but conv5_mask of {up}: "
                             "jaxdet's MaskHead has one width (roi.mask_channels)")
        r.mask_convs, r.mask_channels = convs, int(w.shape[0])
    t = config.test
    t.score_thr, t.nms_iou, t.max_det, t.min_box_size = 0.05, 0.5, 100, 1e-2
    t.pre_nms_topk = 0  # every (RoI, class) pair over score_thr enters the NMS
    if mask:
        t.mask_paste = "torchvision"
    return config


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _head_specs(template: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str]]:
    """Flax module path 'part/module' -> (torch module names, new then old; conversion)."""
    specs = {"rpn_head/conv": (("rpn.head.conv.0.0", "rpn.head.conv"), "conv"),
             "rpn_head/cls_out": (("rpn.head.cls_logits",), "conv"),
             "rpn_head/reg_out": (("rpn.head.bbox_pred",), "conv"),
             "box_head/fc_0": (("roi_heads.box_head.fc6",), "fc6"),
             "box_head/fc_1": (("roi_heads.box_head.fc7",), "dense"),
             "box_head/cls_out": (("roi_heads.box_predictor.cls_score",), "cls"),
             "box_head/reg_out": (("roi_heads.box_predictor.bbox_pred",), "reg")}
    for mod in template["neck"]:
        kind, i = mod.split("_")
        blocks = "inner_blocks" if kind == "lateral" else "layer_blocks"
        specs[f"neck/{mod}"] = ((f"backbone.fpn.{blocks}.{i}.0", f"backbone.fpn.{blocks}.{i}"),
                                "conv")
    if "mask_head" in template:
        for mod in template["mask_head"]:
            if mod.startswith("conv_"):
                i = int(mod.split("_")[1])
                specs[f"mask_head/{mod}"] = ((f"roi_heads.mask_head.{i}.0",
                                              f"roi_heads.mask_head.mask_fcn{i + 1}"), "conv")
        specs["mask_head/upsample"] = (("roi_heads.mask_predictor.conv5_mask",), "deconv")
        specs["mask_head/mask_out"] = (("roi_heads.mask_predictor.mask_fcn_logits",), "mask")
    return specs


def _convert(kind: str, leaf: str, v: np.ndarray, box_size: int) -> np.ndarray:
    """A torch weight / bias -> the Flax leaf (layouts, background row / channel moved)."""
    if leaf == "bias":
        if kind == "cls":  # torchvision [bg, 1..C] -> jaxdet [1..C, bg]
            return np.concatenate([v[1:], v[:1]])
        return v[4:] if kind == "reg" else v[1:] if kind == "mask" else v
    if kind == "fc6":  # torch flattens [C, s, s], jaxdet [s, s, C]
        c = v.shape[1] // (box_size * box_size)
        return v.reshape(-1, c, box_size, box_size).transpose(2, 3, 1, 0).reshape(-1, v.shape[0])
    if kind == "dense":
        return v.T
    if kind == "cls":
        return np.concatenate([v[1:], v[:1]]).T
    if kind == "reg":
        return v[4:].T
    if kind == "deconv":  # ConvTranspose2d [I, O, kh, kw]; lax.conv_transpose flips it
        return v.transpose(2, 3, 0, 1)[::-1, ::-1]
    return _conv(v[1:] if kind == "mask" else v)


def params_from_state_dict(state_dict: Mapping[str, Any], template: Mapping[str, Any], *,
                           box_size: int = 7) -> dict:
    """Fills the two-stage detector's params `template` (arrays or ShapeDtypeStructs)
    from a torchvision Faster / Mask R-CNN state dict; float32 numpy leaves.

    Raises ValueError naming every missing key, shape mismatch and unexpected key
    (other than BN's num_batches_tracked)."""
    body = {k: v for k, v in state_dict.items() if k.startswith(BODY)}
    params = {"backbone": torch_import.resnet_params_from_torch(body, template["backbone"],
                                                               key_prefix=BODY)}
    used, errors = set(body), []
    flat = traverse_util.flatten_dict({k: v for k, v in template.items() if k != "backbone"})
    out = {}
    specs = _head_specs(template)
    for path, ref in flat.items():
        mod, leaf = "/".join(path[:-1]), path[-1]
        if mod not in specs:
            errors.append(f"no torchvision name for {'/'.join(path)}")
            continue
        names, kind = specs[mod]
        tleaf = {"kernel": "weight", "bias": "bias"}[leaf]
        try:
            key, v = _get(state_dict, *(f"{n}.{tleaf}" for n in names))
        except ValueError as e:
            errors.append(str(e))
            continue
        used.add(key)
        value = np.ascontiguousarray(_convert(kind, leaf, v.astype(np.float32), box_size))
        if value.shape != tuple(ref.shape):
            errors.append(f"{key}: torch {v.shape} -> {value.shape}, expected {tuple(ref.shape)} "
                          f"at {'/'.join(path)}")
        out[path] = value
    unused = sorted(k for k in state_dict
                    if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        errors.append(f"{len(unused)} unexpected key(s): {unused}")
    if errors:
        raise ValueError("torchvision R-CNN import failed: " + "; ".join(errors))
    params.update(traverse_util.unflatten_dict(out))
    return params


def select_classes(config: ml_collections.ConfigDict, params: Mapping[str, Any],
                   labels: Sequence[int]) -> tuple[ml_collections.ConfigDict, dict]:
    """Keeps the classes of torchvision labels `labels`, jaxdet class k = labels[k].

    E.g. `labels = CategoryMap.category_ids` (COCO's 80 ids, sorted) makes a
    COCO-trained torchvision model (91 labels, 10 of them unused) a jaxdet 80-class
    detector in the label order of `jaxdet.data.coco`. The classifier keeps the
    background (last) column, the regressor and the mask head the labels' rows. The
    softmax then runs over the kept classes only (the dropped ones' share of the
    probability goes to the others)."""
    c = int(config.data.num_classes)
    idx = np.asarray(labels, np.int64) - 1
    if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= c:
        raise ValueError(f"labels must be torchvision labels in 1..{c}, got {list(labels)}")
    cls_cols = np.concatenate([idx, [c]])
    params = dict(params)
    box = dict(params["box_head"])
    box["cls_out"] = {k: v[..., cls_cols] for k, v in box["cls_out"].items()}
    box["reg_out"] = {k: v.reshape(*v.shape[:-1], c, 4)[..., idx, :].reshape(*v.shape[:-1], -1)
                      for k, v in box["reg_out"].items()}
    params["box_head"] = box
    if "mask_head" in params:
        mask = dict(params["mask_head"])
        mask["mask_out"] = {k: v[..., idx] for k, v in mask["mask_out"].items()}
        params["mask_head"] = mask
    config = copy.deepcopy(config)
    config.data.num_classes = len(idx)
    return config, params
