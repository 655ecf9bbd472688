"""Multiple Anchor Learning (Ke et al., "Multiple Anchor Learning for Visual
Object Detection", CVPR 2020; code DeLightCMU/MAL, a FreeAnchor derivative).

Network: RetinaNet (`RetinaHead`, A = 9 anchors: 3 scales x 3 ratios, octave
base scale 4), class prior 0.02 (MAL / FreeAnchor PRIOR_PROB), delta-xywh box
coder with stds (0.1, 0.1, 0.2, 0.2) (maskrcnn-benchmark weights 10, 10, 5, 5; widths
without maskrcnn-benchmark's +1, as mmdetection's FreeAnchor, the oracle of the tests).

Training (per image, vmapped; `jaxdet.assign.anchor_bags`, `jaxdet.losses.mal`):
  bags   : per GT the K = 40 anchors of highest IoU (`config.bags.bag_size`).
  P_ij   : sigmoid(logit of GT i's class at anchor j) * exp(-0.75 * smoothL1_0.11(
           deltas_j, encode(anchor_j, box_i)) summed over the 4 coordinates).
  L_pos  : 0.5 * -log(mean-max of P over the s(t) selected anchors of each bag),
           summed over GTs / number of GTs in the batch.
  L_neg  : 0.5 * p^2 * BCE(p, 0), p = P_cls * (1 - P{a in A+}), over all anchors
           and classes / (number of GTs * K). P{a in A+} from the detached
           predicted boxes, IoU threshold 0.6. Anchors with IoF > 0.5 with an
           ignore (crowd) box get no negative loss (jaxdet convention).
Selection-depression (`config.mal`):
  selection  : all-to-top-1, s(t) = K - floor((K - 1) * t / (end_frac * T)) anchors
               per bag enter L_pos (`losses.mal.num_selected`).
  depression : 'selected' (default, the paper's reading): a first, detached head
               pass ranks each bag's anchors by P and takes its top s(t); the FPN
               positions holding those anchors are the candidates, and per level
               the top `ratio(t)` of them by attention (sum_c F * GAP(F)) have their
               features scaled by 0.25 before the head pass that gives the loss
               (which ranks the bag again on the perturbed outputs). 'image': the
               released code's variant, candidates = every position (one head
               pass). 'none': no depression. ratio(t) is the released IA_TYPE 5
               schedule, 0 -> 0.5 -> 0 in twelfths of training.
  T = `config.mal.schedule_steps`, or `config.train.num_steps` when that is 0.
With `selection=False, depression='none'` the loss is FreeAnchor's with K = 40
(the "FreeAnchor-like" baseline of experiments/mal).
Inference: as RetinaNet (sigmoid scores, per-level top-1000, score > 0.05, NMS 0.5);
no depression.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.assign import anchor_bags, common
from jaxdet.core import coders
from jaxdet.core.types import GroundTruth, Priors
from jaxdet.detectors import retinanet
from jaxdet.detectors.dense import DenseDetector, StepContext, normalizer
from jaxdet.losses import mal as mal_loss
from jaxdet.losses.smooth_l1 import smooth_l1_loss
from jaxdet.ops.per_shard import per_shard

DEPRESSION_MODES = ("selected", "image", "none")


class MAL(DenseDetector):
    """RetinaNet's network and inference; anchor bags, selection and depression.

    Assignment: the batched `AnchorBags` ([B, M, K] leaves). `forward` applies the
    feature depression between the FPN and the head (and reports how much).
    """

    def __init__(self, config: Any):
        self.anchor = config.anchor
        head = retinanet.retina_head(config, retinanet.num_anchors(config.anchor))
        super().__init__(config, head)
        self.loss_cfg = config.loss
        self.box_stds = tuple(config.loss.box_stds)
        self.bag_size = int(config.bags.bag_size)
        self.ignore_iof_thr = float(config.bags.ignore_iof_thr)
        m = config.mal
        self.selection = bool(m.selection)
        self.select_end_frac = float(m.select_end_frac)
        self.depression = str(m.depression)
        if self.depression not in DEPRESSION_MODES:
            raise ValueError(f"mal.depression={self.depression!r}; expected {DEPRESSION_MODES}")
        self.schedule_steps = int(m.schedule_steps) or int(config.train.num_steps)
        if self.schedule_steps <= 0 and (self.selection or self.depression != "none"):
            raise ValueError(
                "MAL's selection/depression schedules need the training length: set "
                "config.mal.schedule_steps (or config.train.num_steps)."
            )

    def priors(self, image_hw, outputs=None):
        return retinanet.anchors(self.anchor, self.strides, image_hw)

    # -- pieces ---------------------------------------------------------------
    def assign(self, outputs, priors: Priors, gt: GroundTruth) -> anchor_bags.AnchorBags:
        """Batched anchor bags: [B, M, K] leaves (prediction-free)."""
        build = jax.vmap(lambda g: anchor_bags.build(priors, g, bag_size=self.bag_size))
        return per_shard(build, gt)  # per data shard: its top-k would gather the batch

    def bag_confidence(self, out: dict, priors: Priors, gt, bags) -> jax.Array:
        """Per image: joint confidence P [M, K] of the bag anchors for their GT's class."""
        lc = self.loss_cfg
        c = self.num_classes
        labels = jnp.clip(jnp.asarray(gt.labels, jnp.int32), 0, c - 1)
        gt_boxes, _, _ = common.split_gt(gt)
        logit = out["cls_logits"][bags.index, labels[:, None]]  # [M, K]
        anchor_boxes = priors.boxes[bags.index]  # [M, K, 4]
        target = coders.delta_xywh_encode(anchor_boxes, gt_boxes[:, None, :], stds=self.box_stds)
        box_l = smooth_l1_loss(out["box_deltas"][bags.index], target, beta=lc.smooth_l1_beta)
        return mal_loss.joint_confidence(logit, lc.box_weight * jnp.sum(box_l, axis=-1))

    def num_selected(self, step) -> jax.Array | int:
        if not self.selection:
            return self.bag_size
        return mal_loss.num_selected(step, self.schedule_steps, self.bag_size,
                                     self.select_end_frac)

    def depress_features(self, params, feats, priors, gt, bags, step, s):
        """FPN features with MAL's anchor depression applied (training only)."""
        m = self.config.mal
        ratio = mal_loss.depression_ratio(step, self.schedule_steps, m.depression_max_ratio)
        a = priors.num_base
        b = feats[0].shape[0]
        if self.depression == "selected":
            clean = jax.lax.stop_gradient(self.predictions(params, feats))

            def selected_positions(out, g, bg):
                p = self.bag_confidence(out, priors, g, bg)
                sel = mal_loss.select_top(p, bg.valid, s)
                hit = jnp.zeros((priors.num_priors,), jnp.int32)
                hit = hit.at[bg.index].max(sel.astype(jnp.int32))
                return hit.reshape(-1, a).max(axis=-1) > 0  # [num positions]

            cand = jax.vmap(selected_positions)(clean, gt, bags)
        else:
            cand = jnp.ones((b, priors.num_priors // a), bool)
        out_feats, start, depressed = [], 0, 0.0
        for f in feats:
            h, w = f.shape[1:3]
            c_l = cand[:, start:start + h * w].reshape(b, h, w)
            start += h * w
            mask = mal_loss.depression_mask(mal_loss.attention_map(f), c_l, ratio)
            depressed = depressed + jnp.sum(mask)
            out_feats.append(mal_loss.depress(f, mask, m.depression_keep))
        return tuple(out_feats), ratio, depressed / b

    # -- training -------------------------------------------------------------
    def forward(self, params, images, gt, ctx: StepContext) -> dict:
        """The head outputs; with depression, of the depressed FPN features. Adds the
        scalars 'depression_ratio' and 'depressed_positions' (per image) to the outputs."""
        if self.depression == "none":
            return self.apply(params, images)
        priors = self.priors(tuple(images.shape[1:3]))
        bags = self.assign(None, priors, gt)
        feats = self.features(params, images)
        feats, ratio, depressed = self.depress_features(
            params, feats, priors, gt, bags, ctx.step, self.num_selected(ctx.step)
        )
        out = dict(self.predictions(params, feats))
        out.update(depression_ratio=ratio, depressed_positions=depressed)
        return out

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext):
        """loss_pos, loss_neg (FreeAnchor's bag losses with s(t) selected per bag) and
        the bag statistics; outputs [B, N, ...], assignment the batched bags."""
        lc = self.loss_cfg
        c = self.num_classes
        bags = assignment
        s = self.num_selected(ctx.step)
        pred = coders.delta_xywh_decode(
            priors.boxes, jax.lax.stop_gradient(outputs["box_deltas"]), stds=self.box_stds
        )
        box_prob = anchor_bags.positive_probability_batch(pred, gt, c, bbox_thr=lc.bbox_thr,
                                                          priors=priors)

        def one(o, g, bg, box_prob):
            p = self.bag_confidence(o, priors, g, bg)
            has_bag = bg.valid[:, 0]
            pos = mal_loss.positive_bag_loss(p, bg.valid, s, lc.alpha)
            pos = jnp.sum(jnp.where(has_bag, pos, 0.0))
            neg = mal_loss.negative_bag_loss(o["cls_logits"], box_prob, lc.alpha, lc.gamma)
            boxes, _, ignore_rows = common.split_gt(g)
            ignored = common.ignored_by_iof(priors.boxes, boxes, ignore_rows, self.ignore_iof_thr)
            neg = jnp.sum(jnp.where(ignored[:, None], 0.0, neg))
            best = jnp.max(jnp.where(bg.valid, jax.lax.stop_gradient(p), 0.0), axis=-1)
            return pos, neg, jnp.sum(has_bag), jnp.sum(best)

        head = {k: outputs[k] for k in ("cls_logits", "box_deltas")}
        pos, neg, n_gt, best = jax.vmap(one)(head, gt, bags, box_prob)
        num_gt = normalizer(n_gt.astype(jnp.float32))
        terms = dict(
            loss_pos=jnp.sum(pos) / num_gt,
            loss_neg=jnp.sum(neg) / normalizer(n_gt.astype(jnp.float32) * self.bag_size),
            num_gt=jnp.sum(n_gt) / n_gt.shape[0],
            bag_max_conf=jnp.sum(best) / num_gt,
        )
        for k in ("depression_ratio", "depressed_positions"):
            if k in outputs:
                terms[k] = outputs[k]
        terms["num_selected"] = jnp.asarray(s, jnp.float32)
        return terms

    # -- inference ------------------------------------------------------------
    def decode(self, outputs, priors):
        boxes = retinanet.decode_boxes(outputs["box_deltas"], priors, self.box_stds)
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]), None


def make(config: Any) -> MAL:
    return MAL(config)
