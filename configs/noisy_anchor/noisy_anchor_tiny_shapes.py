# RetinaNet trained from noisy anchors (Li et al., CVPR 2020, arXiv 1912.05086), tiny
# ResNet-18/16 + FPN P3-P5, on the built-in `shapes` dataset (CPU). Network, anchors,
# box loss, schedule and inference are those of configs/retinanet/retinanet_tiny_shapes.py.
# Run:
#   python -m jaxdet.main --config=configs/noisy_anchor/noisy_anchor_tiny_shapes.py \
#     --workdir=runs/noisy_anchor
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_tiny(num_steps=5000)
    config = common.base(
        "noisy_anchor", common.data_shapes(128), common.model_tiny(), train, optimizer
    )
    config.model.head.norm = "gn"  # as the RetinaNet tiny config (see its header)
    config.model.head.gn_groups = 32
    config.anchor = ml_collections.ConfigDict(
        # RetinaNet's tiny anchors (configs/retinanet/retinanet_tiny_shapes.py: 16-102 px)
        dict(octave_base_scale=2, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
    )
    # Candidate bag = each GT's top-`topk` anchors by IoU (paper N = 50); cleanliness
    # c = alpha * IoU(regressed box, GT) + (1 - alpha) * p(GT class) (paper alpha = 0.75).
    config.assigner = ml_collections.ConfigDict(
        dict(name="noisy_anchor", topk=50, alpha=0.75, min_pos_iou=0.0, ignore_iof_thr=0.5)
    )
    # Re-weighting r = (alpha f(loc) + (1 - alpha) f(cls))^reweight_gamma, f(x) = 1/(1 - x)
    # with x clipped to max_score (paper gamma = 1); focal loss with soft labels.
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, smooth_l1_beta=0.0,
             box_stds=(1.0, 1.0, 1.0, 1.0), prior_prob=0.01, reweight_gamma=1.0,
             max_score=0.99, soft_label="cleanliness")
    )
    config.test.nms_iou = 0.5
    return config
