# FCOS, tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/fcos/fcos_tiny_shapes.py --workdir=runs/fcos
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=5000)
    config = common.base("fcos", common.data_shapes(128), common.model_tiny(), train, optimizer)
    # Scale ranges for P3-P5 on 128 px images (the last level takes everything larger).
    config.assigner = ml_collections.ConfigDict(
        dict(name="fcos", regress_ranges=((-1, 32), (32, 64), (64, 1e8)), center_sampling=True,
             center_sample_radius=1.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, box_loss="giou")
    )
    config.test.nms_iou = 0.5
    return config
