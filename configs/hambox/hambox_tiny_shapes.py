# HAMBox (Liu et al., CVPR 2020, arXiv 1912.09231), tiny ResNet-18/16 + FPN P3-P5, on the
# `small_objects` variant of the built-in `shapes` dataset (objects 4-20 % of the 128 px
# side, 3-12 per image: the paper is about small, "outer" faces). Anchors, assigner and
# losses as configs/hambox/hambox_r50_fpn_1x_coco.py (one 0.68 x 4 x stride anchor per
# location: 22 / 44 / 87 px), trained like the demo (AdamW lr 4e-3, cosine).
# `--config.assigner.k=0` is the paper's baseline (IoU matching at 0.35 alone).
# Run:
#   python -m jaxdet.main --config=configs/hambox/hambox_tiny_shapes.py --workdir=runs/hambox
import ml_collections

from configs import common
from configs.hambox.hambox_r50_fpn_1x_coco import hambox_fields


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.name = "adamw"
    optimizer.lr = 0.004
    optimizer.weight_decay = 0.05
    data = common.data_shapes(128, "small_objects")
    config = common.base("hambox", data, common.model_tiny(), train, optimizer)
    return hambox_fields(config)
