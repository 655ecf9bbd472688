# GA-RetinaNet R50-FPN 1x on COCO 2017 (mmdetection `ga-retinanet_r50-caffe_fpn_1x_coco`:
# 36.9 AP with a caffe-style R50). Approximate anchors 4 x 2^(i/3) x stride, ratios
# 0.5 / 1 / 2; square anchors 4 x stride; anchor / box coder stds 1; loc focal (0.25, 2),
# shape bounded IoU (beta 0.2), centre / ignore ratios 0.2 / 0.5; approx assigner
# 0.5 / 0.4 / 0.4 with 256 sampled (half positive); final assigner 0.5 / 0.5 / 0.0; focal
# cls, SmoothL1 (beta 0.04) box; gradient clipping 35; test loc filter 0.01, NMS 0.5.
# Ablation: --config.ga.feature_adaption=False (a plain 3x3 conv instead of the
# deformable FeatureAdaption).
# Run:
#   python -m jaxdet.main --config=configs/guided_anchoring/ga_retinanet_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/ga_retinanet_r50_1x
import ml_collections

from configs import common


def ga_fields(config: ml_collections.ConfigDict, scale: int) -> ml_collections.ConfigDict:
    """GA-RetinaNet's anchor / ga / assigner / loss fields with approximate-anchor octave
    base scale = square scale = `scale` (mmdetection: 4). Returns `config`."""
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=scale, scales_per_octave=3, ratios=(0.5, 1.0, 2.0)))
    config.ga = ml_collections.ConfigDict(dict(
        square_scale=scale, feature_adaption=True, deform_groups=4,
        anchor_stds=(1.0, 1.0, 1.0, 1.0), loc_filter_thr=0.01,
        center_ratio=0.2, ignore_ratio=0.5, neg_weight=0.1,
        loc_alpha=0.25, loc_gamma=2.0, loc_weight=1.0, shape_beta=0.2, shape_weight=1.0,
        pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.4, ignore_iof_thr=0.5,
        num_samples=256, pos_fraction=0.5,
    ))
    config.assigner = ml_collections.ConfigDict(
        dict(name="max_iou", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.0,
             ignore_iof_thr=0.5))
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, smooth_l1_beta=0.04,
             box_stds=(1.0, 1.0, 1.0, 1.0), prior_prob=0.01))
    config.test.nms_iou = 0.5
    return config


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.grad_clip = 35.0
    config = common.base("ga_retinanet", common.data_coco(), common.model_r50_fpn(), train,
                         optimizer)
    config.model.fpn.extra_convs = "on_input"
    config.model.fpn.relu_before_extra = False
    config.model.head.norm = None
    return ga_fields(config, 4)
