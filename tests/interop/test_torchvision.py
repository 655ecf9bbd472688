"""torchvision Faster / Mask R-CNN weights through `jaxdet.interop.torchvision`, compared
stage by stage with torchvision's own outputs (no torch needed).

The fixtures (`tests/fixtures/torchvision_rcnn`, written by
`benchmarks/record_torchvision_rcnn.py`) are a narrow torchvision Mask R-CNN (ResNet-18
of base width 4, FPN 16, random weights) run on two images (128 x 160 and 128 x 144, the
second padded). JAXDET_TORCHVISION_RCNN=<dir> runs the same comparisons on another
recording (e.g. `--r50 maskrcnn_resnet50_fpn`).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.detectors import rpn as rpn_lib
from jaxdet.detectors.faster_rcnn import TwoStageNetwork
from jaxdet.interop import torchvision as tv
from jaxdet.models import torch_import
from jaxdet.ops.paste_torchvision import paste_masks_torchvision
from jaxdet.ops.rcnn_postprocess import paste_masks
from jaxdet.ops.roi_align import map_roi_levels

FIXTURES = os.environ.get("JAXDET_TORCHVISION_RCNN") or os.path.join(
    os.path.dirname(__file__), "..", "fixtures", "torchvision_rcnn")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _close(ours, ref, rel: float) -> None:
    """|ours - ref| <= rel x max |ref| everywhere."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module")
def tvm():
    """(reference arrays, config, params, detector, images, image_hw, features)."""
    ref = dict(np.load(os.path.join(FIXTURES, "reference.npz")))
    sd = torch_import.load_npz(os.path.join(FIXTURES, "weights.npz"))
    mask = any(k.startswith("roi_heads.mask_head.") for k in sd)
    name = "maskrcnn_resnet50_fpn" if mask else "fasterrcnn_resnet50_fpn"
    config, params = tv.load(name, os.path.join(FIXTURES, "weights.npz"))
    config.test.mask_stride = 1
    det = detectors.build(config)
    # torchvision's transform: [0, 1] -> (x - mean) / std, then zero padding
    hw = ref["image_hw"]
    h, w = hw.max(0)
    images = np.zeros((len(hw), h, w, 3), np.float32)
    for i, (hi, wi) in enumerate(hw):
        images[i, :hi, :wi] = (ref[f"image{i}"].astype(np.float32) / 255 - MEAN) / STD
    images = jnp.asarray(images)
    feats = jax.jit(det.features)(params, images)
    return ref, config, params, det, images, jnp.asarray(hw), feats


def test_features(tvm):
    ref, *_, feats = tvm
    assert len(feats) == 5
    for i, f in enumerate(feats):
        _close(f, ref[f"feat{i}"].transpose(0, 2, 3, 1), 1e-5)


def test_anchors_and_rpn_outputs(tvm):
    ref, config, params, det, images, _, feats = tvm
    priors = det.priors(tuple(images.shape[1:3]))
    np.testing.assert_array_equal(np.asarray(priors.boxes), ref["anchors"])
    out = jax.jit(lambda p, f: det._call(p, TwoStageNetwork.rpn, f))(params, feats)
    _close(out["objectness"], ref["objectness"], 1e-5)
    _close(out["box_deltas"], ref["rpn_deltas"], 1e-5)


def test_proposals(tvm):
    ref, config, params, det, images, hw, feats = tvm
    priors = det.priors(tuple(images.shape[1:3]))
    outputs = {"objectness": jnp.asarray(ref["objectness"]),
               "box_deltas": jnp.asarray(ref["rpn_deltas"])}
    boxes, scores, valid = jax.jit(
        lambda o, hw: rpn_lib.proposals(o, priors, hw, config.rpn, train=False))(outputs, hw)
    for i, n in enumerate(ref["num_proposals"]):
        assert int(valid[i].sum()) == n
        np.testing.assert_allclose(boxes[i, :n], ref["proposals"][i, :n], rtol=0, atol=1e-3)
        np.testing.assert_allclose(scores[i, :n], ref["proposal_scores"][i, :n], atol=1e-6)


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of torch's bilinear interpolate (align_corners=False)."""
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
    src = np.maximum(src - np.float32(0.5), 0)
    i0 = np.floor(src).astype(int)
    lam = src - i0
    w = np.zeros((n_out, n_in), np.float32)
    np.add.at(w, (np.arange(n_out), i0), 1 - lam)
    np.add.at(w, (np.arange(n_out), np.minimum(i0 + 1, n_in - 1)), lam)
    return w


def torchvision_paste(mask: np.ndarray, box: np.ndarray, im_h: int, im_w: int) -> np.ndarray:
    """torchvision's `paste_masks_in_image` (padding 1) of one [M, M] mask, in numpy."""
    m = np.pad(mask.astype(np.float32), 1)
    scale = np.float32((mask.shape[0] + 2) / mask.shape[0])
    box = box.astype(np.float32)
    half = (box[2:] - box[:2]) * np.float32(0.5) * scale
    ctr = (box[2:] + box[:2]) * np.float32(0.5)
    x0, y0, x1, y1 = np.trunc(np.concatenate([ctr - half, ctr + half])).astype(int)
    h, w = max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)
    r = _resize_weights(m.shape[0], h) @ m @ _resize_weights(m.shape[1], w).T
    out = np.zeros((im_h, im_w), np.float32)
    ya, yb, xa, xb = max(y0, 0), min(y1 + 1, im_h), max(x0, 0), min(x1 + 1, im_w)
    if yb > ya and xb > xa:
        out[ya:yb, xa:xb] = r[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def _rois(ref):
    """torchvision's proposals as padded [B, P, 4] + valid, and the valid rows' order."""
    n = ref["num_proposals"]
    valid = np.arange(ref["proposals"].shape[1])[None] < n[:, None]
    return jnp.asarray(ref["proposals"]), jnp.asarray(valid), valid.reshape(-1)


def test_level_mapping_is_torchvisions(tvm):
    ref = tvm[0]
    rois, _, keep = _rois(ref)
    lvl = map_roi_levels(rois.reshape(-1, 4), 4, 56.0)
    np.testing.assert_array_equal(np.asarray(lvl)[keep], ref["roi_levels"])
    # LevelMapper: floor(4 + log2(sqrt(area) / 224) + 1e-6) - 2, clamped to 0..3 (float32)
    s = np.float32(2.0) ** np.linspace(3, 11, 20001, dtype=np.float32)
    s = np.concatenate([s, np.float32([56, 112, 224, 448, 896]) * np.float32(1 + 1e-7)])
    tvl = np.clip(np.floor(np.float32(4) + np.log2(s / np.float32(224)) + np.float32(1e-6)),
                  2, 5) - 2
    boxes = np.stack([np.zeros_like(s), np.zeros_like(s), s, s], -1)
    np.testing.assert_array_equal(np.asarray(map_roi_levels(jnp.asarray(boxes), 4)), tvl)


def test_box_head(tvm):
    ref, config, params, det, images, hw, feats = tvm
    rois, valid, keep = _rois(ref)

    @jax.jit
    def box(p, f):
        x = det.roi_features(f, rois, valid, config.roi.box_size)
        return det._call(p, TwoStageNetwork.box, x)

    out = box(params, feats)
    c = config.data.num_classes
    order = [*range(1, c + 1), 0]  # jaxdet's background is the last logit
    _close(np.asarray(out["cls_logits"])[keep], ref["class_logits"][:, order], 1e-5)
    deltas = ref["box_regression"].reshape(-1, c + 1, 4)[:, 1:]
    _close(np.asarray(out["box_deltas"])[keep], deltas, 1e-5)


def test_mask_head(tvm):
    ref, config, params, det, images, hw, feats = tvm
    if "mask_logits" not in ref or not hasattr(det, "mask_stride"):
        pytest.skip("Faster R-CNN recording")
    boxes = jnp.asarray(ref["mask_boxes"])

    @jax.jit
    def mask(p, f):
        x = det.roi_features(f, boxes, jnp.ones(boxes.shape[:2], bool), config.roi.mask_size)
        return det._call(p, TwoStageNetwork.mask, x)

    logits = np.asarray(mask(params, feats))
    _close(logits, ref["mask_logits"][:, 1:].transpose(0, 2, 3, 1), 1e-5)
    # torchvision's paste of these masks (the first detections') gives its output masks
    m = logits.shape[0] // 2
    for i, (h, w) in enumerate(ref["image_hw"]):
        for k in range(m):
            prob = 1 / (1 + np.exp(-logits[i * m + k, :, :, ref["det_labels"][i, k] - 1]))
            pasted = torchvision_paste(prob, ref["mask_boxes"][i, k], h, w)
            np.testing.assert_allclose(pasted, ref[f"det_masks{i}"][k] / 255, atol=3 / 255)


def test_detections(tvm):
    ref, config, params, det, images, hw, feats = tvm
    dets = jax.jit(det.predict)(params, images, hw)
    for i, n in enumerate(ref["num_dets"]):
        assert int(dets.valid[i].sum()) == n
        np.testing.assert_allclose(dets.boxes[i, :n], ref["det_boxes"][i, :n], atol=1e-3)
        np.testing.assert_allclose(dets.scores[i, :n], ref["det_scores"][i, :n], atol=1e-5)
        np.testing.assert_array_equal(dets.classes[i, :n] + 1, ref["det_labels"][i, :n])
    if dets.masks is None:
        return
    for i, (h, w) in enumerate(np.asarray(hw)):
        tv_masks = ref[f"det_masks{i}"].astype(np.float32) / 255
        ours = np.asarray(dets.masks[i, : len(tv_masks), :h, :w])
        np.testing.assert_allclose(ours, tv_masks, rtol=0, atol=3 / 255)  # uint8 fixture


def test_paste_masks_torchvision():
    rng = np.random.default_rng(0)
    k, s, hw = 12, 28, (40, 56)
    masks = rng.uniform(0, 1, (2, k, s, s)).astype(np.float32)
    xy = rng.uniform(-20, 50, (2, k, 2))
    wh = rng.uniform(0.2, 40, (2, k, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    boxes[0, 0] = [10.0, 10.0, 9.5, 30.0]  # x2 < x1
    boxes[0, 1] = [60.0, 45.0, 80.0, 70.0]  # outside the frame
    paste = jax.jit(jax.vmap(lambda m, b: paste_masks_torchvision(m, b, out_hw=hw)))
    ours = np.asarray(paste(masks, boxes))
    for i in range(2):
        for j in range(k):
            ref = torchvision_paste(masks[i, j], boxes[i, j], *hw)
            np.testing.assert_allclose(ours[i, j], ref, rtol=0, atol=1e-5)
    # mmdetection's paste (jaxdet's default) of the same noise-like masks differs
    mm = np.asarray(jax.vmap(lambda m, b: paste_masks(m, b, out_hw=hw))(masks, boxes))
    assert np.abs(mm - ours).max() > 0.3


def test_faster_rcnn_and_key_errors(tvm):
    ref, config, params = tvm[:3]
    sd = torch_import.load_npz(os.path.join(FIXTURES, "weights.npz"))
    n = sd[tv.CLS_SCORE].shape[0]
    with pytest.raises(ValueError, match="cls_score.weight"):
        tv.load_state_dict("maskrcnn_resnet50_fpn", sd, num_classes=n + 1)
    box_only = {k: v for k, v in sd.items() if ".mask_" not in k}
    faster_config, faster = tv.load_state_dict("fasterrcnn_resnet50_fpn", box_only,
                                               num_classes=n)
    assert faster_config.detector == "faster_rcnn" and faster_config.data.num_classes == n - 1
    same = {k: v for k, v in params.items() if k != "mask_head"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, faster, same)
    if len(box_only) < len(sd):
        with pytest.raises(ValueError, match="unexpected key.*mask_predictor"):
            tv.load_state_dict("fasterrcnn_resnet50_fpn", sd)
    with pytest.raises(ValueError, match="missing|none of"):
        tv.load_state_dict("fasterrcnn_resnet50_fpn",
                           {k: v for k, v in box_only.items() if "fc7" not in k})


def test_select_classes(tvm):
    ref, config, params = tvm[:3]
    c = config.data.num_classes
    labels = [c, 1]  # torchvision labels -> jaxdet classes 0, 1
    sub_config, sub = tv.select_classes(config, params, labels)
    assert sub_config.data.num_classes == 2 and config.data.num_classes == c
    cls, reg = params["box_head"]["cls_out"], params["box_head"]["reg_out"]
    np.testing.assert_array_equal(sub["box_head"]["cls_out"]["kernel"],
                                  cls["kernel"][:, [c - 1, 0, c]])
    np.testing.assert_array_equal(sub["box_head"]["reg_out"]["bias"],
                                  np.concatenate([reg["bias"][4 * (c - 1):], reg["bias"][:4]]))
    if "mask_head" in params:
        np.testing.assert_array_equal(sub["mask_head"]["mask_out"]["kernel"],
                                      params["mask_head"]["mask_out"]["kernel"][..., [c - 1, 0]])
    sub_det = detectors.build(sub_config)
    shapes = jax.eval_shape(lambda: sub_det.init(jax.random.PRNGKey(0), (64, 64))[0])
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(sub)
    jax.tree_util.tree_map(lambda a, b: a.shape == b.shape or pytest.fail(str(a.shape)),
                           shapes, sub)
    with pytest.raises(ValueError, match="labels"):
        tv.select_classes(config, params, [0])


def test_pre_013_key_names(tvm):
    """torchvision < 0.13 named the FPN / RPN / mask-head convs without the '.0'."""
    params = tvm[2]
    sd = torch_import.load_npz(os.path.join(FIXTURES, "weights.npz"))
    old = {}
    for k, v in sd.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for blocks in ("inner_blocks", "layer_blocks"):
            k = re.sub(rf"fpn\.{blocks}\.(\d)\.0\.", rf"fpn.{blocks}.\1.", k)
        m = re.match(r"roi_heads\.mask_head\.(\d)\.0\.(.*)", k)
        old[f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}" if m else k] = v
    assert len(old) == len(sd) and not set(old) & {"rpn.head.conv.0.0.weight"}
    name = "maskrcnn_resnet50_fpn" if "mask_head" in params else "fasterrcnn_resnet50_fpn"
    _, loaded = tv.load_state_dict(name, old)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
