# GA-RPN, tiny ResNet-18/16 + FPN P2-P5, on the built-in `shapes` dataset (CPU): the RPN of
# configs/rpn/rpn_tiny_shapes.py (same network, recipe, anchor size 4 x stride and 1000
# test proposals) with guided anchors: approximate anchors 4 x 2^(i/3) x stride (3 scales x
# 3 ratios), squares 4 x stride, and mmdetection's GA-RPN coder stds, assigners and losses
# (configs/guided_anchoring/ga_rpn_r50_fpn_1x_coco.py). Evaluated by proposal recall
# (AR@100 / 300 / 1000).
# Run:
#   python -m jaxdet.main --config=configs/guided_anchoring/ga_rpn_tiny_shapes.py \
#     --workdir=runs/ga_rpn_tiny
import ml_collections

from configs.faster_rcnn.faster_rcnn_tiny_shapes import tiny_two_stage
from configs.guided_anchoring.ga_rpn_r50_fpn_1x_coco import ga_rpn_fields


def get_config() -> ml_collections.ConfigDict:
    return ga_rpn_fields(tiny_two_stage("ga_rpn"), 4)
