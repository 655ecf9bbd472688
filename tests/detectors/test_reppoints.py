"""RepPoints detector: end to end (train, save, restore, eval), the two assignment stages
on a hand-made image, and images without boxes (finite losses and gradients)."""

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
    workdir = str(tmp_path / "rp")
    config, state, parts, _ = train_tiny("reppoints", data_dir, workdir)
    check_restore_and_predict(config, state, parts, workdir)


def test_assignment_stages_and_empty_images(data_dir):
    config = tiny_config("reppoints", data_dir)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    boxes[0, 1] = [30, 30, 62, 62]
    valid = np.zeros((2, m), bool)
    valid[0, :2] = True  # image 0 has two boxes, image 1 none
    batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), valid)

    @jax.jit
    def stages(p):
        out = det.apply(p, batch["image"])
        priors = det.priors(tuple(config.data.image_size), out)
        a = det.assign(out, priors, ground_truth_from_batch(batch))
        return out, a, det.losses(out, priors, ground_truth_from_batch(batch), a, None)

    out, a, terms = stages(params)
    assert out["pts_init"].shape[-1] == 18
    init = np.asarray(a["init"].gt_index)
    # One point per GT (pos_num 1) in image 0, none in image 1.
    assert sorted(init[0][init[0] >= 0].tolist()) == [0, 1]
    assert np.all(init[1] == -1)
    assert np.all(np.asarray(a["refine"].gt_index)[1] == -1)
    assert float(terms["num_pos_init"]) == 1.0
    for v in terms.values():
        assert np.isfinite(float(v))

    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0)[0]))
    for v in (valid, np.zeros_like(valid)):  # also: a batch with no box at all
        loss, grads = grad_fn(params, synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v))
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_pseudo_boxes_in_pixels():
    from jaxdet.detectors import reppoints as rp

    pri = rp.points((8, 16), (32, 32))  # offset 0: prior 5 is (8, 8), prior 19 (16, 16)
    pts = np.zeros((20, 18), np.float32)
    pts[5, 0::2] = np.linspace(-1, 1, 9)  # y in strides
    pts[5, 1::2] = np.linspace(0, 2, 9)  # x in strides
    pts[19, 0::2] = 0.5
    boxes = rp.pseudo_boxes(jnp.asarray(pts), pri, "minmax", jnp.zeros(2), 0.01)
    np.testing.assert_allclose(boxes[5], [8, 0, 24, 16])
    np.testing.assert_allclose(boxes[19], [16, 24, 16, 24])
    np.testing.assert_allclose(boxes[0], [0, 0, 0, 0])


def test_box_representation_with_max_iou_init(data_dir):
    """use_grid_points + assigner 'max_iou': the init stage assigns the squares of side
    4 strides at the locations by IoU; losses and gradients finite, also without GT."""
    config = tiny_config("reppoints", data_dir)
    config.reppoints.use_grid_points = True
    config.reppoints.transform = "minmax"
    config.assigner.name = "max_iou"
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]  # IoU 0.74 with the stride-8 square [8, 0, 40, 32]
    boxes[0, 1] = [16, 16, 48, 48]  # exactly the stride-8 square centred at (32, 32)
    valid = np.zeros((2, m), bool)
    valid[0, :2] = True
    batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), valid)
    gt = ground_truth_from_batch(batch)
    out = jax.jit(det.apply)(params, batch["image"])
    priors = det.priors(tuple(config.data.image_size), out)
    init = np.asarray(jax.jit(det.assign)(out, priors, gt)["init"].gt_index)
    c = np.asarray(priors.centers)
    square = lambda x, y: np.flatnonzero((c[:, 0] == x) & (c[:, 1] == y)
                                         & (np.asarray(priors.strides) == 8))[0]
    assert init[0, square(24, 16)] == 0 and init[0, square(32, 32)] == 1
    assert set(init[0][init[0] >= 0].tolist()) == {0, 1} and np.all(init[1] < 0)
    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0)[0]))
    for v in (valid, np.zeros_like(valid)):
        loss, grads = grad_fn(params, synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v))
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
