"""FSAF head (Zhu et al., "Feature Selective Anchor-Free Module for Single-Shot Object
Detection", CVPR 2019): a RetinaNet head whose two towers also feed an anchor-free branch.

The anchor-free (AF) branch adds one 3x3 conv with C filters to the classification
tower and one 3x3 conv with 4 filters to the regression tower (paper Fig. 4); its box
output passes a ReLU (TBLR distances are >= 0; mmdetection's `FSAFHead`) and its
bias starts at 0.25 (with the TBLR normaliser 4 and stride-sized priors: an initial
box reaching one stride from the centre on every side). With `anchor_based=True` the
RetinaNet outputs (A * C class logits, A * 4 delta-xywh) are produced from the same
towers (the paper's anchor-based + anchor-free detector); with False only the AF
branch exists (mmdetection's FSAF, which is a RetinaHead with A = 1).
Convs Normal(0, 0.01); class biases -log((1 - pi) / pi), pi = `prior_prob` (0.01).
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


class FSAFHead(nn.Module):
    """Anchor-free head with an optional anchor-based (RetinaNet) branch on shared towers.

    Attributes:
      num_classes: C (sigmoid classes).
      anchor_based: also predict the RetinaNet outputs (paper's FSAF: True).
      num_anchors: A of the anchor-based branch (9 in RetinaNet).
      feat_channels: tower width (256). stacked_convs: convs per tower (4).
      norm: tower norm (None, as RetinaNet / mmdetection's FSAF). gn_groups: for 'gn'.
      prior_prob: initial foreground probability (0.01) of both class outputs.
      reg_bias_init: bias of the AF box conv (0.25, mmdetection).
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'af_cls_logits': [B, N, C], 'af_tblr': [B, N, 4] >= 0 (top, bottom, left, right,
        in units of normaliser x stride), N = sum_l H_l * W_l (order of `make_anchors`
        with one anchor per location);
      with anchor_based also 'cls_logits': [B, N * A, C], 'box_deltas': [B, N * A, 4].
    """

    num_classes: int
    anchor_based: bool = False
    num_anchors: int = 9
    feat_channels: int = 256
    stacked_convs: int = 4
    norm: str | None = None
    gn_groups: int = 32
    prior_prob: float = 0.01
    reg_bias_init: float = 0.25
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        c, a = self.num_classes, self.num_anchors
        tower = lambda name: ConvTower(self.feat_channels, self.stacked_convs, norm=self.norm,
                                       num_groups=self.gn_groups, dtype=self.dtype,
                                       platform=self.platform, name=name)
        out = lambda n, name, b: conv(n, 3, use_bias=True, dtype=self.dtype,
                                      kernel_init=normal_001, bias_init=b,
                                      platform=self.platform, name=name)
        cls_bias = nn.initializers.constant(prior_bias(self.prior_prob))
        cls_tower, reg_tower = tower("cls_tower"), tower("reg_tower")
        af_cls = out(c, "af_cls_out", cls_bias)
        af_reg = out(4, "af_reg_out", nn.initializers.constant(self.reg_bias_init))
        if self.anchor_based:
            ab_cls = out(a * c, "cls_out", cls_bias)
            ab_reg = out(a * 4, "reg_out", nn.initializers.zeros)
        res: dict[str, list] = {"af_cls_logits": [], "af_tblr": [], "cls_logits": [],
                                "box_deltas": []}
        for f in features:
            f = f.astype(self.dtype)
            cls_feat, reg_feat = cls_tower(f), reg_tower(f)
            res["af_cls_logits"].append(af_cls(cls_feat))
            res["af_tblr"].append(nn.relu(af_reg(reg_feat)))
            if self.anchor_based:
                res["cls_logits"].append(ab_cls(cls_feat))
                res["box_deltas"].append(ab_reg(reg_feat))
        outputs = {
            "af_cls_logits": concat_levels(res["af_cls_logits"], c),
            "af_tblr": concat_levels(res["af_tblr"], 4),
        }
        if self.anchor_based:
            outputs["cls_logits"] = concat_levels(res["cls_logits"], c)
            outputs["box_deltas"] = concat_levels(res["box_deltas"], 4)
        return outputs
