"""YOLOv3's loss terms (mmdetection's `YOLOV3Head.loss_by_feat_single`), element-wise.

For predictions `box` [..., 4] = raw (tx, ty, tw, th), `obj_logits` [...],
`cls_logits` [..., C] and the targets of `yolo_targets`:

  xy:   BCE-with-logits(tx, ty; target offsets in (0, 1)) on positives   [..., 2]
  wh:   (tw - target)^2, (th - target)^2 on positives (mmdetection's MSELoss) [..., 2]
  conf: BCE-with-logits(obj; 1 on positives, 0 on negatives), 0 on ignored [...]
  cls:  BCE-with-logits(cls; one-hot label) on positives                 [..., C]

Unreduced and unweighted: mmdetection's YOLOv3 config sums each term over the
batch (reduction 'sum') with weights cls 1, conf 1, xy 2, wh 2; the detector applies
them. Float32, finite for any logits.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy

Array = jnp.ndarray


def mse_loss(pred: Array, target: Array) -> Array:
    """(pred - target)^2 element-wise, float32 (torch's MSELoss, reduction 'none')."""
    return jnp.square(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))


def yolov3_terms(box: Array, obj_logits: Array, cls_logits: Array, box_t: Array,
                 cls_t: Array, pos: Array, neg: Array) -> dict[str, Array]:
    """The four element-wise terms, masked (see the module docstring).

    box [..., 4] raw; obj_logits [...]; cls_logits [..., C]; box_t [..., 4] encoded
    targets (`coders.yolo_encode`, any value off the positives); cls_t [..., C] one-hot;
    pos, neg [...] bool (neither = ignored). Returns dict xy [..., 2], wh [..., 2],
    conf [...], cls [..., C], zeros where masked out.
    """
    pos_f = pos.astype(jnp.float32)
    xy = sigmoid_binary_cross_entropy(box[..., :2], box_t[..., :2]) * pos_f[..., None]
    wh = mse_loss(box[..., 2:4], box_t[..., 2:4]) * pos_f[..., None]
    conf = sigmoid_binary_cross_entropy(obj_logits, pos_f) * (pos | neg).astype(jnp.float32)
    cls = sigmoid_binary_cross_entropy(cls_logits, cls_t) * pos_f[..., None]
    return dict(xy=xy, wh=wh, conf=conf, cls=cls)
