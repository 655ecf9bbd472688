# RepPoints (moment), tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/reppoints/reppoints_tiny_shapes.py --workdir=runs/rp
# Other pseudo-box transforms: --config.reppoints.transform=minmax | partial_minmax
#
# The AdamW recipe of configs/atss/atss_tiny_shapes.py (trained from scratch).
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.name = "adamw"
    optimizer.lr = 0.004
    optimizer.weight_decay = 0.05
    config = common.base(
        "reppoints", common.data_shapes(128), common.model_tiny(), train, optimizer
    )
    config.reppoints = ml_collections.ConfigDict(
        dict(transform="moment", num_points=9, gradient_mul=0.1, point_base_scale=4.0,
             moment_mul=0.01)
    )
    # Init stage: PointAssigner(scale, pos_num); refine stage: max-IoU on pseudo-boxes.
    config.assigner = ml_collections.ConfigDict(
        dict(name="point", scale=4.0, pos_num=1, pos_iou_thr=0.5, neg_iou_thr=0.4,
             min_pos_iou=0.0, ignore_iof_thr=0.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, smooth_l1_beta=0.11, init_weight=0.5,
             refine_weight=1.0)
    )
    config.test.nms_iou = 0.5
    return config
