"""Region Proposal Network head (Ren et al., NeurIPS 2015; FPN version, Lin et al. 2017).

As mmdetection's `RPNHead` (and torchvision's `RPNHead`): one shared 3x3 conv of
`feat_channels` + ReLU, then a 1x1 conv to A objectness logits (sigmoid, one class) and
a 1x1 conv to A * 4 box deltas. All convs Normal(0, 0.01), zero bias. Weights are shared
across the FPN levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import concat_levels, conv, normal_001
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


class RPNHead(nn.Module):
    """Class-agnostic anchor head.

    Attributes:
      num_anchors: A per location (3 = ratios 0.5 / 1 / 2 at one scale).
      feat_channels: width of the shared 3x3 conv (256).
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'objectness': [B, N] float32 logits, N = sum_l H_l * W_l * A,
      'box_deltas': [B, N, 4] float32 delta-xywh.
    Order: level, row-major (y, x), anchor index (as `priors.make_anchors`).
    """

    num_anchors: int = 3
    feat_channels: int = 256
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        a = self.num_anchors
        kw = dict(use_bias=True, dtype=self.dtype, kernel_init=normal_001, platform=self.platform)
        shared = conv(self.feat_channels, 3, name="conv", **kw)
        cls_conv = conv(a, 1, name="cls_out", **kw)
        reg_conv = conv(a * 4, 1, name="reg_out", **kw)
        cls, reg = [], []
        for f in features:
            x = nn.relu(shared(f.astype(self.dtype)))
            cls.append(cls_conv(x))
            reg.append(reg_conv(x))
        return {"objectness": concat_levels(cls, 1)[..., 0], "box_deltas": concat_levels(reg, 4)}
