"""Guided Anchoring heads (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019,
arXiv 1901.03278), as mmdetection's `GARetinaHead` / `GARPNHead` / `FeatureAdaption`.

Per location (one guided anchor per location):
  loc branch:   1x1 conv -> 1 logit (sigmoid: "an object centre is here"), class bias
                from `prior_prob`;
  shape branch: 1x1 conv -> (dw, dh), the deltas that turn the location's square anchor
                into its guided anchor;
  FeatureAdaption: a 1x1 conv (no bias, Normal(0, 0.1)) from the DETACHED shape
                prediction to the offsets of a 3x3 deformable conv (`deform_groups`
                offset groups, 2 x 9 x G channels in mmcv's layout, no bias, Normal(0, 0.01))
                + ReLU; `feature_adaption=False` replaces it by a plain 3x3 conv + ReLU
                (the paper's ablation).
GA-RetinaNet (`GARetinaHead`): cls and reg towers of `stacked_convs` 3x3 convs + ReLU;
loc on the cls tower, shape on the reg tower; one FeatureAdaption per tower; 3x3 convs
to C class logits and 4 box deltas. GA-RPN (`GARPNHead`): one 3x3 conv + ReLU, loc,
shape and one FeatureAdaption on it, then 1x1 convs to 1 objectness logit and 4 deltas.
Other convs Normal(0, 0.01), zero bias; weights shared across levels. mmdetection's
`MaskedConv2d` (convs evaluated only where sigmoid(loc) >= 0.01 at test time) is a
speed-up: here every location is computed and the detector masks the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import ConvTower, concat_levels, conv, normal_001, prior_bias
from jaxdet.models.layers_deform import DeformConv
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


class FeatureAdaption(nn.Module):
    """3x3 deformable conv whose offsets come from the detached anchor shape (dw, dh).

    Call: (x [B, H, W, Cin], shape_pred [B, H, W, 2]) -> [B, H, W, features] (ReLU).
    """

    features: int
    deform_groups: int = 4
    adaptive: bool = True  # False: a plain 3x3 conv (no offsets)
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT
    sampling_backend: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, shape_pred: jax.Array) -> jax.Array:
        if not self.adaptive:
            return nn.relu(conv(self.features, 3, use_bias=False, dtype=self.dtype,
                                kernel_init=normal_001, platform=self.platform,
                                name="conv_adaption")(x))
        offsets = conv(2 * 9 * self.deform_groups, 1, use_bias=False, dtype=self.dtype,
                       kernel_init=nn.initializers.normal(stddev=0.1), platform=self.platform,
                       name="conv_offset")(jax.lax.stop_gradient(shape_pred).astype(self.dtype))
        y = DeformConv(self.features, (3, 3), offset_groups=self.deform_groups, use_bias=False,
                       dtype=self.dtype, kernel_init=normal_001, platform=self.platform,
                       sampling_backend=self.sampling_backend, name="conv_adaption")(x, offsets)
        return nn.relu(y)


class GARetinaHead(nn.Module):
    """GA-RetinaNet head.

    Attributes:
      num_classes: C. feat_channels: tower width (256). stacked_convs: 4.
      deform_groups: 4. feature_adaption: True (False: plain 3x3 conv).
      prior_prob: 0.01 (class and loc biases). norm / gn_groups: tower norm (None).
      dtype, platform, sampling_backend: as the other heads.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'cls_logits': [B, N, C], 'box_deltas': [B, N, 4], 'loc_logits': [B, N],
      'shape_pred': [B, N, 2] (dw, dh); N = sum_l H_l * W_l, row-major (y, x).
    """

    num_classes: int
    feat_channels: int = 256
    stacked_convs: int = 4
    deform_groups: int = 4
    feature_adaption: bool = True
    prior_prob: float = 0.01
    norm: str | None = None
    gn_groups: int = 32
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT
    sampling_backend: str = "auto"

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        c = self.num_classes
        tower = lambda name: ConvTower(  # noqa: E731
            self.feat_channels, self.stacked_convs, norm=self.norm, num_groups=self.gn_groups,
            dtype=self.dtype, platform=self.platform, name=name)
        plain = lambda n, k, name, b=nn.initializers.zeros: conv(  # noqa: E731
            n, k, use_bias=True, dtype=self.dtype, kernel_init=normal_001, bias_init=b,
            platform=self.platform, name=name)
        adapt = lambda name: FeatureAdaption(  # noqa: E731
            self.feat_channels, self.deform_groups, self.feature_adaption, dtype=self.dtype,
            platform=self.platform, sampling_backend=self.sampling_backend, name=name)
        bias = nn.initializers.constant(prior_bias(self.prior_prob))
        cls_tower, reg_tower = tower("cls_tower"), tower("reg_tower")
        loc_conv, shape_conv = plain(1, 1, "conv_loc", bias), plain(2, 1, "conv_shape")
        adapt_cls, adapt_reg = adapt("adaption_cls"), adapt("adaption_reg")
        cls_conv, reg_conv = plain(c, 3, "cls_out", bias), plain(4, 3, "reg_out")
        out = {k: [] for k in ("cls_logits", "box_deltas", "loc_logits", "shape_pred")}
        for f in features:
            f = f.astype(self.dtype)
            cls_feat, reg_feat = cls_tower(f), reg_tower(f)
            loc, shape = loc_conv(cls_feat), shape_conv(reg_feat)
            out["cls_logits"].append(cls_conv(adapt_cls(cls_feat, shape)))
            out["box_deltas"].append(reg_conv(adapt_reg(reg_feat, shape)))
            out["loc_logits"].append(loc)
            out["shape_pred"].append(shape)
        return _concat(out, c)


class GARPNHead(nn.Module):
    """GA-RPN head: 3x3 conv + ReLU, loc / shape / FeatureAdaption, 1x1 objectness and deltas.

    Call: features -> dict 'objectness' [B, N], 'box_deltas' [B, N, 4], 'loc_logits' [B, N],
    'shape_pred' [B, N, 2]; N = sum_l H_l * W_l.
    """

    feat_channels: int = 256
    deform_groups: int = 4
    feature_adaption: bool = True
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT
    sampling_backend: str = "auto"

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        plain = lambda n, k, name, b=nn.initializers.zeros: conv(  # noqa: E731
            n, k, use_bias=True, dtype=self.dtype, kernel_init=normal_001, bias_init=b,
            platform=self.platform, name=name)
        shared = plain(self.feat_channels, 3, "conv")
        loc_conv = plain(1, 1, "conv_loc", nn.initializers.constant(prior_bias(self.prior_prob)))
        shape_conv = plain(2, 1, "conv_shape")
        adapt = FeatureAdaption(self.feat_channels, self.deform_groups, self.feature_adaption,
                                dtype=self.dtype, platform=self.platform,
                                sampling_backend=self.sampling_backend, name="adaption")
        cls_conv, reg_conv = plain(1, 1, "cls_out"), plain(4, 1, "reg_out")
        out = {k: [] for k in ("objectness", "box_deltas", "loc_logits", "shape_pred")}
        for f in features:
            x = nn.relu(shared(f.astype(self.dtype)))
            loc, shape = loc_conv(x), shape_conv(x)
            x = adapt(x, shape)
            out["objectness"].append(cls_conv(x))
            out["box_deltas"].append(reg_conv(x))
            out["loc_logits"].append(loc)
            out["shape_pred"].append(shape)
        res = _concat(out, 1, cls_key="objectness")
        res["objectness"] = res["objectness"][..., 0]
        return res


def _concat(out: dict, c: int, cls_key: str = "cls_logits") -> dict[str, jax.Array]:
    return {cls_key: concat_levels(out[cls_key], c),
            "box_deltas": concat_levels(out["box_deltas"], 4),
            "loc_logits": concat_levels(out["loc_logits"], 1)[..., 0],
            "shape_pred": concat_levels(out["shape_pred"], 2)}
