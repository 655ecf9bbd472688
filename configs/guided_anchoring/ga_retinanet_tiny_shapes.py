# GA-RetinaNet, tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# The network of configs/retinanet/retinanet_tiny_shapes.py (GroupNorm towers) and its
# anchor size: approximate anchors and squares of octave base scale 2 (sized for the
# `shapes` objects, see that config's header); the AdamW recipe of
# configs/reppoints/reppoints_tiny_shapes.py (lr 4e-3, weight decay 0.05, 1800 steps).
# The rest is mmdetection's GA-RetinaNet (configs/guided_anchoring/ga_retinanet_r50_fpn_1x_coco.py),
# including the location loss's normaliser (images x locations) / 200, set for COCO-sized
# images: on 128 px images it weighs the location loss about 38x more, relative to the
# other losses, than on COCO (experiments/guided_anchoring measures --config.ga.loc_weight=0.025).
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
