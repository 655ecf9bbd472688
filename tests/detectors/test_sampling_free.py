"""Sampling-free detector: loss terms by hand, equivalence with the base detector
in focal mode, bias init, class thresholds, and end-to-end on `shapes/tiny`:
the guided ratio is averaged over the warm-up steps then frozen, and the
running average survives a checkpoint / resume."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.sampling_free import sampling_free_tiny_shapes as sf_config
from jaxdet import detectors
from jaxdet.core.types import ground_truth_from_batch
from jaxdet.losses import guided
from jaxdet.train import checkpoint as ckpt_lib
from jaxdet.train import loop
from jaxdet.train.step import TrainState
from tests.tiny import tiny_config

BASES = ("retinanet", "fcos", "atss")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, base="retinanet", **train):
    """The base's tiny test config, made sampling-free as the shapes config does."""
    config = tiny_config(base, data_dir, **train)
    return sf_config.to_sampling_free(config, base, sf_config.SHAPES_PRIOR[base])


def _batch(config, with_boxes=True):
    h, w = config.data.image_size
    rng = np.random.default_rng(0)
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    valid = np.zeros((2, m), bool)
    if with_boxes:
        boxes[0, :2] = [[4, 4, 40, 30], [30, 20, 60, 62]]
        boxes[1, 0] = [10, 8, 34, 50]
        valid[0, :2] = valid[1, 0] = True
    return dict(
        image=jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32),
        image_hw=jnp.asarray(np.tile([h, w], (2, 1)), jnp.int32),
        boxes=jnp.asarray(boxes),
        labels=jnp.asarray([[0, 2, 0, 0], [1, 0, 0, 0]], jnp.int32),
        valid=jnp.asarray(valid),
        ignore=jnp.zeros((2, m), bool),
    )


def _bce_np(x, t):
    x = np.asarray(x, np.float64)
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


# One base in the default run (the loss code is shared); FCOS and ATSS bases: slow.
@pytest.mark.parametrize(
    "base", [b if b == "retinanet" else pytest.param(b, marks=pytest.mark.slow) for b in BASES]
)
def test_loss_terms_by_hand(base, data_dir):
    config = _config(data_dir, base)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    np.testing.assert_allclose(
        params["head"]["cls_out"]["bias"], guided.optimal_bias(config.sampling_free.prior_prob),
        rtol=1e-6,
    )
    assert set(det_state) == {"guided_count", "guided_ratio"}
    batch = _batch(config)
    loss_fn = jax.jit(lambda p, s, b: det.loss_fn(p, b, jax.random.PRNGKey(1), s, 0))
    loss, (m, new_state) = loss_fn(params, det_state, batch)

    # The classification loss recomputed in numpy: BCE over non-ignored pairs / num_pos.
    out = det.apply(params, batch["image"])
    gt = ground_truth_from_batch(batch)
    a = det.assign(out, det.priors(batch["image"].shape[1:3]), gt)
    gi = np.asarray(a.gt_index)
    labels = np.take_along_axis(np.asarray(gt.labels), np.maximum(gi, 0), axis=1)
    t = (np.eye(det.num_classes)[labels] * (gi >= 0)[..., None])
    bce = _bce_np(out["cls_logits"], t) * (gi != -2)[..., None]
    num_pos = max((gi >= 0).sum(), 1)
    assert (gi >= 0).sum() > 0
    np.testing.assert_allclose(m["cls_fg"], (bce * t).sum() / num_pos, rtol=1e-4)
    np.testing.assert_allclose(m["cls_bg"], (bce * (1 - t)).sum() / num_pos, rtol=1e-4)
    # loss_cls is the term summed into the loss: guided scale x (cls_fg + cls_bg).
    cls = m["cls_fg"] + m["cls_bg"]
    np.testing.assert_allclose(m["loss_cls"], m["guided_scale"] * cls, rtol=1e-6)
    np.testing.assert_allclose(m["bce_fg"], m["cls_fg"], rtol=1e-6)

    # Guided: first step scale = ratio = mean(reg) / cls, so scale * cls = mean(reg).
    reg = [v for k, v in m.items() if k.startswith("loss_") and k != "loss_cls"]
    assert len(reg) == (1 if base == "retinanet" else 2)
    np.testing.assert_allclose(m["guided_scale"], m["guided_ratio"], rtol=1e-6)
    np.testing.assert_allclose(m["loss_cls"], np.mean(reg), rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean(reg) + np.sum(reg), rtol=1e-5)
    assert int(new_state["guided_count"]) == 1
    np.testing.assert_allclose(new_state["guided_ratio"], m["guided_ratio"], rtol=1e-6)

    grads = jax.jit(jax.grad(lambda p: det.loss_fn(p, batch, None, det_state, 0)[0]))(params)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))

    # No GT in the batch: finite loss and gradient, the step is not averaged.
    empty = _batch(config, with_boxes=False)
    loss, (m, state) = loss_fn(params, det_state, empty)
    assert np.isfinite(float(loss)) and float(m["guided_scale"]) == 1.0
    assert int(state["guided_count"]) == 0
    grads = jax.jit(jax.grad(lambda p: det.loss_fn(p, empty, None, det_state, 0)[0]))(params)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_focal_mode_is_the_base_detector(data_dir):
    config = _config(data_dir)
    config.sampling_free.cls_loss = "focal"
    config.sampling_free.weighting = "none"
    det = detectors.build(config)
    base = detectors.build(tiny_config("retinanet", data_dir))
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    batch = _batch(config)
    loss, (m, state) = jax.jit(lambda p: det.loss_fn(p, batch, None, det_state, 0))(params)
    ref, (ref_m, _) = jax.jit(lambda p: base.loss_fn(p, batch, None, {}, 0))(params)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(m["loss_cls"], ref_m["loss_cls"], rtol=1e-6)
    assert float(m["guided_scale"]) == 1.0 and int(state["guided_count"]) == 0


def test_class_thresholds_in_decode_and_predict(data_dir):
    config = _config(data_dir)
    pi = config.sampling_free.prior_prob
    config.sampling_free.class_priors = (1.0, pi, 0.0)  # class 0 can never pass
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    images = _batch(config)["image"]
    out = det.apply(params, images)
    priors = det.priors(images.shape[1:3])
    _, scores, _ = det.decode(jax.tree_util.tree_map(lambda x: x[0], out), priors)
    raw = jax.nn.sigmoid(out["cls_logits"][0])
    assert float(jnp.max(scores[:, 0])) == 0.0
    np.testing.assert_array_equal(scores[:, 1], jnp.where(raw[:, 1] > pi, raw[:, 1], 0.0))
    np.testing.assert_array_equal(scores[:, 2], raw[:, 2])
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(det.predict)(params, images, hw)
    assert dets.boxes.shape == (2, config.test.max_det, 4)
    assert int(dets.valid.sum()) > 0
    assert not bool(jnp.any(dets.valid & (dets.classes == 0)))


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if "train/loss" in r}


def test_guided_ratio_freezes_and_survives_resume(data_dir, tmp_path):
    warmup = 3
    config = _config(data_dir, num_steps=6, checkpoint_every=2)
    config.sampling_free.guided_warmup = warmup
    full_dir = str(tmp_path / "full")
    full, _ = loop.train(config, full_dir)
    rows = _metrics(full_dir)
    assert sorted(rows) == list(range(1, 7))
    for key in ("cls_fg", "cls_bg", "bce_fg", "bce_bg", "guided_ratio", "guided_scale"):
        assert all(np.isfinite(r[f"train/{key}"]) for r in rows.values()), key
    ratios = [rows[s]["train/guided_ratio"] for s in range(1, 7)]
    scales = [rows[s]["train/guided_scale"] for s in range(1, 7)]
    frozen = float(full.det_state["guided_ratio"])
    assert int(full.det_state["guided_count"]) == warmup
    np.testing.assert_allclose(frozen, np.mean(ratios[:warmup]), rtol=1e-5)
    np.testing.assert_allclose(scales[:warmup], ratios[:warmup], rtol=1e-5)
    np.testing.assert_allclose(scales[warmup:], [frozen] * 3, rtol=1e-5)
    assert not np.allclose(ratios[warmup:], frozen)  # the live ratio moves on, the scale not

    # Killed after step 2 (mid warm-up, checkpoint at 2), then resumed to 6: the
    # running average continues from the checkpoint and ends where the full run did.
    killed = str(tmp_path / "killed")
    loop.train(config, killed, stop_at=2)
    resumed, _ = loop.train(config, killed)
    assert int(resumed.step) == 6
    for key in ("guided_count", "guided_ratio"):
        np.testing.assert_allclose(resumed.det_state[key], full.det_state[key], rtol=1e-5)
    resumed_rows = _metrics(killed)
    np.testing.assert_allclose(
        [resumed_rows[s]["train/guided_scale"] for s in range(3, 7)], scales[2:], rtol=1e-5
    )

    # The frozen value is in the checkpoint of step 4 (after the warm-up).
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    template = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=full.opt_state, det_state=det_state)
    ckpt = ckpt_lib.Checkpointer(os.path.join(full_dir, "checkpoints"), async_save=False)
    restored = ckpt.restore(template, step=4)
    ckpt.close()
    assert int(restored.det_state["guided_count"]) == warmup
    np.testing.assert_allclose(restored.det_state["guided_ratio"], frozen, rtol=1e-6)

    stats = loop.evaluate_checkpoint(config, full_dir)
    assert all(np.isfinite(stats[k]) for k in ("AP", "AP50", "AR100"))


def test_unknown_base_and_loss_are_clear_errors(data_dir):
    config = _config(data_dir)
    config.sampling_free.base = "yolo"
    with pytest.raises(ValueError, match="sampling_free.base"):
        detectors.build(config)
    config = _config(data_dir)
    config.sampling_free.cls_loss = "ohem"
    with pytest.raises(ValueError, match="cls_loss"):
        detectors.build(config)


def test_guided_freeze_last_is_the_released_rule(data_dir):
    """sampling_free.guided_freeze='last': the scale after the warm-up is the ratio of
    the last warm-up step (the released GuidedLoss), not the warm-up mean."""
    config = _config(data_dir)
    config.sampling_free.guided_warmup = 2
    config.sampling_free.guided_freeze = "last"
    det = detectors.build(config)
    params, state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    loss_fn = jax.jit(lambda p, s, b, t: det.loss_fn(p, b, jax.random.PRNGKey(1), s, t))
    ratios = []
    for step, seed in enumerate((0, 1, 2)):
        batch = _batch(config)
        batch["image"] = batch["image"] + seed  # a different ratio each step
        _, (m, state) = loss_fn(params, state, batch, jnp.int32(step))
        ratios.append(float(m["guided_ratio"]))
    assert int(state["guided_count"]) == 2
    np.testing.assert_allclose(float(state["guided_ratio"]), ratios[1], rtol=1e-6)
    np.testing.assert_allclose(float(m["guided_scale"]), ratios[1], rtol=1e-6)
    assert ratios[0] != pytest.approx(ratios[1])


@pytest.mark.parametrize("base", ("retinanet", "fcos"))
def test_uncertainty_weighting_learns_log_sigma(data_dir, base):
    """weighting='uncertainty': the loss is sum_i L_i / (2 sigma_i^2) + log sigma_i over
    (cls, regression terms...), log sigma_i are trained parameters, the unweighted
    terms are reported, and the network's parameters are unchanged."""
    config = _config(data_dir, base)
    config.sampling_free.weighting = "uncertainty"
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    n = 1 + {"retinanet": 1, "fcos": 2}[base]
    np.testing.assert_array_equal(params["loss_weights"]["log_sigma"], np.zeros(n))
    params = {**params, "loss_weights": {"log_sigma": jnp.linspace(-0.5, 0.5, n)}}
    batch = _batch(config)
    fn = jax.jit(lambda p: det.loss_fn(p, batch, jax.random.PRNGKey(1), det_state, 0))
    loss, (m, state) = fn(params)
    names = ["cls"] + sorted(k.removeprefix("unweighted_") for k in m
                             if k.startswith("unweighted_") and k != "unweighted_cls")
    assert len(names) == n
    s = np.linspace(-0.5, 0.5, n)
    raw = np.array([float(m[f"unweighted_{k}"]) for k in names])
    np.testing.assert_allclose(float(loss), np.sum(raw / 2 * np.exp(-2 * s) + s), rtol=1e-5)
    np.testing.assert_allclose(float(m["unweighted_cls"]), float(m["cls_fg"] + m["cls_bg"]),
                               rtol=1e-6)
    np.testing.assert_allclose([float(m[f"sigma_{k}"]) for k in names], np.exp(s), rtol=1e-6)
    assert state == det_state  # no guided state update
    grads = jax.jit(jax.grad(lambda p: fn(p)[0]))(params)
    g = np.asarray(grads["loss_weights"]["log_sigma"])
    np.testing.assert_allclose(g, 1.0 - raw * np.exp(-2 * s), rtol=1e-4, atol=1e-6)
    # predictions do not see the loss weights
    images = batch["image"]
    dets = jax.jit(det.predict)(params, images, batch["image_hw"])
    assert np.isfinite(np.asarray(dets.boxes)).all()


def test_unknown_weighting_is_a_clear_error(data_dir):
    config = _config(data_dir)
    config.sampling_free.weighting = "gradnorm"
    with pytest.raises(ValueError, match="weighting"):
        detectors.build(config)
