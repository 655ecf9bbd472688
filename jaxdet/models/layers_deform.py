"""Flax modules over `jaxdet.ops.deform_conv.deform_conv2d` (channels last).

- `DeformConv`: offsets are given by the caller (Guided Anchoring's feature
  adaption, AlignDet's RoIConv, RepPoints), as [B, Ho, Wo, G, kh*kw, 2] (dy, dx)
  or in torch/mmcv channel layout [B, Ho, Wo, G*kh*kw*2] (channel
  (g*kh*kw + k)*2 + {0: dy, 1: dx}).
- `ModulatedDeformConv`: DCNv2 as mmcv's ``ModulatedDeformConv2dPack``: a conv of
  the same kernel / stride / padding / dilation, zero-initialised, predicts
  3*G*kh*kw channels = (o1, o2, mask logits); offsets = concat(o1, o2) in mmcv's
  channel layout and mask = sigmoid(logits). At initialisation the offsets are 0
  and the mask is 0.5 everywhere.

Weights are [kh, kw, Cin/groups, Cout] (HWIO), as `flax.linen.Conv`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.ops.deform_conv import deform_conv2d
from jaxdet.ops.per_shard import per_shard
from jaxdet.platform import DEFAULT, Platform

Array = jnp.ndarray


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def offsets_from_channels(flat: Array, offset_groups: int, taps: int) -> Array:
    """[B, Ho, Wo, G*taps*2] (mmcv / torchvision channel order) -> [B, Ho, Wo, G, taps, 2]."""
    if flat.shape[-1] != offset_groups * taps * 2:
        raise ValueError(
            f"offsets have {flat.shape[-1]} channels, expected G*kh*kw*2 = "
            f"{offset_groups * taps * 2}"
        )
    return flat.reshape(*flat.shape[:-1], offset_groups, taps, 2)


class DeformConv(nn.Module):
    """Deformable conv (DCNv1) with caller-given offsets (and optional DCNv2 mask).

    Padding defaults to 'same' for odd kernels: dilation * (k - 1) // 2.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] | None = None
    dilation: int | Sequence[int] = 1
    groups: int = 1
    offset_groups: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    impl: str = "tiled"
    layout: str = "auto"
    platform: Platform = DEFAULT  # its target resolves layout="auto"
    sampling_backend: str = "auto"  # 'auto' | 'xla' | 'pallas' (config model.sampling_backend)

    def _padding(self) -> tuple[int, int]:
        if self.padding is not None:
            return _pair(self.padding)
        kh, kw = self.kernel_size
        dh, dw = _pair(self.dilation)
        return (dh * (kh - 1) // 2, dw * (kw - 1) // 2)

    @nn.compact
    def __call__(self, x: Array, offsets: Array, mask: Array | None = None) -> Array:
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        if cin % self.groups:
            raise ValueError(f"{cin} input channels not divisible by groups={self.groups}")
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (kh, kw, cin // self.groups, self.features),
            self.param_dtype,
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        if offsets.ndim == 4:
            offsets = offsets_from_channels(offsets, self.offset_groups, kh * kw)
        if mask is not None and mask.ndim == 4:
            mask = mask.reshape(*mask.shape[:-1], self.offset_groups, kh * kw)
        dtype = self.dtype or x.dtype
        weight = kernel.astype(dtype)
        conv = functools.partial(
            deform_conv2d,
            stride=self.strides,
            padding=self._padding(),
            dilation=self.dilation,
            groups=self.groups,
            impl=self.impl,
            layout=self.layout,
            target=self.platform.target,
            sampling_backend=self.sampling_backend,
        )
        # Per data shard: the op folds the batch into its pixel tiles, which sharding
        # propagation would partition by gathering every image onto every device.
        y = per_shard(lambda xs, o, m: conv(xs, o, weight, m), x.astype(dtype), offsets, mask)
        if bias is not None:
            y = y + bias.astype(y.dtype)
        return y


class ModulatedDeformConv(nn.Module):
    """DCNv2 with offsets and mask predicted from the input by a zero-initialised
    conv (mmcv's ``ModulatedDeformConv2dPack``)."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] | None = None
    dilation: int | Sequence[int] = 1
    groups: int = 1
    offset_groups: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    impl: str = "tiled"
    layout: str = "auto"
    platform: Platform = DEFAULT  # its target resolves layout="auto"
    sampling_backend: str = "auto"  # 'auto' | 'xla' | 'pallas' (config model.sampling_backend)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        dh, dw = _pair(self.dilation)
        pad = (
            _pair(self.padding)
            if self.padding is not None
            else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
        )
        taps = kh * kw
        g = self.offset_groups
        pred = nn.Conv(
            3 * g * taps,
            (kh, kw),
            strides=_pair(self.strides),
            padding=[(pad[0], pad[0]), (pad[1], pad[1])],
            kernel_dilation=(dh, dw),
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv_offset",
        )(x)
        offsets = offsets_from_channels(pred[..., : 2 * g * taps], g, taps)
        mask = nn.sigmoid(pred[..., 2 * g * taps :].astype(jnp.float32))
        mask = mask.reshape(*mask.shape[:-1], g, taps)
        return DeformConv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=pad,
            dilation=self.dilation,
            groups=self.groups,
            offset_groups=g,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            impl=self.impl,
            layout=self.layout,
            platform=self.platform,
            sampling_backend=self.sampling_backend,
            name="deform",
        )(x, offsets, mask)
