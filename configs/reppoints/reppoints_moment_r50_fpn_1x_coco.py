# RepPoints (moment) R50-FPN 1x, GN head, on COCO 2017 (COCO val AP: 38.2 in the authors'
# code with GN; 37.0 without GN and 38.1 with GN in mmdetection's model zoo).
# Run:
#   python -m jaxdet.main --config=configs/reppoints/reppoints_moment_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/reppoints_moment_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base(
        "reppoints", common.data_coco(), common.model_r50_fpn(), train, optimizer
    )
    # mmdetection's RepPoints neck: P6 / P7 from C5 ('on_input'), no ReLU before them.
    config.model.fpn.extra_convs = "on_input"
    config.model.fpn.relu_before_extra = False
    config.model.head.num_convs = 3
    common.reppoints(config)
    return config
