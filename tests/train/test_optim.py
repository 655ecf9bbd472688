"""Schedules and optimizers of the recipes: mmdetection's 1x steps, warm-up, SGD
weight decay as torch, AdamW decoupled decay applied once, frozen leaves untouched."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdet.train import optim


def _cfg(**kw):
    base = dict(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_steps=500,
                warmup_ratio=0.001, schedule="step", decay_epochs=(8, 11), decay_factor=0.1,
                grad_clip=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_step_schedule_with_linear_warmup():
    s = optim.make_schedule(_cfg(), total_steps=1200, steps_per_epoch=100)
    assert float(s(0)) == pytest.approx(0.01 * 0.001)
    assert float(s(250)) == pytest.approx(0.01 * (0.001 + 0.999 * 0.5))
    assert float(s(700)) == pytest.approx(0.01)
    assert float(s(800)) == pytest.approx(0.001) and float(s(1100)) == pytest.approx(1e-4)


def test_cosine_schedule_ends_at_zero():
    s = optim.make_schedule(_cfg(schedule="cosine", warmup_steps=0), 100, 10)
    assert float(s(0)) == pytest.approx(0.01) and float(s(100)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown optimizer.schedule"):
        optim.make_schedule(_cfg(schedule="poly"), 100, 10)


def test_sgd_weight_decay_as_torch():
    # torch SGD: g' = g + wd * p; v = g' (first step); p -= lr * v
    tx = optim.make_optimizer(_cfg(), lambda step: 0.1)
    p = {"w": jnp.array([2.0])}
    g = {"w": jnp.array([0.5])}
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(u["w"], [-0.1 * (0.5 + 1e-4 * 2.0)], rtol=1e-6)


def test_adamw_decays_once():
    cfg = _cfg(name="adamw", weight_decay=0.5)
    tx = optim.make_optimizer(cfg, lambda step: 0.1)
    p = {"w": jnp.array([2.0])}
    u, _ = tx.update({"w": jnp.array([0.0])}, tx.init(p), p)
    np.testing.assert_allclose(u["w"], [-0.1 * 0.5 * 2.0], rtol=1e-6)  # zero grad: decay only


def test_frozen_leaves_get_no_update_and_unknown_optimizer():
    tx = optim.make_optimizer(_cfg(), lambda step: 0.1, {"a": True, "b": False})
    p = {"a": jnp.ones(2), "b": jnp.ones(2)}
    u, _ = tx.update({"a": jnp.ones(2), "b": jnp.ones(2)}, tx.init(p), p)
    assert np.all(np.asarray(u["b"]) == 0) and np.all(np.asarray(u["a"]) < 0)
    with pytest.raises(ValueError, match="unknown optimizer.name"):
        optim.make_optimizer(_cfg(name="lamb"), lambda step: 0.1)
