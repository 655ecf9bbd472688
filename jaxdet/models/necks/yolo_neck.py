"""YOLOv3 neck (mmdetection's `YOLOV3Neck`): three scales, top-down.

From the deepest input down: a detection block (1x1 -> 3x3 (2x) -> 1x1 -> 3x3 (2x)
-> 1x1, conv-norm-LeakyReLU(0.1) each) gives that scale's output; a 1x1 conv of it,
upsampled 2x (nearest), concatenated with the next shallower input feeds the next
detection block. mmdetection: in_channels (1024, 512, 256), out_channels
(512, 256, 128), listed deepest first; here every list is in stride order (8, 16,
32), inputs and outputs alike. Convs use torch's default init, as mmdetection's neck.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import ConvLeaky, torch_default
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


class DetectionBlock(nn.Module):
    """Five conv-norm-LeakyReLU: 1x1 c, 3x3 2c, 1x1 c, 3x3 2c, 1x1 c ('conv1'..'conv5')."""

    features: int
    norm: str | None = "gn"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(norm=self.norm, gn_groups=self.gn_groups, kernel_init=torch_default,
                  dtype=self.dtype, platform=self.platform)
        c = self.features
        for i, (f, k) in enumerate(((c, 1), (2 * c, 3), (c, 1), (2 * c, 3), (c, 1)), start=1):
            x = ConvLeaky(f, k, name=f"conv{i}", **kw)(x)
        return x


class YOLOV3Neck(nn.Module):
    """Attributes: out_channels per scale in stride order ((128, 256, 512) for D53);
    norm, gn_groups, dtype, platform as the backbone.

    Call: features in stride order [B, h_l, w_l, C_l] -> outputs in stride order
    [B, h_l, w_l, out_channels[l]]. Parameters: 'detect{l}' and 'lateral{l}' (the 1x1
    conv before the upsampling, l = the shallower scale it feeds).
    """

    out_channels: Sequence[int] = (128, 256, 512)
    norm: str | None = "gn"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
        if len(features) != len(self.out_channels):
            raise ValueError(f"{len(features)} inputs, {len(self.out_channels)} out_channels")
        kw = dict(norm=self.norm, gn_groups=self.gn_groups, dtype=self.dtype,
                  platform=self.platform)
        last = len(features) - 1
        out = DetectionBlock(self.out_channels[last], name=f"detect{last}", **kw)(features[last])
        outs = [out]
        for lvl in range(last - 1, -1, -1):
            x = features[lvl]
            t = ConvLeaky(self.out_channels[lvl], 1, kernel_init=torch_default,
                          name=f"lateral{lvl}", **kw)(out)
            t = jnp.repeat(jnp.repeat(t, 2, axis=1), 2, axis=2)[:, : x.shape[1], : x.shape[2]]
            out = DetectionBlock(self.out_channels[lvl], name=f"detect{lvl}", **kw)(
                jnp.concatenate([t, x.astype(t.dtype)], axis=-1))
            outs.append(out)
        return tuple(outs[::-1])
