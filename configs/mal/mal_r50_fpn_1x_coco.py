# Multiple Anchor Learning (Ke et al., CVPR 2020), RetinaNet R50-FPN, COCO 2017, 1x (12 epochs).
# Paper (test-dev, its 135k-iteration schedule): 39.2 AP. Settings from DeLightCMU/MAL
# configs/mal_R-50-FPN.yaml: bag 40, BBOX_THRESHOLD 0.6, alpha 0.5, gamma 2, box weight 0.75
# (smooth L1 beta 0.11), prior 0.02, lr 0.01 at batch 16, warm-up 500.
# mal.schedule_steps is the length of the selection/depression schedules: 12 epochs of
# 118287 images at batch 16 (7392 steps per epoch). The paper's schedule instead:
#   --config.train.epochs=18.26 --config.optimizer.decay_epochs='(12.18, 16.23)'
#   --config.mal.schedule_steps=135000
# FreeAnchor-like (no selection-depression): --config.mal.selection=False
#   --config.mal.depression=none
# Run:
#   python -m jaxdet.main --config=configs/mal/mal_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/mal_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base("mal", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    config.model.fpn.extra_convs = "on_input"
    config.model.fpn.relu_before_extra = False
    config.model.head.norm = None
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
    )
    config.bags = ml_collections.ConfigDict(dict(bag_size=40, ignore_iof_thr=0.5))
    config.loss = ml_collections.ConfigDict(
        dict(alpha=0.5, gamma=2.0, bbox_thr=0.6, box_weight=0.75, smooth_l1_beta=0.11,
             box_stds=(0.1, 0.1, 0.2, 0.2), prior_prob=0.02)
    )
    config.mal = ml_collections.ConfigDict(
        dict(selection=True, select_end_frac=1.0, depression="selected",
             depression_max_ratio=0.5, depression_keep=0.25, schedule_steps=12 * 7392)
    )
    config.test.nms_iou = 0.5
    return config
