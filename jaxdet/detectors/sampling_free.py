"""Sampling-free training of one-stage detectors (Chen et al., "Is Heuristic
Sampling Necessary in Training Deep Object Detectors?", IEEE TIP 2021,
arXiv 1909.04868; reference code chenjoya/sampling-free).

The base detector (RetinaNet, FCOS or ATSS: `config.sampling_free.base`) keeps
its network, priors, assigner, regression losses and post-processing; only the
classification side changes (all pure pieces in `jaxdet.losses.guided`):
  cls loss    plain sigmoid BCE over every non-ignored (prior, class) pair, no
              focal loss, no sampling, / num_pos (the reference `CELoss`);
  bias init   class bias -log((1 - pi) / pi), pi = `prior_prob` (paper: 1e-5
              RetinaNet, 1e-4 FCOS, 3e-3 ATSS on COCO);
  guided loss cls loss x r, r = mean(regression terms) / cls loss without
              gradient, averaged over the first `guided_warmup` (100) steps and
              then frozen; the running mean lives in det_state (checkpointed).
              `guided_freeze='last'` freezes the last warm-up step's ratio instead,
              as the released `GuidedLoss` does (default 'mean', the paper's rule,
              less sensitive to one unusual batch);
  uncertainty `weighting='uncertainty'` replaces the guided scale by learned
              weights, sum_i L_i / (2 sigma_i^2) + log sigma_i over the
              classification and regression terms (the later version of the
              method, `guided.uncertainty_weighted`); log sigma_i are trainable
              parameters (`params['loss_weights']['log_sigma']`, [1 + #reg
              terms], initialised to 0). The default is the paper's guided loss
              ('guided'); 'none' leaves the terms unweighted;
  inference   class-adaptive score thresholds (see
              `guided.class_adaptive_thresholds`); config.test.score_thr
              should then be 0.

`cls_loss='focal'` with `weighting='none'` reproduces the base detector (used by
the ablation in experiments/sampling_free). Metrics added to the base's:
cls_fg / cls_bg (the classification objective's foreground / background parts
/ num_pos, before guided scaling), bce_fg / bce_bg (the same split of plain
BCE, whatever the objective), guided_ratio (this step's r), guided_scale (the
factor applied).

Composition: `SamplingFree` holds the base detector and calls its `priors`,
`assign`, `losses` and `decode`. The base's terms are its regression terms plus
`loss_cls` (every one-stage method names its classification term so); that
focal term is replaced here and, being unused, is removed by XLA under jit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.assign import targets
from jaxdet.core.types import Priors, ground_truth_from_batch
from jaxdet.detectors.atss import ATSS
from jaxdet.detectors.dense import DenseDetector, StepContext, normalizer
from jaxdet.detectors.fcos import FCOS
from jaxdet.detectors.retinanet import RetinaNet
from jaxdet.losses import guided
from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy
from jaxdet.losses.focal import sigmoid_focal_loss

BASES = {"retinanet": RetinaNet, "fcos": FCOS, "atss": ATSS}
WEIGHTINGS = ("guided", "uncertainty", "none")
REG_TERMS = {"retinanet": 1, "fcos": 2, "atss": 2}  # loss_box (+ loss_ctr)


class SamplingFree(DenseDetector):
    """A base one-stage detector (RetinaNet, FCOS or ATSS) trained sampling-free."""

    def __init__(self, config: Any):
        sf = config.sampling_free
        if sf.base not in BASES:
            raise ValueError(f"sampling_free.base must be one of {sorted(BASES)}, got {sf.base!r}")
        if sf.cls_loss not in ("bce", "focal"):
            raise ValueError(f"sampling_free.cls_loss: 'bce' or 'focal', got {sf.cls_loss!r}")
        if sf.weighting not in WEIGHTINGS:
            raise ValueError(f"sampling_free.weighting must be one of {WEIGHTINGS}, "
                             f"got {sf.weighting!r}")
        self.base = BASES[sf.base](config)
        super().__init__(config, self.base.net.head)
        self.sf = sf
        self.num_weights = 1 + REG_TERMS[sf.base]
        self.class_bias = guided.optimal_bias(float(sf.prior_prob))
        self.thresholds = None
        if sf.adaptive_threshold:
            self.thresholds = guided.class_adaptive_thresholds(
                float(sf.prior_prob), self.num_classes, tuple(sf.class_priors)
            )

    # -- parameters and state ---------------------------------------------------
    def init(self, rng: jax.Array, image_hw: tuple[int, int]) -> tuple[Any, dict]:
        params, det_state = super().init(rng, image_hw)
        params = with_class_bias(params, self.class_bias)
        if self.sf.weighting == "uncertainty":
            params = {**params, "loss_weights": {
                "log_sigma": jnp.zeros((self.num_weights,), jnp.float32)}}
        return params, det_state

    def apply(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        net = {k: v for k, v in params.items() if k != "loss_weights"}
        return super().apply(net, images)

    def forward(self, params, images, gt, ctx: StepContext) -> dict[str, jax.Array]:
        outputs = super().forward(params, images, gt, ctx)
        if self.sf.weighting == "uncertainty":
            outputs = {**outputs, "log_sigma": params["loss_weights"]["log_sigma"]}
        return outputs

    def init_state(self) -> dict:
        return guided.guided_init_state()

    def update_state(self, det_state, terms, ctx: StepContext):
        """The guided ratio's running mean over the first `guided_warmup` steps."""
        if self.sf.weighting != "guided":
            return det_state
        g_state = {k: det_state[k] for k in guided.guided_init_state()}
        _, g_state = guided.guided_update(g_state, terms["guided_ratio"],
                                          int(self.sf.guided_warmup), self.sf.guided_freeze)
        return {**det_state, **g_state}

    # -- the base's hooks ---------------------------------------------------------
    def priors(self, image_hw, outputs=None):
        return self.base.priors(image_hw, outputs)

    def assign(self, outputs, priors, gt):
        return self.base.assign(outputs, priors, gt)

    def level_sizes(self, priors):
        return self.base.level_sizes(priors)

    # -- training -----------------------------------------------------------------
    def losses(self, outputs, priors, gt, assignment, ctx: StepContext):
        """The base's regression terms, then loss_cls = guided scale x (cls_fg + cls_bg)
        (or every term uncertainty-weighted, `weighting='uncertainty'`)."""
        outputs = dict(outputs)
        log_sigma = outputs.pop("log_sigma", None)
        terms = dict(self.base.losses(outputs, priors, gt, assignment, ctx))
        del terms["loss_cls"]  # the base's focal term, replaced below
        reg_names = sorted(k for k in terms if k.startswith("loss"))
        reg_terms = [terms[k] for k in reg_names]
        cls = self.classification_terms(outputs["cls_logits"], assignment, gt)
        loss_cls = cls["cls_fg"] + cls["cls_bg"]
        ratio = guided.guided_ratio(loss_cls, reg_terms)
        if self.sf.weighting == "uncertainty":
            if len(reg_terms) + 1 != self.num_weights:
                raise ValueError(f"{len(reg_terms)} regression terms {reg_names}, expected "
                                 f"{self.num_weights - 1}")
            names = ["loss_cls", *reg_names]
            _, weighted = guided.uncertainty_weighted([loss_cls, *reg_terms], log_sigma)
            for i, name in enumerate(names):
                tag = name.removeprefix("loss_")
                terms[f"unweighted_{tag}"] = terms.get(name, loss_cls)
                terms[f"sigma_{tag}"] = jnp.exp(log_sigma[i])
                terms[name] = weighted[i]
            terms.update(cls, guided_ratio=ratio)
            return terms
        if self.sf.weighting == "guided":
            g_state = {k: ctx.det_state[k] for k in guided.guided_init_state()}
            scale, _ = guided.guided_update(g_state, ratio, int(self.sf.guided_warmup),
                                            self.sf.guided_freeze)
        else:
            scale = jnp.ones((), jnp.float32)
        terms.update(cls, loss_cls=scale * loss_cls, guided_ratio=ratio, guided_scale=scale)
        return terms

    def classification_terms(self, cls_logits, assignment, gt) -> dict[str, jax.Array]:
        """cls_logits [B, N, C] -> dict of scalars, each / global num_pos:
        cls_fg, cls_bg (objective, with gradient), bce_fg, bce_bg (no gradient)."""
        cls_t = jax.vmap(
            lambda a, g: targets.classification_targets(a, g.labels, self.num_classes)
        )(assignment, gt)
        weights = (~assignment.ignored).astype(jnp.float32)  # ignored priors: no loss
        num_pos = normalizer(assignment.positive.astype(jnp.float32))
        bce = sigmoid_binary_cross_entropy(cls_logits, cls_t)
        if self.sf.cls_loss == "bce":
            objective = bce
        else:
            lc = self.config.loss
            objective = sigmoid_focal_loss(cls_logits, cls_t, lc.focal_alpha, lc.focal_gamma)
        fg, bg = guided.fg_bg_split(objective, cls_t, weights)
        bce_fg, bce_bg = guided.fg_bg_split(jax.lax.stop_gradient(bce), cls_t, weights)
        return dict(
            cls_fg=fg / num_pos, cls_bg=bg / num_pos,
            bce_fg=bce_fg / num_pos, bce_bg=bce_bg / num_pos,
        )

    def count_priors(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Assigner statistics of a batch for estimating pi: (fg_per_class [C],
        num_all []) summed over the batch (see `guided.estimate_prior`)."""
        priors: Priors = self.priors(tuple(batch["image"].shape[1:3]))
        gt = ground_truth_from_batch(batch)
        assignment = self.assign(None, priors, gt)
        fg, num_all = jax.vmap(
            lambda a, g: guided.prior_counts(a.gt_index, g.labels, self.num_classes)
        )(assignment, gt)
        return jnp.sum(fg, axis=0), jnp.sum(num_all)

    # -- inference ----------------------------------------------------------------
    def decode(self, outputs, priors):
        boxes, scores, factors = self.base.decode(outputs, priors)
        if self.thresholds is not None:
            scores = guided.apply_class_thresholds(scores, self.thresholds)
        return boxes, scores, factors


def with_class_bias(params: Any, bias: float) -> Any:
    """params with the head's class-logit bias (`head/cls_out/bias`) set to `bias`."""
    try:
        old = params["head"]["cls_out"]["bias"]
    except (KeyError, TypeError) as e:
        raise ValueError("sampling_free: the head has no 'cls_out' bias to initialise") from e
    params = dict(params)
    head = dict(params["head"])
    head["cls_out"] = {**head["cls_out"], "bias": jnp.full_like(old, bias)}
    params["head"] = head
    return params


def make(config: Any) -> SamplingFree:
    return SamplingFree(config)
