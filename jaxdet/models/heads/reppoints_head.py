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

`use_grid_points=True` is the bounding-box representation in the same head (mmdetection's
`use_grid_points`, the paper's box baseline): the init and refine 1x1 convs regress 4
deltas (dx, dy, dw, dh) of a box (`grid_from_deltas`): the init box from the square of
side `point_base_scale` strides at the location, the refined box from the (detached)
init box; the point sets are the 3x3 grids spanning those boxes, so the DCNs sample the
box's grid and the 'minmax' pseudo-box of the points is the regressed box itself.
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


# exp(dw) of a box delta is clamped at 1000 / 16 (mmdetection's DeltaXYWHBBoxCoder
# `wh_ratio_clip`): a wild prediction gives a large box, not inf.
MAX_LOG_SCALE = float(np.abs(np.log(16.0 / 1000.0)))


def grid_from_deltas(deltas: jax.Array, prev_boxes: jax.Array, kernel: int = 3
                     ) -> tuple[jax.Array, jax.Array]:
    """The box of deltas [..., 4] (dx, dy, dw, dh) applied to prev_boxes [..., 4]
    (x1, y1, x2, y2), and the k x k grid of points spanning it (mmdetection's
    `gen_grid_from_reg`): centre c + wh * (dx, dy), size wh * exp(dw, dh) (exp clamped
    at 1000 / 16), wh = max(prev size, 1e-6).

    Returns (points [..., 2 k^2] as (y, x) pairs tap-major (row a, column b: the top-left
    corner + size * (a, b) / (k - 1)), boxes [..., 4] x1, y1, x2, y2)."""
    bxy = (prev_boxes[..., :2] + prev_boxes[..., 2:]) / 2
    bwh = jnp.maximum(prev_boxes[..., 2:] - prev_boxes[..., :2], 1e-6)
    wh = bwh * jnp.exp(jnp.minimum(deltas[..., 2:], MAX_LOG_SCALE))
    topleft = bxy + bwh * deltas[..., :2] - 0.5 * wh
    t = jnp.linspace(0.0, 1.0, kernel, dtype=deltas.dtype)
    ys = topleft[..., 1:2, None] + wh[..., 1:2, None] * t[:, None]  # [..., k(row), 1]
    xs = topleft[..., 0:1, None] + wh[..., 0:1, None] * t[None, :]  # [..., 1, k(col)]
    ys, xs = jnp.broadcast_arrays(ys, xs)
    pts = jnp.stack([ys, xs], axis=-1).reshape(*deltas.shape[:-1], 2 * kernel * kernel)
    return pts, jnp.concatenate([topleft, topleft + wh], axis=-1)


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
      use_grid_points: the box representation (4 deltas, points on the box's grid).
      point_base_scale: side of the init box in strides (4), with `use_grid_points`.

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
    use_grid_points: bool = False
    point_base_scale: float = 4.0

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        k = int(round(np.sqrt(self.num_points)))
        if k * k != self.num_points:
            raise ValueError(f"num_points={self.num_points} is not a square")
        c, d = self.num_classes, 2 * self.num_points
        reg = 4 if self.use_grid_points else d  # channels of the init / refine outputs
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
        init_out = plain(reg, 1, "pts_init_out")
        cls_dcn, refine_dcn = deform("cls_dcn"), deform("pts_refine_dcn")
        cls_out = plain(c, 1, "cls_out", nn.initializers.constant(prior_bias(self.prior_prob)))
        refine_out = plain(reg, 1, "pts_refine_out")
        moment = self.param("moment_transfer", nn.initializers.zeros, (2,), jnp.float32)
        cls, init, refine = [], [], []
        for f in features:
            f = f.astype(self.dtype)
            cls_feat, pts_feat = cls_tower(f), reg_tower(f)
            p_init = init_out(nn.relu(init_conv(pts_feat))).astype(jnp.float32)
            if self.use_grid_points:
                half = self.point_base_scale / 2
                square = jnp.asarray([-half, -half, half, half], jnp.float32)
                p_init, box_init = grid_from_deltas(p_init, square, k)
            offsets = dcn_offsets(p_init, self.gradient_mul, k).astype(self.dtype)
            cls.append(cls_out(nn.relu(cls_dcn(cls_feat, offsets))))
            delta = refine_out(nn.relu(refine_dcn(pts_feat, offsets))).astype(jnp.float32)
            init.append(p_init)
            if self.use_grid_points:
                refine.append(grid_from_deltas(delta, jax.lax.stop_gradient(box_init), k)[0])
            else:
                refine.append(delta + jax.lax.stop_gradient(p_init))
        b = features[0].shape[0]
        return {
            "cls_logits": concat_levels(cls, c),
            "pts_init": concat_levels(init, d),
            "pts_refine": concat_levels(refine, d),
            "moment_transfer": jnp.broadcast_to(moment, (b, 2)),
        }
