"""FPN neck: shapes on odd sizes, extra-level modes, torch-nearest upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.core.priors import feature_shapes
from jaxdet.models.layers import conv
from jaxdet.models.necks.fpn import FPN, upsample_nearest_to

STRIDES = (8, 16, 32, 64, 128)


def _inputs(hw, chans=(16, 32, 64), batch=2):
    shapes = feature_shapes(hw, STRIDES[:3])
    keys = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(k, (batch, h, w, c)) for k, (h, w), c in zip(keys, shapes, chans)]


@pytest.mark.parametrize("mode", ["on_input", "on_output", "on_lateral", "pool"])
@pytest.mark.parametrize("hw", [(128, 128), (100, 152), (97, 61)])
def test_shapes_match_priors(mode, hw):
    fpn = FPN(out_channels=24, num_outs=5, add_extra_convs=mode, relu_before_extra_convs=True)
    feats = _inputs(hw)
    variables = jax.eval_shape(fpn.init, jax.random.key(1), feats)
    outs = jax.eval_shape(fpn.apply, variables, feats)
    assert [o.shape for o in outs] == [(2, h, w, 24) for h, w in feature_shapes(hw, STRIDES)]
    n_extra = sum(k.startswith("extra_") for k in variables["params"])
    assert n_extra == (0 if mode == "pool" else 2)


def test_three_levels_only():
    fpn = FPN(out_channels=16, num_outs=3)
    feats = _inputs((100, 152))
    outs = jax.jit(fpn.apply)(jax.jit(fpn.init)(jax.random.key(1), feats), feats)
    assert [o.shape[1:3] for o in outs] == feature_shapes((100, 152), STRIDES[:3])


@pytest.mark.parametrize("mode", ["on_input", "on_output"])
def test_extra_levels_source_and_relu(mode):
    fpn = FPN(out_channels=8, num_outs=5, add_extra_convs=mode, relu_before_extra_convs=True)
    feats = _inputs((100, 152))
    variables = jax.jit(fpn.init)(jax.random.key(1), feats)
    outs = jax.jit(fpn.apply)(variables, feats)
    p = variables["params"]

    def conv_s2(name, x):
        return conv(8, 3, 2, use_bias=True, dtype=jnp.float32,
                    kernel_init=jax.nn.initializers.zeros).apply({"params": p[name]}, x)

    source = feats[-1] if mode == "on_input" else outs[2]
    np.testing.assert_allclose(outs[3], conv_s2("extra_0", source), atol=1e-5)
    np.testing.assert_allclose(outs[4], conv_s2("extra_1", jax.nn.relu(outs[3])), atol=1e-5)


@pytest.mark.parametrize("n_in,n_out", [(4, 8), (4, 7), (13, 25), (3, 8), (5, 7), (6, 6)])
def test_upsample_is_torch_nearest(n_in, n_out):
    x = jnp.arange(n_in * 3, dtype=jnp.float32).reshape(1, n_in, 3, 1)
    y = upsample_nearest_to(x, (n_out, 3))
    idx = np.floor(np.arange(n_out) * (n_in / n_out)).astype(int)  # torch 'nearest'
    np.testing.assert_array_equal(y[0, :, :, 0], np.asarray(x)[0, idx, :, 0])


def test_bf16_compute():
    fpn = FPN(out_channels=16, num_outs=5, dtype=jnp.bfloat16)
    feats = _inputs((64, 96))
    outs = jax.jit(fpn.apply)(jax.jit(fpn.init)(jax.random.key(1), feats), feats)
    assert all(o.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(o))) for o in outs)
