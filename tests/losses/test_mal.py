"""jaxdet.losses.mal: FreeAnchor's bag losses (mmdetection FreeAnchorRetinaHead
semantics) and MAL's selection-depression pieces (DeLightCMU/MAL semantics)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses import mal


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_positive_bag_loss(p, alpha=0.5):
    """mmdetection positive_bag_loss (every bag entry valid), float64."""
    w = 1.0 / np.clip(1.0 - p, 1e-12, None)
    w = w / w.sum(-1, keepdims=True)
    bag = (w * p).sum(-1)
    return alpha * -np.maximum(np.log(bag), -100.0)


def _np_negative_bag_loss(x, b, alpha=0.5, gamma=2.0):
    """mmdetection negative_bag_loss, float64."""
    prob = np.clip(_sigmoid(x) * (1.0 - b), 1e-12, 1 - 1e-12)
    return (1 - alpha) * prob**gamma * -np.maximum(np.log(1.0 - prob), -100.0)


def test_joint_confidence():
    p = mal.joint_confidence(jnp.array([0.0, 2.0]), jnp.array([0.0, math.log(2.0)]))
    np.testing.assert_allclose(p, [0.5, _sigmoid(2.0) / 2], rtol=1e-6)


def test_mean_max_hand_computed():
    m = jnp.ones((3, 2), bool)
    p = jnp.array([[0.5, 0.5], [0.9, 0.1], [0.0, 0.0]])
    # [0.9, 0.1]: w = [10, 1/0.9] -> (9 + 1/9) / (10 + 1/0.9) = 0.82
    np.testing.assert_allclose(mal.mean_max(p, m), [0.5, 0.82, 0.0], rtol=1e-6)
    # masked entries do not count; an empty bag is 0
    mask = jnp.array([[True, False], [False, True], [False, False]])
    np.testing.assert_allclose(mal.mean_max(p, mask), [0.5, 0.1, 0.0], rtol=1e-6)


def test_mean_max_lies_between_mean_and_max():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, (50, 40)) ** 3
    mm = np.asarray(mal.mean_max(jnp.asarray(p, jnp.float32), jnp.ones(p.shape, bool)))
    assert np.all(mm >= p.mean(-1) - 1e-6) and np.all(mm <= p.max(-1) + 1e-6)


def test_positive_bag_loss_matches_mmdetection():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, (20, 40)) * rng.uniform(0, 1, (20, 1))
    out = mal.positive_bag_loss(jnp.asarray(p, jnp.float32), jnp.ones(p.shape, bool))
    np.testing.assert_allclose(out, _np_positive_bag_loss(p), rtol=1e-5)
    # num_selected = K is FreeAnchor's loss; 1 is -alpha * log(max P)
    full = mal.positive_bag_loss(jnp.asarray(p, jnp.float32), jnp.ones(p.shape, bool), 40)
    np.testing.assert_allclose(full, out, rtol=1e-6)
    top1 = mal.positive_bag_loss(jnp.asarray(p, jnp.float32), jnp.ones(p.shape, bool), 1)
    np.testing.assert_allclose(top1, -0.5 * np.log(p.max(-1)), rtol=1e-5)


def test_positive_bag_loss_top_k_is_the_loss_of_the_k_best():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, (10, 12))
    mask = rng.uniform(size=p.shape) < 0.7
    mask[:, 0] = True
    got = np.asarray(mal.positive_bag_loss(jnp.asarray(p, jnp.float32), mask, 3))
    for i in range(10):
        best = np.sort(p[i][mask[i]])[::-1][:3]
        np.testing.assert_allclose(got[i], _np_positive_bag_loss(best), rtol=1e-5)
    # fewer selected anchors -> a larger bag probability (the mean-max moves towards the max)
    losses = [np.asarray(mal.positive_bag_loss(jnp.asarray(p, jnp.float32), mask, s))
              for s in (12, 6, 3, 1)]
    assert all(np.all(a >= b - 1e-6) for a, b in zip(losses, losses[1:]))


def test_select_top_hand_computed():
    p = jnp.array([[0.1, 0.7, 0.7, 0.9, 0.2]])
    mask = jnp.array([[True, True, True, False, True]])
    # 0.9 is masked; ties (0.7, 0.7) go to the lower index.
    np.testing.assert_array_equal(mal.select_top(p, mask, 1), [[0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(mal.select_top(p, mask, 2), [[0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(mal.select_top(p, mask, 9), mask)


def test_empty_bag_gives_zero_loss_and_finite_gradient():
    p = jnp.array([[0.3, 0.2], [0.0, 0.0]])
    mask = jnp.array([[True, True], [False, False]])
    for s in (None, 1):
        loss = mal.positive_bag_loss(p, mask, s)
        assert float(loss[1]) == 0.0
        g = jax.grad(lambda p, s=s: mal.positive_bag_loss(p, mask, s).sum())(p)
        assert np.isfinite(g).all() and np.all(np.asarray(g)[1] == 0)
    # P -> 0 and P -> 1 stay finite
    extreme = jnp.array([[0.0, 1e-30], [1.0, 1.0]])
    loss = mal.positive_bag_loss(extreme, jnp.ones((2, 2), bool))
    g = jax.grad(lambda p: mal.positive_bag_loss(p, jnp.ones((2, 2), bool)).sum())(extreme)
    assert np.isfinite(loss).all() and np.isfinite(g).all()
    assert float(loss[0]) <= 50.0 and float(loss[1]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.5, 2.0), (0.25, 1.0)])
def test_negative_bag_loss_matches_mmdetection(alpha, gamma):
    rng = np.random.default_rng(3)
    x = rng.normal(-2, 3, (64, 5))
    b = np.where(rng.uniform(size=x.shape) < 0.5, 0.0, rng.uniform(0, 1, x.shape))
    out = mal.negative_bag_loss(jnp.asarray(x, jnp.float32), jnp.asarray(b, jnp.float32),
                                alpha, gamma)
    np.testing.assert_allclose(out, _np_negative_bag_loss(x, b, alpha, gamma),
                               rtol=1e-4, atol=1e-9)
    # hand value: x = 0, b = 0.5 -> p = 0.25: 0.5 * 0.0625 * -log(0.75)
    v = mal.negative_bag_loss(jnp.zeros(1), jnp.full(1, 0.5))
    np.testing.assert_allclose(v, 0.5 * 0.0625 * -math.log(0.75), rtol=1e-6)


def test_negative_bag_loss_extreme_logits_and_no_gradient_to_box_prob():
    x = jnp.array([100.0, -100.0, 30.0, 100.0, 0.0, 50.0])
    b = jnp.array([0.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    out = mal.negative_bag_loss(x, b)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[2], 0.5 * 30.0, rtol=1e-4)  # confident false positive
    assert float(out[3]) == 0.0 and float(out[4]) == 0.0  # box_prob 1: no negative loss
    gx, gb = jax.grad(lambda x, b: mal.negative_bag_loss(x, b).sum(), argnums=(0, 1))(x, b)
    assert np.isfinite(gx).all() and np.all(np.asarray(gb) == 0)


def test_num_selected_all_to_top1_schedule():
    t_total, k = 1200, 40
    s = [int(mal.num_selected(t, t_total, k)) for t in (0, 1, 300, 600, 1199, 1200, 5000)]
    # K - floor(39 * t / 1200)
    assert s == [40, 40, 40 - 9, 40 - 19, 2, 1, 1]
    traced = jax.jit(lambda t: mal.num_selected(t, t_total, k))
    seq = np.array([int(traced(t)) for t in range(0, 1300, 7)])
    assert np.all(np.diff(seq) <= 0) and seq[0] == 40 and seq[-1] == 1
    # end_frac: top-1 from half of training on
    assert int(mal.num_selected(600, t_total, k, end_frac=0.5)) == 1
    assert int(mal.num_selected(300, t_total, k, end_frac=0.5)) == 40 - 19


def _released_ratio_type5(max_iteration, iteration):
    """DeLightCMU/MAL RetinaNet.ratio_function(type=5), copied as a table."""
    cuts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1]
    for i, r in enumerate(cuts):
        if iteration < max_iteration / 12 * (i + 1):
            return r
    return 0.0


def test_depression_ratio_is_the_released_schedule():
    t_total = 1200
    fn = jax.jit(lambda t: mal.depression_ratio(t, t_total))
    for t in list(range(0, 1300, 25)) + [99, 100, 101, 599, 600, 1199]:
        assert float(fn(t)) == pytest.approx(_released_ratio_type5(t_total, t), abs=1e-6), t
    assert float(mal.depression_ratio(500, t_total, max_ratio=0.25)) == pytest.approx(0.25)


def _np_ia_feat(feat, ratio):
    """DeLightCMU/MAL RetinaNet.IA_feat on one NHWC map: 1 = kept, 0 = depressed."""
    b, h, w, c = feat.shape
    gap = feat.reshape(b, -1, c).mean(1)
    cam = (feat * gap[:, None, None, :]).sum(-1)
    th_idx = int(h * w * ratio)
    thr = np.sort(cam.reshape(b, -1), axis=1)[:, ::-1][:, th_idx]
    return np.where(cam > thr[:, None, None], 0.0, 1.0)


def test_attention_map_and_depression_mask_hand_computed():
    f = np.zeros((1, 2, 2, 2), np.float32)
    f[0, :, :, 0] = [[4, 3], [2, 1]]  # channel 0 mean 2.5, channel 1 zero
    cam = mal.attention_map(jnp.asarray(f))
    np.testing.assert_allclose(cam, [[[10, 7.5], [5, 2.5]]])
    everywhere = jnp.ones((1, 2, 2), bool)
    np.testing.assert_array_equal(
        mal.depression_mask(cam, everywhere, 0.5), [[[True, True], [False, False]]]
    )
    assert not np.asarray(mal.depression_mask(cam, everywhere, 0.0)).any()
    assert not np.asarray(mal.depression_mask(cam, everywhere, 0.2)).any()  # floor(0.8) = 0
    # Candidates restrict the ranking: of {7.5, 5, 2.5}, the top floor(3 * 0.4) = 1.
    cand = jnp.array([[[False, True], [True, True]]])
    np.testing.assert_array_equal(
        mal.depression_mask(cam, cand, 0.4), [[[False, True], [False, False]]]
    )
    assert not np.asarray(mal.depression_mask(cam, jnp.zeros_like(cand), 0.5)).any()


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_depression_on_all_positions_matches_released_ia_feat(ratio):
    rng = np.random.default_rng(4)
    f = rng.normal(size=(2, 6, 5, 8)).astype(np.float32)
    mask = mal.depression_mask(mal.attention_map(jnp.asarray(f)), jnp.ones((2, 6, 5), bool),
                               ratio)
    keep = _np_ia_feat(f, ratio)
    np.testing.assert_array_equal(np.asarray(mask), keep == 0)
    out = mal.depress(jnp.asarray(f), mask)
    np.testing.assert_allclose(out, (3 * f * keep[..., None] + f) / 4, rtol=1e-6)


def test_jit_vmap_of_the_bag_losses():
    rng = np.random.default_rng(5)
    p = jnp.asarray(rng.uniform(0, 1, (3, 4, 10)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(3, 4, 10)) < 0.8)
    s = jnp.array([10, 3, 1])
    out = jax.jit(jax.vmap(mal.positive_bag_loss))(p, mask, s)
    for i in range(3):
        np.testing.assert_allclose(out[i], mal.positive_bag_loss(p[i], mask[i], int(s[i])),
                                   rtol=1e-5)
    x = jnp.asarray(rng.normal(size=(3, 7, 2)), jnp.float32)
    b = jnp.asarray(rng.uniform(size=(3, 7, 2)), jnp.float32)
    neg = jax.jit(jax.vmap(mal.negative_bag_loss))(x, b)
    np.testing.assert_allclose(neg, mal.negative_bag_loss(x, b), rtol=1e-5)
    cam = jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32)
    masks = jax.jit(jax.vmap(mal.depression_mask, in_axes=(0, None, 0)))(
        cam, jnp.ones((4, 4), bool), jnp.array([0.0, 0.25, 0.5]))
    assert [int(m.sum()) for m in masks] == [0, 4, 8]
