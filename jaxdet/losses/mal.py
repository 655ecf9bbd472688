"""Multiple Anchor Learning (Ke et al., "Multiple Anchor Learning for Visual
Object Detection", CVPR 2020; code DeLightCMU/MAL) on top of FreeAnchor's bag
losses (Zhang et al., NeurIPS 2019; mmdetection `FreeAnchorRetinaHead`).

Bag losses (element-wise per bag / per anchor, unreduced; the detector sums
and normalises):
- `joint_confidence`: P_ij = P_cls * P_loc = sigmoid(logit of the GT class) *
  exp(-box_weight * sum smoothL1(deltas, targets)) for anchor j in bag i.
- `mean_max`: FreeAnchor's soft max over a bag, sum_j w_j P_j / sum_j w_j with
  w_j = 1 / max(1 - P_j, 1e-12).
- `positive_bag_loss`: alpha * BCE(mean_max(P over the selected anchors), 1)
  (alpha 0.5); with every bag anchor selected it is FreeAnchor's positive loss.
- `negative_bag_loss`: (1 - alpha) * p^gamma * BCE(p, 0), p = P_cls * (1 -
  P{a in A+}) per anchor and class (alpha 0.5, gamma 2).

Selection-depression optimisation (MAL section 3.3):
- Anchor selection, "all-to-top-1": the loss of a bag uses only its `s(t)`
  most confident anchors (by P, without gradient). `num_selected` anneals s
  linearly from the bag size K at step 0 to 1 at `end_frac` of training:
      s(t) = K - floor((K - 1) * min(t / (end_frac * T), 1)).
  The paper describes the strategy (all anchors first, the top-1 at the end)
  but not its exact curve; the linear one is our reading.
- Anchor depression: the features of the selected anchors are perturbed so
  their confidence drops and the other anchors of the bag get trained. As in
  the released code (`retinanet.py` IA_feat, `retinanetIA.py` MASK_TYPE 0):
  per FPN level, attention A = sum_c F_c * mean_hw(F_c) on the (detached)
  features; the positions of the top `ratio` fraction of A are depressed,
  F <- (3 F m + F) / 4 with m = 0 there (i.e. x0.25), during training only.
  The released code ranks all positions of the level; the paper perturbs the
  features of the *selected anchors*, so `depression_mask` takes the candidate
  positions (those holding a selected anchor, or all of them for the released
  behaviour). `depression_ratio` is the released schedule (IA_TYPE 5): training
  is cut into 12 equal parts with ratios 0, .1, .2, .3, .4, .5, .5, .4, .3, .2,
  .1, 0 (x max_ratio / 0.5).

All functions are pure jnp, jittable and vmappable; `step` may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray

ALPHA = 0.5  # FREEANCHOR.FOCAL_LOSS_ALPHA
GAMMA = 2.0  # FREEANCHOR.FOCAL_LOSS_GAMMA
BOX_WEIGHT = 0.75  # FREEANCHOR.BBOX_REG_WEIGHT (mmdet SmoothL1Loss loss_weight)
SMOOTH_L1_BETA = 0.11  # FREEANCHOR.BBOX_REG_BETA (mmdet beta=0.11)
DEPRESSION_MAX_RATIO = 0.5  # peak of IA_TYPE 5
DEPRESSION_KEEP = 0.25  # (3 F m + F) / 4 with m = 0
_EPS = 1e-12  # weight clamp of mean-max (mmdet EPS, MAL Clip)
_LOG_CLAMP = 100.0  # torch binary_cross_entropy clamps log at -100
_TINY = 1e-38  # smallest normal float32 magnitude: log stays finite


def joint_confidence(cls_logits: Array, box_loss: Array) -> Array:
    """P = sigmoid(cls_logits) * exp(-box_loss): [...] logits and [...] summed,
    weighted smooth-L1 box losses -> [...] in [0, 1]."""
    x = jnp.asarray(cls_logits, jnp.float32)
    return jax.nn.sigmoid(x) * jnp.exp(-jnp.asarray(box_loss, jnp.float32))


def mean_max(probs: Array, mask: Array) -> Array:
    """FreeAnchor's Mean-max over the last axis: [..., K] probs, [..., K] bool -> [...].

    Entries outside `mask` do not count; an empty bag gives 0. Close to the mean
    for small probabilities and to the max when one approaches 1. The weight
    clamp stops the gradient where 1 - P < 1e-12 (torch.clamp, as mmdetection).
    """
    p = jnp.asarray(probs, jnp.float32)
    w = jnp.where(mask, 1.0 / jnp.maximum(1.0 - p, _EPS), 0.0)
    return jnp.sum(w * p, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), _EPS)


def select_top(probs: Array, mask: Array, num_selected: Array | int) -> Array:
    """[..., K] bool: the `num_selected` entries of `mask` with the highest `probs`
    (ranked without gradient; ties go to the lower index). All of `mask` when
    num_selected >= K."""
    key = jnp.where(mask, jax.lax.stop_gradient(jnp.asarray(probs, jnp.float32)), -1.0)
    order = jnp.argsort(-key, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
    return mask & (rank < num_selected)


def positive_bag_loss(
    probs: Array, mask: Array, num_selected: Array | int | None = None, alpha: float = ALPHA
) -> Array:
    """alpha * -log(mean_max(P over the selected anchors)): [..., K] -> [...].

    probs: joint confidences P of the bag anchors; mask: valid bag entries;
    num_selected: s(t) of all-to-top-1 (None = every valid anchor, FreeAnchor).
    The log is clamped as torch's BCE (at -100, or at log(1e-38) ~ -87.5 where
    float32 cannot go further). Rows with an empty mask give 0.
    """
    sel = mask if num_selected is None else select_top(probs, mask, num_selected)
    bag = mean_max(probs, sel)
    nonempty = jnp.any(sel, axis=-1)
    log_bag = jnp.log(jnp.maximum(jnp.where(nonempty, bag, 1.0), _TINY))
    return alpha * -jnp.maximum(log_bag, -_LOG_CLAMP)


def negative_bag_loss(
    cls_logits: Array, box_prob: Array, alpha: float = ALPHA, gamma: float = GAMMA
) -> Array:
    """(1 - alpha) * p^gamma * BCE(p, 0), p = sigmoid(x) * (1 - box_prob): [..., C] -> [..., C].

    box_prob: P{a in A+} (`anchor_bags.positive_probability`), no gradient.
    -log(1 - p) is computed as -logaddexp(log sigmoid(-x), log sigmoid(x) + log b)
    so it is finite for any logit (mmdetection clamps p to [1e-12, 1 - 1e-12]).
    """
    x = jnp.asarray(cls_logits, jnp.float32)
    b = jax.lax.stop_gradient(jnp.clip(jnp.asarray(box_prob, jnp.float32), 0.0, 1.0))
    p = jax.nn.sigmoid(x) * (1.0 - b)
    log_b = jnp.log(jnp.maximum(b, 1e-30))
    bce = -jnp.logaddexp(jax.nn.log_sigmoid(-x), jax.nn.log_sigmoid(x) + log_b)
    bce = jnp.minimum(bce, _LOG_CLAMP)
    return (1.0 - alpha) * jnp.power(jnp.maximum(p, _EPS), gamma) * bce


# -- selection-depression schedules ---------------------------------------------------------


def num_selected(
    step: Array | int, total_steps: int, bag_size: int, end_frac: float = 1.0
) -> Array:
    """All-to-top-1: s(t) = K - floor((K - 1) * min(t / (end_frac * T), 1)), int32 [].

    K = bag_size at step 0, 1 from step end_frac * T on; linear in between.
    """
    k = int(bag_size)
    horizon = max(float(end_frac) * float(total_steps), 1.0)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / horizon, 0.0, 1.0)
    return (k - jnp.floor((k - 1) * frac + 1e-6)).astype(jnp.int32)


def depression_ratio(
    step: Array | int, total_steps: int, max_ratio: float = DEPRESSION_MAX_RATIO
) -> Array:
    """Fraction of candidate positions depressed at `step`, float32 [].

    The released MAL schedule (IA_TYPE 5): part q = floor(12 t / T) in [0, 11]
    of training gets max_ratio * min(q, 11 - q) / 5, i.e. 0 -> max_ratio in five
    steps over the first half and back to 0 over the second half.
    """
    t = jnp.asarray(step, jnp.float32)
    q = jnp.clip(jnp.floor(12.0 * t / max(float(total_steps), 1.0)), 0.0, 11.0)
    return (float(max_ratio) * jnp.minimum(q, 11.0 - q) / 5.0).astype(jnp.float32)


def attention_map(features: Array) -> Array:
    """[..., H, W, C] -> [..., H, W]: sum_c F * mean_hw(F) (MAL's class-agnostic CAM),
    without gradient."""
    f = jax.lax.stop_gradient(jnp.asarray(features, jnp.float32))
    gap = jnp.mean(f, axis=(-3, -2), keepdims=True)
    return jnp.sum(f * gap, axis=-1)


def depression_mask(cam: Array, candidates: Array, ratio: Array | float) -> Array:
    """[..., H, W] bool: the candidate positions whose attention is above the
    `floor(n * ratio)`-th highest candidate value (n = number of candidates),
    as the released `IA_feat` (there the candidates are all H * W positions).
    ratio = 0 or no candidate: nothing is depressed."""
    shape = cam.shape
    a = jnp.asarray(cam, jnp.float32).reshape(*shape[:-2], -1)
    c = jnp.asarray(candidates, bool).reshape(a.shape)
    vals = jnp.where(c, a, -jnp.inf)
    desc = -jnp.sort(-vals, axis=-1)
    n = jnp.sum(c, axis=-1)
    th_idx = jnp.floor(n.astype(jnp.float32) * ratio + 1e-4).astype(jnp.int32)
    th_idx = jnp.clip(th_idx, 0, a.shape[-1] - 1)
    thr = jnp.take_along_axis(desc, th_idx[..., None], axis=-1)
    return (c & (vals > thr) & (th_idx[..., None] > 0)).reshape(shape)


def depress(features: Array, mask: Array, keep: float = DEPRESSION_KEEP) -> Array:
    """features [..., H, W, C] scaled by `keep` where mask [..., H, W] is True
    ((3 F m + F) / 4 with m = 1 - mask for keep = 0.25). Gradients flow through."""
    scale = jnp.where(mask, keep, 1.0).astype(features.dtype)
    return features * scale[..., None]
