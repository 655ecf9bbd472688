# Faster R-CNN R50-FPN 1x on COCO 2017 (mmdetection `faster-rcnn_r50_fpn_1x`: 37.4 box AP).
# RPN on P2-P6 (P6 max-pooled), anchors 8 x stride with ratios 0.5 / 1 / 2; 2000 proposals
# per level before NMS 0.7 and 1000 after in training, 1000 / 1000 at test; RoI sampling
# 512 at 25 % positive with the GT boxes added; RoIAlign 7 x 7; two shared fc of 1024;
# class-specific deltas with stds 0.1 / 0.1 / 0.2 / 0.2 (configs.common.two_stage).
# Run:
#   python -m jaxdet.main --config=configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/faster_rcnn_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.lr = 0.02  # mmdetection's 0.02 at batch 16
    config = common.base("faster_rcnn", common.data_coco(), common.model_r50_fpn(), train,
                         optimizer)
    return common.two_stage(config)
