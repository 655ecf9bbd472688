"""The R-CNN second-stage heads on RoI features (Faster R-CNN, Mask R-CNN with FPN).

`BoxHead` is mmdetection's `Shared2FCBBoxHead` (torchvision's `TwoMLPHead` +
`FastRCNNPredictor`): the [R, 7, 7, C] RoI features flattened, `num_fcs` fully connected
layers of `fc_channels` + ReLU, then a linear classifier over C + 1 classes (the last
one background, as mmdetection) and a linear regressor of C x 4 class-specific deltas
(4 when class-agnostic). Init as mmdetection: fc layers xavier-uniform, classifier
Normal(0, 0.01), regressor Normal(0, 0.001), zero biases.

`MaskHead` is mmdetection's `FCNMaskHead` (torchvision's `MaskRCNNHeads` +
`MaskRCNNPredictor`): `num_convs` 3x3 convs of `channels` + ReLU on [R, 14, 14, C], a 2x2
stride-2 transposed conv + ReLU (28 x 28, `Upsample2x`), then a 1x1 conv to C mask logits (one per
class). Convs kaiming-normal (fan_out, ReLU), zero biases.

Both run in `dtype` and return float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import conv
from jaxdet.platform import DEFAULT, Platform

Dtype = Any
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BoxHead(nn.Module):
    """Attributes: num_classes C, num_fcs (2), fc_channels (1024), class_agnostic, dtype.

    Call: roi_features [R, h, w, Cin] -> dict 'cls_logits' [R, C + 1] (background last),
    'box_deltas' [R, C, 4] (or [R, 1, 4] class-agnostic), both float32.
    """

    num_classes: int
    num_fcs: int = 2
    fc_channels: int = 1024
    class_agnostic: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, roi_features: jax.Array) -> dict[str, jax.Array]:
        x = roi_features.astype(self.dtype).reshape(roi_features.shape[0], -1)
        for i in range(self.num_fcs):
            x = nn.relu(nn.Dense(self.fc_channels, dtype=self.dtype, param_dtype=jnp.float32,
                                 kernel_init=nn.initializers.xavier_uniform(),
                                 name=f"fc_{i}")(x))
        n_box = 1 if self.class_agnostic else self.num_classes
        cls = nn.Dense(self.num_classes + 1, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=nn.initializers.normal(0.01), name="cls_out")(x)
        reg = nn.Dense(n_box * 4, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=nn.initializers.normal(0.001), name="reg_out")(x)
        return {"cls_logits": cls.astype(jnp.float32),
                "box_deltas": reg.astype(jnp.float32).reshape(-1, n_box, 4)}


class Upsample2x(nn.Module):
    """A 2 x 2 stride-2 transposed conv (torch's `ConvTranspose2d(k=2, s=2)`) as one
    matmul: out[2h + i, 2w + j] = x[h, w] . kernel[1 - i, 1 - j] + bias.

    Parameters and values are those of `flax.linen.ConvTranspose(features, (2, 2),
    strides=(2, 2), padding='VALID')` ('kernel' [2, 2, Cin, features], applied flipped,
    and 'bias'); XLA:CPU runs that layer's transposed convolution (and its gradient) one
    to two orders of magnitude slower than this matmul. [R, h, w, Cin] -> [R, 2h, 2w, F].
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.param("kernel", kaiming_fan_out, (2, 2, x.shape[-1], self.features),
                       jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        k = k[::-1, ::-1].astype(self.dtype)
        y = jnp.einsum("rhwc,ijco->rhiwjo", x.astype(self.dtype), k)
        r, h, _, w, _, f = y.shape
        return y.reshape(r, 2 * h, 2 * w, f) + b.astype(self.dtype)


class MaskHead(nn.Module):
    """Attributes: num_classes C, num_convs (4), channels (256), dtype, platform.

    Call: roi_features [R, S, S, Cin] -> mask logits [R, 2S, 2S, C] float32.
    """

    num_classes: int
    num_convs: int = 4
    channels: int = 256
    dtype: Dtype = jnp.float32
    platform: Platform = DEFAULT

    @nn.compact
    def __call__(self, roi_features: jax.Array) -> jax.Array:
        x = roi_features.astype(self.dtype)
        for i in range(self.num_convs):
            x = nn.relu(conv(self.channels, 3, use_bias=True, dtype=self.dtype,
                             kernel_init=kaiming_fan_out, platform=self.platform,
                             name=f"conv_{i}")(x))
        x = nn.relu(Upsample2x(self.channels, dtype=self.dtype, name="upsample")(x))
        logits = conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                      kernel_init=kaiming_fan_out, platform=self.platform, name="mask_out")(x)
        return logits.astype(jnp.float32)
