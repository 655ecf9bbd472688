"""Sampling-free training: the pure pieces (Chen et al., "Is Heuristic Sampling
Necessary in Training Deep Object Detectors?", IEEE TIP 2021, arXiv 1909.04868;
code: chenjoya/sampling-free).

A one-stage detector is trained with plain sigmoid BCE over *all* non-ignored
(prior, class) pairs, no focal loss and no sampling. Three ingredients make
that work:

1. Optimal bias initialisation (`optimal_bias`): the class bias is set to
   b = -log((1 - pi) / pi) so every initial sigmoid equals pi, the probability
   that a (prior, class) pair is positive. The reference code estimates it as
   pi = (#foreground priors / #(foreground + background) priors) / C over one
   epoch of the training set with the detector's own assigner (`prior_counts`
   per image, `estimate_prior` over the set); its released configs fix
   pi = 1e-5 (RetinaNet, COCO), 1e-4 (FCOS), 3e-3 (ATSS).
2. Guided loss (`guided_ratio`, `guided_update`): the classification loss is
   scaled by r = L_reg / L_cls computed without gradient, so its magnitude
   follows the regression loss. With several regression terms (FCOS/ATSS:
   box + centerness) L_reg is their mean, as the reference `GuidedLoss(n)`
   (`sum(losses[1:]) / (n - 1) / losses[0]`). During the first `warmup` steps
   the current step's ratio is applied; afterwards one value is frozen (100
   iterations): `freeze='mean'` (default) the mean of the warm-up ratios, the
   paper's description; `freeze='last'` the ratio of the last warm-up step, what
   the released `GuidedLoss` does (it keeps overwriting its ratio, all-reduced
   over the GPUs, until iteration 100). The frozen value lives in the
   detector's `det_state` so it is checkpointed and survives a resume. Under
   `jit` over the data mesh the losses are global-batch quantities, so the
   ratio is already the all-device one (the reference all-reduces it).
   The later version of the method replaces the ratio by learned uncertainty
   weights, sum_i L_i / (2 sigma_i^2) + log sigma_i (`uncertainty_weighted`;
   the detector's `sampling_free.weighting='uncertainty'`).
3. Class-adaptive inference threshold (`class_adaptive_thresholds`): see its
   docstring for the rule implemented and how it was pinned down.

Also `fg_bg_split`, which splits an element-wise classification loss into its
foreground (target 1) and background (target 0) parts, the two curves of the
paper's training-collapse analysis. Everything here is pure jax.numpy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jnp.ndarray

# Paper / reference-config priors (chenjoya/sampling-free configs/sampling_free/*.yaml).
PAPER_PRIOR_PROB = {"retinanet": 1e-5, "fcos": 1e-4, "atss": 3e-3}
GUIDED_WARMUP_STEPS = 100  # paper: the ratio is averaged over the first 100 iterations


# -- 1. optimal bias -------------------------------------------------------------
def optimal_bias(prior_prob: float) -> float:
    """b = -log((1 - pi) / pi): the logit whose sigmoid is pi. 0 < pi < 1."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    return -math.log((1.0 - prior_prob) / prior_prob)


def prior_counts(gt_index: Array, gt_labels: Array, num_classes: int) -> tuple[Array, Array]:
    """Per image: foreground priors per class and all counted priors.

    gt_index [N] int32 (assignment: -1 background, -2 ignore, k >= 0 GT row k),
    gt_labels [M] int32 in [0, C). Returns (fg_per_class [C] float32, num_all []
    float32) where num_all = #foreground + #background (ignored priors are not
    counted, as the reference counts matched + below-low-threshold anchors).
    vmap over images and sum to get dataset counts.
    """
    pos = gt_index >= 0
    labels = jnp.take(gt_labels, jnp.maximum(gt_index, 0))
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * pos[:, None]
    num_all = jnp.sum((gt_index >= -1).astype(jnp.float32))
    return jnp.sum(onehot, axis=0), num_all


def estimate_prior(fg_per_class: Array, num_all: Array) -> tuple[Array, Array]:
    """Dataset counts -> (pi [] , per-class priors pi_c [C]).

    pi_c = #foreground priors of class c / #counted priors: the probability that
    the (prior, class c) pair is positive. pi = mean_c pi_c = (#fg / #all) / C,
    the reference code's optimal prior.
    """
    per_class = jnp.asarray(fg_per_class, jnp.float32) / jnp.maximum(num_all, 1.0)
    return jnp.mean(per_class), per_class


# -- 2. guided loss --------------------------------------------------------------
def guided_ratio(loss_cls: Array, reg_losses: tuple[Array, ...] | list[Array]) -> Array:
    """r = mean(reg_losses) / loss_cls, without gradient. Scalars in, scalar out.

    Not finite (inf/nan) when loss_cls is 0; `guided_update` skips such steps.
    """
    reg = sum(jnp.asarray(x, jnp.float32) for x in reg_losses) / len(reg_losses)
    return jax.lax.stop_gradient(reg / jnp.asarray(loss_cls, jnp.float32))


def guided_init_state() -> dict[str, Array]:
    """The guided-loss part of `det_state`: number of averaged steps, running mean."""
    return {"guided_count": jnp.zeros((), jnp.int32), "guided_ratio": jnp.zeros((), jnp.float32)}


GUIDED_FREEZE_MODES = ("mean", "last")


def guided_update(
    state: dict[str, Array], ratio: Array, warmup: int = GUIDED_WARMUP_STEPS,
    freeze: str = "mean",
) -> tuple[Array, dict[str, Array]]:
    """One training step of the guided-loss schedule -> (scale, new_state).

    state: {'guided_count': [] int32, 'guided_ratio': [] float32} (the value to
    freeze so far). ratio: this step's `guided_ratio`.
    - While guided_count < warmup: scale = this step's ratio (as the reference
      `GuidedLoss`), and the ratio updates the stored value: with
      freeze='mean' the running mean of the usable ratios (the paper: "the ratio
      averaged over the first 100 iterations"), with freeze='last' the ratio
      itself (the released `GuidedLoss`, which freezes the ratio of iteration
      100). A step whose ratio is not usable (not finite or <= 0: no positive in
      the global batch, so no regression loss) is not counted; it is scaled by
      the stored value (1.0 before any usable step).
    - Once guided_count == warmup: scale = the frozen value; the state no longer
      changes.
    warmup <= 0 disables freezing: scale = this step's ratio at every step (the
    reference's two-stage box head and its v1 one-stage code).
    'mean' is the default: it is the paper's rule, and a mean over 100 batches
    varies less from run to run than one batch's ratio (a batch with few or
    unusually hard objects sets the scale for the rest of training under 'last').
    Jittable; `state` round-trips through checkpoints (the same state for both).
    """
    if freeze not in GUIDED_FREEZE_MODES:
        raise ValueError(f"freeze must be one of {GUIDED_FREEZE_MODES}, got {freeze!r}")
    ratio = jnp.asarray(ratio, jnp.float32)
    usable = jnp.isfinite(ratio) & (ratio > 0)
    count, mean = state["guided_count"], state["guided_ratio"]
    fallback = jnp.where(count > 0, mean, 1.0)
    current = jnp.where(usable, ratio, fallback)
    if warmup <= 0:
        return current, state
    warming = count < warmup
    take = warming & usable
    new_count = count + take.astype(jnp.int32)
    safe_ratio = jnp.where(usable, ratio, 0.0)
    if freeze == "mean":
        updated = mean + (safe_ratio - mean) / jnp.maximum(new_count, 1)
    else:
        updated = safe_ratio
    new_mean = jnp.where(take, updated, mean)
    scale = jnp.where(warming, current, mean)
    return jax.lax.stop_gradient(scale), {"guided_count": new_count, "guided_ratio": new_mean}


def uncertainty_weighted(
    losses: tuple[Array, ...] | list[Array] | Array, log_sigma: Array
) -> tuple[Array, Array]:
    """Learned uncertainty weighting of the loss terms (the later sampling-free
    version, after Kendall et al. 2018): total = sum_i L_i / (2 sigma_i^2) + log sigma_i.

    losses: n scalars (or an [n] array), e.g. (L_cls, L_reg[, L_ctr]); log_sigma:
    [n] float32, the learnable s_i = log sigma_i (trainable parameters, initialised
    to 0: sigma = 1, weight 1/2). Written as L_i / 2 * exp(-2 s_i) + s_i, finite for
    any s_i. Returns (total [] , weighted [n] = the terms L_i / (2 sigma_i^2) + s_i).
    Gradients flow into both the losses and log_sigma; at the optimum over s_i,
    sigma_i^2 = L_i, so each term's weight follows its own magnitude instead of a
    frozen ratio. Pure and jittable; vmap over leading axes of both arguments.
    """
    terms = jnp.stack([jnp.asarray(x, jnp.float32) for x in losses]) \
        if isinstance(losses, (tuple, list)) else jnp.asarray(losses, jnp.float32)
    s = jnp.asarray(log_sigma, jnp.float32)
    if terms.shape[-1:] != s.shape[-1:]:
        raise ValueError(f"{terms.shape[-1]} losses for {s.shape[-1]} log_sigma entries")
    weighted = 0.5 * terms * jnp.exp(-2.0 * s) + s
    return jnp.sum(weighted, axis=-1), weighted


# -- analysis --------------------------------------------------------------------
def fg_bg_split(
    elementwise: Array, targets: Array, weights: Array | None = None
) -> tuple[Array, Array]:
    """Split a classification loss into foreground and background sums.

    elementwise [..., N, C] unreduced loss (BCE or focal), targets [..., N, C]
    in [0, 1] (one-hot; soft targets split linearly), weights [..., N] (e.g. 0
    for ignored priors) or None. Returns (fg, bg) scalars with
    fg = sum(loss * t * w), bg = sum(loss * (1 - t) * w), so fg + bg = the
    weighted sum. Divide both by the detector's normaliser (num_pos).
    """
    loss = jnp.asarray(elementwise, jnp.float32)
    t = jnp.asarray(targets, jnp.float32)
    if weights is not None:
        loss = loss * jnp.asarray(weights, jnp.float32)[..., None]
    return jnp.sum(loss * t), jnp.sum(loss * (1.0 - t))


# -- 3. class-adaptive threshold -------------------------------------------------
def class_adaptive_thresholds(
    prior_prob: float, num_classes: int, class_priors: tuple[float, ...] | None = None
) -> Array:
    """Per-class inference score thresholds [C] float32.

    The paper (sec. "class-adaptive threshold") replaces the fixed score
    threshold by one derived from the data prior instead of tuned; the exact
    formula could not be read from the paper text available here, so this is
    the most faithful reading of the authors' code:
    - chenjoya/sampling-free v1 (`maskrcnn_benchmark/modeling/sampling_free.py`,
      `adaptive_threshold`): threshold = pi * C, one class-agnostic value;
    - the later `ImbalancedDecider` (same file, fork DeqiangWang/sampling-free):
      threshold = pi for every class, with per-class frequencies prepared but
      commented out ("do not use class information is also okay");
    - the released repo (TIP version) uses a fixed INFERENCE_TH = 1e-3.
    Implemented: threshold_c = pi_c, the prior probability that a (prior, c)
    pair is positive (`estimate_prior`'s per-class priors): a score below the
    class's base rate carries no evidence for it. Without per-class priors it
    falls back to pi for every class, i.e. the `ImbalancedDecider` rule
    (mean_c pi_c = pi, so the two agree on balanced data).

    prior_prob: pi. class_priors: optional (pi_1, ..., pi_C).
    """
    if class_priors:
        if len(class_priors) != num_classes:
            raise ValueError(f"{len(class_priors)} class priors for {num_classes} classes")
        return jnp.asarray(class_priors, jnp.float32)
    return jnp.full((num_classes,), prior_prob, jnp.float32)


def apply_class_thresholds(scores: Array, thresholds: Array) -> Array:
    """scores [..., C] -> scores with every entry <= its class threshold set to 0.

    Then a post-processing with score_thr = 0 keeps exactly the pairs above
    their class threshold.
    """
    return jnp.where(scores > thresholds, scores, 0.0)
