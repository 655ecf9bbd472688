# ATSS, tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU, minutes).
# Run (this is `make demo`):
#   python -m jaxdet.main --config=configs/atss/atss_tiny_shapes.py --workdir=runs/demo
#
# Trained from scratch (no pretrained weights exist offline) with AdamW, which converges
# much faster here than SGD in a short schedule. Measured on shapes val (batch 16, cosine):
# SGD lr 0.02, 2500 steps: AP 0.577; AdamW lr 2e-3, 2000 steps: 0.657; AdamW lr 4e-3,
# 1800 steps: 0.672 (this config; 0.670 with another float summation order in the conv gradients).
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.name = "adamw"
    optimizer.lr = 0.004
    optimizer.weight_decay = 0.05
    config = common.base(
        "atss", common.data_shapes(128), common.model_tiny(), train, optimizer
    )
    # Anchor scale 4 x stride (the paper's 8 x stride would make 64 px anchors at P3
    # on 128 px images with objects of 10-77 px).
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=4, scales_per_octave=1, ratios=(1.0,))
    )
    config.assigner = ml_collections.ConfigDict(dict(name="atss", topk=9, ignore_iof_thr=0.5))
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=2.0)
    )
    config.test.nms_iou = 0.6
    return config
