"""Dense heads: N matches the priors, output order, initial bias, Scale, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.core import priors
from jaxdet.models.heads.atss_head import ATSSHead
from jaxdet.models.heads.fcos_head import FCOSHead
from jaxdet.models.heads.retina_head import RetinaHead

HW = (100, 152)
STRIDES = (8, 16, 32, 64, 128)
C = 3


def _features(channels=16, strides=STRIDES, batch=2, scale=1.0):
    shapes = priors.feature_shapes(HW, strides)
    keys = jax.random.split(jax.random.key(0), len(shapes))
    return [scale * jax.random.normal(k, (batch, h, w, channels))
            for k, (h, w) in zip(keys, shapes)]


def _run(head, feats):
    variables = jax.jit(head.init)(jax.random.key(1), feats)
    return variables, jax.jit(head.apply)(variables, feats)


def test_retina_head_matches_anchors():
    head = RetinaHead(num_classes=C, num_anchors=9, feat_channels=16, stacked_convs=2)
    feats = _features()
    variables, out = _run(head, feats)
    anchors = priors.make_anchors(priors.feature_shapes(HW, STRIDES), STRIDES)
    n = anchors.num_priors
    assert out["cls_logits"].shape == (2, n, C) and out["box_deltas"].shape == (2, n, 4)
    assert out["cls_logits"].dtype == jnp.float32
    # Weights are shared over levels: one tower, one output conv.
    assert set(variables["params"]) == {"cls_tower", "reg_tower", "cls_out", "reg_out"}


def test_atss_head_matches_anchors():
    head = ATSSHead(num_classes=C, feat_channels=32, stacked_convs=2)
    _, out = _run(head, _features())
    anchors = priors.make_anchors(priors.feature_shapes(HW, STRIDES), STRIDES,
                                  octave_base_scale=8, scales_per_octave=1, ratios=(1.0,))
    n = anchors.num_priors
    assert out["cls_logits"].shape == (2, n, C)
    assert out["box_deltas"].shape == (2, n, 4) and out["centerness"].shape == (2, n)


def test_fcos_head_matches_points():
    head = FCOSHead(num_classes=C, feat_channels=32, stacked_convs=2)
    variables, out = _run(head, _features(scale=10.0))
    n = priors.make_points(priors.feature_shapes(HW, STRIDES), STRIDES).num_priors
    assert out["cls_logits"].shape == (2, n, C)
    assert out["box_ltrb"].shape == (2, n, 4) and out["centerness"].shape == (2, n)
    assert bool(jnp.all(out["box_ltrb"] >= 0))  # relu(scale * x), stride units
    assert {f"scale_{i}" for i in range(5)} <= set(variables["params"])
    # Per-level Scale: doubling level 0's scale doubles exactly its distances.
    p = jax.tree_util.tree_map(lambda a: a, variables["params"])
    p["scale_0"] = {"scale": jnp.float32(2.0)}
    out2 = jax.jit(head.apply)({"params": p}, _features(scale=10.0))
    n0 = int(np.prod(priors.feature_shapes(HW, STRIDES)[0]))
    np.testing.assert_allclose(out2["box_ltrb"][:, :n0], 2 * out["box_ltrb"][:, :n0], rtol=1e-5)
    np.testing.assert_allclose(out2["box_ltrb"][:, n0:], out["box_ltrb"][:, n0:])
    exp_head = FCOSHead(num_classes=C, feat_channels=32, stacked_convs=1, norm_on_bbox=False)
    _, out = _run(exp_head, _features())
    assert bool(jnp.all(out["box_ltrb"] > 0))


@pytest.mark.parametrize("prior_prob", [0.01, 1e-5])
def test_retina_cls_bias_gives_prior(prior_prob):
    head = RetinaHead(num_classes=C, num_anchors=2, feat_channels=16, stacked_convs=1,
                      prior_prob=prior_prob)
    zeros = [jnp.zeros((1, 4, 4, 16)), jnp.zeros((1, 2, 2, 16))]
    variables, out = _run(head, zeros)
    np.testing.assert_allclose(jax.nn.sigmoid(out["cls_logits"]), prior_prob, rtol=1e-4)
    np.testing.assert_allclose(jax.nn.sigmoid(variables["params"]["cls_out"]["bias"]),
                               prior_prob, rtol=1e-4)
    # Normal(0, 0.01) weights: on random features the mean probability stays near the prior.
    _, out = _run(head, [jax.random.normal(jax.random.key(3), z.shape) for z in zeros])
    assert abs(float(jnp.mean(jax.nn.sigmoid(out["cls_logits"]))) - prior_prob) < prior_prob * 0.2


def test_output_order_level_then_yx_then_anchor():
    a = 3
    head = RetinaHead(num_classes=C, num_anchors=a, feat_channels=8, stacked_convs=1)
    feats = _features(channels=8, strides=(8, 16))
    variables = jax.jit(head.init)(jax.random.key(1), feats)
    apply = jax.jit(functools.partial(head.apply, capture_intermediates=True))
    out, inter = apply(variables, feats)
    raw = inter["intermediates"]["cls_out"]["__call__"]  # per level [B, H, W, A * C]
    start = 0
    for r in raw:
        _, h, w, _ = r.shape
        for (y, x, k) in [(0, 0, 0), (0, 1, 2), (h - 1, w - 2, 1), (h - 1, w - 1, a - 1)]:
            row = start + (y * w + x) * a + k
            np.testing.assert_allclose(out["cls_logits"][:, row], r[:, y, x, k * C:(k + 1) * C])
        start += h * w * a
    assert start == out["cls_logits"].shape[1]


@pytest.mark.parametrize("head_cls", [RetinaHead, FCOSHead, ATSSHead])
def test_bf16_compute(head_cls):
    head = head_cls(num_classes=C, feat_channels=32, stacked_convs=2, dtype=jnp.bfloat16)
    _, out = _run(head, _features(channels=32, strides=(8, 16)))
    for v in out.values():
        assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v)))


def test_upsample2x_is_flax_conv_transpose():
    """The matmul form of the mask head's deconv: the values and gradients of
    nn.ConvTranspose((2, 2), strides=(2, 2), 'VALID') with the same parameters."""
    import flax.linen as nn

    from jaxdet.models.heads.roi_heads import Upsample2x

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 6))
    up = Upsample2x(7)
    params = up.init(jax.random.PRNGKey(1), x)
    params = jax.tree_util.tree_map(
        lambda a: a + jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
    ref = nn.ConvTranspose(7, (2, 2), strides=(2, 2), padding="VALID")

    def loss(m, p, x):
        return jnp.sum(jnp.sin(m.apply(p, x)))

    np.testing.assert_allclose(up.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    for argnum in (1, 2):
        g = jax.grad(lambda p, x: loss(up, p, x), argnums=argnum - 1)(params, x)
        g_ref = jax.grad(lambda p, x: loss(ref, p, x), argnums=argnum - 1)(params, x)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
