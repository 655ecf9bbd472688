"""AlignDet head (Chen et al., "Revisiting Feature Alignment for One-stage Object
Detection", arXiv 1908.01570): a dense first stage that refines one anchor per
location, then RoIConv, a 3x3 deformable conv whose sampling points are a 3x3 grid
over the refined box, feeding the final classification and regression.

Per FPN level (weights shared across levels):
  cls and reg towers of `stacked_convs` x (3x3 conv + norm + ReLU) (RetinaNet's towers);
  first stage:   reg tower -> 3x3 conv -> 1 objectness logit (class-agnostic) and
                 reg tower -> 3x3 conv -> 4 delta-xywh of the location's anchor;
  refined box:   delta-xywh decode (`init_box_stds`) of the anchor, DETACHED;
  RoIConv:       offsets = `jaxdet.ops.roi_conv.box_offsets(refined box)` (no learned
                 offsets); cls tower -> 3x3 DeformConv -> ReLU -> 1x1 conv -> C logits,
                 reg tower -> 3x3 DeformConv -> ReLU -> 1x1 conv -> 4 delta-xywh of
                 the refined box.
With `roi_conv=False` the two DeformConvs are plain 3x3 convs at the same place (the
paper's central ablation: the same two-stage-in-one head without the alignment).

The anchor of a location is the square of side `anchor_scale x stride` centred on it,
the anchor of `jaxdet.core.priors.make_anchors` with one scale and ratio 1 (the
detector's priors). Normal(0, 0.01) weights, class bias from `prior_prob` (both
classification outputs), DeformConvs without bias, as RepPoints' head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.core import coders
from jaxdet.core import priors as priors_lib
from jaxdet.models.layers import ConvTower, concat_levels, conv, normal_001, prior_bias
from jaxdet.models.layers_deform import DeformConv
from jaxdet.ops.roi_conv import box_offsets
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


def level_anchors(hw: tuple[int, int], stride: int, anchor_scale: float) -> jax.Array:
    """[h, w, 4] the square anchors (side anchor_scale x stride) of one level's lattice,
    those of `priors.make_anchors(octave_base_scale=anchor_scale, scales_per_octave=1,
    ratios=(1.0,))`."""
    p = priors_lib.make_anchors([hw], [stride], octave_base_scale=anchor_scale,
                                scales_per_octave=1, ratios=(1.0,))
    return jnp.asarray(p.boxes).reshape(hw[0], hw[1], 4)


class AlignDetHead(nn.Module):
    """Dense anchor refinement + RoIConv classification / regression.

    Attributes:
      num_classes: C. strides: the levels' strides (the anchors and the offsets).
      anchor_scale: anchor side in strides (8). init_box_stds: the first stage's
        delta-xywh stds.
      feat_channels: tower and RoIConv width (256). stacked_convs: convs per tower (4).
      norm: tower norm ('gn' or None). roi_conv: RoIConv (True) or a plain 3x3 conv.
      grid: the RoIConv grid, 'bins' or 'corners' (`jaxdet.ops.roi_conv`).
      prior_prob: initial foreground probability (0.01).
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.
      sampling_backend: 'auto' | 'xla' | 'pallas', the DeformConvs' bilinear sampling.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'obj_logits': [B, N] first-stage objectness, 'init_deltas': [B, N, 4] (of the
      anchors), 'cls_logits': [B, N, C], 'box_deltas': [B, N, 4] (of the refined boxes);
      N = sum_l H_l * W_l, order level, row-major (y, x).
    """

    num_classes: int
    strides: tuple[int, ...]
    anchor_scale: float = 8.0
    init_box_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    feat_channels: int = 256
    stacked_convs: int = 4
    norm: str | None = "gn"
    gn_groups: int = 32
    roi_conv: bool = True
    grid: str = "bins"
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT
    sampling_backend: str = "auto"

    def refined_offsets(self, init_deltas: jax.Array, stride: int) -> jax.Array:
        """[B, h, w, 4] first-stage deltas -> [B, h, w, 18] RoIConv offsets of the
        decoded boxes, without gradient."""
        anchors = level_anchors(init_deltas.shape[1:3], stride, self.anchor_scale)
        boxes = coders.delta_xywh_decode(jnp.broadcast_to(anchors, init_deltas.shape),
                                         init_deltas, stds=self.init_box_stds)
        return jax.lax.stop_gradient(box_offsets(boxes, stride, 3, self.grid))

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        if len(features) != len(self.strides):
            raise ValueError(f"{len(features)} levels but strides {self.strides}")
        c = self.num_classes
        tower = lambda name: ConvTower(
            self.feat_channels, self.stacked_convs, norm=self.norm,
            num_groups=self.gn_groups, dtype=self.dtype, platform=self.platform, name=name,
        )
        plain = lambda n, size, name, b=nn.initializers.zeros, bias=True: conv(
            n, size, use_bias=bias, dtype=self.dtype, kernel_init=normal_001, bias_init=b,
            platform=self.platform, name=name,
        )
        cls_prior = nn.initializers.constant(prior_bias(self.prior_prob))

        def align(name: str):
            if not self.roi_conv:
                conv3 = plain(self.feat_channels, 3, name, bias=False)
                return lambda x, offsets: conv3(x)
            return DeformConv(
                self.feat_channels, (3, 3), use_bias=False, dtype=self.dtype,
                kernel_init=normal_001, platform=self.platform,
                sampling_backend=self.sampling_backend, name=name,
            )

        cls_tower, reg_tower = tower("cls_tower"), tower("reg_tower")
        obj_out = plain(1, 3, "obj_out", cls_prior)
        init_out = plain(4, 3, "init_reg_out")
        cls_align, reg_align = align("cls_align"), align("reg_align")
        cls_out = plain(c, 1, "cls_out", cls_prior)
        reg_out = plain(4, 1, "reg_out")
        obj, init, cls, reg = [], [], [], []
        for f, stride in zip(features, self.strides, strict=True):
            f = f.astype(self.dtype)
            cls_feat, reg_feat = cls_tower(f), reg_tower(f)
            deltas = init_out(reg_feat).astype(jnp.float32)
            offsets = self.refined_offsets(deltas, stride).astype(self.dtype)
            obj.append(obj_out(reg_feat))
            init.append(deltas)
            cls.append(cls_out(nn.relu(cls_align(cls_feat, offsets))))
            reg.append(reg_out(nn.relu(reg_align(reg_feat, offsets))))
        return {
            "obj_logits": concat_levels(obj, 1)[..., 0],
            "init_deltas": concat_levels(init, 4),
            "cls_logits": concat_levels(cls, c),
            "box_deltas": concat_levels(reg, 4),
        }
