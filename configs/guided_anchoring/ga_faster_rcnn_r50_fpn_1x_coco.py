# GA-Faster R-CNN R50-FPN 1x on COCO 2017 (mmdetection `ga-faster-rcnn_r50-caffe_fpn_1x_coco`:
# box AP 39.6 with a caffe-style R50): Faster R-CNN (configs/faster_rcnn/
# faster_rcnn_r50_fpn_1x_coco.py) with the GA-RPN first stage of
# configs/guided_anchoring/ga_rpn_r50_fpn_1x_coco.py, and mmdetection's GA-Faster values:
# 300 proposals per image after NMS in training and at test, RoI assignment 0.6 / 0.6 / 0.6,
# 256 RoIs per image (25 % positive), box coder stds (0.05, 0.05, 0.1, 0.1), test score
# threshold 1e-3.
# Run:
#   python -m jaxdet.main --config=configs/guided_anchoring/ga_faster_rcnn_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/ga_faster_rcnn_r50_1x
import ml_collections

from configs import common
from configs.guided_anchoring.ga_rpn_r50_fpn_1x_coco import ga_rpn_fields


def ga_faster_fields(config: ml_collections.ConfigDict, scale: int,
                     proposals: int = 300) -> ml_collections.ConfigDict:
    """A `common.two_stage` Faster R-CNN config -> GA-Faster R-CNN (in place)."""
    ga_rpn_fields(config, scale)
    config.test.metric = "bbox"
    config.rpn.train_post_nms_topk = config.rpn.test_post_nms_topk = proposals
    r = config.roi
    r.pos_iou_thr = r.neg_iou_thr = r.min_pos_iou = 0.6
    r.box_stds = (0.05, 0.05, 0.1, 0.1)
    return config


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.lr = 0.02
    config = common.base("ga_faster_rcnn", common.data_coco(), common.model_r50_fpn(), train,
                         optimizer)
    common.two_stage(config)
    config.roi.num_samples = 256
    config.test.score_thr = 1e-3
    return ga_faster_fields(config, 8)
