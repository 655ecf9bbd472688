# The RPN alone, tiny ResNet-18/16 + FPN P2-P5, on the built-in `shapes` dataset (CPU):
# the first stage of configs/faster_rcnn/faster_rcnn_tiny_shapes.py, evaluated by
# class-agnostic proposal recall (AR@100 / 300 / 1000, test.metric 'proposal') on its
# test proposals (test_post_nms_topk 1000 here, so AR@1000 is defined).
# Run:
#   python -m jaxdet.main --config=configs/rpn/rpn_tiny_shapes.py --workdir=runs/rpn_tiny
import ml_collections

from configs.faster_rcnn.faster_rcnn_tiny_shapes import tiny_two_stage


def get_config() -> ml_collections.ConfigDict:
    config = tiny_two_stage("rpn")
    config.rpn.test_post_nms_topk = 1000
    config.test.metric = "proposal"
    return config
