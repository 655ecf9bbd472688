# RetinaNet R50-FPN 1x trained from noisy anchors on COCO 2017 (Li et al., CVPR 2020,
# arXiv 1912.05086: "improves RetinaNet by ~2%"; RetinaNet R50 1x in mmdetection: 36.5).
# The paper's settings: candidate bag N = 50 anchors per GT, alpha = 0.75, gamma = 1,
# focal loss (0.25, 2); everything else as configs/retinanet/retinanet_r50_fpn_1x_coco.py.
# Run:
#   python -m jaxdet.main --config=configs/noisy_anchor/noisy_anchor_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/noisy_anchor_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base(
        "noisy_anchor", common.data_coco(), common.model_r50_fpn(), train, optimizer
    )
    config.model.fpn.extra_convs = "on_input"
    config.model.fpn.relu_before_extra = False
    config.model.head.norm = None
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
    )
    config.assigner = ml_collections.ConfigDict(
        dict(name="noisy_anchor", topk=50, alpha=0.75, min_pos_iou=0.0, ignore_iof_thr=0.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, smooth_l1_beta=0.0,
             box_stds=(1.0, 1.0, 1.0, 1.0), prior_prob=0.01, reweight_gamma=1.0,
             max_score=0.99, soft_label="cleanliness")
    )
    config.test.nms_iou = 0.5
    return config
