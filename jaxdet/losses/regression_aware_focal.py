"""Regression-aware focal loss of HAMBox (Liu et al., CVPR 2020, arXiv 1912.09231).

Anchors added by HAMBox's online compensation (`jaxdet.assign.hambox`) sit far from
their GT before regression; their classification loss is the focal loss weighted by
how well their regressed box fits the GT, so a compensated anchor that regresses to
IoU 0.5 counts half as much as one that lands on the GT. Stage-1 (IoU-matched)
positives and the negatives keep weight 1: exactly RetinaNet's focal loss there.
The weight multiplies the anchor's whole row (its positive-class term and its
other-class negative terms), the reading of "focal weight scaled by IoU" that leaves
the loss of every non-compensated anchor unchanged. Paper focal alpha 0.25, gamma 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.losses.focal import sigmoid_focal_loss


def regression_aware_focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    anchor_weight: jax.Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
    """logits [..., C], one-hot targets [..., C], anchor_weight [...] (1 for matched
    anchors and negatives, the regressed IoU for compensated ones, 0 for ignored)
    -> [..., C] float32, unreduced (sum and divide by the number of positives)."""
    w = jax.lax.stop_gradient(jnp.asarray(anchor_weight, jnp.float32))
    return sigmoid_focal_loss(logits, targets, alpha, gamma) * w[..., None]
