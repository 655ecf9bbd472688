"""Darknet-53, the YOLOv3 neck and head: shapes, parameter counts against mmdetection,
the head's initial biases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.backbones.darknet import Darknet
from jaxdet.models.heads.yolo_head import YOLOV3Head
from jaxdet.models.necks.yolo_neck import YOLOV3Neck


def _count(tree, skip_stats=True):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return sum(int(np.prod(x.shape)) for p, x in leaves
               if not (skip_stats and jax.tree_util.keystr(p).endswith(("'mean']", "'var']"))))


def test_darknet53_neck_head_shapes_and_parameter_counts_match_mmdet():
    # mmdetection 3.3 (Darknet(depth=53), YOLOV3Neck(3, [1024, 512, 256], [512, 256, 128]),
    # YOLOV3Head(80, [512, 256, 128], [1024, 512, 256])): 40584928, 14709760, 6654461
    # parameters (BN weight + bias count as the norm's scale + bias).
    x = jnp.zeros((1, 320, 320, 3))
    bb = Darknet(norm="bn_eval")
    neck = YOLOV3Neck(out_channels=(128, 256, 512), norm="bn_eval")
    head = YOLOV3Head(num_classes=80, feat_channels=(256, 512, 1024), norm="bn_eval")
    pb = jax.eval_shape(bb.init, jax.random.PRNGKey(0), x)["params"]
    feats = jax.eval_shape(lambda p: bb.apply({"params": p}, x), pb)
    assert [f.shape for f in feats] == [(1, 40, 40, 256), (1, 20, 20, 512), (1, 10, 10, 1024)]
    pn = jax.eval_shape(neck.init, jax.random.PRNGKey(0), feats)["params"]
    outs = jax.eval_shape(lambda p, f: neck.apply({"params": p}, f), pn, feats)
    assert [o.shape for o in outs] == [(1, 40, 40, 128), (1, 20, 20, 256), (1, 10, 10, 512)]
    ph = jax.eval_shape(head.init, jax.random.PRNGKey(0), outs)["params"]
    pred = jax.eval_shape(lambda p, f: head.apply({"params": p}, f), ph, outs)
    n = 3 * (40 * 40 + 20 * 20 + 10 * 10)
    assert pred["box"].shape == (1, n, 4) and pred["cls_logits"].shape == (1, n, 80)
    assert pred["obj_logits"].shape == (1, n)
    assert (_count(pb), _count(pn), _count(ph)) == (40584928, 14709760, 6654461)


def test_narrow_network_runs_and_head_biases():
    x = jnp.zeros((2, 64, 96, 3))
    bb = Darknet(width=4, blocks=(1, 1, 1, 1, 1), gn_groups=4)
    neck = YOLOV3Neck(out_channels=(8, 16, 32), gn_groups=4)
    head = YOLOV3Head(num_classes=3, feat_channels=(16, 32, 64), gn_groups=4, box_dims=8)

    @jax.jit
    def init_and_apply(x):
        pb = bb.init(jax.random.PRNGKey(0), x)
        feats = bb.apply(pb, x)
        pn = neck.init(jax.random.PRNGKey(1), feats)
        outs = neck.apply(pn, feats)
        ph = head.init(jax.random.PRNGKey(2), outs)
        return ph, head.apply(ph, outs)

    ph, pred = init_and_apply(x)
    n = 3 * (8 * 12 + 4 * 6 + 2 * 3)
    assert pred["box"].shape == (2, n, 8) and pred["cls_logits"].shape == (2, n, 3)
    bias = np.asarray(ph["params"]["pred0"]["bias"]).reshape(3, 12)
    obj = 8 / (608 / 8) ** 2
    np.testing.assert_allclose(bias[:, 8], math.log(obj / (1 - obj)), rtol=1e-5)
    np.testing.assert_allclose(bias[:, 9:], math.log(0.01 / 0.99), rtol=1e-5)
    np.testing.assert_allclose(bias[:, :8], 0.0)
