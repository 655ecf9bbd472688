# YOLOv3 Darknet-53 on COCO, mmdetection's yolov3_d53_8xb8-ms-608-273e recipe: 273 epochs
# at batch 64, SGD lr 1e-3 (momentum 0.9, decay 5e-4), linear warm-up over 2000 steps from
# 0.1 x, x0.1 at epochs 218 and 246, gradient clip 35; 608 px test input (320 / 416: set
# --config.data.image_size, min_size and max_size).
# Run:
#   python -m jaxdet.main --config=configs/yolov3/yolov3_d53_coco.py \
#     --config.data.coco_dir=/path/to/coco --workdir=runs/yolov3_d53
#
# Multi-scale training: each step resizes its batch to one of 320, 352, ..., 608 px
# (`data.train_sizes`, jaxdet.train.multiscale; one compiled step per size), for
# mmdetection's RandomResize over 320-608 px.
# Not reproduced: mmdetection's ImageNet-pretrained Darknet-53 and train-mode BN (GN here),
# its Expand / MinIoURandomCrop / PhotoMetricDistortion augmentation.
from configs import common


def get_config():
    train, optimizer = common.schedule_1x()
    train.batch_size, train.epochs = 64, 273.0
    optimizer.update(dict(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=2000, warmup_ratio=0.1, schedule="step",
                          decay_epochs=(218, 246), decay_factor=0.1, grad_clip=35.0))
    data = common.data_coco()
    data.image_size, data.min_size, data.max_size = (608, 608), 608, 608
    # mmdetection's data_preprocessor for YOLOv3: mean 0, std 255 (RGB).
    data.mean, data.std = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    data.train_sizes = tuple(range(320, 609, 32))  # () = train at image_size only
    config = common.base("yolov3", data, common.model_darknet53(), train, optimizer)
    return common.yolo(config, common.YOLO_COCO_ANCHORS)
