# RepPoints' bounding-box baseline, centre-based: as reppoints_bbox_r50_fpn_grid_1x_coco.py
# with the init stage assigned by the point assigner (scale 4, one location per GT), as
# the point-set RepPoints (mmdetection's reppoints-bbox_r50-center_fpn-gn_head-gn-grid_1x;
# model zoo: 37.4 COCO val AP).
# Run:
#   python -m jaxdet.main \
#     --config=configs/reppoints/reppoints_bbox_r50_center_fpn_grid_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/reppoints_bbox_center_r50_1x
import ml_collections

from configs.reppoints import reppoints_moment_r50_fpn_1x_coco


def get_config() -> ml_collections.ConfigDict:
    config = reppoints_moment_r50_fpn_1x_coco.get_config()
    config.reppoints.use_grid_points = True
    config.reppoints.transform = "minmax"
    return config
