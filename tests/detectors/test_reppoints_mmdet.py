"""RepPoints against mmdetection 3.3's `RepPointsHead.loss_by_feat` on recorded cases.

The fixtures (tests/fixtures/mmdet_reppoints/case*.npz) come from
`benchmarks/record_mmdet_reppoints.py` (torch + mmdetection in a separate venv): random
classification maps and init / refined point offsets on 3 levels (strides 8, 16, 32) of
2 images (64-96 px, 0-9 GTs; the second image of case 0 has none), one case per
pseudo-box transform, the moment transform with a non-zero 2-vector. Recorded: both
stages' `gt_inds`, the refine stage's proposals, the three losses and the gradients of
their sum with respect to every input.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.core.types import GroundTruth
from tests.tiny import tiny_config

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "fixtures",
                                         "mmdet_reppoints", "case*.npz")))
M = 12  # padded GT rows
TERMS = ("loss_cls", "loss_pts_init", "loss_pts_refine")


def _flat(rec, key):
    """Per-level NCHW maps -> [B, N, C] in jaxdet's order (level, row-major)."""
    maps = [rec[f"{key}_s{s}"] for s in rec["strides"]]
    return np.concatenate([m.reshape(*m.shape[:2], -1).transpose(0, 2, 1) for m in maps], 1)


def _gt(rec, batch):
    boxes = np.full((batch, M, 4), 1e4, np.float32)  # garbage in padding rows
    labels = np.zeros((batch, M), np.int32)
    valid = np.zeros((batch, M), bool)
    for b in range(batch):
        g = rec[f"gt_boxes_{b}"]
        boxes[b, : len(g)] = g
        labels[b, : len(g)] = rec[f"gt_labels_{b}"]
        valid[b, : len(g)] = True
    return GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels),
                       valid=jnp.asarray(valid), ignore=jnp.zeros((batch, M), bool))


@pytest.fixture(params=FIXTURES, ids=[os.path.basename(f) for f in FIXTURES])
def case(request):
    rec = dict(np.load(request.param))
    config = tiny_config("reppoints", "/nonexistent")
    config.data.image_size = tuple(int(v) for v in rec["image_hw"])
    config.data.num_classes = 3
    config.model.strides = tuple(int(s) for s in rec["strides"])
    config.reppoints.transform = str(rec["transform"])
    det = detectors.build(config)
    priors = det.priors(config.data.image_size)
    batch = rec["cls_s8"].shape[0]
    outputs = {
        "cls_logits": jnp.asarray(_flat(rec, "cls")),
        "pts_init": jnp.asarray(_flat(rec, "pts_init")),
        "pts_refine": jnp.asarray(_flat(rec, "pts_refine")),
        "moment_transfer": jnp.broadcast_to(jnp.asarray(rec["moment_transfer"]), (batch, 2)),
    }
    return rec, det, priors, outputs, _gt(rec, batch)


def test_assignments_and_refine_proposals(case):
    rec, det, priors, outputs, gt = case
    a = jax.jit(det.assign)(outputs, priors, gt)
    proposals = det.boxes(outputs, "pts_init", priors)
    for b in range(gt.valid.shape[0]):
        np.testing.assert_array_equal(np.asarray(a["init"].gt_index[b]) + 1,
                                      rec[f"init_gt_inds_{b}"])
        # mmdetection: 0 = negative, -1 = ignore; jaxdet's gt_index + 1 (ignore -2 -> -1)
        np.testing.assert_array_equal(np.asarray(a["refine"].gt_index[b]) + 1,
                                      rec[f"refine_gt_inds_{b}"])
        np.testing.assert_allclose(proposals[b], rec[f"refine_proposals_{b}"],
                                   rtol=1e-6, atol=1e-4)


def _loss_terms(det, priors, gt):
    def terms(outputs):
        a = det.assign(outputs, priors, gt)
        t = det.losses(outputs, priors, gt, a, None)
        return {k: t[k] for k in TERMS}
    return terms


def test_losses(case):
    rec, det, priors, outputs, gt = case
    terms = jax.jit(_loss_terms(det, priors, gt))(outputs)
    for k in TERMS:
        np.testing.assert_allclose(float(terms[k]), rec[k].sum(), rtol=1e-5, atol=1e-6,
                                   err_msg=k)


def test_gradients(case):
    rec, det, priors, outputs, gt = case
    total = lambda o: sum(_loss_terms(det, priors, gt)(o).values())
    grads = jax.jit(jax.grad(total))(outputs)
    for key, name in (("cls_logits", "cls"), ("pts_init", "pts_init"),
                      ("pts_refine", "pts_refine")):
        np.testing.assert_allclose(grads[key], _flat(rec, f"grad_{name}"), rtol=1e-4,
                                   atol=1e-6, err_msg=key)
    if "grad_moment_transfer" in rec:
        np.testing.assert_allclose(grads["moment_transfer"].sum(0),
                                   rec["grad_moment_transfer"], rtol=1e-4, atol=1e-7)
