"""The ATSS R50-FPN train step (configs/atss/atss_r50_fpn_1x_coco.py, batch 2 x 256 x
256, uint8 images) exported from this CPU for TPU and CUDA with `jax.export`, abstract
shapes only (nothing runs): the module carries XLA's convolutions for every conv
gradient, the same program as a CPU target on XLA's kernels, and none of the CPU conv
kernels (`jaxdet.ops.conv`: kernel gradients as matmuls of shifted slices) nor CPU
custom calls."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from configs.atss import atss_r50_fpn_1x_coco
from jaxdet import detectors
from jaxdet import platform as platform_lib
from jaxdet.train import optim
from jaxdet.train.step import create_train_state, train_step

B, H, W = 2, 256, 256


def _config(target: str, cpu_conv: str = "off"):
    config = atss_r50_fpn_1x_coco.get_config()
    config.data.num_classes = 80
    config.data.image_size = (H, W)
    config.platform.target = target
    config.platform.cpu_conv = cpu_conv
    return config


@functools.cache
def exported_train_step(target: str, cpu_conv: str = "off") -> str:
    """The StableHLO text of the train step exported for `target` ('cpu' | 'gpu' | 'tpu')."""
    config = _config(target, cpu_conv)
    platform = platform_lib.from_config(config)
    detector = detectors.build(config)
    params, det_state = jax.eval_shape(lambda: detector.init(jax.random.PRNGKey(0), (H, W)))
    schedule = optim.make_schedule(config.optimizer, 100, 10)
    tx = optim.make_optimizer(config.optimizer, schedule, detector.trainable_mask(params))
    state = jax.eval_shape(lambda p, s: create_train_state(p, s, tx), params, det_state)
    m = int(config.data.max_boxes)
    spec = jax.ShapeDtypeStruct
    batch = dict(image=spec((B, H, W, 3), jnp.uint8), image_hw=spec((B, 2), jnp.int32),
                 boxes=spec((B, m, 4), jnp.float32), labels=spec((B, m), jnp.int32),
                 valid=spec((B, m), jnp.bool_), ignore=spec((B, m), jnp.bool_))
    step = jax.jit(functools.partial(train_step, detector=detector, tx=tx))
    rng = spec((2,), jnp.uint32)
    exp = export.export(step, platforms=(platform.export_platform,))(state, batch, rng)
    return exp.mlir_module()


def _ops(text: str) -> dict[str, int]:
    names = ("stablehlo.convolution", "stablehlo.dot_general", "stablehlo.custom_call")
    return {n.split(".")[1]: text.count(n) for n in names}


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_atss_r50_train_step_exports_xla_convolutions(target):
    text = exported_train_step(target)
    ops = _ops(text)
    # ResNet-50 (53 convs), FPN (8), head (2 x 4 tower convs + 3 predictors, on 5 levels):
    # 116 forward convs, and the kernel and input gradients of those not frozen
    # (stem and first stage: 11) as convolutions too (324 in all for this config); no matmul.
    assert ops["convolution"] >= 2 * (53 + 8 + 5 * 11), ops
    assert ops["dot_general"] == 0, ops
    xla_cpu = _ops(exported_train_step("cpu", "off"))
    assert ops == xla_cpu, (ops, xla_cpu)  # the program of XLA's kernels, for any target
    targets = set(re.findall(r"stablehlo\.custom_call @(\w+)", text))
    assert not {t for t in targets if "cpu" in t.lower() or "lapack" in t.lower()}, targets
    assert "ui8" in text  # the images cross as uint8


def test_cpu_conv_kernels_differ_from_the_accelerator_export():
    """The same step for a CPU target with jaxdet's CPU kernels on: kernel gradients as
    matmuls (fewer convolutions, more dot_generals) -- what the export above must not carry."""
    tpu = _ops(exported_train_step("tpu"))
    cpu = _ops(exported_train_step("cpu", "on"))
    assert cpu["convolution"] < tpu["convolution"] and cpu["dot_general"] > tpu["dot_general"]
