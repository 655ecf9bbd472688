# ATSS R50-FPN 1x on COCO 2017 (paper: 39.3 AP val; mmdetection: 39.4).
# Run:
#   python -m jaxdet.main --config=configs/atss/atss_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/atss_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base("atss", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=8, scales_per_octave=1, ratios=(1.0,))
    )
    config.assigner = ml_collections.ConfigDict(dict(name="atss", topk=9, ignore_iof_thr=0.5))
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=2.0)
    )
    config.test.nms_iou = 0.6
    return config
