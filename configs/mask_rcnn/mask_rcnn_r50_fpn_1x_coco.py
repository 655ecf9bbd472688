# Mask R-CNN R50-FPN 1x on COCO 2017 (mmdetection `mask-rcnn_r50_fpn_1x`: 38.2 box AP,
# 34.7 mask AP). Faster R-CNN's recipe (configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py)
# plus the mask head: RoIAlign 14 x 14, 4 convs of 256, deconv to 28 x 28, per-class
# logits, BCE on the GT class. GT masks are stored at 1/4 of the padded input
# (data.mask_stride) and predicted masks pasted at 1/4 (test.mask_stride: 100 pasted
# masks of a 800 x 1344 input at full resolution would take 430 MB per image).
# Run:
#   python -m jaxdet.main --config=configs/mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/mask_rcnn_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.lr = 0.02
    data = common.data_coco()
    data.builder_config = "default"  # stores the instance masks
    data.with_masks = True
    config = common.base("mask_rcnn", data, common.model_r50_fpn(), train, optimizer)
    common.two_stage(config)
    config.test.mask_stride = 4
    config.test.mask_paste = "mmdet"  # 'torchvision': jaxdet.ops.paste_torchvision
    return config
