"""RepPoints head (Yang et al., "RepPoints: Point Set Representation for Object
Detection", ICCV 2019, arXiv 1904.11490).

As mmdetection's `RepPointsHead` with `center_init=True` (points start at the location):
  cls and reg towers of `stacked_convs` x (3x3 conv + norm + ReLU);
  init points:   reg tower -> 3x3 conv -> ReLU -> 1x1 conv -> 2K offsets (K = 9 points);
  DCN offsets:   o = (1 - gradient_mul) * stop_grad(p_init) + gradient_mul * p_init,
                 minus the regular 3x3 grid (dcn_base_offset), in (y, x) order;
  classification: cls tower -> 3x3 DeformConv(o) -> ReLU -> 1x1 conv -> C logits;
  refinement:    reg tower -> 3x3 DeformConv(o) -> ReLU -> 1x1 conv -> 2K offsets,
                 p_refine = stop_grad(p_init) + those offsets.
Point sets are (y_0, x_0, y_1, x_1, ...) in units of the level's stride, relative to the
location (mmdetection's layout). Convs Normal(0, 0.01) with zero biases, class bias from
`prior_prob` (mmdetection's init_cfg, which reaches only `nn.Conv2d` layers); DeformConvs
without bias and kaiming-uniform (ReLU gain, fan_in) weights (mmcv's `DeformConv2d`
defaults); weights shared across levels.
The moment transform's learnable 2-vector `moment_transfer` (init 0) is a parameter of
the head, returned broadcast to [B, 2].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.layers import ConvTower, concat_levels, conv, normal_001, prior_bias
from jaxdet.models.layers_deform import DeformConv
from jaxdet.platform import DEFAULT, Platform

Dtype = Any


def dcn_base_offset(kernel: int = 3) -> np.ndarray:
    """[2 k^2] the regular k x k grid as (y, x) pairs, tap-major (mmdetection's
    `dcn_base_offset`): (-1, -1), (-1, 0), (-1, 1), (0, -1), ... for k = 3."""
    pad = (kernel - 1) // 2
    base = np.arange(-pad, pad + 1, dtype=np.float32)
    return np.stack([np.repeat(base, kernel), np.tile(base, kernel)], axis=1).reshape(-1)


# mmcv's DeformConv2d.reset_parameters: kaiming_uniform_(nonlinearity='relu').
kaiming_uniform_relu = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


def dcn_offsets(p_init: jax.Array, gradient_mul: float, kernel: int = 3) -> jax.Array:
    """DCN offsets [..., 2 k^2] (y, x per tap) that make tap t of a k x k DeformConv at a
    location sample the location + point t of `p_init` [..., 2 k^2] ((y, x) in units of
    the map's cells): p - `dcn_base_offset`, with the gradient reaching `p_init` scaled
    by `gradient_mul` ((1 - g) * stop_grad(p) + g * p, the same value)."""
    p_mul = (1 - gradient_mul) * jax.lax.stop_gradient(p_init) + gradient_mul * p_init
    return p_mul - jnp.asarray(dcn_base_offset(kernel), p_init.dtype)


class RepPointsHead(nn.Module):
    """Point-set dense head: init points, deformable classification and refinement.

    Attributes:
      num_classes: C. num_points: K (a square number; 9).
      feat_channels: tower width (256). point_feat_channels: width of the point convs (256).
      stacked_convs: convs per tower (3). norm: tower norm ('gn' or None).
      gradient_mul: share of the DCN / classification gradient reaching the init
        points (0.1).
      prior_prob: initial foreground probability (0.01).
      dtype: compute dtype; outputs are float32.
      platform: the `jaxdet.platform.Platform` the convs are built for.
      sampling_backend: 'auto' | 'xla' | 'pallas', the DeformConvs' bilinear sampling.

    Call: features, per level [B, H_l, W_l, Cin] -> dict
      'cls_logits': [B, N, C], 'pts_init': [B, N, 2K], 'pts_refine': [B, N, 2K]
      ((y, x) offsets in strides), 'moment_transfer': [B, 2];
      N = sum_l H_l * W_l, order level, row-major (y, x).
    """

    num_classes: int
    num_points: int = 9
    feat_channels: int = 256
    point_feat_channels: int = 256
    stacked_convs: int = 3
    norm: str | None = "gn"
    gn_groups: int = 32
    gradient_mul: float = 0.1
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT
    sampling_backend: str = "auto"

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        k = int(round(np.sqrt(self.num_points)))
        if k * k != self.num_points:
            raise ValueError(f"num_points={self.num_points} is not a square")
        c, d = self.num_classes, 2 * self.num_points
        tower = lambda name: ConvTower(
            self.feat_channels, self.stacked_convs, norm=self.norm,
            num_groups=self.gn_groups, dtype=self.dtype, platform=self.platform, name=name,
        )
        plain = lambda n, size, name, b=nn.initializers.zeros: conv(
            n, size, use_bias=True, dtype=self.dtype, kernel_init=normal_001, bias_init=b,
            platform=self.platform, name=name,
        )
        deform = lambda name: DeformConv(
            self.point_feat_channels, (k, k), use_bias=False, dtype=self.dtype,
            kernel_init=kaiming_uniform_relu, platform=self.platform,
            sampling_backend=self.sampling_backend, name=name,
        )
        cls_tower, reg_tower = tower("cls_tower"), tower("reg_tower")
        init_conv = plain(self.point_feat_channels, 3, "pts_init_conv")
        init_out = plain(d, 1, "pts_init_out")
        cls_dcn, refine_dcn = deform("cls_dcn"), deform("pts_refine_dcn")
        cls_out = plain(c, 1, "cls_out", nn.initializers.constant(prior_bias(self.prior_prob)))
        refine_out = plain(d, 1, "pts_refine_out")
        moment = self.param("moment_transfer", nn.initializers.zeros, (2,), jnp.float32)
        cls, init, refine = [], [], []
        for f in features:
            f = f.astype(self.dtype)
            cls_feat, pts_feat = cls_tower(f), reg_tower(f)
            p_init = init_out(nn.relu(init_conv(pts_feat))).astype(jnp.float32)
            offsets = dcn_offsets(p_init, self.gradient_mul, k).astype(self.dtype)
            cls.append(cls_out(nn.relu(cls_dcn(cls_feat, offsets))))
            delta = refine_out(nn.relu(refine_dcn(pts_feat, offsets))).astype(jnp.float32)
            init.append(p_init)
            refine.append(delta + jax.lax.stop_gradient(p_init))
        b = features[0].shape[0]
        return {
            "cls_logits": concat_levels(cls, c),
            "pts_init": concat_levels(init, d),
            "pts_refine": concat_levels(refine, d),
            "moment_transfer": jnp.broadcast_to(moment, (b, 2)),
        }
