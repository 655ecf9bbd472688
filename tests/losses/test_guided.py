import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses import guided
from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy
from jaxdet.losses.focal import sigmoid_focal_loss


def test_optimal_bias_values():
    assert guided.optimal_bias(0.5) == 0.0
    np.testing.assert_allclose(guided.optimal_bias(0.01), -math.log(99), rtol=1e-12)
    np.testing.assert_allclose(guided.optimal_bias(1e-5), -11.512915464920228, rtol=1e-9)
    for pi in (1e-5, 1e-3, 0.3):
        np.testing.assert_allclose(jax.nn.sigmoid(guided.optimal_bias(pi)), pi, rtol=1e-5)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            guided.optimal_bias(bad)


def test_prior_counts_and_estimate_by_hand():
    # 6 priors: 2 fg of GT 0 (class 2), 1 fg of GT 1 (class 0), 2 bg, 1 ignored.
    gt_index = jnp.array([0, 0, 1, -1, -1, -2], jnp.int32)
    labels = jnp.array([2, 0, 1], jnp.int32)  # row 2 unused
    fg, num_all = guided.prior_counts(gt_index, labels, 3)
    np.testing.assert_array_equal(fg, [1, 0, 2])
    assert float(num_all) == 5  # ignored prior not counted
    pi, per_class = guided.estimate_prior(fg, num_all)
    np.testing.assert_allclose(per_class, [0.2, 0.0, 0.4], rtol=1e-6)
    np.testing.assert_allclose(pi, 3 / 5 / 3, rtol=1e-6)  # (#fg / #all) / C


def test_prior_counts_jit_vmap_and_empty_image():
    gt_index = jnp.array([[0, -1, -1, -2], [-1, -1, -1, -1]], jnp.int32)
    labels = jnp.array([[1, 0], [0, 0]], jnp.int32)
    fg, num_all = jax.jit(jax.vmap(lambda g, lab: guided.prior_counts(g, lab, 2)))(gt_index, labels)
    np.testing.assert_array_equal(fg, [[0, 1], [0, 0]])
    np.testing.assert_array_equal(num_all, [3, 4])
    pi, _ = guided.estimate_prior(fg.sum(0), num_all.sum())
    np.testing.assert_allclose(pi, 1 / 7 / 2, rtol=1e-6)


def test_guided_ratio_value_and_no_gradient():
    np.testing.assert_allclose(guided.guided_ratio(2.0, [1.0]), 0.5)
    np.testing.assert_allclose(guided.guided_ratio(2.0, [1.0, 3.0]), 1.0)  # mean of reg terms

    def scaled(cls, reg):
        return guided.guided_ratio(cls, [reg]) * cls

    # d/dcls (r * cls) = r (r is a constant), d/dreg = 0: the value equals reg but
    # the gradient only reaches the classification branch.
    g_cls, g_reg = jax.grad(scaled, argnums=(0, 1))(4.0, 2.0)
    np.testing.assert_allclose(g_cls, 0.5)
    np.testing.assert_allclose(g_reg, 0.0)
    np.testing.assert_allclose(scaled(4.0, 2.0), 2.0)


def test_guided_update_averages_then_freezes():
    state = guided.guided_init_state()
    ratios = [2.0, 4.0, 9.0, 100.0, 0.001]
    scales = []
    step = jax.jit(lambda s, r: guided.guided_update(s, r, warmup=3))
    for r in ratios:
        scale, state = step(state, r)
        scales.append(float(scale))
    # warm-up: the step's own ratio; then the mean of the first 3, frozen.
    np.testing.assert_allclose(scales, [2.0, 4.0, 9.0, 5.0, 5.0], rtol=1e-6)
    assert int(state["guided_count"]) == 3
    np.testing.assert_allclose(state["guided_ratio"], 5.0, rtol=1e-6)


def test_guided_update_skips_unusable_steps():
    state = guided.guided_init_state()
    out = []
    for r in [jnp.nan, 0.0, 3.0, jnp.inf, 5.0, 7.0]:
        scale, state = guided.guided_update(state, r, warmup=2)
        out.append(float(scale))
    # nan / 0 before any usable step -> 1.0; inf after one -> mean so far (3).
    np.testing.assert_allclose(out, [1.0, 1.0, 3.0, 3.0, 5.0, 4.0], rtol=1e-6)
    assert int(state["guided_count"]) == 2
    assert np.isfinite(float(state["guided_ratio"]))


def test_guided_update_without_freezing():
    state = guided.guided_init_state()
    for r in (2.0, 8.0):
        scale, new = guided.guided_update(state, r, warmup=0)
        assert float(scale) == r
        assert new is state


def test_guided_update_freeze_last_keeps_the_last_warmup_ratio():
    state = guided.guided_init_state()
    scales = []
    step = jax.jit(lambda s, r: guided.guided_update(s, r, warmup=3, freeze="last"))
    for r in [2.0, jnp.nan, 4.0, 9.0, 100.0, 0.001]:
        scale, state = step(state, r)
        scales.append(float(scale))
    # warm-up: the step's own ratio (nan -> the stored one, 2); then iteration 3's, frozen.
    np.testing.assert_allclose(scales, [2.0, 2.0, 4.0, 9.0, 9.0, 9.0], rtol=1e-6)
    assert int(state["guided_count"]) == 3
    np.testing.assert_allclose(state["guided_ratio"], 9.0, rtol=1e-6)
    with pytest.raises(ValueError):
        guided.guided_update(state, 1.0, freeze="median")


def test_guided_update_freeze_modes_under_jit_vmap():
    ratios = jnp.array([[1.0, 3.0, 8.0], [2.0, 2.0, 5.0]])  # [runs, steps]

    def run(rs, freeze):
        def body(state, r):
            scale, state = guided.guided_update(state, r, warmup=2, freeze=freeze)
            return state, scale
        return jax.lax.scan(body, guided.guided_init_state(), rs)[1]

    mean = jax.jit(jax.vmap(lambda rs: run(rs, "mean")))(ratios)
    last = jax.jit(jax.vmap(lambda rs: run(rs, "last")))(ratios)
    np.testing.assert_allclose(mean, [[1.0, 3.0, 2.0], [2.0, 2.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(last, [[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], rtol=1e-6)


def test_uncertainty_weighted_value_gradient_and_optimum():
    losses = (jnp.float32(0.8), jnp.float32(0.2))
    total, terms = guided.uncertainty_weighted(losses, jnp.zeros(2))
    np.testing.assert_allclose(terms, [0.4, 0.1], rtol=1e-6)  # L / 2 at sigma = 1
    np.testing.assert_allclose(total, 0.5, rtol=1e-6)
    s = jnp.log(jnp.array([2.0, 0.5]))
    _, terms = guided.uncertainty_weighted(losses, s)
    np.testing.assert_allclose(terms, [0.8 / 8 + math.log(2.0), 0.2 / 0.5 + math.log(0.5)],
                               rtol=1e-6)
    # d total / d L_i = 1 / (2 sigma_i^2); d total / d s_i = 1 - L_i / sigma_i^2 (0 at sigma^2 = L).
    g_l = jax.grad(lambda a, b: guided.uncertainty_weighted((a, b), s)[0], argnums=(0, 1))(
        0.8, 0.2)
    np.testing.assert_allclose(g_l, [1 / 8, 1 / 0.5], rtol=1e-6)
    opt = 0.5 * jnp.log(jnp.array([0.8, 0.2]))
    g_s = jax.grad(lambda v: guided.uncertainty_weighted(losses, v)[0])(opt)
    np.testing.assert_allclose(g_s, [0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        guided.uncertainty_weighted(losses, jnp.zeros(3))


def test_uncertainty_weighted_jit_vmap_matches_loop():
    losses = jnp.array([[0.5, 1.0, 0.1], [2.0, 0.3, 0.7]])  # [B, n]
    log_sigma = jnp.array([[0.0, 0.5, -0.5], [0.1, 0.2, 0.3]])
    total, terms = jax.jit(jax.vmap(guided.uncertainty_weighted))(losses, log_sigma)
    for b in range(2):
        t, w = guided.uncertainty_weighted(tuple(losses[b]), log_sigma[b])
        np.testing.assert_allclose(total[b], t, rtol=1e-6)
        np.testing.assert_allclose(terms[b], w, rtol=1e-6)


def test_fg_bg_split_sums_to_total_and_by_hand():
    logits = jnp.array([[[0.0, 2.0], [-1.0, 0.5], [3.0, -3.0]]])  # [1, 3, 2]
    targets = jnp.array([[[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])
    weights = jnp.array([[1.0, 1.0, 0.0]])  # third prior ignored
    bce = sigmoid_binary_cross_entropy(logits, targets)
    fg, bg = guided.fg_bg_split(bce, targets, weights)
    sp = lambda x: math.log1p(math.exp(x))  # softplus: BCE(x, 0) = sp(x), BCE(x, 1) = sp(-x)
    np.testing.assert_allclose(fg, sp(-2.0), rtol=1e-6)
    np.testing.assert_allclose(bg, sp(0.0) + sp(-1.0) + sp(0.5), rtol=1e-6)
    np.testing.assert_allclose(fg + bg, jnp.sum(bce * weights[..., None]), rtol=1e-6)
    focal = sigmoid_focal_loss(logits, targets)
    f_fg, f_bg = jax.jit(guided.fg_bg_split)(focal, targets)
    np.testing.assert_allclose(f_fg + f_bg, focal.sum(), rtol=1e-6)


def test_default_bias_background_loss_dwarfs_optimal_bias():
    """The paper's point in numbers: with bias 0 the initial background BCE of
    N priors x C classes is N*C*log 2; with the optimal bias it is ~ N*C*pi."""
    n, c, num_pos = 10_000, 3, 10
    targets = jnp.zeros((n, c)).at[:num_pos, 0].set(1.0)
    pi = num_pos / (n * c)
    for bias, expect_bg in ((0.0, (n * c - num_pos) * math.log(2)),
                            (guided.optimal_bias(pi), (n * c - num_pos) * -math.log1p(-pi))):
        bce = sigmoid_binary_cross_entropy(jnp.full((n, c), bias), targets)
        fg, bg = guided.fg_bg_split(bce, targets)
        np.testing.assert_allclose(bg, expect_bg, rtol=1e-4)
    # optimal bias: background ~ num_pos (pi * N * C), foreground = num_pos * log(1 / pi)
    np.testing.assert_allclose(fg, num_pos * -math.log(pi), rtol=1e-4)


def test_class_adaptive_thresholds():
    thr = guided.class_adaptive_thresholds(1e-5, 3)
    np.testing.assert_allclose(thr, [1e-5] * 3)
    thr = guided.class_adaptive_thresholds(0.002, 3, (0.001, 0.002, 0.003))
    np.testing.assert_allclose(thr, [0.001, 0.002, 0.003])
    with pytest.raises(ValueError):
        guided.class_adaptive_thresholds(0.002, 2, (0.001, 0.002, 0.003))
    scores = jnp.array([[[0.0015, 0.0015, 0.0015], [0.5, 0.001, 0.0031]]])
    out = jax.jit(jax.vmap(guided.apply_class_thresholds, in_axes=(0, None)))(scores, thr)
    np.testing.assert_allclose(out, [[[0.0015, 0, 0], [0.5, 0, 0.0031]]])
