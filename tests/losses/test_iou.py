import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses.iou import giou_loss, iou_loss

A = jnp.array([0.0, 0.0, 2.0, 2.0])
B = jnp.array([1.0, 1.0, 3.0, 3.0])  # IoU(A, B) = 1 / 7, enclosing box area 9


def test_iou_loss_known_values():
    np.testing.assert_allclose(iou_loss(A, B, mode="linear"), 6 / 7, rtol=1e-6)
    np.testing.assert_allclose(iou_loss(A, B, mode="square"), 1 - 1 / 49, rtol=1e-6)
    np.testing.assert_allclose(iou_loss(A, B, mode="log"), math.log(7), rtol=1e-6)
    np.testing.assert_allclose(iou_loss(A, A), 0.0, atol=1e-6)
    with pytest.raises(ValueError):
        iou_loss(A, B, mode="cubic")


def test_giou_loss_known_values():
    # giou = 1/7 - (9 - 7) / 9
    np.testing.assert_allclose(giou_loss(A, B), 1 - (1 / 7 - 2 / 9), rtol=1e-6)
    np.testing.assert_allclose(giou_loss(A, A), 0.0, atol=1e-6)
    far = jnp.array([10.0, 10.0, 12.0, 12.0])  # disjoint: giou -> -1 + 8/144
    np.testing.assert_allclose(giou_loss(A, far), 1 - (0 - (144 - 8) / 144), rtol=1e-6)


def test_disjoint_boxes_iou_loss_is_clamped():
    far = jnp.array([10.0, 10.0, 12.0, 12.0])
    np.testing.assert_allclose(iou_loss(A, far, mode="log"), -math.log(1e-6), rtol=1e-6)
    np.testing.assert_allclose(iou_loss(A, far, mode="linear"), 1 - 1e-6, rtol=1e-6)


DEGENERATE = jnp.array(
    [
        [3.0, 3.0, 1.0, 1.0],  # x2 < x1, y2 < y1
        [0.0, 0.0, 0.0, 0.0],  # padding row of zeros
        [1.0, 1.0, 1.0, 4.0],  # zero width
        [0.0, 0.0, 2.0, 2.0],
    ]
)
TARGETS = jnp.array(
    [
        [0.0, 0.0, 2.0, 2.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 2.0, 2.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
)


@pytest.mark.parametrize(
    "loss",
    [
        lambda p, t: iou_loss(p, t, mode="log"),
        lambda p, t: iou_loss(p, t, mode="linear"),
        lambda p, t: iou_loss(p, t, mode="square"),
        giou_loss,
    ],
)
def test_degenerate_and_padding_rows_finite(loss):
    out = loss(DEGENERATE, TARGETS)
    assert out.shape == (4,) and np.isfinite(out).all()
    g = jax.grad(lambda p: loss(p, TARGETS).sum())(DEGENERATE)
    assert np.isfinite(g).all()
    gt = jax.grad(lambda t: loss(DEGENERATE, t).sum())(TARGETS)
    assert np.isfinite(gt).all()


def test_giou_gradient_pulls_disjoint_box():
    far = jnp.array([10.0, 10.0, 12.0, 12.0])
    g = jax.grad(lambda p: giou_loss(p, A))(far)
    # descending the gradient moves the far box towards A
    assert g[0] > 0 and g[1] > 0


def test_bf16_jit_vmap():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (2, 6, 5, 2))
    wh = rng.uniform(1, 30, (2, 6, 5, 2))
    boxes = np.concatenate([xy, xy + wh], -1)
    p, t = jnp.asarray(boxes[0], jnp.bfloat16), jnp.asarray(boxes[1], jnp.bfloat16)
    out = jax.jit(jax.vmap(giou_loss))(p, t)
    assert out.shape == (6, 5) and out.dtype == jnp.float32
    ref = giou_loss(np.asarray(p, np.float32), np.asarray(t, np.float32))
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert ((out >= 0) & (out <= 2)).all()
