"""ResNet backbone: shapes, stem, norms, freezing and the optimizer mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet.core.priors import feature_shapes
from jaxdet.models import freeze
from jaxdet.models.backbones import resnet
from jaxdet.models.backbones.resnet import ResNet, StemConv
from jaxdet.models.layers import FrozenBatchNorm, GroupNorm, make_norm


def _shapes(model, hw, batch=2):
    x = jnp.zeros((batch, *hw, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return variables, jax.eval_shape(model.apply, variables, x)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("hw", [(64, 64), (100, 152), (45, 61)])
def test_output_shapes(depth, hw):
    model = ResNet(depth=depth, base_width=8)
    variables, outs = _shapes(model, hw)
    assert set(variables) == {"params"}
    chans = resnet.out_channels(depth, 8)
    expect = feature_shapes(hw, (8, 16, 32))
    assert [o.shape for o in outs] == [(2, h, w, chans[lvl])
                                       for (h, w), lvl in zip(expect, (3, 4, 5))]


def test_out_levels_and_block_count():
    variables, outs = _shapes(ResNet(depth=50, base_width=8, out_levels=(2, 3, 4, 5)), (64, 64))
    assert [o.shape[1] for o in outs] == [16, 8, 4, 2]
    blocks = [k for k in variables["params"] if k.startswith("layer")]
    assert len(blocks) == 3 + 4 + 6 + 3
    assert "downsample_conv" in variables["params"]["layer1_0"]  # 32 -> 128 channels
    variables, _ = _shapes(ResNet(depth=18, base_width=8), (64, 64))
    assert "downsample_conv" not in variables["params"]["layer1_0"]
    assert "downsample_conv" in variables["params"]["layer2_0"]


@pytest.mark.parametrize("hw", [(32, 32), (33, 47)])
def test_stem_space_to_depth_matches_direct_conv(hw):
    x = jax.random.normal(jax.random.key(0), (2, *hw, 3))
    stem = StemConv(8)
    params = jax.jit(stem.init)(jax.random.key(1), x)
    ref = jax.lax.conv_general_dilated(x, params["params"]["kernel"], (2, 2), ((3, 3), (3, 3)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(jax.jit(stem.apply)(params, x), ref, atol=1e-4, rtol=1e-4)


def test_frozen_bn_and_group_norm_formulas():
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 64)) * 3.0 + 1.0
    p = {"scale": jnp.linspace(0.5, 2.0, 64), "bias": jnp.linspace(-1.0, 1.0, 64),
         "mean": jnp.linspace(-0.3, 0.3, 64), "var": jnp.linspace(0.5, 3.0, 64)}
    y = jax.jit(FrozenBatchNorm().apply)({"params": p}, x)
    ref = (x - p["mean"]) / jnp.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, ref, atol=1e-5)
    gp = {"scale": p["scale"], "bias": p["bias"]}
    xg = x.reshape(2, 5, 6, 32, 2)
    mu = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    ref = ((xg - mu) / jnp.sqrt(var + 1e-5)).reshape(x.shape) * gp["scale"] + gp["bias"]
    np.testing.assert_allclose(jax.jit(GroupNorm(32).apply)({"params": gp}, x), ref, atol=1e-4)


def test_train_mode_bn_is_rejected():
    with pytest.raises(ValueError, match="batch_stats"):
        make_norm("bn")


def test_frozen_patterns_mark_stem_stage1_and_bn():
    variables, _ = _shapes(ResNet(depth=18, base_width=8), (32, 32))
    params = {"backbone": variables["params"], "head": {"conv1": {"kernel": 0, "bias": 0}}}
    mask = resnet.frozen_param_mask(params, frozen_stages=1, prefix="backbone")
    flat = {freeze.path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    for path, trainable in flat.items():
        if path.startswith("head/"):
            assert trainable, path  # same names outside the prefix are untouched
        elif path.startswith(("backbone/conv1/", "backbone/bn1/", "backbone/layer1_")):
            assert not trainable, path
        elif "/bn" in path or "downsample_bn" in path:
            assert not trainable, path  # frozen_bn: stats and affine
        else:
            assert trainable and path.endswith("kernel"), path
    # bn_eval: statistics stay frozen, the affine of unfrozen stages trains.
    mask = resnet.frozen_param_mask(params, frozen_stages=1, norm="bn_eval", prefix="backbone")
    flat = {freeze.path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["backbone/layer2_0/bn1/scale"] and flat["backbone/layer2_0/downsample_bn/bias"]
    assert not flat["backbone/layer2_0/bn1/mean"] and not flat["backbone/layer2_0/bn1/var"]
    assert not flat["backbone/layer1_0/bn1/scale"]
    # frozen_stages=-1 with gn: everything trains.
    variables, _ = _shapes(ResNet(depth=18, base_width=32, norm="gn", frozen_stages=-1), (32, 32))
    assert freeze.frozen_paths(variables["params"], resnet.frozen_patterns(-1, "gn")) == []


@pytest.mark.parametrize("norm", ["frozen_bn", "bn_eval"])
def test_frozen_params_get_zero_grad_and_no_update(norm):
    model = ResNet(depth=18, base_width=8, norm=norm, frozen_stages=1)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    # Non-trivial statistics so a wrong update would show.
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    mask = freeze.trainable_mask(params, model.frozen_patterns())

    def loss(p):
        return sum(jnp.sum(jnp.sin(o)) for o in model.apply({"params": p}, x))

    grads = jax.jit(jax.grad(loss))(params)
    tx = freeze.masked_optimizer(optax.adamw(1e-2, weight_decay=0.1), mask)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    leaves = zip(jax.tree_util.tree_leaves_with_path(mask), jax.tree_util.tree_leaves(grads),
                 jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new))
    n_trainable = 0
    for (path, trainable), g, p, q in leaves:
        name = freeze.path_str(path)
        if trainable:
            n_trainable += 1
            assert not np.array_equal(p, q), name
        else:
            assert np.all(np.asarray(g) == 0), name  # stop_gradient in the forward
            np.testing.assert_array_equal(p, q, err_msg=name)  # no decay either
    assert n_trainable > 0


@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_bf16_compute(norm):
    model = ResNet(depth=18, base_width=32, norm=norm, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    outs = jax.jit(model.apply)(variables, x)
    assert all(o.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(o))) for o in outs)
