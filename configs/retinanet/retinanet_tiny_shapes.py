# RetinaNet, tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/retinanet/retinanet_tiny_shapes.py --workdir=runs/retina
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=5000)
    config = common.base(
        "retinanet", common.data_shapes(128), common.model_tiny(), train, optimizer
    )
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
