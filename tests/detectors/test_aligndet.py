"""AlignDet detector: end to end (train, save, restore, eval), the two assignment stages
on a hand-made image (padding never positive), and images without boxes (finite losses
and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.core.types import ground_truth_from_batch
from tests.tiny import check_restore_and_predict, synthetic_batch, tiny_config, train_tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "ad")
    config, state, parts, _ = train_tiny("aligndet", data_dir, workdir)
    check_restore_and_predict(config, state, parts, workdir)


def test_assignment_stages_and_empty_images(data_dir):
    config = tiny_config("aligndet", data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    boxes[0, 1] = [30, 30, 62, 62]
    boxes[0, 2] = [8, 8, 56, 56]  # a padding row (valid False) with a real-looking box
    boxes[1, 0] = [10, 10, 50, 50]  # padding too: image 1 has no box
    valid = np.zeros((2, m), bool)
    valid[0, :2] = True
    labels = np.zeros((2, m), np.int32)
    batch = synthetic_batch(config, boxes, labels, valid)
    gt = ground_truth_from_batch(batch)

    @jax.jit
    def stages(p):
        out = det.apply(p, batch["image"])
        priors = det.priors(tuple(config.data.image_size), out)
        a = det.assign(out, priors, gt)
        return priors["refined"].boxes, a, det.losses(out, priors, gt, a, None)

    refined, a, terms = stages(params)
    assert refined.shape == (2, priors_count(config), 4)
    for stage in ("init", "final"):
        idx = np.asarray(a[stage].gt_index)
        assert set(idx[0][idx[0] >= 0].tolist()) == {0, 1}  # both GTs, never the padding
        assert np.all(idx[1] == -1)
    for v in terms.values():
        assert np.isfinite(float(v))

    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0)[0]))
    for v in (valid, np.zeros_like(valid)):  # also: a batch with no box at all
        loss, grads = grad_fn(params, synthetic_batch(config, boxes, labels, v))
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_plain_conv_ablation_builds_and_traces(data_dir):
    config = tiny_config("aligndet", data_dir)
    config.aligndet.roi_conv = False
    det = detectors.build(config)
    hw = tuple(config.data.image_size)
    params, det_state = jax.eval_shape(lambda: det.init(jax.random.PRNGKey(0), hw))
    assert "cls_align" in params["head"] and "bias" not in params["head"]["cls_align"]
    batch = synthetic_batch(config, np.zeros((2, 4, 4)), np.zeros((2, 4)), np.zeros((2, 4)))
    loss, _ = jax.eval_shape(lambda p: det.loss_fn(p, batch, jax.random.PRNGKey(1),
                                                   det_state, 0), params)
    assert loss.shape == ()


def priors_count(config) -> int:
    h, w = config.data.image_size
    return sum(-(-h // s) * -(-w // s) for s in config.model.strides)


def test_decode_is_the_second_stage_on_the_refined_boxes(data_dir):
    from jaxdet.core import coders
    from jaxdet.detectors import aligndet

    config = tiny_config("aligndet", data_dir)
    det = detectors.build(config)
    pri = det.priors(tuple(config.data.image_size))["anchors"]
    n = pri.num_priors
    rng = np.random.default_rng(0)
    out = {"obj_logits": jnp.zeros((n,)), "cls_logits": jnp.zeros((n, 3)),
           "init_deltas": jnp.asarray(rng.normal(size=(n, 4)) * 0.5, jnp.float32),
           "box_deltas": jnp.asarray(rng.normal(size=(n, 4)) * 0.5, jnp.float32)}
    boxes, scores, factors = det.decode(out, {"anchors": pri, "refined": None})
    refined = aligndet.refined_boxes(out["init_deltas"], pri, (0.1, 0.1, 0.2, 0.2))
    np.testing.assert_allclose(
        np.asarray(boxes),
        np.asarray(coders.delta_xywh_decode(refined, out["box_deltas"],
                                            stds=(0.05, 0.05, 0.1, 0.1))), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scores), 0.5)
    assert factors is None
