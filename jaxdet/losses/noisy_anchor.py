"""Losses of "Learning from Noisy Anchors for One-stage Object Detection" (Li et
al., CVPR 2020, arXiv 1912.05086): the soft-label focal loss and the re-weighting
factors of the positives. Element-wise and unreduced except `reweight_factors`,
whose normalisation over the positives is the method's definition.

- `soft_focal_loss`: the focal loss with a soft target t in [0, 1] (the anchor's
  cleanliness for its GT class, 0 elsewhere), each side of the cross-entropy with
  its own focal term, as the unofficial mmdetection port (tasavat/mmdetection
  `NoisyAnchorHead.soft_sigmoid_focal_loss`):
      loss = -t * alpha * (1 - p)^gamma * log p - (1 - t) * (1 - alpha) * p^gamma * log(1 - p)
  For t in {0, 1} this is RetinaNet's focal loss (`jaxdet.losses.focal`).
  Defaults alpha 0.25, gamma 2 (RetinaNet; the port's R50 config uses alpha 0.5).
- `reweight_factors`: r = (alpha * f(loc_a) + (1 - alpha) * f(cls_c))^gamma with
  f(x) = 1 / (1 - x) (paper alpha 0.75, gamma 1), normalised so that the positives'
  factors have mean 1 (their sum is the number of positives); non-positives get 1.
  r multiplies the classification and regression losses of the positives. x is
  clipped to `max_score` (0.99, f <= 100) so an IoU or probability of 1 stays
  finite (the port instead clamps the logits to +-5, p <= 0.9933). The port
  normalises each f by its own mean before mixing; the paper's formula, used here,
  mixes first and normalises the product.
- `rescaled_soft_labels`: the port's soft labels (`calculate_soft_labels`), an
  alternative to the cleanliness c itself: over all positives given, loc / mean(loc)
  and cls / mean(cls) are mixed with alpha and mapped linearly onto [mean(loc), 1],
  so the best positive of the batch always has target 1 and none falls below the
  mean IoU. With c itself (the paper's formula) the targets are bounded by
  0.75 IoU + 0.25 p, about 0.3-0.5 early in training on `shapes`, and the focal
  loss pulls the positives' scores up with alpha * t, 3-4x less than RetinaNet's
  hard targets (alpha * 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray

# Focal terms as max(x, _TINY) ** gamma (as jaxdet.losses.focal): no inf * 0 gradient at 0.
_TINY = 1e-12


def _safe_pow(x: Array, exponent: float) -> Array:
    return jnp.power(jnp.maximum(x, _TINY), exponent)


def soft_focal_loss(
    logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0
) -> Array:
    """Focal loss with soft targets: logits [..., C], targets [..., C] in [0, 1] -> [..., C].

    log p and log(1 - p) as log-sigmoids, so the loss and its gradient are finite for
    logits of any size. alpha < 0 disables the alpha balance (both sides weight 1).
    """
    x = jnp.asarray(logits, jnp.float32)
    t = jnp.asarray(targets, jnp.float32)
    p = jax.nn.sigmoid(x)
    pos = -t * _safe_pow(1.0 - p, gamma) * jax.nn.log_sigmoid(x)
    neg = -(1.0 - t) * _safe_pow(p, gamma) * jax.nn.log_sigmoid(-x)
    if alpha >= 0:
        pos, neg = alpha * pos, (1.0 - alpha) * neg
    return pos + neg


def inverse_complement(x: Array, max_score: float = 0.99) -> Array:
    """f(x) = 1 / (1 - min(x, max_score)), element-wise, float32 (f(0) = 1)."""
    x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, max_score)
    return 1.0 / (1.0 - x)


def reweight_factors(
    loc: Array,
    cls: Array,
    positive: Array,
    *,
    alpha: float = 0.75,
    gamma: float = 1.0,
    max_score: float = 0.99,
) -> Array:
    """Re-weighting factors r of the positives, mean 1 over all positives given.

    Args:
      loc: [...] IoU of the regressed box with its GT (no gradient).
      cls: [...] predicted probability of the GT class (no gradient).
      positive: [...] bool, the anchors in a candidate bag.
      alpha: mixing weight of f(loc) (paper 0.75, the cleanliness alpha).
      gamma: exponent (paper 1.0).
      max_score: clip of loc / cls inside f (see the module docstring).
    Returns:
      r [...] float32 without gradient: positives (alpha f(loc) + (1 - alpha) f(cls))^gamma
      scaled so that their sum equals their number; 1 elsewhere. The normalisation is
      over every axis given: pass the whole batch for a batch-global normaliser. With
      no positive, r is 1 everywhere.
    """
    positive = jnp.asarray(positive, bool)
    raw = alpha * inverse_complement(loc, max_score) + (1.0 - alpha) * inverse_complement(
        cls, max_score
    )
    raw = jnp.where(positive, jnp.power(raw, gamma), 0.0)
    num = jnp.sum(positive.astype(jnp.float32))
    total = jnp.sum(raw)
    scale = jnp.where(total > 0, num / jnp.maximum(total, 1e-12), 1.0)
    return jax.lax.stop_gradient(jnp.where(positive, raw * scale, 1.0))


def rescaled_soft_labels(
    loc: Array, cls: Array, positive: Array, *, alpha: float = 0.75
) -> Array:
    """Soft labels of the positives on [mean(loc), 1] (the port's `calculate_soft_labels`).

    Args:
      loc: [...] IoU of each anchor with its GT (the port: the anchor's IoU; the
        detector passes whatever it uses as loc_a), no gradient.
      cls: [...] predicted probability of the GT class, no gradient.
      positive: [...] bool, the anchors in a candidate bag.
      alpha: weight of the localisation term (paper 0.75).
    Returns:
      [...] float32 without gradient: on the positives
        s = alpha * loc / mean(loc) + (1 - alpha) * cls / mean(cls),
        label = mean(loc) + (1 - mean(loc)) * (s - min s) / (max s - min s),
      means, min and max over all positives given (pass the whole batch for the
      port's batch-global statistics); 0 elsewhere. When all positives share one s
      (e.g. a single positive) every label is 1; with no positive, all 0.
    """
    positive = jnp.asarray(positive, bool)
    loc = jnp.asarray(loc, jnp.float32)
    cls = jnp.asarray(cls, jnp.float32)
    num = jnp.maximum(jnp.sum(positive.astype(jnp.float32)), 1.0)
    mean = lambda x: jnp.sum(jnp.where(positive, x, 0.0)) / num
    mean_loc, mean_cls = mean(loc), mean(cls)
    s = (alpha * loc / jnp.maximum(mean_loc, 1e-12)
         + (1.0 - alpha) * cls / jnp.maximum(mean_cls, 1e-12))
    lo = jnp.min(jnp.where(positive, s, jnp.inf))
    hi = jnp.max(jnp.where(positive, s, -jnp.inf))
    spread = hi - lo
    flat = ~(spread > 1e-12)  # also true without positives (inf - inf)
    scaled = mean_loc + (1.0 - mean_loc) * (s - lo) / jnp.where(flat, 1.0, spread)
    label = jnp.where(flat, 1.0, scaled)
    return jax.lax.stop_gradient(jnp.where(positive, label, 0.0))
