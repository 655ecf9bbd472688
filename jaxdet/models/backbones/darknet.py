"""Darknet-53 backbone (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018).

As mmdetection's `Darknet(depth=53)`: a 3x3 conv (32 channels), then five stages,
each a 3x3 / 2 conv doubling the channels followed by `blocks[i]` residual blocks
(1x1 conv to half the channels, 3x3 conv back, added to the input); every conv is
conv -> norm -> LeakyReLU(0.1), without bias. Stages (1, 2, 8, 8, 4) with
(64, 128, 256, 512, 1024) channels; the outputs are stages 3-5 (strides 8, 16, 32;
mmdetection's out_indices (3, 4, 5)). `width` (32) scales every channel count and
`blocks` sets the depth, so a narrow Darknet (width 8, blocks (1, 1, 2, 2, 1))
trains on a CPU.

Norm: mmdetection trains Darknet with batch statistics (BN); jaxdet has no
train-mode BN (`jaxdet.models.layers.make_norm`), so the configs use GroupNorm
('gn') or a fixed-statistics BN with a trainable affine ('bn_eval', for imported
weights). Initialisation: Kaiming normal (fan_out), as mmdetection's Darknet
without a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import conv, make_norm
from jaxdet.platform import DEFAULT, Platform

Dtype = Any
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default conv init (kaiming_uniform, a = sqrt(5)); mmdetection's YOLOv3 neck.
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class ConvLeaky(nn.Module):
    """conv (kernel, stride; no bias with a norm) -> norm -> LeakyReLU(0.1) (mmcv's
    `ConvModule` with act_cfg LeakyReLU). Submodules 'conv', 'norm'."""

    features: int
    kernel: int = 3
    stride: int = 1
    norm: str | None = "gn"
    gn_groups: int = 32
    negative_slope: float = 0.1
    kernel_init: Callable[..., jax.Array] = kaiming_fan_out
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(self.features, self.kernel, self.stride, use_bias=self.norm in (None, "none"),
                 dtype=self.dtype, kernel_init=self.kernel_init, platform=self.platform,
                 name="conv")(x)
        norm = make_norm(self.norm, dtype=self.dtype,
                         num_groups=min(self.gn_groups, self.features), name="norm")
        if norm is not None:
            x = norm(x)
        return nn.leaky_relu(x, self.negative_slope)


class ResBlock(nn.Module):
    """x + conv3x3(conv1x1(x)), the 1x1 to half the channels (mmdetection's `ResBlock`)."""

    norm: str | None = "gn"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(norm=self.norm, gn_groups=self.gn_groups, dtype=self.dtype,
                  platform=self.platform)
        y = ConvLeaky(c // 2, 1, name="conv1", **kw)(x)
        return x + ConvLeaky(c, 3, name="conv2", **kw)(y)


class Darknet(nn.Module):
    """Darknet-53 (or a narrower / shallower one).

    Attributes:
      width: channels of the first conv (32); stage i has width * 2 ** (i + 1).
      blocks: residual blocks per stage ((1, 2, 8, 8, 4) for Darknet-53).
      out_stages: 1-based stages returned (3, 4, 5) = strides 8, 16, 32.
      norm, gn_groups: the norm of every conv ('gn', 'bn_eval', 'frozen_bn', None).
      dtype, platform: compute dtype and conv kernels.

    Call: images [B, H, W, 3] -> tuple of [B, ceil(H / s), ceil(W / s), C_s], one per
    out stage, in stride order. Parameters: 'conv1', 'stage{i}_down', 'stage{i}_{j}'.
    """

    width: int = 32
    blocks: tuple[int, ...] = (1, 2, 8, 8, 4)
    out_stages: tuple[int, ...] = (3, 4, 5)
    norm: str | None = "gn"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        kw = dict(norm=self.norm, gn_groups=self.gn_groups, dtype=self.dtype,
                  platform=self.platform)
        x = ConvLeaky(self.width, 3, name="conv1", **kw)(x.astype(self.dtype))
        outs = []
        for i, n in enumerate(self.blocks, start=1):
            x = ConvLeaky(self.width * 2 ** i, 3, 2, name=f"stage{i}_down", **kw)(x)
            for j in range(n):
                x = ResBlock(name=f"stage{i}_{j}", **kw)(x)
            if i in self.out_stages:
                outs.append(x)
        return tuple(outs)
