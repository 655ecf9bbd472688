# YOLOv3, narrow Darknet (width 8, blocks 1-1-2-2-1) + YOLOv3 neck/head, on the built-in
# `shapes` dataset (CPU).
# Run:
#   python -m jaxdet.main --config=configs/yolov3/yolov3_tiny_shapes.py --workdir=runs/yolov3
#
# Anchors: k-means (1 - IoU distance) of the shapes train boxes, computed with
#   python tools/yolo_anchors.py --config=configs/yolov3/yolov3_tiny_shapes.py
# Trained from scratch with AdamW like the other tiny configs; the losses are summed per
# image (images_per_sum 1).
from configs import common

# (16658 boxes, mean best IoU 0.755)
SHAPES_ANCHORS = (((13, 13), (15, 23), (24, 16)), ((23, 35), (37, 25), (34, 53)),
                  ((55, 36), (49, 71), (72, 51)))


def get_config():
    train, optimizer = common.schedule_tiny(num_steps=2000)
    optimizer.update(dict(name="adamw", lr=0.002, weight_decay=0.05))
    config = common.base("yolov3", common.data_shapes(128), common.model_darknet_tiny(),
                         train, optimizer)
    config = common.yolo(config, SHAPES_ANCHORS)
    config.loss.images_per_sum = 1
    return config
