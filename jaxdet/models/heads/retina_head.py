"""RetinaNet head (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

As mmdetection's `RetinaHead`: two towers of `stacked_convs` x (3x3 conv
`feat_channels` + ReLU, no norm by default), then a 3x3 conv to A * C class
logits and a 3x3 conv to A * 4 box deltas. All convs Normal(0, 0.01), zero bias,
except the class bias -log((1 - pi) / pi) so every initial sigmoid is the prior
pi (paper 0.01; the sampling-free method uses 1e-5). Weights are shared across
levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import ConvTower, concat_levels, conv, normal_001, prior_bias
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


class RetinaHead(nn.Module):
    """Anchor-based dense head.

    Attributes:
      num_classes: C (sigmoid classes, no background).
      num_anchors: A per location (9 = 3 scales x 3 ratios in the paper).
      feat_channels: tower width (256).
      stacked_convs: convs per tower (4).
      prior_prob: initial foreground probability pi (0.01).
      norm: tower norm (None in RetinaNet; 'gn' for GN variants). gn_groups: for 'gn'.
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'cls_logits': [B, N, C] float32, N = sum_l H_l * W_l * A,
      'box_deltas': [B, N, 4] float32 delta-xywh (decode with core.coders.delta_xywh_decode).
    Order: level, row-major (y, x), anchor index (same as `priors.make_anchors`).
    """

    num_classes: int
    num_anchors: int = 9
    feat_channels: int = 256
    stacked_convs: int = 4
    prior_prob: float = 0.01
    norm: str | None = None
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        a, c = self.num_anchors, self.num_classes
        tower = lambda name: ConvTower(
            self.feat_channels, self.stacked_convs, norm=self.norm, num_groups=self.gn_groups,
            dtype=self.dtype, platform=self.platform, name=name
        )
        cls_tower, reg_tower = tower("cls_tower"), tower("reg_tower")
        cls_conv = conv(
            a * c,
            3,
            use_bias=True,
            dtype=self.dtype,
            kernel_init=normal_001,
            bias_init=nn.initializers.constant(prior_bias(self.prior_prob)),
            platform=self.platform,
            name="cls_out",
        )
        reg_conv = conv(
            a * 4, 3, use_bias=True, dtype=self.dtype, kernel_init=normal_001,
            platform=self.platform, name="reg_out"
        )
        cls, reg = [], []
        for f in features:
            f = f.astype(self.dtype)
            cls.append(cls_conv(cls_tower(f)))
            reg.append(reg_conv(reg_tower(f)))
        return {"cls_logits": concat_levels(cls, c), "box_deltas": concat_levels(reg, 4)}
