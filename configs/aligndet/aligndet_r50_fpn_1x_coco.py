# AlignDet (RoIConv) R50-FPN 1x, GN head, on COCO 2017 (P3-P7, SGD lr 0.01 at batch 16,
# 12 epochs). The paper reports 44.1 AP on test-dev with ResNeXt-101 and no R50 figure.
# Run:
#   python -m jaxdet.main --config=configs/aligndet/aligndet_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/aligndet_r50_1x
# The ablation without alignment (a plain 3x3 conv in place of RoIConv):
#   --config.aligndet.roi_conv=False
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base("aligndet", common.data_coco(), common.model_r50_fpn(), train,
                         optimizer)
    common.aligndet(config, anchor_scale=8.0)
    return config
