# Faster R-CNN, tiny ResNet-18/16 + FPN P2-P5, on the built-in `shapes` dataset (CPU).
# The R50 recipe (configs.common.two_stage) scaled to 128 px images: anchors 4 x stride
# (16-128 px on P2-P5; the paper's 8 x stride starts at 32 px, larger than half of the
# `shapes` objects), 1000 proposals per level before NMS and 300 after, 128 RoIs sampled
# per image, fc layers of 256; the optimiser and schedule of the tiny ATSS
# (AdamW lr 4e-3, 1800 steps at batch 16).
# Run:
#   python -m jaxdet.main --config=configs/faster_rcnn/faster_rcnn_tiny_shapes.py \
#     --workdir=runs/faster_rcnn_tiny
import ml_collections

from configs import common


def tiny_two_stage(detector: str) -> ml_collections.ConfigDict:
    """The tiny two-stage config of `detector` ('faster_rcnn' | 'mask_rcnn' | 'rpn')."""
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.name, optimizer.lr, optimizer.weight_decay = "adamw", 0.004, 0.05
    config = common.base(detector, common.data_shapes(128), common.model_tiny(), train,
                         optimizer)
    common.two_stage(config)
    config.model.fpn.num_outs = 4
    config.model.strides = (4, 8, 16, 32)
    config.anchor.octave_base_scale = 4
    r = config.rpn
    r.train_pre_nms_topk, r.train_post_nms_topk = 1000, 300
    r.test_pre_nms_topk, r.test_post_nms_topk = 1000, 300
    config.roi.num_samples = 128
    config.roi.fc_channels = 256
    config.roi.mask_channels = 32
    config.test.pre_nms_topk = 1000
    return config


def get_config() -> ml_collections.ConfigDict:
    return tiny_two_stage("faster_rcnn")
