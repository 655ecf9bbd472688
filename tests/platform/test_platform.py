"""jaxdet.platform: one resolved value decides the conv kernels and jit options, and a
value made for another target exports XLA's convolutions, not the CPU kernels."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from configs.atss import atss_tiny_shapes
from jaxdet import platform as platform_lib
from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.layers import ConvNormAct
from jaxdet.ops import roi_align, sampling
from jaxdet.ops.pallas import needs_interpret, use_pallas
from jaxdet.platform import Platform


def test_platform_is_a_frozen_hashable_value():
    p = Platform(target="cpu", conv_kernel_grad="slices", slices_min_cin_cout=512)
    assert hash(p) == hash(dataclasses.replace(p)) and p == dataclasses.replace(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.target = "tpu"  # type: ignore[misc]
    with pytest.raises(ValueError, match="target"):
        Platform(target="cuda")
    assert Platform(target="gpu").export_platform == "cuda"
    assert platform_lib.DEFAULT == Platform() and not Platform().cpu_conv


def test_from_config_resolves_once_and_defaults_to_auto():
    config = atss_tiny_shapes.get_config()
    assert dict(config.platform) == dict(target="auto", cpu_conv="auto", ynnpack="auto")
    p = platform_lib.from_config(config)
    assert p is platform_lib.from_config(atss_tiny_shapes.get_config())  # cached value
    assert p is platform_lib.resolve()
    assert p.target == platform_lib.local_target()
    del config.platform
    assert platform_lib.from_config(config) is p
    config.platform = dict(target="tpu")
    tpu = platform_lib.from_config(config)
    assert tpu == Platform(target="tpu") and tpu.compiler_options() is None


def test_ops_pick_kernels_by_target():
    assert sampling.resolve_layout("auto", "cpu") == "rows"
    assert sampling.resolve_layout("auto", "tpu") == "packed"
    assert roi_align._resolve_method("auto", "tpu") == "einsum"
    assert roi_align._resolve_method("auto", "gpu") == "gather"
    assert needs_interpret("cpu") and not needs_interpret("tpu")
    assert not use_pallas("cpu")


class SmallNet(nn.Module):
    """A 3x3 / 1x1 / 3x3 conv stack (Cin * Cout >= 512: the CPU rule's slice gradients)."""

    platform: Platform = platform_lib.DEFAULT

    @nn.compact
    def __call__(self, x):
        x = ConvNormAct(32, 3, platform=self.platform, name="a")(x)
        x = ConvNormAct(32, 1, platform=self.platform, name="b")(x)
        return ConvNormAct(32, 3, platform=self.platform, name="c")(x)


def _exported_train_step(net: nn.Module, x_shape, platform: Platform) -> str:
    x = jnp.zeros(x_shape, jnp.float32)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)

    def step(p, x_):
        loss = lambda q: sum(jnp.mean(jnp.square(o)) for o in jax.tree.leaves(net.apply(q, x_)))
        grads = jax.grad(loss)(p)
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, grads)

    exp = export.export(jax.jit(step), platforms=(platform.export_platform,))(
        params, jax.ShapeDtypeStruct(x_shape, jnp.float32))
    return exp.mlir_module()


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_export_for_accelerators_has_xla_kernel_gradients(target):
    """A CPU host exports the train step for TPU / CUDA with stablehlo.convolution for
    every forward, input-gradient and kernel-gradient conv, and none of the CPU path's
    matmuls; the same net resolved for this CPU with cpu_conv='on' has them."""
    plat = platform_lib.resolve(target=target)
    assert not plat.cpu_conv
    text = _exported_train_step(SmallNet(platform=plat), (2, 8, 8, 32), plat)
    # 3 forward + 3 kernel gradients + 3 input gradients (x's is dead code but the
    # first conv's still appears before DCE or not: at least 2)
    assert text.count("stablehlo.convolution") >= 3 + 3 + 2
    assert "stablehlo.dot_general" not in text
    cpu = platform_lib.resolve(target="cpu", cpu_conv="on")
    cpu_text = _exported_train_step(SmallNet(platform=cpu), (2, 8, 8, 32), cpu)
    assert "stablehlo.dot_general" in cpu_text
    assert cpu_text.count("stablehlo.convolution") < text.count("stablehlo.convolution")


def test_export_resnet_stem_and_pool_for_tpu():
    """The ResNet (space-to-depth stem, max pool, blocks) for TPU: XLA's reduce_window
    pool and convolutions only."""
    plat = platform_lib.resolve(target="tpu")
    net = ResNet(depth=18, base_width=8, out_levels=(3,), platform=plat)
    text = _exported_train_step(net, (1, 32, 32, 3), plat)
    assert "stablehlo.reduce_window" in text and "stablehlo.dot_general" not in text


def test_cpu_platform_values_match_xla():
    """The CPU kernels as resolved on this machine give XLA's values (up to float
    summation order) for SmallNet's train step."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 32))
    out = {}
    for name, plat in (("xla", platform_lib.DEFAULT),
                       ("cpu", platform_lib.resolve(target="cpu", cpu_conv="on"))):
        net = SmallNet(platform=plat)
        params = net.init(jax.random.PRNGKey(0), x)
        loss = functools.partial(lambda n, q: jnp.mean(jnp.square(n.apply(q, x))), net)
        out[name] = jax.jit(jax.value_and_grad(loss))(params)
    for a, b in zip(jax.tree.leaves(out["cpu"]), jax.tree.leaves(out["xla"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_export_tiny_atss_train_step(target):
    """The tiny ATSS train step exported from this host for TPU / CUDA, with the platform
    resolved from `config.platform.target`: XLA convolutions only."""
    from jaxdet import detectors
    from jaxdet.train import optim
    from jaxdet.train.step import create_train_state, train_step
    from tests.tiny import tiny_config

    config = tiny_config("atss", "unused")
    config.platform.target = target
    plat = platform_lib.from_config(config)
    assert plat == Platform(target=target)
    det = detectors.build(config)
    b, (h, w), m = 2, config.data.image_size, int(config.data.max_boxes)
    params, det_state = jax.eval_shape(lambda r: det.init(r, (h, w)), jax.random.PRNGKey(0))
    tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.optimizer, 10, 5),
                              det.trainable_mask(params))
    state = jax.eval_shape(lambda p, s: create_train_state(p, s, tx), params, det_state)
    sds = jax.ShapeDtypeStruct
    batch = dict(image=sds((b, h, w, 3), jnp.float32), image_hw=sds((b, 2), jnp.int32),
                 boxes=sds((b, m, 4), jnp.float32), labels=sds((b, m), jnp.int32),
                 valid=sds((b, m), jnp.bool_), ignore=sds((b, m), jnp.bool_))
    step = jax.jit(functools.partial(train_step, detector=det, tx=tx),
                   compiler_options=plat.compiler_options())
    exp = export.export(step, platforms=(plat.export_platform,))(
        state, batch, jax.ShapeDtypeStruct((2,), jnp.uint32))
    text = exp.mlir_module()
    assert text.count("stablehlo.convolution") > 20
    assert "stablehlo.dot_general" not in text
