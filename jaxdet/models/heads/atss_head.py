"""ATSS head (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020).

As mmdetection's `ATSSHead`: cls and reg towers of `stacked_convs` x (3x3 conv +
GroupNorm(32) + ReLU, no conv bias); 3x3 convs to A * C class logits, A * 4 box deltas
(times a learnable per-level Scale, init 1.0) and A centerness logits, both from the
reg tower. Normal(0, 0.01) weights, class bias from `prior_prob`. Weights are shared
across levels. The paper uses one square anchor per location (A = 1, scale 8 x stride).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import ConvTower, Scale, concat_levels, conv, normal_001, prior_bias
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


class ATSSHead(nn.Module):
    """Anchor-based dense head with centerness.

    Attributes:
      num_classes: C. num_anchors: A per location (1).
      feat_channels: tower width (256). stacked_convs: convs per tower (4).
      norm: tower norm ('gn'). conv_bias: tower conv bias (None = only without norm).
      prior_prob: initial foreground probability (0.01).
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'cls_logits': [B, N, C], 'box_deltas': [B, N, 4] (delta-xywh, scaled per level),
      'centerness': [B, N] logits; N = sum_l H_l * W_l * A, order level, row-major (y, x),
      anchor index (as `priors.make_anchors`).
    """

    num_classes: int
    num_anchors: int = 1
    feat_channels: int = 256
    stacked_convs: int = 4
    norm: str | None = "gn"
    conv_bias: bool | None = None
    gn_groups: int = 32
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        a, c = self.num_anchors, self.num_classes
        tower = lambda name: ConvTower(
            self.feat_channels,
            self.stacked_convs,
            norm=self.norm,
            use_bias=self.conv_bias,
            num_groups=self.gn_groups,
            dtype=self.dtype,
            platform=self.platform,
            name=name,
        )
        out = lambda n, name, b=nn.initializers.zeros: conv(
            n, 3, use_bias=True, dtype=self.dtype, kernel_init=normal_001, bias_init=b,
            platform=self.platform, name=name
        )
        cls_tower, reg_tower = tower("cls_tower"), tower("reg_tower")
        cls_conv = out(a * c, "cls_out", nn.initializers.constant(prior_bias(self.prior_prob)))
        reg_conv, ctr_conv = out(a * 4, "reg_out"), out(a, "centerness_out")
        cls, reg, ctr = [], [], []
        for lvl, f in enumerate(features):
            f = f.astype(self.dtype)
            reg_feat = reg_tower(f)
            cls.append(cls_conv(cls_tower(f)))
            reg.append(Scale(name=f"scale_{lvl}")(reg_conv(reg_feat)))
            ctr.append(ctr_conv(reg_feat))
        return {
            "cls_logits": concat_levels(cls, c),
            "box_deltas": concat_levels(reg, 4),
            "centerness": concat_levels(ctr, 1)[..., 0],
        }
