"""RepPoints against mmdetection 3.3's `RepPointsHead.loss_by_feat` on recorded cases.

The fixtures (tests/fixtures/mmdet_reppoints/case*.npz) come from
`benchmarks/record_mmdet_reppoints.py` (torch + mmdetection in a separate venv): random
classification maps and init / refined point offsets on 3 levels (strides 8, 16, 32) of
2 images (64-96 px, 0-9 GTs; the second image of case 0 has none), one case per
pseudo-box transform, the moment transform with a non-zero 2-vector. Recorded: both
stages' `gt_inds`, the refine stage's proposals, the three losses and the gradients of
their sum with respect to every input. Case 4 is the box representation
(`use_grid_points`, min-max, init max-IoU on the base squares): its point sets are
mmdetection's `gen_grid_from_reg` of random box deltas, which `grid_from_deltas` must
reproduce.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.models.heads.reppoints_head import grid_from_deltas
from tests.tiny import recorded_gt, tiny_config

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "fixtures",
                                         "mmdet_reppoints", "case*.npz")))
M = 12  # padded GT rows
TERMS = ("loss_cls", "loss_pts_init", "loss_pts_refine")


def _flat(rec, key):
    """Per-level NCHW maps -> [B, N, C] in jaxdet's order (level, row-major)."""
    maps = [rec[f"{key}_s{s}"] for s in rec["strides"]]
    return np.concatenate([m.reshape(*m.shape[:2], -1).transpose(0, 2, 1) for m in maps], 1)


@pytest.fixture(params=FIXTURES, ids=[os.path.basename(f) for f in FIXTURES])
def case(request):
    rec = dict(np.load(request.param))
    config = tiny_config("reppoints", "/nonexistent")
    config.data.image_size = tuple(int(v) for v in rec["image_hw"])
    config.data.num_classes = 3
    config.model.strides = tuple(int(s) for s in rec["strides"])
    config.reppoints.transform = str(rec["transform"])
    if bool(rec.get("use_grid_points", False)):
        config.reppoints.use_grid_points = True
        config.assigner.name = "max_iou"
        config.assigner.ignore_iof_thr = -1.0
    det = detectors.build(config)
    priors = det.priors(config.data.image_size)
    batch = rec["cls_s8"].shape[0]
    outputs = {
        "cls_logits": jnp.asarray(_flat(rec, "cls")),
        "pts_init": jnp.asarray(_flat(rec, "pts_init")),
        "pts_refine": jnp.asarray(_flat(rec, "pts_refine")),
        "moment_transfer": jnp.broadcast_to(jnp.asarray(rec["moment_transfer"]), (batch, 2)),
    }
    return rec, det, priors, outputs, recorded_gt(rec, batch, M)


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
    want = {k: _flat(rec, f"grad_{k}") for k in ("cls", "pts_init", "pts_refine")}
    got = {"cls": grads["cls_logits"], "pts_init": grads["pts_init"],
           "pts_refine": grads["pts_refine"]}
    if bool(rec["use_grid_points"]):
        # The grid's points share coordinates (3 per row, 3 per column): torch's min / max
        # send a tie's gradient to one point, jax's split it. Compare the gradients of
        # the box deltas the grids are made of, the parameters' path.
        square = jnp.asarray([-2.0, -2.0, 2.0, 2.0])
        b_init = grid_from_deltas(jnp.asarray(_flat(rec, "grid_d_init")), square)[1]
        for key, prev in (("pts_init", square), ("pts_refine", b_init)):
            _, vjp = jax.vjp(lambda d, prev=prev: grid_from_deltas(d, prev)[0],
                             jnp.asarray(_flat(rec, f"grid_d_{key[4:]}")))
            got[key], want[key] = vjp(got[key])[0], vjp(jnp.asarray(want[key]))[0]
    for key in got:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    if "grad_moment_transfer" in rec:
        np.testing.assert_allclose(grads["moment_transfer"].sum(0),
                                   rec["grad_moment_transfer"], rtol=1e-4, atol=1e-7)


GRID_FIXTURES = [f for f in FIXTURES if bool(np.load(f)["use_grid_points"])]


@pytest.mark.parametrize("path", GRID_FIXTURES, ids=os.path.basename)
def test_grid_from_deltas_is_gen_grid_from_reg(path):
    rec = np.load(path)
    nhwc = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))
    for s in rec["strides"]:
        g = {k: rec[f"grid_{k}_s{s}"] for k in ("d_init", "d_refine", "p_init", "b_init",
                                                 "p_refine", "b_refine")}
        square = jnp.asarray([-2.0, -2.0, 2.0, 2.0])
        p_init, b_init = jax.jit(grid_from_deltas)(nhwc(g["d_init"]), square)
        p_refine, b_refine = jax.jit(jax.vmap(grid_from_deltas))(nhwc(g["d_refine"]), b_init)
        for got, key in ((p_init, "p_init"), (b_init, "b_init"), (p_refine, "p_refine"),
                         (b_refine, "b_refine")):
            np.testing.assert_allclose(got, nhwc(g[key]), rtol=1e-5, atol=1e-5, err_msg=key)
