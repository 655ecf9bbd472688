"""FCOS head (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019).

As mmdetection's `FCOSHead` with the "improved" settings (norm_on_bbox=True,
centerness_on_reg=True, as fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou):
cls and reg towers of `stacked_convs` x (3x3 conv + GroupNorm(32) + ReLU); 3x3 convs to
C class logits, 4 ltrb distances and 1 centerness logit; a learnable Scale (init 1.0)
per level on the distances. Normal(0, 0.01) weights, class bias from `prior_prob`.
Weights are shared across levels; there is one location per cell (A = 1).
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


class FCOSHead(nn.Module):
    """Anchor-free (point) dense head.

    Attributes:
      num_classes: C (sigmoid classes).
      feat_channels: tower width (256). stacked_convs: convs per tower (4).
      norm: tower norm ('gn', 32 groups; None for none). conv_bias: tower conv bias
        (None = only without norm; the improved mmdetection config sets True).
      prior_prob: initial foreground probability (0.01).
      norm_on_bbox: True -> box_ltrb = relu(scale_l * x), distances in units of the level's
        stride (multiply by `priors.strides` for pixels; targets must be divided by it).
        False (original FCOS) -> box_ltrb = exp(scale_l * x) in pixels.
      centerness_on_reg: centerness from the reg tower (True) or the cls tower (paper).
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'cls_logits': [B, N, C], 'box_ltrb': [B, N, 4] (left, top, right, bottom >= 0),
      'centerness': [B, N] logits; N = sum_l H_l * W_l, order level then row-major (y, x),
      as `priors.make_points`.
    """

    num_classes: int
    feat_channels: int = 256
    stacked_convs: int = 4
    norm: str | None = "gn"
    conv_bias: bool | None = None
    gn_groups: int = 32
    prior_prob: float = 0.01
    norm_on_bbox: bool = True
    centerness_on_reg: bool = True
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
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
        cls_conv = out(
            self.num_classes, "cls_out", nn.initializers.constant(prior_bias(self.prior_prob))
        )
        reg_conv, ctr_conv = out(4, "reg_out"), out(1, "centerness_out")
        cls, reg, ctr = [], [], []
        for lvl, f in enumerate(features):
            f = f.astype(self.dtype)
            cls_feat, reg_feat = cls_tower(f), reg_tower(f)
            cls.append(cls_conv(cls_feat))
            d = Scale(name=f"scale_{lvl}")(reg_conv(reg_feat))  # float32
            reg.append(nn.relu(d) if self.norm_on_bbox else jnp.exp(d))
            ctr.append(ctr_conv(reg_feat if self.centerness_on_reg else cls_feat))
        return {
            "cls_logits": concat_levels(cls, self.num_classes),
            "box_ltrb": concat_levels(reg, 4),
            "centerness": concat_levels(ctr, 1)[..., 0],
        }
