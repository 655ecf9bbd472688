"""DeformConv / ModulatedDeformConv Flax modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.models.layers_deform import DeformConv, ModulatedDeformConv


def _conv(x, k, stride=1, pad=1, dil=1):
    return lax.conv_general_dilated(
        x,
        k,
        (stride, stride),
        [(pad, pad)] * 2,
        rhs_dilation=(dil, dil),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def test_deform_conv_zero_offsets_is_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 4)), jnp.float32)
    mod = DeformConv(5, (3, 3), dilation=2, bias_init=jax.nn.initializers.ones)
    off = jnp.zeros((2, 6, 7, 1, 9, 2))
    params = jax.jit(mod.init)(jax.random.PRNGKey(0), x, off)
    assert params["params"]["kernel"].shape == (3, 3, 4, 5)
    out = jax.jit(mod.apply)(params, x, off)
    ref = jax.jit(_conv, static_argnums=(2, 3, 4))(x, params["params"]["kernel"], 1, 2, 2) + 1.0
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
    # torch/mmcv channel layout [B, Ho, Wo, G*K*2] is accepted too
    out2 = jax.jit(mod.apply)(params, x, jnp.zeros((2, 6, 7, 18)))
    np.testing.assert_allclose(np.asarray(out2), np.asarray(out), rtol=1e-6, atol=1e-6)


def test_modulated_deform_conv_init_and_grads():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
    mod = ModulatedDeformConv(6, (3, 3), strides=2, offset_groups=2, use_bias=False)
    params = jax.jit(mod.init)(jax.random.PRNGKey(1), x)
    p = params["params"]
    assert p["conv_offset"]["kernel"].shape == (3, 3, 4, 3 * 2 * 9)
    assert float(jnp.abs(p["conv_offset"]["kernel"]).max()) == 0.0
    out = jax.jit(mod.apply)(params, x)
    assert out.shape == (1, 4, 4, 6)
    # zero offsets, mask = sigmoid(0) = 0.5
    ref = 0.5 * jax.jit(_conv, static_argnums=(2,))(x, p["deform"]["kernel"], 2)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
    grads = jax.jit(jax.grad(lambda prm: jnp.sum(mod.apply(prm, x) ** 2)))(params)
    g_off = grads["params"]["conv_offset"]["kernel"]
    assert float(jnp.abs(g_off).sum()) > 0  # offsets and mask are trainable from zero init
