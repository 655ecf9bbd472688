"""Feature Pyramid Network (Lin et al., CVPR 2017), as mmdetection's `FPN`, NHWC.

inputs C3..C5 -> 1x1 laterals -> top-down: lateral[i-1] += nearest_upsample(lateral[i])
-> 3x3 output convs -> P3..P5, then `num_outs - len(inputs)` extra levels (P6, P7) of
stride 2 each:
  'on_input'  (RetinaNet): P6 = conv3x3/2(C5), P7 = conv3x3/2(P6)
  'on_output' (FCOS, ATSS): P6 = conv3x3/2(P5), P7 = conv3x3/2(P6)
  'on_lateral':             P6 = conv3x3/2(lateral C5)
  'pool' (Faster R-CNN):    P_{k+1} = max_pool 1x1 stride 2 (no parameters)
With `relu_before_extra_convs` (FCOS/ATSS configs) the input of every extra conv after
the first (P7's) goes through a ReLU, as mmdetection does.
Convs: xavier-uniform weights, zero bias (mmdetection FPN init), padding k // 2, so a
stride-2 extra level of an h x w map is ceil(h/2) x ceil(w/2) (= priors.feature_shapes).
Parameter names: 'lateral_{i}', 'fpn_{i}' (i over input levels), 'extra_{k}'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.layers import conv
from jaxdet.platform import DEFAULT, Platform

Dtype = Any
EXTRA_MODES = ("on_input", "on_lateral", "on_output", "pool")


def upsample_nearest_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Nearest upsampling of [B, h, w, C] to [B, H, W, C], torch's `interpolate(size=...)`.

    Source index floor(i * h / H) (torch 'nearest', not half-pixel). For H in (2h - 1, 2h),
    the FPN case, that is repeat-2-then-crop, done with a broadcast (a cheap backward);
    other ratios use a static gather.
    """
    for axis, (n_in, n_out) in ((1, (x.shape[1], hw[0])), (2, (x.shape[2], hw[1]))):
        if n_out == n_in:
            continue
        if n_out in (2 * n_in, 2 * n_in - 1):
            x = jnp.repeat(x, 2, axis=axis)
            x = jax.lax.slice_in_dim(x, 0, n_out, axis=axis)
        else:
            idx = np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int32)
            x = jnp.take(x, idx, axis=axis)
    return x


class FPN(nn.Module):
    """FPN neck.

    Attributes:
      out_channels: channels of every output level (256 in the papers).
      num_outs: number of output levels (5 = P3..P7 from C3..C5; 3 = P3..P5 only).
      add_extra_convs: one of EXTRA_MODES, how levels beyond the inputs are made.
      relu_before_extra_convs: ReLU before the extra convs after the first.
      dtype: compute dtype.
      platform: the `jaxdet.platform.Platform` the convs are built for.

    Call: features, a sequence of [B, H_l, W_l, C_l] with increasing stride (each level
    half the previous, rounded up) -> tuple of `num_outs` arrays [B, H_l, W_l, out_channels].
    """

    out_channels: int = 256
    num_outs: int = 5
    add_extra_convs: str = "on_input"
    relu_before_extra_convs: bool = False
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
        if self.add_extra_convs not in EXTRA_MODES:
            raise ValueError(f"add_extra_convs={self.add_extra_convs!r} not in {EXTRA_MODES}")
        n_in = len(features)
        if self.num_outs < n_in:
            raise ValueError(f"num_outs={self.num_outs} < {n_in} input levels")

        def conv_(k, stride, name):
            return conv(
                self.out_channels,
                k,
                stride,
                use_bias=True,
                dtype=self.dtype,
                kernel_init=nn.initializers.xavier_uniform(),
                platform=self.platform,
                name=name,
            )

        feats = [f.astype(self.dtype) for f in features]
        laterals = [conv_(1, 1, f"lateral_{i}")(f) for i, f in enumerate(feats)]
        for i in range(n_in - 1, 0, -1):
            up = upsample_nearest_to(laterals[i], laterals[i - 1].shape[1:3])
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv_(3, 1, f"fpn_{i}")(lat) for i, lat in enumerate(laterals)]

        if self.add_extra_convs == "pool":
            for _ in range(n_in, self.num_outs):
                outs.append(nn.max_pool(outs[-1], (1, 1), strides=(2, 2)))
            return tuple(outs)
        source = {"on_input": feats[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}
        x = source[self.add_extra_convs]
        for k in range(self.num_outs - n_in):
            if k > 0:
                x = nn.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
            outs.append(conv_(3, 2, f"extra_{k}")(x))
        return tuple(outs)
