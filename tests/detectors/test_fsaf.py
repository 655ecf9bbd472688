"""FSAF detector: online feature selection inside the loss, ignoring on the other levels,
both variants end to end (train, save, restore, eval), the empty-image case and the
merge of both branches before NMS."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.assign import center_region, lattice
from jaxdet.core.types import GroundTruth
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config

AF = "configs.fsaf.fsaf_tiny_shapes"
AB_AF = "configs.fsaf.fsaf_ab_af_tiny_shapes"
C = 3
BOX = [10.0, 10.0, 50.0, 50.0]  # 40 px: heuristic P5 (canonical 35.84 px at P5)
P3_CAND, P4_CAND, P5_CAND = [27, 28, 35, 36], [74], [83]  # its effective priors per level


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _gt(boxes, labels):
    boxes = jnp.asarray(boxes, jnp.float32)[None]
    m = boxes.shape[1]
    return GroundTruth(boxes=boxes, labels=jnp.asarray(labels, jnp.int32)[None],
                       valid=jnp.ones((1, m), bool), ignore=jnp.zeros((1, m), bool))


def _af_loss(det, out, priors, gt):
    """(L_af, terms) of the anchor-free branch, its assignment made from `out`."""
    terms = det.af_losses(out, priors, gt, det.af_assign(out, priors, gt))
    return terms["af_loss_cls"] + terms["af_loss_box"], terms


def _crafted_outputs(det, good_prior):
    """AF outputs of one 64 px image: confident background everywhere; the priors
    `good_prior` (int or list) predict the GT (class 1) exactly, the others badly."""
    priors = det.priors((64, 64))["af"]
    n = priors.boxes.shape[0]
    cls = jnp.full((1, n, C), -8.0)
    cls = cls.at[0, good_prior, 1].set(8.0)
    tblr = jnp.full((1, n, 4), 0.25)
    exact = center_region.tblr_encode(priors.boxes[jnp.asarray(good_prior)], jnp.asarray(BOX))
    tblr = tblr.at[0, good_prior].set(exact)
    return {"af_cls_logits": cls, "af_tblr": tblr}, priors


@pytest.mark.parametrize("selection", ["online", "heuristic"])
def test_online_selection_picks_the_lowest_loss_level(selection, data_dir):
    config = tiny_config(AF, data_dir)
    config.fsaf.selection = selection
    det = detectors.build(config)
    out, priors = _crafted_outputs(det, good_prior=P4_CAND[0])
    gt = _gt([BOX], [1])
    assignment, ignore_labels, info = det.af_assign(out, priors, gt)
    np.testing.assert_array_equal(info["selected"], [[1]])  # P4: the lowest loss
    np.testing.assert_array_equal(info["heuristic"], [[2]])  # size rule: P5
    pos = set(np.nonzero(np.asarray(assignment.gt_index[0]) >= 0)[0].tolist())
    assert pos == (set(P4_CAND) if selection == "online" else set(P5_CAND))
    loss, metrics = _af_loss(det, out, priors, gt)
    assert float(metrics["fsaf/mismatch"]) == 1.0 and float(metrics["fsaf/num_gts"]) == 1.0
    assert float(metrics["fsaf/sel_l1"]) == 1.0 and float(metrics["fsaf/heur_l2"]) == 1.0

    # Gradients: the GT's class gets no signal on the priors of the levels it does not
    # train (ignored), the other classes do; no box gradient there.
    grads = jax.grad(lambda o: _af_loss(det, o, priors, gt)[0])(out)
    g_cls, g_box = np.asarray(grads["af_cls_logits"][0]), np.asarray(grads["af_tblr"][0])
    off = P3_CAND + (P5_CAND if selection == "online" else P4_CAND)
    assert np.all(g_cls[off, 1] == 0) and np.all(g_cls[off][:, [0, 2]] != 0)
    assert np.all(g_box[off] == 0)
    trained = P4_CAND if selection == "online" else P5_CAND
    assert np.all(g_cls[trained, 1] != 0)


def test_selection_is_inside_jit_and_sees_no_gradient(data_dir):
    det = detectors.build(tiny_config(AF, data_dir))
    out, priors = _crafted_outputs(det, good_prior=P3_CAND)
    gt = _gt([BOX, [0, 0, 12, 12]], [1, 0])
    sel = jax.jit(lambda o: det.af_assign(o, priors, gt)[2]["selected"])(out)
    np.testing.assert_array_equal(sel[0, :1], [0])
    # Loss of the selection path is under stop_gradient: the loss only differentiates
    # through the final, selected targets (finite everywhere).
    grads = jax.jit(jax.grad(lambda o: _af_loss(det, o, priors, gt)[0]))(out)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("selection", ["online", "heuristic"])
def test_lattice_assignment_equals_the_dense_one(selection, data_dir, monkeypatch):
    # The detector runs `center_region_lattice` on its (tiling) priors; the dense path must
    # give the same assignment, ignored classes and selection on random GTs and outputs.
    config = tiny_config(AF, data_dir)
    config.fsaf.selection = selection
    det = detectors.build(config)
    priors = det.priors((64, 64))["af"]
    assert lattice.is_tiling(priors, disjoint=True)
    rng = np.random.default_rng(0)
    b, m, n = 3, 7, priors.boxes.shape[0]
    wh = rng.uniform(2, 60, (b, m, 2))
    xy = rng.uniform(-10, 74, (b, m, 2)) - wh / 2
    gt = GroundTruth(boxes=jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32),
                     labels=jnp.asarray(rng.integers(0, C, (b, m)), jnp.int32),
                     valid=jnp.asarray(rng.random((b, m)) < 0.8),
                     ignore=jnp.asarray(rng.random((b, m)) < 0.15))
    out = {"af_cls_logits": jnp.asarray(rng.normal(0, 2, (b, n, C)), jnp.float32),
           "af_tblr": jnp.asarray(rng.uniform(0, 1, (b, n, 4)), jnp.float32)}
    fast = jax.jit(lambda o, g: det.af_assign(o, priors, g))(out, gt)
    assert np.any(np.asarray(fast[0].gt_index) >= 0) and np.any(np.asarray(fast[1]))
    monkeypatch.setattr(lattice, "is_tiling", lambda *a, **k: False)
    dense = jax.jit(lambda o, g: det.af_assign(o, priors, g))(out, gt)
    for x, y in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(dense)):
        np.testing.assert_array_equal(x, y)


def test_branches_are_merged_before_nms(data_dir):
    config = tiny_config(AB_AF, data_dir)
    det = detectors.build(config)
    images = jnp.zeros((1, 64, 64, 3))
    both = det.priors(images.shape[1:3])
    af_priors, ab_priors = both["af"], both["ab"]
    n_ab = ab_priors.boxes.shape[0]
    k = 64 * 9 + 10 * 9 + 4  # a P4 anchor (ratio 1, middle scale)
    ab_box = np.asarray(ab_priors.boxes[k])
    af_box = jnp.asarray([4.0, 4.0, 20.0, 24.0])

    def outputs(af_target, af_class):
        n = af_priors.boxes.shape[0]
        af_cls = jnp.full((1, n, C), -9.0).at[0, 10, af_class].set(2.0)
        tblr = jnp.full((1, n, 4), 0.25).at[0, 10].set(
            center_region.tblr_encode(af_priors.boxes[10], af_target))
        ab_cls = jnp.full((1, n_ab, C), -9.0).at[0, k, 0].set(3.0)
        return {"af_cls_logits": af_cls, "af_tblr": tblr, "cls_logits": ab_cls,
                "box_deltas": jnp.zeros((1, n_ab, 4))}

    hw = jnp.asarray([[64, 64]], jnp.int32)
    det.apply = lambda params, x: outputs(af_box, 0)
    d = det.predict(None, images, hw)
    boxes = np.asarray(d.boxes[0])[np.asarray(d.valid[0])]
    assert len(boxes) == 2  # one from each branch
    np.testing.assert_allclose(sorted(boxes.tolist()),
                               sorted([np.clip(ab_box, 0, 64).tolist(), af_box.tolist()]),
                               atol=1e-4)
    # The same box and class from both branches: one NMS removes the weaker one.
    det.apply = lambda params, x: outputs(jnp.clip(jnp.asarray(ab_box), 0, 64), 0)
    d = det.predict(None, images, hw)
    assert int(d.valid.sum()) == 1
    np.testing.assert_allclose(float(d.scores[0, 0]), jax.nn.sigmoid(3.0), rtol=1e-6)


# The anchor-based + anchor-free variant runs both branches; the anchor-free-only one
# differs only by config and runs with the slow tests (`make test-slow`).
BOTH = [pytest.param(AF, marks=pytest.mark.slow), AB_AF]


@pytest.mark.parametrize("module", BOTH)
def test_image_without_boxes_gives_finite_loss(module, data_dir):
    config = tiny_config(module, data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 5
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    valid = np.zeros((2, m), bool)
    valid[0, 0] = True
    for v in (valid, np.zeros_like(valid)):
        batch = synthetic_batch(config, boxes, np.zeros(np.shape(v), np.int32), v)
        grad_fn = jax.jit(jax.value_and_grad(
            lambda p, b=batch: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0),
            has_aux=True,
        ))
        (loss, (metrics, _)), grads = grad_fn(params)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        assert float(metrics["fsaf/num_gts"]) == float(v.sum())


@pytest.mark.parametrize("module", BOTH)
def test_train_save_restore_eval(module, data_dir, tmp_path):
    config = tiny_config(module, data_dir, num_steps=12, checkpoint_every=6, lr=0.01)
    workdir = str(tmp_path / module.rsplit(".", 1)[1])
    state, parts = loop.train(config, workdir)
    assert int(state.step) == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    losses = [r["train/loss"] for r in rows]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    mismatch = [r["train/fsaf/mismatch"] for r in rows]
    assert all(0.0 <= x <= 1.0 for x in mismatch)
    if module == AB_AF:
        assert all("train/ab_loss_cls" in r for r in rows)
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    det = parts.detector
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(det.predict)(state.params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)
