# GA-RetinaNet, tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# The network of configs/retinanet/retinanet_tiny_shapes.py (GroupNorm towers) and its
# anchor size: approximate anchors and squares of octave base scale 2 (sized for the
# `shapes` objects, see that config's header); the AdamW recipe of
# configs/reppoints/reppoints_tiny_shapes.py (lr 4e-3, weight decay 0.05, 1800 steps).
# The rest is mmdetection's GA-RetinaNet (configs/guided_anchoring/ga_retinanet_r50_fpn_1x_coco.py).
# Run:
#   python -m jaxdet.main --config=configs/guided_anchoring/ga_retinanet_tiny_shapes.py \
#     --workdir=runs/ga_retina
# Without feature adaption: --config.ga.feature_adaption=False
import ml_collections

from configs import common
from configs.guided_anchoring.ga_retinanet_r50_fpn_1x_coco import ga_fields


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.name, optimizer.lr, optimizer.weight_decay = "adamw", 0.004, 0.05
    config = common.base("ga_retinanet", common.data_shapes(128), common.model_tiny(), train,
                         optimizer)
    config.model.head.norm = "gn"
    config.model.head.gn_groups = 32
    return ga_fields(config, 2)
