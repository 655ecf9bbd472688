# YOLOv3, narrow Darknet (width 8, blocks 1-1-2-2-1) + YOLOv3 neck/head, on the built-in
# `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/yolov3/yolov3_tiny_shapes.py --workdir=runs/yolov3
#
# Anchors: k-means (1 - IoU distance) of the shapes train boxes, computed with
#   python tools/yolo_anchors.py --config=configs/yolov3/yolov3_tiny_shapes.py
# Trained from scratch with AdamW (lr 4e-3, weight decay 0.05, as the ATSS demo; not tuned
# for YOLOv3); the losses are summed per image (images_per_sum 1). Short runs, one seed
# each, on a 2-core EPYC shared with other jobs (`--config.train.num_steps=400`): AP 0.103
# with lr 2e-3, 0.122 with 4e-3; Gaussian YOLOv3 (its config) 0.124 with 4e-3.
from configs import common

# (16658 boxes, mean best IoU 0.755)
SHAPES_ANCHORS = (((13, 13), (15, 23), (24, 16)), ((23, 35), (37, 25), (34, 53)),
                  ((55, 36), (49, 71), (72, 51)))


def get_config():
    train, optimizer = common.schedule_tiny(num_steps=1800)
    optimizer.update(dict(name="adamw", lr=0.004, weight_decay=0.05))
    config = common.base("yolov3", common.data_shapes(128), common.model_darknet_tiny(),
                         train, optimizer)
    config = common.yolo(config, SHAPES_ANCHORS)
    config.loss.images_per_sum = 1
    return config
