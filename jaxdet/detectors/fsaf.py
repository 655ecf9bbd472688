"""FSAF (Zhu, He, Savvides, "Feature Selective Anchor-Free Module for Single-Shot Object
Detection", CVPR 2019, arXiv 1903.00621).

Two variants, chosen by `config.fsaf.anchor_based`:
  False: anchor-free only, as mmdetection ships it (`FSAFHead`): loss = af_weight * L_af
         (af_weight 1.0);
  True:  the paper's detector, RetinaNet (anchor-based branch, max-IoU, focal + L1 on
         delta-xywh; see `jaxdet.detectors.retinanet`) plus the anchor-free branch on the
         same towers: loss = L_ab + af_weight * L_af with af_weight = lambda = 0.5, and at
         test time the detections of both branches are merged before one NMS.

Anchor-free branch (`FSAFHead` outputs 'af_cls_logits', 'af_tblr'):
  priors:   one square "anchor" of side = stride per location, centred at (x, y) * stride
            (mmdetection: octave_base_scale 1, 1 scale, ratio 1);
  boxes:    TBLR distances x normaliser (4.0) x prior side (`center_region.tblr_decode`),
            clamped >= 1e-4 in the loss as mmdetection;
  assign:   `jaxdet.assign.center_region` (effective 0.2, ignoring 0.5, min IoF 0.01), run
            on the prior lattice (`center_region_lattice`, same outputs) as the priors tile it;
  select:   online feature selection (`jaxdet.assign.fsaf_select`): each GT is first a
            candidate on every level; with the stop_gradient-ed predictions each level's
            mean of (focal summed over classes + IoU loss) over the GT's effective priors
            is measured; the argmin level trains the GT. The final assignment then uses
            that level (positives there, ignoring box on it and on the adjacent levels,
            effective region ignored on the other levels). `selection='heuristic'` uses
            the paper's size rule instead (Table 1's baseline);
  losses:   sigmoid focal (0.25, 2) over non-ignored (prior, class) pairs / num_pos, and
            IoU loss (-log IoU, eps 1e-6) of the decoded boxes over positives / num_pos,
            num_pos summed over the global batch (mmdetection normalises both by it).
Difference from mmdetection: there a prior owned by a GT whose level was not selected
just loses that GT's class (it is never re-assigned); here the final assignment is made
with the selected levels, so such a prior can be positive for another GT selected on
its level (each GT "only affects its selected level", paper Sec. 3.4).

Metrics (from `loss_fn`, logged every step): `fsaf/mismatch` = share of the batch's GTs
(with a candidate prior) whose online-selected level differs from the size heuristic;
`fsaf/sel_l<i>` and `fsaf/heur_l<i>` = share selected at level i by each rule.

Config (`config.fsaf`, defaults = paper): anchor_based, af_weight (0.5 with the anchor
branch; 1.0 alone), pos_scale 0.2, neg_scale 0.5, min_pos_iof 0.01, ignore_gt_scale 0.5,
ignore_level_range 1 (-1 = every level, mmdetection), foreground_dominate False,
selection 'online' | 'heuristic', tblr_normalizer 4.0, reg_bias_init 0.25,
canonical_size 224, canonical_level 5 (heuristic), iou_eps 1e-6.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import center_region, fsaf_select, targets
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors
from jaxdet.detectors import retinanet
from jaxdet.detectors.dense import DenseDetector, StepContext, check_assigner, normalizer
from jaxdet.losses.focal import sigmoid_focal_loss
from jaxdet.losses.iou import iou_loss
from jaxdet.models.heads.fsaf_head import FSAFHead

MIN_TBLR = 1e-4  # mmdetection clamps the predictions before the loss


class FSAF(DenseDetector):
    """The FSAF anchor-free branch, alone or beside RetinaNet's anchor-based branch.

    Priors: {'af': one stride-sized square per location, 'ab': RetinaNet's anchors}
    ('ab' only with the anchor-based branch). Assignment: {'af': (Assignment,
    ignore_labels [B, N, C], selection info), 'ab': RetinaNet's Assignment}.
    """

    def __init__(self, config: Any):
        f = config.fsaf
        h = config.model.head
        self.fsaf = f
        self.anchor_based = bool(f.anchor_based)
        self.anchor = config.anchor
        head = FSAFHead(
            num_classes=int(config.data.num_classes), anchor_based=self.anchor_based,
            num_anchors=retinanet.num_anchors(self.anchor) if self.anchor_based else 1,
            feat_channels=h.channels, stacked_convs=h.num_convs,
            norm=h.norm, gn_groups=h.gn_groups, prior_prob=float(config.loss.prior_prob),
            reg_bias_init=float(f.reg_bias_init), dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
        )
        super().__init__(config, head)
        self.hp = config.assigner
        if self.anchor_based:
            check_assigner(config, ("max_iou",))
        self.loss_cfg = config.loss
        self.box_stds = tuple(config.loss.box_stds)

    # -- priors ---------------------------------------------------------------
    def priors(self, image_hw, outputs=None) -> dict[str, Priors]:
        af = jax.tree_util.tree_map(jnp.asarray, center_region_priors(self.strides, image_hw))
        if not self.anchor_based:
            return {"af": af}
        return {"af": af, "ab": retinanet.anchors(self.anchor, self.strides, image_hw)}

    def level_sizes(self, priors):
        """Both branches' candidates enter the per-level top-k: ab levels, then af levels."""
        ab = priors["ab"].level_sizes if self.anchor_based else ()
        return ab + priors["af"].level_sizes

    # -- anchor-free branch -----------------------------------------------------
    def af_boxes(self, tblr: jax.Array, priors: Priors) -> jax.Array:
        return center_region.tblr_decode(priors.boxes, tblr, float(self.fsaf.tblr_normalizer))

    def _assign_kwargs(self) -> dict:
        f = self.fsaf
        rng = int(f.ignore_level_range)
        return dict(
            num_classes=self.num_classes, ignore_level_range=None if rng < 0 else rng,
            foreground_dominate=bool(f.foreground_dominate),
        )

    def af_assign(self, out: dict, priors: Priors, gt: GroundTruth):
        """Centre-region assignment with online feature selection, batched.

        Returns (Assignment [B, N], ignore_labels [B, N, C], info dict of [B, M] arrays:
        'selected', 'heuristic' levels and 'counted' GTs that had a candidate prior).
        """
        f, lc = self.fsaf, self.loss_cfg
        levels = jnp.asarray(priors.levels, jnp.int32)
        num_levels = len(self.strides)
        m = gt.boxes.shape[1]
        scales = dict(pos_scale=f.pos_scale, neg_scale=f.neg_scale, min_pos_iof=f.min_pos_iof,
                      ignore_gt_scale=f.ignore_gt_scale)
        geo = jax.vmap(lambda g: center_region.regions(priors, g, **scales))(gt)
        resolve = lambda r, g, s: center_region.resolve(
            r, g, priors, selected_level=s, **self._assign_kwargs()
        )
        # Stage 1: every level is a candidate; per-prior losses of the frozen predictions.
        cand, cand_ign = jax.vmap(lambda r, g: resolve(r, g, None))(geo, gt)
        cls = jax.lax.stop_gradient(out["af_cls_logits"])
        boxes = jax.lax.stop_gradient(self.af_boxes(jnp.maximum(out["af_tblr"], MIN_TBLR), priors))
        gt_boxes, _ = targets.gather_gt(cand, gt)
        w = ((cand.gt_index != -2)[..., None] & ~cand_ign).astype(jnp.float32)
        cls_t = targets.classification_targets(cand, gt.labels, self.num_classes)
        focal = jnp.sum(sigmoid_focal_loss(cls, cls_t, lc.focal_alpha, lc.focal_gamma) * w, -1)
        prior_loss = focal + iou_loss(boxes, gt_boxes, mode="log", eps=float(f.iou_eps))
        online, has = jax.vmap(
            lambda pl, gi: fsaf_select.online_select(pl, gi, levels, m, num_levels)
        )(prior_loss, cand.gt_index)
        heuristic = fsaf_select.heuristic_levels(
            jnp.asarray(gt.boxes, jnp.float32), self.strides, float(f.canonical_size),
            int(f.canonical_level),
        )
        if f.selection == "online":
            selected = online
        elif f.selection == "heuristic":
            selected = heuristic
        else:
            raise ValueError(f"unknown fsaf.selection {f.selection!r} (online | heuristic)")
        # Stage 2: the final assignment on the selected levels.
        assignment, ignore_labels = jax.vmap(resolve)(geo, gt, selected)
        counted = gt.positive_valid & has
        info = dict(selected=online, heuristic=heuristic, counted=counted)
        return assignment, ignore_labels, info

    def af_losses(self, out: dict, priors: Priors, gt: GroundTruth, af_assignment) -> dict:
        """The anchor-free branch's terms: af_loss_cls, af_loss_box (each / num_pos),
        af_num_pos and the selection metrics."""
        lc = self.loss_cfg
        assignment, ignore_labels, info = af_assignment
        pos = assignment.positive
        gt_boxes, _ = targets.gather_gt(assignment, gt)
        cls_t = targets.classification_targets(assignment, gt.labels, self.num_classes)
        w = ((~assignment.ignored)[..., None] & ~ignore_labels).astype(jnp.float32)
        num_pos = normalizer(pos.astype(jnp.float32))
        focal = sigmoid_focal_loss(out["af_cls_logits"], cls_t, lc.focal_alpha, lc.focal_gamma)
        loss_cls = jnp.sum(focal * w) / num_pos
        boxes = self.af_boxes(jnp.maximum(out["af_tblr"], MIN_TBLR), priors)
        box_l = iou_loss(boxes, gt_boxes, mode="log", eps=float(self.fsaf.iou_eps))
        loss_box = jnp.sum(jnp.where(pos, box_l, 0.0)) / num_pos
        terms = dict(af_loss_cls=loss_cls, af_loss_box=loss_box,
                     af_num_pos=jnp.sum(pos) / pos.shape[0])
        terms.update(selection_metrics(info, len(self.strides)))
        return terms

    # -- training ---------------------------------------------------------------
    def assign(self, outputs, priors, gt):
        result = {"af": self.af_assign(outputs, priors["af"], gt)}
        if self.anchor_based:
            result["ab"] = retinanet.max_iou_assign(priors["ab"], gt, self.hp)
        return result

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        """loss_af = af_weight x (af_loss_cls + af_loss_box); with the anchor-based
        branch also loss_ab = RetinaNet's loss_cls + loss_box (as ab_loss_cls, ab_loss_box)."""
        terms = self.af_losses(outputs, priors["af"], gt, assignment["af"])
        terms["loss_af"] = float(self.fsaf.af_weight) * (
            terms["af_loss_cls"] + terms["af_loss_box"]
        )
        if self.anchor_based:
            ab = retinanet.retina_losses(outputs, priors["ab"], gt, assignment["ab"],
                                         self.num_classes, self.loss_cfg, self.box_stds)
            terms["loss_ab"] = ab["loss_cls"] + ab["loss_box"]
            terms.update({f"ab_{k}": v for k, v in ab.items()})
        return terms

    # -- inference --------------------------------------------------------------
    def decode(self, outputs, priors):
        """One image: the anchor-based candidates (if any) then the anchor-free ones:
        (boxes [N, 4], scores [N, C], None)."""
        boxes = self.af_boxes(outputs["af_tblr"], priors["af"])
        scores = jax.nn.sigmoid(outputs["af_cls_logits"])
        if self.anchor_based:
            ab_boxes = retinanet.decode_boxes(outputs["box_deltas"], priors["ab"], self.box_stds)
            boxes = jnp.concatenate([ab_boxes, boxes], axis=0)
            scores = jnp.concatenate([jax.nn.sigmoid(outputs["cls_logits"]), scores], axis=0)
        return boxes, scores, None


def center_region_priors(strides: tuple[int, ...], image_hw: tuple[int, int]) -> Priors:
    """The anchor-free branch's priors: one stride-sized square per location (NumPy)."""
    return priors_lib.make_anchors(
        priors_lib.feature_shapes(image_hw, strides), strides,
        octave_base_scale=1.0, scales_per_octave=1, ratios=(1.0,),
    )


def selection_metrics(info: dict, num_levels: int) -> dict:
    """Batch shares: online level != heuristic level, and each rule's level histogram."""
    counted = info["counted"].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(counted), 1.0)
    metrics = {"fsaf/mismatch": jnp.sum(counted * (info["selected"] != info["heuristic"])) / n,
               "fsaf/num_gts": jnp.sum(counted)}
    for lvl in range(num_levels):
        metrics[f"fsaf/sel_l{lvl}"] = jnp.sum(counted * (info["selected"] == lvl)) / n
        metrics[f"fsaf/heur_l{lvl}"] = jnp.sum(counted * (info["heuristic"] == lvl)) / n
    return metrics


def make(config: Any) -> FSAF:
    return FSAF(config)
