# GA-RPN R50-FPN 1x on COCO 2017 (mmdetection `ga-rpn_r50-caffe_fpn_1x_coco`: AR@1000 68.4
# with a caffe-style R50), evaluated by class-agnostic proposal recall AR@100 / 300 / 1000
# (test.metric 'proposal'). The RPN of configs/rpn/rpn_r50_fpn_1x_coco.py with guided
# anchors: approximate anchors 8 x 2^(i/3) x stride (ratios 0.5 / 1 / 2, strides 4-64),
# squares 8 x stride, anchor coder stds (0.07, 0.07, 0.14, 0.14), box coder stds
# (0.07, 0.07, 0.11, 0.11); approx assigner and RPN assigner 0.7 / 0.3 / 0.3, 256 sampled
# each; loc focal (0.25, 2), shape bounded IoU (beta 0.2), BCE objectness, smooth L1
# (beta 1) box; gradient clipping 35; 1000 test proposals.
# Run:
#   python -m jaxdet.main --config=configs/guided_anchoring/ga_rpn_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/ga_rpn_r50_1x
import ml_collections

from configs import common


def ga_rpn_fields(config: ml_collections.ConfigDict, scale: int) -> ml_collections.ConfigDict:
    """Makes a `common.two_stage` RPN config a GA-RPN: approximate anchors of octave base
    scale `scale` (3 scales x 3 ratios), squares of `scale` x stride, mmdetection's
    GA-RPN coder stds, assigners and losses. Returns `config`."""
    config.anchor.octave_base_scale = scale
    config.anchor.scales_per_octave = 3
    config.ga = ml_collections.ConfigDict(dict(
        square_scale=scale, feature_adaption=True, deform_groups=4,
        anchor_stds=(0.07, 0.07, 0.14, 0.14), loc_filter_thr=0.01,
        center_ratio=0.2, ignore_ratio=0.5, neg_weight=0.1,
        loc_alpha=0.25, loc_gamma=2.0, loc_weight=1.0, shape_beta=0.2, shape_weight=1.0,
        pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, ignore_iof_thr=0.5,
        num_samples=256, pos_fraction=0.5,
    ))
    config.rpn.box_stds = (0.07, 0.07, 0.11, 0.11)
    config.rpn.smooth_l1_beta = 1.0
    config.rpn.test_post_nms_topk = 1000
    config.test.metric = "proposal"
    return config


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.lr = 0.02
    optimizer.grad_clip = 35.0
    config = common.base("ga_rpn", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    common.two_stage(config)
    return ga_rpn_fields(config, 8)
