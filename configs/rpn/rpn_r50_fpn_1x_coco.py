# RPN R50-FPN 1x on COCO 2017 (mmdetection `rpn_r50_fpn_1x`: AR@1000 58.7), evaluated by
# class-agnostic proposal recall AR@100 / 300 / 1000 (test.metric 'proposal').
# Run:
#   python -m jaxdet.main --config=configs/rpn/rpn_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/rpn_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    optimizer.lr = 0.02
    config = common.base("rpn", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    common.two_stage(config)
    config.test.metric = "proposal"
    return config
