"""YOLOv3 against mmdetection 3.3's `YOLOV3Head` on recorded random cases.

The fixtures (tests/fixtures/mmdet_yolov3/case*.npz) come from
`benchmarks/record_mmdet_yolov3.py` (torch + mmdetection in a separate venv): anchors,
responsible flags, `GridAssigner`'s gt_inds, `get_targets`' target / negative maps,
`YOLOBBoxCoder` encode / decode and the four loss values on random prediction maps,
2 images of 64-96 px, 3 levels, 1-6 GTs each (one under a pixel). mmdetection lists
levels from stride 32 down; jaxdet in stride order.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.assign import yolo_grid
from jaxdet.core import coders
from jaxdet.detectors import yolov3
from tests.tiny import recorded_gt, tiny_config

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "fixtures",
                                         "mmdet_yolov3", "case*.npz")))
STRIDES = (8, 16, 32)
M = 16  # padded GT rows


def _config(image_hw):
    config = tiny_config("yolov3", "/nonexistent")
    config.anchor.base_sizes = (((6, 8), (10, 14), (16, 12)), ((18, 24), (30, 20), (24, 40)),
                                ((40, 36), (52, 60), (90, 80)))
    config.data.image_size = tuple(int(v) for v in image_hw)
    config.data.num_classes = 3
    config.loss.images_per_sum = 2  # the fixtures' batch: a plain sum, as mmdetection
    return config


def _in_stride_order(rec, key_fmt, axis=0):
    return np.concatenate([rec[key_fmt.format(s)] for s in STRIDES], axis=axis)


def _reorder(rec, flat, batch_axis=False):
    """mmdetection's concatenation (stride 32 first) -> stride order."""
    sizes = {s: rec[f"anchors_s{s}"].shape[0] for s in STRIDES}
    axis = 1 if batch_axis else 0
    parts, start = {}, 0
    for s in (32, 16, 8):
        parts[s] = np.take(flat, np.arange(start, start + sizes[s]), axis=axis)
        start += sizes[s]
    return np.concatenate([parts[s] for s in STRIDES], axis=axis)


@pytest.fixture(params=FIXTURES, ids=[os.path.basename(f) for f in FIXTURES])
def case(request):
    rec = dict(np.load(request.param))
    config = _config(rec["image_hw"])
    det = detectors.build(config)
    priors = det.priors(tuple(config.data.image_size))
    return rec, config, det, priors, recorded_gt(rec, int(rec["batch"]), M)


def test_fixtures_exist():
    assert len(FIXTURES) >= 3


def test_anchors_equal_mmdet(case):
    rec, _, _, priors, _ = case
    np.testing.assert_allclose(np.asarray(priors.boxes), _in_stride_order(rec, "anchors_s{}"),
                               atol=1e-5)


def test_responsible_flags_and_assignment_equal_mmdet(case):
    rec, config, _, priors, gt = case
    batch = int(rec["batch"])
    assign = jax.jit(jax.vmap(lambda g: yolo_grid.assign(priors, g)))(gt)
    for b in range(batch):
        one = jax.tree_util.tree_map(lambda x, b=b: x[b], gt)
        flags = np.asarray(yolo_grid.responsible_flags(priors, one))
        np.testing.assert_array_equal(flags, _reorder(rec, rec[f"responsible_{b}"]))
        ours = np.asarray(assign.gt_index[b])
        theirs = _reorder(rec, rec[f"gt_inds_{b}"]) - 1  # mmdet: 0 neg, -1 ignore, k + 1
        np.testing.assert_array_equal(ours, theirs)
        assert (ours >= 0).sum() >= 1


def test_targets_equal_mmdet(case):
    rec, config, det, priors, gt = case
    assign, (box_t, cls_t, _) = jax.jit(lambda g: (
        lambda a: (a, yolov3.yolo_targets(priors, g, a, 3)))(
            jax.vmap(lambda g1: yolo_grid.assign(priors, g1))(g)))(gt)
    target = _in_stride_order(rec, "target_map_s{}", axis=1)
    neg = _in_stride_order(rec, "neg_map_s{}", axis=1)
    pos = np.asarray(assign.positive)
    np.testing.assert_array_equal(pos, target[..., 4] == 1)
    np.testing.assert_array_equal(np.asarray(assign.negative), neg)
    np.testing.assert_allclose(np.asarray(box_t)[pos], target[..., :4][pos], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cls_t)[pos], target[..., 5:][pos])


def test_coder_equals_mmdet(case):
    rec = case[0]
    enc = coders.yolo_encode(rec["coder_anchors"], rec["coder_gt"], rec["coder_stride"])
    np.testing.assert_allclose(np.asarray(enc), rec["coder_encoded"], rtol=1e-5, atol=1e-5)
    dec = coders.yolo_decode(rec["coder_anchors"], rec["coder_pred"], rec["coder_stride"])
    np.testing.assert_allclose(np.asarray(dec), rec["coder_decoded"], rtol=1e-5, atol=1e-4)


def test_losses_equal_mmdet(case):
    rec, config, det, priors, gt = case
    batch = int(rec["batch"])
    flat = []
    for s in STRIDES:
        p = np.transpose(rec[f"pred_map_s{s}"], (0, 2, 3, 1))  # NCHW -> NHWC
        flat.append(p.reshape(batch, -1, 8))  # A * (5 + C) channels, anchor-major
    flat = jnp.asarray(np.concatenate(flat, axis=1))
    outputs = {"box": flat[..., :4], "obj_logits": flat[..., 4], "cls_logits": flat[..., 5:]}
    terms = jax.jit(lambda o, g: det.losses(o, priors, g, det.assign(o, priors, g)))(
        outputs, gt)
    for k in ("loss_cls", "loss_conf", "loss_xy", "loss_wh"):
        np.testing.assert_allclose(float(terms[k]), rec[k].sum(), rtol=2e-5, err_msg=k)
