"""`config.model.dtype='bfloat16'`: float32 parameters, bf16 convolutions, float32 head
outputs (so assigners, losses, box decoding and NMS run in float32); a few tiny ATSS
steps train with finite, decreasing losses."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet.train import loop
from jaxdet.train.step import network_images, predict_step
from tests.tiny import tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_bf16_network_float32_params_and_outputs(data_dir):
    config = tiny_config("atss", data_dir)
    config.data.num_classes = 3
    config.model.dtype = "bfloat16"
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), (64, 64))
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    images = jnp.zeros((2, 64, 64, 3), jnp.uint8)
    hw = jnp.full((2, 2), 64, jnp.int32)
    assert network_images(det, images, hw).dtype == jnp.bfloat16
    hlo = jax.jit(lambda p, x: det.apply(p, network_images(det, x, hw))).lower(
        params, images).as_text()
    assert "stablehlo.convolution" in hlo and "bf16" in hlo
    out = jax.jit(lambda p, x: det.apply(p, network_images(det, x, hw)))(params, images)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(out))
    dets = jax.jit(functools.partial(predict_step, detector=det))(params, images, hw)
    assert dets.boxes.dtype == jnp.float32 and dets.scores.dtype == jnp.float32


def test_bf16_few_steps_train(data_dir, tmp_path):
    config = tiny_config("atss", data_dir, num_steps=8, checkpoint_every=8, lr=0.01)
    config.model.dtype = "bfloat16"
    state, _ = loop.train(config, str(tmp_path))
    assert int(state.step) == 8
    leaves = jax.tree_util.tree_leaves(state.params)
    assert all(p.dtype == jnp.float32 and np.isfinite(np.asarray(p)).all() for p in leaves)
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    assert len(losses) == 8 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
