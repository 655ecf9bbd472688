"""ResNet-18/34/50/101 backbone (He et al., CVPR 2016), torchvision layout, NHWC.

Parameter names mirror torchvision so weights import one-to-one
(`jaxdet.models.torch_import`): 'conv1', 'bn1', 'layer{i}_{j}/conv1..3',
'layer{i}_{j}/bn1..3', 'layer{i}_{j}/downsample_conv', 'layer{i}_{j}/downsample_bn'
(torch: 'layer{i}.{j}.downsample.0' / '.1').

Stride placement: style='pytorch' (mmdetection default, torchvision v1.5) puts the
stride in the bottleneck's 3x3 conv; 'caffe' puts it in the first 1x1.
Convolutions pad k // 2 like torch, so a stride-s level has ceil(H / s) x ceil(W / s)
cells, exactly `jaxdet.core.priors.feature_shapes`.

Freezing (mmdetection `frozen_stages`): stage 0 = stem (conv1, bn1), stage i = layer{i}.
The default frozen_stages=1 freezes the stem and layer1 as in detection training;
the forward applies `stop_gradient` after the last frozen stage (so the backward
skips it) and `frozen_patterns` names those parameters for the optimizer mask.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models import freeze
from jaxdet.models.layers import conv, make_norm
from jaxdet.ops.conv import pool
from jaxdet.platform import DEFAULT, Platform

Dtype = Any

# depth -> (block type, blocks per stage)
STAGE_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
# torchvision: kaiming normal, fan_out, relu gain.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride, dtype, platform, name):
    return conv(
        features,
        kernel,
        stride,
        use_bias=False,
        dtype=dtype,
        kernel_init=kaiming_fan_out,
        platform=platform,
        name=name,
    )


class StemConv(nn.Module):
    """The 7x7 / 2 stem conv (padding 3, no bias), param 'kernel' [7, 7, Cin, C].

    Computed as space-to-depth (2x2 pixels -> 4 * Cin channels) and a 4x4 / 1 conv with
    the kernel rearranged: the same result as the direct conv (tested), faster on CPU
    (the MLPerf ResNet trick); the parameter keeps the torchvision layout.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        kernel = self.param("kernel", kaiming_fan_out, (7, 7, c, self.features), jnp.float32)
        oh, ow = -(-h // 2), -(-w // 2)
        # out[i] = sum_k xpad3[2i + k] K[k] = sum_{a<4, b<2} xpad4[2(i + a) + b] K8[2a + b],
        # K8 = K with one leading zero tap; xpad4 needs 2 * (o + 3) rows.
        x = jnp.pad(x, ((0, 0), (4, 2 * oh + 2 - h), (4, 2 * ow + 2 - w), (0, 0)))
        x = x.reshape(b, oh + 3, 2, ow + 3, 2, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, oh + 3, ow + 3, 4 * c)
        k = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0))).reshape(4, 2, 4, 2, c, -1)
        k = k.transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, self.features)
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            k.astype(self.dtype),
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block (ResNet-18/34)."""

    planes: int
    stride: int = 1
    downsample: bool = False
    norm: str = "frozen_bn"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x):
        norm = lambda name: make_norm(
            self.norm, dtype=self.dtype, num_groups=self.gn_groups, name=name
        )
        cv = lambda f, k, s, name: _conv(f, k, s, self.dtype, self.platform, name)
        identity = x
        y = nn.relu(norm("bn1")(cv(self.planes, 3, self.stride, "conv1")(x)))
        y = norm("bn2")(cv(self.planes, 3, 1, "conv2")(y))
        if self.downsample:
            conv_ds = cv(self.planes, 1, self.stride, "downsample_conv")
            identity = norm("downsample_bn")(conv_ds(x))
        return nn.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block (ResNet-50/101)."""

    planes: int
    stride: int = 1
    downsample: bool = False
    norm: str = "frozen_bn"
    gn_groups: int = 32
    style: str = "pytorch"
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x):
        norm = lambda name: make_norm(
            self.norm, dtype=self.dtype, num_groups=self.gn_groups, name=name
        )
        cv = lambda f, k, s, name: _conv(f, k, s, self.dtype, self.platform, name)
        s1, s2 = (1, self.stride) if self.style == "pytorch" else (self.stride, 1)
        identity = x
        y = nn.relu(norm("bn1")(cv(self.planes, 1, s1, "conv1")(x)))
        y = nn.relu(norm("bn2")(cv(self.planes, 3, s2, "conv2")(y)))
        y = norm("bn3")(cv(self.planes * 4, 1, 1, "conv3")(y))
        if self.downsample:
            conv_ds = cv(self.planes * 4, 1, self.stride, "downsample_conv")
            identity = norm("downsample_bn")(conv_ds(x))
        return nn.relu(y + identity)


class ResNet(nn.Module):
    """ResNet backbone returning the feature maps C_l of `out_levels` (stride 2**l).

    Attributes:
      depth: 18, 34, 50 or 101.
      base_width: stem channels; stage i has base_width * 2**(i-1) planes (64 = standard;
        e.g. 16 for a tiny CPU model). Output channels: `out_channels(depth, base_width)`.
      norm: 'frozen_bn' (default; stats and affine fixed), 'bn_eval' (stats fixed, affine
        trained outside frozen stages: mmdetection's pytorch-style default) or 'gn'.
      frozen_stages: -1 none, 0 stem, k stem + layer1..layerk (default 1).
      out_levels: which C_l to return, from 2..5 (default C3, C4, C5: strides 8, 16, 32).
      style: 'pytorch' (stride in the 3x3 conv) or 'caffe' (stride in the first 1x1).
      gn_groups: groups for norm='gn'.
      dtype: compute dtype (params stay float32).
      platform: the `jaxdet.platform.Platform` the convs and the stem pool are built for.

    Call: images [B, H, W, 3] -> tuple of [B, ceil(H/2**l), ceil(W/2**l), C_l], one per
    out level, increasing stride.
    """

    depth: int = 50
    base_width: int = 64
    norm: str = "frozen_bn"
    frozen_stages: int = 1
    out_levels: tuple[int, ...] = (3, 4, 5)
    style: str = "pytorch"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"depth {self.depth} not in {sorted(STAGE_BLOCKS)}")
        if not set(self.out_levels) <= {2, 3, 4, 5}:
            raise ValueError(f"out_levels {self.out_levels} must be within 2..5")
        kind, blocks = STAGE_BLOCKS[self.depth]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        style = {} if kind == "basic" else {"style": self.style}
        x = x.astype(self.dtype)
        x = StemConv(self.base_width, self.dtype, name="conv1")(x)
        x = make_norm(self.norm, dtype=self.dtype, num_groups=self.gn_groups, name="bn1")(x)
        x = nn.relu(x)
        x = pool(x, window=3, stride=2, padding=1, platform=self.platform)  # = nn.max_pool
        if self.frozen_stages == 0:
            x = jax.lax.stop_gradient(x)
        in_ch = self.base_width
        outs = {}
        for i, n in enumerate(blocks, start=1):
            planes = self.base_width * 2 ** (i - 1)
            for j in range(n):
                stride = 2 if (j == 0 and i > 1) else 1
                x = block_cls(
                    planes,
                    stride,
                    downsample=(j == 0 and (stride != 1 or in_ch != planes * EXPANSION[kind])),
                    norm=self.norm,
                    gn_groups=self.gn_groups,
                    dtype=self.dtype,
                    platform=self.platform,
                    name=f"layer{i}_{j}",
                    **style,
                )(x)
                in_ch = planes * EXPANSION[kind]
            if i == self.frozen_stages:
                x = jax.lax.stop_gradient(x)
            outs[i + 1] = x
            if i + 1 >= max(self.out_levels):
                break
        return tuple(outs[lvl] for lvl in sorted(self.out_levels))

    @nn.nowrap
    def frozen_patterns(self, prefix: str = "") -> list[str]:
        """`frozen_patterns(self.frozen_stages, self.norm, prefix)`."""
        return frozen_patterns(self.frozen_stages, self.norm, prefix)


def out_channels(depth: int, base_width: int = 64) -> dict[int, int]:
    """Channels of C2..C5 ({level: channels})."""
    kind, _ = STAGE_BLOCKS[depth]
    return {i + 1: base_width * 2 ** (i - 1) * EXPANSION[kind] for i in range(1, 5)}


def frozen_patterns(frozen_stages: int = 1, norm: str = "frozen_bn", prefix: str = "") -> list[str]:
    """Regexes (for `freeze.trainable_mask`) of the ResNet parameters that must not train.

    - BN statistics ('mean', 'var') always (norm 'frozen_bn' / 'bn_eval');
    - the BN affine ('scale', 'bias' of bn*, downsample_bn) too when norm='frozen_bn';
    - every parameter of the stem (stage 0) and of layer1..layer{frozen_stages}.
    `prefix` is the backbone's path in the full params tree (e.g. 'backbone').
    """
    p = "^" + (re.escape(prefix.rstrip("/")) + "/" if prefix else "")
    pats = []
    if norm in ("frozen_bn", "bn_eval"):
        pats.append(p + r"(.*/)?(bn\d|downsample_bn)/(mean|var)$")
    if norm == "frozen_bn":
        pats.append(p + r"(.*/)?(bn\d|downsample_bn)/(scale|bias)$")
    if frozen_stages >= 0:
        pats.append(p + r"(conv1|bn1)/")
    for i in range(1, frozen_stages + 1):
        pats.append(p + rf"layer{i}_\d+/")
    return pats


def frozen_param_mask(params, frozen_stages: int = 1, norm: str = "frozen_bn", prefix: str = ""):
    """Trainable mask (True = trains) of a params tree holding the ResNet at `prefix`."""
    return freeze.trainable_mask(params, frozen_patterns(frozen_stages, norm, prefix))
