# Multiple Anchor Learning (MAL), tiny ResNet-18/16 + FPN P3-P5, on the built-in `shapes`
# dataset (CPU).
# The RetinaNet of configs/retinanet/retinanet_tiny_shapes.py trained with MAL's bag loss and
# selection-depression. FreeAnchor-like baseline (same bag loss, no selection-depression):
#   --config.mal.selection=False --config.mal.depression=none
# Run:
#   python -m jaxdet.main --config=configs/mal/mal_tiny_shapes.py --workdir=runs/mal
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=5000)
    config = common.base("mal", common.data_shapes(128), common.model_tiny(), train, optimizer)
    config.model.head.norm = "gn"  # as the RetinaNet tiny config (see its header)
    config.model.head.gn_groups = 32
    config.anchor = ml_collections.ConfigDict(
        # RetinaNet's tiny anchors (configs/retinanet/retinanet_tiny_shapes.py: 16-102 px)
        dict(octave_base_scale=2, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
    )
    config.bags = ml_collections.ConfigDict(dict(bag_size=40, ignore_iof_thr=0.5))
    config.loss = ml_collections.ConfigDict(
        dict(alpha=0.5, gamma=2.0, bbox_thr=0.6, box_weight=0.75, smooth_l1_beta=0.11,
             box_stds=(0.1, 0.1, 0.2, 0.2), prior_prob=0.02)
    )
    config.mal = ml_collections.ConfigDict(
        dict(selection=True, select_end_frac=1.0, depression="selected",
             depression_max_ratio=0.5, depression_keep=0.25, schedule_steps=0)
    )
    config.test.nms_iou = 0.5
    return config
