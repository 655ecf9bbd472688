# RepPoints (moment), tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/reppoints/reppoints_tiny_shapes.py --workdir=runs/rp
# Other pseudo-box transforms: --config.reppoints.transform=minmax | partial_minmax
# The box representation (the paper's box baseline): --config.reppoints.use_grid_points=True
#   --config.reppoints.transform=minmax [--config.assigner.name=max_iou for box anchors]
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
    common.reppoints(config)
    return config
