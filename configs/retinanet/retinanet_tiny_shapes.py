# RetinaNet, tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
#
# Anchors sized for the data: 3 scales x 3 ratios per location with octave base scale 2,
# i.e. sqrt-areas 16 / 20 / 25 px at P3 (stride 8), 32 / 40 / 51 at P4 and 64 / 81 / 102 at
# P5, against `shapes` GTs of sqrt(wh) 5.5-76 px (median 28; 2000 train images). With
# COCO's octave base scale 4 (32-203 px at P3-P5) the smallest anchor is larger than 56 %
# of the GTs, the P5 anchors (128-203 px) are larger than every GT, and 39 % of the GTs
# have no anchor with IoU >= 0.5 (all under 16 px, 87 % of those of 16-24 px): they are
# trained only through their low-quality best-anchor match. With base scale 2, 92 % of the
# GTs have an anchor with IoU >= 0.5 (6.3 on average); COCO's anchors cover its objects in
# the same proportion (32-813 px on ~800 px inputs). Box AP after the 1000-step AdamW recipe
# of experiments/recipe.py (2-core Xeon, seeds 0 / 1): 0.249 / 0.191 with base scale 2,
# 0.189 / 0.318 with base scale 4 - the seeds differ more than the anchors do.
# Head: RetinaNet's towers with GroupNorm (as the ATSS paper's RetinaNet baseline and the
# FCOS / ATSS tiny heads). Without a norm the towers' ReLUs die after the gradient spike at
# the end of this recipe's AdamW warm-up (probed: 88-100 % of the box tower's channels
# never positive) and training stalls: seed 0, same recipe, box AP 0.249 without a norm,
# 0.572 with GroupNorm; noisy anchors 0.003 (collapsed) vs 0.541. Losses and assigner are
# mmdetection's RetinaNet (prior 0.01, focal 0.25 / 2, L1 on delta-xywh with stds 1,
# max-IoU 0.5 / 0.4 with low-quality matches); the R50 COCO config keeps the norm-free head.
# Run:
#   python -m jaxdet.main --config=configs/retinanet/retinanet_tiny_shapes.py --workdir=runs/retina
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=5000)
    config = common.base(
        "retinanet", common.data_shapes(128), common.model_tiny(), train, optimizer
    )
    config.model.head.norm = "gn"  # see the header: a norm-free head dies in this recipe
    config.model.head.gn_groups = 32  # the groups the header's GroupNorm figures used
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=2, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
    )
    config.assigner = ml_collections.ConfigDict(
        dict(name="max_iou", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0,
             ignore_iof_thr=0.5, topk=9)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, smooth_l1_beta=0.0,
             box_stds=(1.0, 1.0, 1.0, 1.0), prior_prob=0.01)
    )
    config.test.nms_iou = 0.5
    return config
