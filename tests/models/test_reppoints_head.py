"""jaxdet.models.heads.reppoints_head: shapes, the DCN base grid, the gradient paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.heads.reppoints_head import RepPointsHead, dcn_base_offset


def test_dcn_base_offset_is_mmdetection_order():
    np.testing.assert_array_equal(
        dcn_base_offset(3).reshape(9, 2),
        [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1]])


def test_shapes_and_gradient_paths():
    head = RepPointsHead(num_classes=3, feat_channels=8, point_feat_channels=8,
                         stacked_convs=1, gn_groups=4)
    rng = np.random.default_rng(0)
    feats = (jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32),
             jnp.asarray(rng.normal(size=(2, 2, 2, 8)), jnp.float32))
    params = jax.jit(head.init)(jax.random.PRNGKey(0), feats)["params"]
    out = jax.jit(head.apply)({"params": params}, feats)
    assert out["cls_logits"].shape == (2, 20, 3)
    assert out["pts_init"].shape == (2, 20, 18)
    assert out["pts_refine"].shape == (2, 20, 18)
    assert out["moment_transfer"].shape == (2, 2)
    assert params["cls_dcn"]["kernel"].shape == (3, 3, 8, 8)
    assert "bias" not in params["cls_dcn"]
    np.testing.assert_allclose(out["cls_logits"].mean(), np.log(0.01 / 0.99), atol=0.05)

    def grad_of(key):
        f = lambda p: jnp.sum(head.apply({"params": p}, feats)[key] ** 2)
        return jax.jit(jax.grad(f))(params)

    # The refined points are stop_grad(init) + offsets: no gradient to the init branch
    # except through the DCN offsets (gradient_mul 0.1 of it).
    g_ref = grad_of("pts_refine")
    assert float(jnp.abs(g_ref["pts_init_out"]["kernel"]).sum()) > 0
    g_cls = grad_of("cls_logits")
    assert float(jnp.abs(g_cls["pts_init_out"]["kernel"]).sum()) > 0
    assert float(jnp.abs(g_cls["pts_refine_out"]["kernel"]).sum()) == 0


def test_gradient_mul_scales_the_init_points_gradient():
    rng = np.random.default_rng(1)
    feats = (jnp.asarray(rng.normal(size=(1, 4, 4, 8)), jnp.float32),)
    grads = {}
    for g in (0.1, 1.0):
        head = RepPointsHead(num_classes=2, feat_channels=8, point_feat_channels=8,
                             stacked_convs=1, gn_groups=4, gradient_mul=g)
        params = jax.jit(head.init)(jax.random.PRNGKey(0), feats)["params"]
        f = lambda p, head=head: jnp.sum(head.apply({"params": p}, feats)["cls_logits"] ** 2)
        grads[g] = jax.jit(jax.grad(f))(params)["pts_init_out"]["kernel"]
    # Same forward values; the classification gradient reaches the init points x 0.1.
    np.testing.assert_allclose(grads[0.1], 0.1 * grads[1.0], rtol=1e-4, atol=1e-9)
