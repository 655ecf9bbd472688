# FSAF, anchor-free branch only (mmdetection's FSAF), tiny ResNet-18/16 + FPN P3-P5, on the
# built-in `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/fsaf/fsaf_tiny_shapes.py --workdir=runs/fsaf
#
# Tiny adaptation (three levels, 128 px images): the priors stay one stride-sized square per
# location (strides 8, 16, 32) and the regions stay the paper's (0.2 / 0.5, ignoring on the
# adjacent levels). Only the size heuristic (used for the `fsaf/mismatch` metric and for
# `fsaf.selection='heuristic'`) changes: FPN's rule l = floor(5 + log2(sqrt(wh) / 224)) is
# for ~800 px COCO images; on 128 px images the same rule keeps the canonical size in
# proportion, 224 * 128 / 800 = 35.84 px at P5, clipped to P3-P5: objects < 17.9 px -> P3,
# 17.9-35.8 px -> P4, larger -> P5 (about 28 / 34 / 38 % of the `shapes` objects, which are
# log-uniform in 10-77 px). Online selection itself needs no change.
import ml_collections

from configs import common


def fsaf_fields(anchor_based: bool) -> ml_collections.ConfigDict:
    """`config.fsaf`: the paper's settings (see jaxdet/detectors/fsaf.py)."""
    return ml_collections.ConfigDict(
        dict(
            anchor_based=anchor_based,
            af_weight=0.5 if anchor_based else 1.0,  # lambda of L = L_ab + lambda * L_af
            pos_scale=0.2,  # effective region epsilon_e
            neg_scale=0.5,  # ignoring region epsilon_i (mmdetection's config: 0.2)
            min_pos_iof=0.01,
            ignore_gt_scale=0.5,
            ignore_level_range=1,  # ignoring box also on the adjacent levels; -1 = all levels
            foreground_dominate=False,
            selection="online",  # or 'heuristic'
            tblr_normalizer=4.0,
            reg_bias_init=0.25,
            canonical_size=224.0,
            canonical_level=5,
            iou_eps=1e-6,
        )
    )


def retina_fields(config: ml_collections.ConfigDict) -> None:
    """RetinaNet's anchors, assigner and losses (used by the anchor-based branch only)."""
    config.anchor = ml_collections.ConfigDict(
        # RetinaNet's tiny anchors (configs/retinanet/retinanet_tiny_shapes.py: 16-102 px)
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


def get_config(anchor_based: bool = False) -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=5000)
    optimizer.grad_clip = 10.0  # mmdetection's FSAF config
    config = common.base("fsaf", common.data_shapes(128), common.model_tiny(), train, optimizer)
    config.model.head.norm = "gn"  # as the RetinaNet tiny config (see its header)
    config.model.head.gn_groups = 32
    retina_fields(config)
    config.fsaf = fsaf_fields(anchor_based)
    config.fsaf.canonical_size = 224.0 * 128 / 800
    config.test.nms_iou = 0.5
    return config
