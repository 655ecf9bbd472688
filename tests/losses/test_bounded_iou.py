"""jaxdet.losses.bounded_iou against hand-computed values and mmdetection's formula."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.losses.bounded_iou import bounded_iou_loss


def _smooth(c, beta=0.2):
    return np.where(c < beta, 0.5 * c * c / beta, c - 0.5 * beta)


def _ref(pred, target, beta=0.2, eps=1e-3):
    """mmdetection `bounded_iou_loss` in NumPy (float64)."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    pc, tc = (p[:, :2] + p[:, 2:]) / 2, (t[:, :2] + t[:, 2:]) / 2
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    tw, th = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
    dx, dy = np.abs(tc[:, 0] - pc[:, 0]), np.abs(tc[:, 1] - pc[:, 1])
    comb = np.stack([
        1 - np.maximum((tw - 2 * dx) / (tw + 2 * dx + eps), 0),
        1 - np.maximum((th - 2 * dy) / (th + 2 * dy + eps), 0),
        1 - np.minimum(tw / (pw + eps), pw / (tw + eps)),
        1 - np.minimum(th / (ph + eps), ph / (th + eps)),
    ], -1)
    return _smooth(comb, beta)


def test_hand_values():
    # pred 10 x 10 at the origin, target shifted by 2 in x: dx = 2, equal sizes.
    pred = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    target = jnp.array([[2.0, 0.0, 12.0, 10.0]])
    l_dx = 1 - 6 / 14.001  # (w - 2|dx|) / (w + 2|dx| + eps)
    l_dy = 1 - 10 / 10.001
    l_dw = 1 - 10 / 10.001
    want = [l_dx - 0.1, 0.5 * l_dy**2 / 0.2, 0.5 * l_dw**2 / 0.2, 0.5 * l_dw**2 / 0.2]
    np.testing.assert_allclose(bounded_iou_loss(pred, target)[0], want, rtol=1e-5, atol=1e-9)
    # A box twice as wide: l_dw = 1 - 10 / 20.001 -> above beta, linear part.
    wide = jnp.array([[-5.0, 0.0, 15.0, 10.0]])
    np.testing.assert_allclose(bounded_iou_loss(wide, pred)[0, 2], (1 - 10 / 20.001) - 0.1,
                               rtol=1e-5)
    np.testing.assert_allclose(bounded_iou_loss(pred, pred), 0.0, atol=1e-6)


def test_matches_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (64, 2))
    p = np.concatenate([xy, xy + rng.uniform(1, 60, (64, 2))], -1).astype(np.float32)
    xy = xy + rng.uniform(-20, 20, (64, 2))
    t = np.concatenate([xy, xy + rng.uniform(1, 60, (64, 2))], -1).astype(np.float32)
    got = jax.jit(jax.vmap(bounded_iou_loss))(p.reshape(8, 8, 4), t.reshape(8, 8, 4))
    np.testing.assert_allclose(np.asarray(got).reshape(64, 4), _ref(p, t), rtol=2e-5, atol=1e-6)


def test_padding_rows_finite_and_gradient_only_to_pred():
    zeros = jnp.zeros((3, 4))
    assert np.isfinite(np.asarray(bounded_iou_loss(zeros, zeros))).all()
    pred = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    target = jnp.array([[3.0, 1.0, 9.0, 14.0]])
    g_pred, g_target = jax.grad(lambda p, t: bounded_iou_loss(p, t).sum(), (0, 1))(pred, target)
    assert np.isfinite(np.asarray(g_pred)).all() and np.abs(np.asarray(g_pred)).sum() > 0
    np.testing.assert_array_equal(np.asarray(g_target), 0.0)
