# HAMBox (Liu et al., CVPR 2020, arXiv 1912.09231) on RetinaNet R50-FPN, COCO 2017, 1x.
# The paper trains face detectors on WIDER FACE (val 97.0 / 96.4 / 93.3 easy / medium /
# hard); it reports no COCO number, so this config carries its settings to COCO:
# one square anchor per location of 0.68 x 4 x stride (0.68 x {32 .. 512} on P3-P7; the
# paper's 0.68 x 16 anchor on P2 is dropped with P2), matching IoU T1 = 0.35 with a best
# anchor per GT, online compensation to K = 5 anchors at regressed IoU T2 = 0.5,
# regression-aware focal loss (0.25, 2), smooth L1 (beta 0.11) on delta-xywh.
# Run:
#   python -m jaxdet.main --config=configs/hambox/hambox_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/hambox_r50_1x
import ml_collections

from configs import common


def hambox_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The HAMBox anchors, assigner and loss (shared with the tiny config)."""
    config.model.head.norm = None
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=2.72, scales_per_octave=1, ratios=(1.0,))
    )
    config.assigner = ml_collections.ConfigDict(
        dict(name="hambox", pos_iou_thr=0.35, k=5, comp_iou_thr=0.5, count_matched=True,
             best_anchor_all_ties=True, ignore_iof_thr=0.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, smooth_l1_beta=0.11,
             box_stds=(0.1, 0.1, 0.2, 0.2), prior_prob=0.01)
    )
    config.test.nms_iou = 0.5
    return config


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base("hambox", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    config.model.fpn.extra_convs = "on_input"
    config.model.fpn.relu_before_extra = False
    return hambox_fields(config)
