"""YOLOv3 head (mmdetection's `YOLOV3Head`), also Gaussian YOLOv3's.

Per scale: a 3x3 conv-norm-LeakyReLU(0.1) 'bridge' to `feat_channels[l]` (mmdetection:
out_channels (1024, 512, 256) deepest first, i.e. (256, 512, 1024) in stride order),
then a 1x1 conv to A * (box_dims + 1 + C) outputs. Per anchor the channels are
(box..., objectness, classes...) as mmdetection's (x, y, w, h, obj, cls...); Gaussian
YOLOv3 has box_dims 8: (mu_x, sigma_x, mu_y, sigma_y, mu_w, sigma_w, mu_h, sigma_h) as
darknet's `gaussian_yolo_layer`. Weights are not shared across scales.

Init as mmdetection's `init_weights`: every conv Normal(0, 0.01), zero bias; the
objectness bias so that sigmoid = 8 / (608 / stride) ** 2 (about 8 objects per map of
a 608 px image) and the class bias so that sigmoid = 0.01.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.backbones.darknet import ConvLeaky
from jaxdet.models.layers import concat_levels, conv, normal_001, prior_bias
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


def pred_bias(box_dims: int, num_classes: int, num_anchors: int, stride: int
              ) -> np.ndarray:
    """The initial bias [A * (box_dims + 1 + C)] of the 1x1 prediction conv."""
    one = np.zeros((box_dims + 1 + num_classes,), np.float32)
    one[box_dims] = prior_bias(8.0 / (608.0 / stride) ** 2)
    one[box_dims + 1:] = prior_bias(0.01)
    return np.tile(one, num_anchors)


class YOLOV3Head(nn.Module):
    """Attributes:
      num_classes: C (sigmoid classes).
      strides: per scale (8, 16, 32), for the objectness bias.
      feat_channels: bridge width per scale in stride order ((256, 512, 1024) for D53).
      num_anchors: A per location (3).
      box_dims: 4 (YOLOv3) or 8 (Gaussian YOLOv3: mean and std of each coordinate).
      norm, gn_groups, dtype, platform: as the backbone.

    Call: features in stride order -> dict of float32
      'box': [B, N, box_dims] raw (before any sigmoid), N = sum_l h_l * w_l * A,
      'obj_logits': [B, N], 'cls_logits': [B, N, C].
    Order: level, row-major (y, x), anchor (as `priors.make_yolo_anchors`).
    """

    num_classes: int
    strides: Sequence[int] = (8, 16, 32)
    feat_channels: Sequence[int] = (256, 512, 1024)
    num_anchors: int = 3
    box_dims: int = 4
    norm: str | None = "gn"
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        k = self.box_dims + 1 + self.num_classes
        outs = []
        for lvl, f in enumerate(features):
            x = ConvLeaky(self.feat_channels[lvl], 3, norm=self.norm, gn_groups=self.gn_groups,
                          kernel_init=normal_001, dtype=self.dtype, platform=self.platform,
                          name=f"bridge{lvl}")(f.astype(self.dtype))
            bias = pred_bias(self.box_dims, self.num_classes, self.num_anchors,
                             self.strides[lvl])
            outs.append(conv(self.num_anchors * k, 1, use_bias=True, dtype=self.dtype,
                             kernel_init=normal_001,
                             bias_init=lambda *_, b=bias: jnp.asarray(b),
                             platform=self.platform, name=f"pred{lvl}")(x))
        flat = concat_levels(outs, k)
        d = self.box_dims
        return {"box": flat[..., :d], "obj_logits": flat[..., d],
                "cls_logits": flat[..., d + 1:]}
