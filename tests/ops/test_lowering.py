"""The Pallas sampling kernels, forward and backward, lower from a CPU host: for TPU
(Pallas' Mosaic lowering, "TPU v4" and "TPU v5 lite" device kinds given by an
abstract mesh) and for GPU (the Triton lowering, platform 'cuda').

This checks what the Pallas lowering checks (block shapes, memory spaces, every
primitive having a Mosaic / Triton rule); the device compilers run only on a device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh

from jaxdet.ops.pallas import sampling as pallas_sampling

TPU_KINDS = ("TPU v4", "TPU v5 lite")
TPU_KERNELS = ("gather_tpu", "corner_dots_tpu", "scatter_tpu")
TRITON_KERNELS = ("gather_triton", "corner_dots_triton", "scatter_triton")
TRITON_CALL = "__gpu$xla.gpu.triton"


def _train_fn(kernel: str, boundary: str = "zero"):
    """Forward and backward (feat and points) of a sampled-feature loss."""

    def loss(feat, pts):
        out = pallas_sampling.bilinear_sample_batched(
            feat, 0, pts, boundary=boundary, kernel=kernel, interpret=False
        )
        return jnp.sum(jnp.square(out.astype(jnp.float32)))

    return jax.jit(jax.grad(loss, (0, 1)))


def _args(dtype, shape=(2, 13, 17, 40), points=(3, 50)):
    return (
        jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct((*points, 2), jnp.float32),
    )


def _export_tpu(fn, args, kind: str) -> str:
    device = AbstractDevice(device_kind=kind, num_cores=1, platform="tpu")
    with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=device)):
        return export.export(fn, platforms=["tpu"])(*args).mlir_module()


def _export_cuda(fn, args) -> str:
    checks = [export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    return export.export(fn, platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()


@pytest.mark.parametrize("kind", TPU_KINDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("boundary", ["zero", "clamp"])
def test_tpu_kernels_lower(kind, dtype, boundary):
    text = _export_tpu(_train_fn("tpu", boundary), _args(dtype), kind)
    assert text.count("tpu_custom_call") == 3
    for name in TPU_KERNELS:
        assert f"jaxdet_bilinear_{name}" in text


def test_tpu_kernels_lower_for_a_p3_map():
    # P3 of two 800 x 1216 images at C=256 (31 MiB in f32, more than a TPU v4's 16 MiB
    # of VMEM), sampled by a 3x3 deformable conv: the map stays in HBM and the window
    # bounds of the 2138 point tiles come in SMEM blocks, so nothing scales with them.
    args = _args(jnp.float32, shape=(2, 100, 152, 256), points=(2 * 100 * 152, 9))
    text = _export_tpu(_train_fn("tpu"), args, "TPU v4")
    assert text.count("tpu_custom_call") == 3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("boundary", ["zero", "clamp"])
def test_triton_kernels_lower(dtype, boundary):
    text = _export_cuda(_train_fn("triton", boundary), _args(dtype))
    assert text.count(TRITON_CALL) == 3
    for name in TRITON_KERNELS:
        assert f'name = "jaxdet_bilinear_{name}"' in text


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_deform_conv_with_pallas_sampling_lowers(platform):
    from jaxdet.ops.deform_conv import deform_conv2d

    target = "tpu" if platform == "tpu" else "gpu"

    def loss(x, off, w):
        out = deform_conv2d(x, off, w, padding=1, target=target, sampling_backend="pallas")
        return jnp.sum(jnp.square(out))

    args = (
        jax.ShapeDtypeStruct((2, 20, 24, 64), jnp.bfloat16),
        jax.ShapeDtypeStruct((2, 20, 24, 1, 9, 2), jnp.float32),
        jax.ShapeDtypeStruct((3, 3, 64, 32), jnp.bfloat16),
    )
    fn = jax.jit(jax.grad(loss, (0, 1, 2)))
    if platform == "tpu":
        assert _export_tpu(fn, args, "TPU v5 lite").count("tpu_custom_call") == 3
    else:
        assert _export_cuda(fn, args).count(TRITON_CALL) == 3
