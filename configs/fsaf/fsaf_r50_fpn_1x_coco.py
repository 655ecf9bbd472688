# FSAF R50-FPN 1x on COCO 2017 with the paper's regions (effective 0.2, ignoring 0.5 on the
# selected and adjacent levels), anchor-free branch only as mmdetection ships it
# (mmdetection: 36.0 AP with 0.2 / 0.5, 37.4 with 0.2 / 0.2; paper AF-only R50: 35.9).
# Run:
#   python -m jaxdet.main --config=configs/fsaf/fsaf_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/fsaf_r50_1x
# The paper's anchor-based + anchor-free detector (RetinaNet + FSAF, L_ab + 0.5 L_af):
#   add --config.fsaf.anchor_based=True --config.fsaf.af_weight=0.5
# mmdetection's released regions: --config.fsaf.neg_scale=0.2 --config.fsaf.ignore_level_range=-1
import ml_collections

from configs import common
from configs.fsaf import fsaf_tiny_shapes


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.grad_clip = 10.0  # mmdetection's FSAF config: clip_grad max_norm 10
    config = common.base("fsaf", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    config.model.fpn.extra_convs = "on_input"  # RetinaNet's FPN (P6 from C5)
    config.model.fpn.relu_before_extra = False
    config.model.head.norm = None
    fsaf_tiny_shapes.retina_fields(config)
    config.fsaf = fsaf_tiny_shapes.fsaf_fields(anchor_based=False)
    config.test.nms_iou = 0.5
    return config
