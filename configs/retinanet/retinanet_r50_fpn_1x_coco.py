# RetinaNet R50-FPN 1x on COCO 2017 (mmdetection: 36.5 AP).
# Run:
#   python -m jaxdet.main --config=configs/retinanet/retinanet_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/retinanet_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base("retinanet", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    config.model.fpn.extra_convs = "on_input"
    config.model.fpn.relu_before_extra = False
    config.model.head.norm = None
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
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
