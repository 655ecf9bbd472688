# AlignDet (RoIConv), tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/aligndet/aligndet_tiny_shapes.py --workdir=runs/ad
# Without alignment (a plain 3x3 conv in place of RoIConv): --config.aligndet.roi_conv=False
#
# The AdamW recipe of configs/atss/atss_tiny_shapes.py (trained from scratch), and its
# anchor scale 4 x stride (8 x stride would make 64 px anchors at P3 on 128 px images
# with objects of 10-77 px).
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.name = "adamw"
    optimizer.lr = 0.004
    optimizer.weight_decay = 0.05
    config = common.base(
        "aligndet", common.data_shapes(128), common.model_tiny(), train, optimizer
    )
    common.aligndet(config, anchor_scale=4.0)
    return config
