"""GA-RPN end to end on `shapes/tiny` (train, checkpoint, restore, proposal recall),
an image without boxes (finite loss and gradients), the location filter of the proposals."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.detectors import ga_rpn
from jaxdet.train import loop
from tests.tiny import synthetic_batch, tiny_config

CONFIG = "configs.guided_anchoring.ga_rpn_tiny_shapes"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, **train):
    config = tiny_config(CONFIG, data_dir, **train)
    r = config.rpn
    r.train_pre_nms_topk, r.train_post_nms_topk = 200, 50
    r.test_pre_nms_topk, r.test_post_nms_topk = 200, 300
    return config


def test_train_save_restore_eval(data_dir, tmp_path):
    workdir = str(tmp_path / "ga_rpn")
    config = _config(data_dir, num_steps=12, checkpoint_every=6, lr=0.01)
    state, parts = loop.train(config, workdir)
    assert int(state.step) == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    assert len(rows) == 12 and all(np.isfinite(r["train/loss"]) for r in rows)
    for key in ("loss_rpn_cls", "loss_rpn_box", "loss_loc", "loss_shape"):
        assert f"train/{key}" in rows[0]
    losses = [r["train/loss"] for r in rows]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AR@100", "AR@300"):
        assert key in stats and np.isfinite(stats[key]), (key, sorted(stats))


def test_image_without_boxes_and_loc_filter(data_dir):
    config = _config(data_dir)
    det = detectors.build(config)
    assert isinstance(det, ga_rpn.GARPN)
    params, det_state = det.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    boxes[0, 0] = [4, 4, 40, 30]
    valid = np.zeros((2, m), bool)
    valid[0, 0] = True
    fn = jax.jit(jax.value_and_grad(
        lambda p, b: det.loss_fn(p, b, jax.random.PRNGKey(1), det_state, 0), has_aux=True))
    for v in (valid, np.zeros_like(valid)):  # one image without boxes; no box at all
        batch = synthetic_batch(config, boxes, np.zeros((2, m), np.int32), v)
        (loss, (terms, _)), grads = fn(params, batch)
        assert np.isfinite(float(loss)) and all(np.isfinite(float(t)) for t in terms.values())
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert float(terms["rpn_num_pos"]) == 0.0 and float(terms["shape_num_pos"]) == 0.0

    # The location filter: loc bias -1e4 (sigmoid 0 < 0.01) drops every location, +10 none.
    def with_loc_bias(value):
        head = dict(params["head"])
        head["conv_loc"] = dict(head["conv_loc"], bias=jnp.full((1,), value))
        return dict(params, head=head)

    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    images = jnp.zeros((2, *config.data.image_size, 3))
    predict = jax.jit(det.predict)
    assert not np.asarray(predict(with_loc_bias(-1e4), images, hw).valid).any()
    dets = predict(with_loc_bias(10.0), images, hw)
    assert dets.boxes.shape == (2, 300, 4) and np.asarray(dets.valid).any()
