# GA-Faster R-CNN, tiny ResNet-18/16 + FPN P2-P5, on the built-in `shapes` dataset (CPU): the
# tiny Faster R-CNN (configs/faster_rcnn/faster_rcnn_tiny_shapes.py: recipe, 128 RoIs, fc 256)
# with the GA-RPN first stage of configs/guided_anchoring/ga_rpn_tiny_shapes.py (approximate
# anchors 4 x 2^(i/3) x stride, squares 4 x stride) and GA-Faster's RoI assignment 0.6 and
# box stds (configs/guided_anchoring/ga_faster_rcnn_r50_fpn_1x_coco.py), 300 proposals.
# Run:
#   python -m jaxdet.main --config=configs/guided_anchoring/ga_faster_rcnn_tiny_shapes.py \
#     --workdir=runs/ga_faster_rcnn_tiny
import ml_collections

from configs.faster_rcnn.faster_rcnn_tiny_shapes import tiny_two_stage
from configs.guided_anchoring.ga_faster_rcnn_r50_fpn_1x_coco import ga_faster_fields


def get_config() -> ml_collections.ConfigDict:
    return ga_faster_fields(tiny_two_stage("ga_faster_rcnn"), 4)
