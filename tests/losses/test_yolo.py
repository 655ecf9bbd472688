"""YOLOv3's coder and loss terms: hand-computed values, finiteness, jit(vmap)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.core import coders
from jaxdet.losses.yolo import mse_loss, yolov3_terms


def bce(x, t):
    p = 1.0 / (1.0 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_yolo_encode_hand_computed():
    anchor = jnp.asarray([[0.0, 0.0, 16.0, 16.0]])  # centre (8, 8), 16 x 16
    gt = jnp.asarray([[6.0, 4.0, 14.0, 20.0]])  # centre (10, 12), 8 x 16
    t = np.asarray(coders.yolo_encode(anchor, gt, 8.0))[0]
    # ty = 4 / 8 + 0.5 = 1 is clamped to 1 - eps.
    np.testing.assert_allclose(t, [2 / 8 + 0.5, 1 - 1e-6, math.log(0.5), 0.0], rtol=1e-6)
    # Offsets outside the cell are clamped to (eps, 1 - eps); zero width to log(eps).
    gt2 = jnp.asarray([[20.0, -20.0, 20.0, 4.0]])  # centre (20, -8), 0 x 24
    t2 = np.asarray(coders.yolo_encode(anchor, gt2, 8.0))[0]
    np.testing.assert_allclose(t2, [1 - 1e-6, 1e-6, math.log(1e-6), math.log(1.5)], rtol=1e-5)


def test_yolo_decode_inverts_encode_and_broadcasts_strides():
    rng = np.random.default_rng(0)
    anchors = np.concatenate([rng.uniform(0, 50, (6, 2)), rng.uniform(60, 90, (6, 2))], 1)
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2 + rng.uniform(-3.9, 3.9, (6, 2))
    wh = rng.uniform(5, 40, (6, 2))
    gt = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)
    strides = jnp.asarray([8.0, 8, 16, 16, 32, 32])
    t = coders.yolo_encode(jnp.asarray(anchors, jnp.float32), jnp.asarray(gt), strides)
    back = coders.yolo_decode(jnp.asarray(anchors, jnp.float32), t, strides)
    np.testing.assert_allclose(np.asarray(back), gt, atol=1e-3)


def test_yolov3_terms_hand_computed():
    box = jnp.asarray([[0.3, -0.2, 0.1, 0.4], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    obj = jnp.asarray([0.5, -1.0, 3.0])
    cls = jnp.asarray([[0.2, -0.4], [0.0, 0.0], [5.0, 5.0]])
    box_t = jnp.asarray([[0.6, 0.25, -0.3, 0.2], [0.0] * 4, [0.0] * 4])
    cls_t = jnp.asarray([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    pos = jnp.asarray([True, False, False])
    neg = jnp.asarray([False, True, False])  # prior 2: ignored
    t = yolov3_terms(box, obj, cls, box_t, cls_t, pos, neg)
    np.testing.assert_allclose(t["xy"][0], [bce(0.3, 0.6), bce(-0.2, 0.25)], rtol=1e-6)
    np.testing.assert_allclose(t["wh"][0], [0.4 ** 2, 0.2 ** 2], rtol=1e-6)
    np.testing.assert_allclose(t["conf"], [bce(0.5, 1), bce(-1.0, 0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(t["cls"][0], [bce(0.2, 0), bce(-0.4, 1)], rtol=1e-6)
    for k in ("xy", "wh", "cls"):
        assert float(jnp.abs(t[k][1:]).sum()) == 0.0


def test_terms_finite_for_extreme_logits_and_jit_vmap():
    rng = np.random.default_rng(1)
    b, n, c = 2, 7, 3
    box = jnp.asarray(rng.choice([-100.0, 0.0, 100.0], (b, n, 4)), jnp.float32)
    obj = jnp.asarray(rng.choice([-100.0, 100.0], (b, n)), jnp.float32)
    cls = jnp.asarray(rng.choice([-100.0, 100.0], (b, n, c)), jnp.float32)
    box_t = jnp.asarray(rng.uniform(0, 1, (b, n, 4)), jnp.float32)
    cls_t = jnp.asarray(rng.integers(0, 2, (b, n, c)), jnp.float32)
    pos = jnp.asarray(rng.uniform(size=(b, n)) < 0.4)
    neg = ~pos
    fn = jax.jit(jax.vmap(yolov3_terms))
    out = fn(box, obj, cls, box_t, cls_t, pos, neg)
    for i in range(b):
        one = yolov3_terms(box[i], obj[i], cls[i], box_t[i], cls_t[i], pos[i], neg[i])
        for k in out:
            np.testing.assert_allclose(np.asarray(out[k][i]), np.asarray(one[k]), rtol=1e-6)
    g = jax.grad(lambda x: sum(jnp.sum(v) for v in yolov3_terms(
        x, obj, cls, box_t, cls_t, pos, neg).values()))(box)
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(mse_loss(jnp.asarray(3.0), jnp.asarray(1.0))) == 4.0
