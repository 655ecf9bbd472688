"""AlignDetHead: output shapes, RoIConv on the regular window equals the plain conv of
the ablation, and no gradient from the second stage into the first-stage boxes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.core import priors as priors_lib
from jaxdet.models.heads.aligndet_head import AlignDetHead, level_anchors

STRIDES = (8, 16)


def _features(seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(2, 8, 6, 8)), jnp.float32),
            jnp.asarray(rng.normal(size=(2, 4, 3, 8)), jnp.float32))


def _head(**kw):
    return AlignDetHead(num_classes=3, strides=STRIDES, feat_channels=8, stacked_convs=1,
                        gn_groups=2, **kw)


def test_output_shapes_and_anchors():
    feats = _features()
    head = _head()
    params = jax.jit(head.init)(jax.random.PRNGKey(0), feats)
    out = jax.jit(head.apply)(params, feats)
    n = 8 * 6 + 4 * 3
    assert out["obj_logits"].shape == (2, n)
    assert out["init_deltas"].shape == (2, n, 4)
    assert out["cls_logits"].shape == (2, n, 3)
    assert out["box_deltas"].shape == (2, n, 4)
    assert all(v.dtype == jnp.float32 for v in out.values())
    ref = priors_lib.make_anchors([(8, 6), (4, 3)], STRIDES, octave_base_scale=8,
                                  scales_per_octave=1, ratios=(1.0,))
    mine = jnp.concatenate([level_anchors((8, 6), 8, 8.0).reshape(-1, 4),
                            level_anchors((4, 3), 16, 8.0).reshape(-1, 4)])
    np.testing.assert_allclose(np.asarray(mine), ref.boxes)


def test_roi_conv_on_the_regular_window_is_the_plain_conv():
    # Anchors of side 3 x stride with zero first-stage deltas are the regular 3x3 window
    # of every location ('bins'): RoIConv's offsets are 0 and it is the plain 3x3 conv.
    feats = _features(1)
    roi, plain = _head(anchor_scale=3.0), _head(anchor_scale=3.0, roi_conv=False)
    params = jax.jit(roi.init)(jax.random.PRNGKey(0), feats)
    p = jax.tree_util.tree_map(lambda x: x, params)
    p["params"]["init_reg_out"] = jax.tree_util.tree_map(
        jnp.zeros_like, p["params"]["init_reg_out"])
    assert (jax.tree_util.tree_structure(jax.jit(plain.init)(jax.random.PRNGKey(0), feats))
            == jax.tree_util.tree_structure(p))
    a, b = jax.jit(roi.apply)(p, feats), jax.jit(plain.apply)(p, feats)
    for key in ("cls_logits", "box_deltas"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-4,
                                   atol=1e-5)
    # with the learned first-stage boxes the two differ
    c = jax.jit(roi.apply)(params, feats)
    assert float(jnp.abs(c["cls_logits"] - b["cls_logits"]).max()) > 0


def test_first_stage_boxes_carry_no_gradient_into_the_offsets():
    feats = _features(2)
    head = _head()
    params = jax.jit(head.init)(jax.random.PRNGKey(0), feats)
    # larger first-stage weights, so that the offsets are far from zero
    params["params"]["init_reg_out"]["kernel"] = params["params"]["init_reg_out"]["kernel"] * 50

    def second_stage(p):
        out = head.apply(p, feats)
        return jnp.sum(out["cls_logits"] ** 2) + jnp.sum(out["box_deltas"] ** 2)

    g = jax.jit(jax.grad(second_stage))(params)["params"]
    assert float(jnp.abs(g["init_reg_out"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g["init_reg_out"]["bias"]).max()) == 0.0
    assert float(jnp.abs(g["cls_align"]["kernel"]).max()) > 0
    assert float(jnp.abs(g["reg_tower"]["conv_0"]["conv"]["kernel"]).max()) > 0
