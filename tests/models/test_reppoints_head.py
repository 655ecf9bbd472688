"""jaxdet.models.heads.reppoints_head: shapes, the DCN base grid and offsets (where the
DeformConvs sample), the initialisation, the gradient paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.losses.reppoints import points_to_boxes
from jaxdet.models.heads.reppoints_head import (
    RepPointsHead,
    dcn_base_offset,
    dcn_offsets,
    grid_from_deltas,
)
from jaxdet.models.layers_deform import DeformConv


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


def test_dcn_offsets_sample_the_point_set():
    """The head's DCN offsets, as it passes them (channel layout, 3x3 DeformConv with
    'same' padding), make tap t at a location sample the location + point t: a box-shaped
    point set (a 3x3 grid spanning a box, off the location) read from maps of the row and
    column coordinates (bilinear sampling is exact on them)."""
    h, w = 12, 14
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                         indexing="ij")
    coords = jnp.asarray(np.stack([yy, xx], -1)[None])  # [1, H, W, 2]: (y, x) of each cell
    rng = np.random.default_rng(0)
    ctr = rng.uniform(-1.5, 1.5, (h, w, 2))  # box centre off the location
    half = rng.uniform(0.2, 2.0, (h, w, 2))  # box half-size (y, x), in cells
    grid = dcn_base_offset(3).reshape(9, 2)  # taps (i - 1, j - 1), (y, x)
    pts = (ctr[:, :, None] + grid * half[:, :, None]).reshape(1, h, w, 18)
    pts = jnp.asarray(pts, jnp.float32)
    # Output channel 2t + c is input channel c sampled at tap t.
    kernel = np.zeros((3, 3, 2, 18), np.float32)
    for t in range(9):
        kernel[t // 3, t % 3, 0, 2 * t] = kernel[t // 3, t % 3, 1, 2 * t + 1] = 1.0
    dcn = DeformConv(18, (3, 3), use_bias=False)
    out = dcn.apply({"params": {"kernel": jnp.asarray(kernel)}}, coords, dcn_offsets(pts, 0.1))
    expected = np.asarray(pts) + np.tile(np.stack([yy, xx], -1), (1, 1, 9))[None]
    inside = np.all((expected[..., 0::2] >= 0) & (expected[..., 0::2] <= h - 1)
                    & (expected[..., 1::2] >= 0) & (expected[..., 1::2] <= w - 1), -1)
    assert inside.sum() > 40  # locations whose 9 points all fall on the map
    np.testing.assert_allclose(np.asarray(out)[inside], expected[inside], atol=1e-4)


def test_deform_conv_init_is_mmcv_kaiming_uniform():
    head = RepPointsHead(num_classes=2, feat_channels=16, point_feat_channels=32,
                         stacked_convs=1, gn_groups=4)
    feats = (jnp.zeros((1, 4, 4, 16), jnp.float32),)
    params = head.init(jax.random.PRNGKey(0), feats)["params"]
    bound = np.sqrt(6.0 / (9 * 16))  # kaiming_uniform_(nonlinearity='relu'), fan_in 9 * Cin
    for name in ("cls_dcn", "pts_refine_dcn"):
        k = np.asarray(params[name]["kernel"])
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
        np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.1)
    assert np.asarray(params["pts_init_out"]["kernel"]).std() < 0.012  # Normal(0, 0.01)


def test_grid_from_deltas_hand_case():
    # Zero deltas on the base square (-2, -2, 2, 2): the 3x3 grid at -2, 0, 2 strides,
    # i.e. dcn_base_offset x 2 (the taps the plain DCN would read, spread by 2).
    pts, box = grid_from_deltas(jnp.zeros((4,)), jnp.asarray([-2.0, -2.0, 2.0, 2.0]))
    np.testing.assert_allclose(pts, 2 * dcn_base_offset(3))
    np.testing.assert_allclose(box, [-2, -2, 2, 2])
    # dx = 0.25 moves the centre by a quarter width, dh = log 2 doubles the height.
    pts, box = grid_from_deltas(jnp.asarray([0.25, 0.0, 0.0, np.log(2.0)]),
                                jnp.asarray([0.0, 0.0, 4.0, 2.0]))
    np.testing.assert_allclose(box, [1.0, -1.0, 5.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(pts).reshape(9, 2)[[0, 2, 6, 8]],
                               [[-1, 1], [-1, 5], [3, 1], [3, 5]], atol=1e-6)  # (y, x)
    # A wild dw is clamped (finite box).
    _, box = grid_from_deltas(jnp.asarray([0.0, 0.0, 1e4, 0.0]), jnp.asarray([0, 0, 1.0, 1]))
    assert np.all(np.isfinite(box)) and 62 < float(box[2] - box[0]) < 63


def test_grid_points_head_regresses_boxes():
    head = RepPointsHead(num_classes=3, feat_channels=8, point_feat_channels=8,
                         stacked_convs=1, gn_groups=4, use_grid_points=True)
    rng = np.random.default_rng(2)
    feats = (jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32),
             jnp.asarray(rng.normal(size=(2, 2, 2, 8)), jnp.float32))
    params = jax.jit(head.init)(jax.random.PRNGKey(0), feats)["params"]
    assert params["pts_init_out"]["kernel"].shape[-1] == 4
    assert params["pts_refine_out"]["kernel"].shape[-1] == 4
    out = jax.jit(head.apply)({"params": params}, feats)
    assert out["pts_init"].shape == out["pts_refine"].shape == (2, 20, 18)
    # At init the deltas are ~0: the init points are the base square's grid.
    np.testing.assert_allclose(out["pts_init"], np.broadcast_to(2 * dcn_base_offset(3),
                                                                (2, 20, 18)), atol=0.1)
    # The points are a grid: min-max of the 9 points = the box of the 4 corners.
    for key in ("pts_init", "pts_refine"):
        full = points_to_boxes(out[key], "minmax")
        corners = np.asarray(out[key]).reshape(2, 20, 9, 2)[:, :, [0, 8]].reshape(2, 20, 4)
        np.testing.assert_allclose(full, corners[..., [1, 0, 3, 2]], atol=1e-5)
    # The refined box starts from the detached init box: no gradient from the refined
    # points to the init regression except through the DCN offsets.
    f = lambda p: jnp.sum(head.apply({"params": p}, feats)["pts_refine"] ** 2)
    g = jax.jit(jax.grad(f))(params)
    assert float(jnp.abs(g["pts_refine_out"]["kernel"]).sum()) > 0
