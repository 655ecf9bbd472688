# Mask R-CNN, tiny ResNet-18/16 + FPN P2-P5, on the built-in `shapes` dataset (CPU), whose
# instance masks are the visible parts of the objects. The tiny Faster R-CNN
# (configs/faster_rcnn/faster_rcnn_tiny_shapes.py) plus the mask head (4 convs of 32);
# masks stored at the input resolution (data.mask_stride 1) and predicted at it.
# Run:
#   python -m jaxdet.main --config=configs/mask_rcnn/mask_rcnn_tiny_shapes.py \
#     --workdir=runs/mask_rcnn_tiny
import ml_collections

from configs.faster_rcnn.faster_rcnn_tiny_shapes import tiny_two_stage


def get_config() -> ml_collections.ConfigDict:
    config = tiny_two_stage("mask_rcnn")
    config.data.with_masks = True
    config.data.mask_stride = 1
    config.test.mask_stride = 1
    return config
